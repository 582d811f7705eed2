"""The names DataConfig's fields accept, each with the function behind it (see `framework.registry`),
and the relation names multihop's knowledge bases draw from. Imports neither datasets nor jax, so a
config's names are checked before either is loaded."""

from framework.registry import Registry

SPLITS = ("train", "validation", "test")  # what every task and data file is split into
TASKS = Registry("task", "task", {
    "addition": "framework.data.tasks:addition_task",
    "multihop": "framework.data.tasks:multihop_task",
})
# How an addition operand is written, given the task's max_digits. The answer is always LSB-first.
OPERAND_FORMATS = Registry("data.operand_format", "format", {
    "lsb-first": "framework.data.tasks:lsb_first",  # 57 -> "75000"
    "padded": "framework.data.tasks:padded",  # 57 -> "00057"
    "natural": "framework.data.tasks:natural",  # 57 -> "57"
})
# How a multi-hop answer is written: every entity on the chain, or only the last.
HOP_ANSWERS = Registry("data.hop_answer", "answer format", {
    "chain": "framework.data.tasks:whole_chain",  # "Kesu, Tomer"
    "final": "framework.data.tasks:final_entity",  # "Tomer"
})
# A knowledge base of kb_relations relations uses the first kb_relations of these (the same for every seed).
RELATIONS = ("teacher", "friend", "mother", "boss", "neighbor", "doctor", "cousin", "mentor",
             "father", "landlord", "coach", "sister")
