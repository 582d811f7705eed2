"""Tests for framework.data.tasks: generators, file loading, build_splits and their error messages (how
prompts are split: tests/test_splits.py)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from framework.config import DataConfig
from framework.data import files, tasks
from framework.errors import ConfigError
from tests.conftest import assert_disjoint, prompts_of

ADDITION = re.compile(r"^(0|[1-9][0-9]*)\+(0|[1-9][0-9]*)=$")
QUESTION = re.compile(r"^Who is the (.+) of ([A-Z][a-z]+)\?$")


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path, monkeypatch):
    # load_dataset caches what it parses; keep that out of the user's ~/.cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def parse_question(prompt: str) -> tuple[tuple[str, ...], str]:
    match = QUESTION.match(prompt)
    assert match, prompt
    return tuple(match.group(1).split(" of the ")), match.group(2)


def test_import_is_jax_free_and_changes_nothing():
    # In a fresh interpreter: other tests in the same session may have imported jax already.
    code = ("import os; before = dict(os.environ); import framework.data.tasks, sys, datasets; "
            "assert 'jax' not in sys.modules, 'framework.data.tasks imported jax'; "
            "assert dict(os.environ) == before, 'importing recoup changed the environment'; "
            "assert datasets.is_progress_bar_enabled()")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1], env=env)


def test_reading_files_never_touches_the_network(tmp_path):
    """recoup never downloads, without setting HF_*_OFFLINE for the user's process: each kind of file
    loads with every socket call refused, in a fresh interpreter with no HF_ variables."""
    pd = pytest.importorskip("pandas")
    rows = {"prompt": ["1+1=", "2+2="], "answer": ["2", "4"]}
    pd.DataFrame(rows).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"))
    code = ("import socket, sys\n"
            "def refuse(*a, **k): raise RuntimeError('network call')\n"
            "socket.socket.connect = socket.create_connection = socket.getaddrinfo = refuse\n"
            "from framework.data.files import load_file\n"
            "for name in sys.argv[1:]: assert len(load_file(name)) == 2, name\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HOME"] = str(tmp_path / "hf")  # a cold cache: nothing found there, nothing to fetch
    paths = [str(tmp_path / n) for n in ("d.jsonl", "d.csv", "d.parquet", "saved")]
    subprocess.run([sys.executable, "-c", code, *paths], check=True, cwd=Path(__file__).parents[1], env=env)


# ---------------------------------------------------------------- addition

@pytest.mark.parametrize("generate", [
    lambda seed: tasks.addition(300, 4, seed),
    lambda seed: tasks.multihop(100, 3, seed, n_entities=30, n_relations=3)[0],
    lambda seed: tasks.multihop(100, 3, seed, n_entities=30, n_relations=3)[1],
    lambda seed: tasks.multihop_splits(100, 3, seed, 10, 10, n_entities=30)["train"],
    lambda seed: tasks.split_by_prompt(tasks.addition(300, 4, 0), 20, 20, seed)["test"],
])
def test_deterministic_in_seed(generate):
    assert generate(1).to_dict() == generate(1).to_dict()
    assert generate(1).to_dict() != generate(2).to_dict()


@pytest.mark.parametrize("max_digits", [1, 2, 3, 6])
@pytest.mark.parametrize("fmt", ["lsb-first", "padded"])
def test_fixed_width_addition_rows_are_correct(max_digits, fmt):
    ds = tasks.addition(600, max_digits, seed=3, operand_format=fmt)
    for row in ds:
        a, b = re.fullmatch(r"([0-9]+)\+([0-9]+)=", row["prompt"]).groups()
        assert len(a) == len(b) == max_digits
        if fmt == "lsb-first":
            a, b = a[::-1], b[::-1]
        assert row["answer"] == str(int(a) + int(b))[::-1]
        assert row["difficulty"] == max(len(str(int(a))), len(str(int(b))))
    assert len(set(ds["prompt"])) == len(ds)
    assert set(ds["difficulty"]) == set(range(1, max_digits + 1))


@pytest.mark.parametrize("max_digits", [1, 2, 3, 6])
def test_addition_rows_are_correct(max_digits):
    ds = tasks.addition(600, max_digits, seed=3, operand_format="natural")
    assert ds.column_names == ["prompt", "answer", "difficulty"]
    assert ds.features["difficulty"].dtype == "int64"
    for row in ds:
        match = ADDITION.match(row["prompt"])  # also rejects leading zeros and spaces
        assert match, row["prompt"]
        a, b = match.groups()
        assert tasks.decode_addition_answer(row["answer"]) == int(a) + int(b)
        assert row["answer"] == str(int(a) + int(b))[::-1]
        assert row["difficulty"] == max(len(a), len(b))
    assert len(set(ds["prompt"])) == len(ds)
    assert set(ds["difficulty"]) == set(range(1, max_digits + 1))


def test_addition_difficulty_is_roughly_uniform():
    counts = [tasks.addition(3000, 5, seed=0)["difficulty"].count(d) for d in range(1, 6)]
    assert counts[0] == 100  # all the one-digit problems there are; the rest share the remainder
    assert min(counts[1:]) > 600, counts


def test_addition_long_operand_on_either_side():
    rows = [ADDITION.match(p).groups() for p in tasks.addition(500, 5, 0, operand_format="natural")["prompt"]]
    assert any(len(a) > len(b) for a, b in rows) and any(len(a) < len(b) for a, b in rows)


def test_lsb_first_is_the_default_format():
    assert tasks.addition(1, 5, seed=0)[0]["prompt"] == tasks.addition(1, 5, 0, "lsb-first")[0]["prompt"]
    with pytest.raises(ConfigError, match="natural"):
        tasks.addition(1, 5, 0, "roman")


@pytest.mark.parametrize("max_digits, n_examples, expected", [
    (1, 1_000, 100),  # every one-digit problem, then stop
    (2, 20_000, 10_000),  # every pair in 0..99
    (3, 500, 500),  # plenty of room: exactly as many as asked
])
def test_addition_stops_when_space_is_exhausted(max_digits, n_examples, expected):
    ds = tasks.addition(n_examples, max_digits, seed=0)
    assert len(ds) == expected
    assert len(set(ds["prompt"])) == expected


@pytest.mark.parametrize("answer, value", [("521", 125), ("001", 100), ("0", 0), (" 12\n", 21)])
def test_decode_addition_answer(answer, value):
    assert tasks.decode_addition_answer(answer) == value


def test_reverse_digits():
    assert tasks.reverse_digits("125") == "521"
    assert tasks.decode_addition_answer(tasks.reverse_digits("90210")) == 90210


@pytest.mark.parametrize("answer", ["", "12a", "-1", "1 2", "\u0661\u0662"])
def test_decode_addition_answer_rejects(answer):
    with pytest.raises(ValueError, match="not an addition answer"):
        tasks.decode_addition_answer(answer)


@pytest.mark.parametrize("call, field", [
    (lambda: tasks.addition(-1, 3, 0), "n_examples"),
    (lambda: tasks.addition(10, 0, 0), "max_digits"),
    (lambda: tasks.multihop(10, 0, 0), "max_hops"),
    (lambda: tasks.multihop(10, 2, 0, n_entities=1), "n_entities"),
    (lambda: tasks.multihop(10, 2, 0, n_relations=0), "n_relations"),
    (lambda: tasks.multihop(10, 2, 0, n_relations=len(tasks.RELATIONS) + 1), "n_relations"),
])
def test_generator_argument_errors(call, field):
    with pytest.raises(ConfigError) as err:
        call()
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


# ---------------------------------------------------------------- multi-hop questions

def test_knowledge_base_shape():
    kb = tasks.knowledge_base(seed=0, n_entities=200, n_relations=6)
    assert len(kb.entities) == len(set(kb.entities)) == 200
    assert all(re.fullmatch(r"[A-Z][a-z]{3,6}", e) for e in kb.entities), kb.entities
    assert kb.relations == tasks.RELATIONS[:6]
    for relation in kb.relations:
        targets = kb.links[relation]
        assert set(targets) == set(kb.entities)
        assert set(targets.values()) <= set(kb.entities)
        assert all(target != entity for entity, target in targets.items())
    assert kb.entities != tasks.knowledge_base(seed=1).entities


def test_question_wording_and_order():
    kb = tasks.KnowledgeBase(("Alba", "Tomer", "Kesu"), ("teacher", "friend"), {
        "teacher": {"Alba": "Tomer", "Tomer": "Kesu", "Kesu": "Alba"},
        "friend": {"Alba": "Kesu", "Tomer": "Alba", "Kesu": "Tomer"},
    })
    chain = ("teacher", "friend")
    assert tasks.question(chain, "Alba") == "Who is the teacher of the friend of Alba?"
    # teacher(friend(Alba)) = teacher(Kesu) = Alba, not friend(teacher(Alba)) = Kesu.
    assert kb.resolve(chain, "Alba") == "Alba"


@pytest.mark.parametrize("n_entities, n_relations, max_hops", [(200, 6, 3), (20, 2, 5), (5, 1, 2)])
def test_multihop_answers_follow_the_knowledge_base(n_entities, n_relations, max_hops):
    facts, comps = tasks.multihop(400, max_hops, 7, n_entities, n_relations, hop_answer="final")
    kb = tasks.knowledge_base(7, n_entities, n_relations)
    assert len(facts) == n_entities * n_relations
    assert set(facts["difficulty"]) == {1}
    assert len(set(facts["prompt"])) == len(facts)
    for ds in (facts, comps):
        for row in ds:
            chain, entity = parse_question(row["prompt"])
            for relation in reversed(chain):  # the innermost relation is the last one named
                entity = kb.links[relation][entity]
            assert row["answer"] == entity
            assert row["difficulty"] == len(chain)
    assert len(set(comps["prompt"])) == len(comps)
    assert set(comps["difficulty"]) == set(range(2, max_hops + 1))
    # The (5, 1, 2) world has only 5 two-hop questions: the draw stops there.
    assert len(comps) == min(400, sum(n_entities * n_relations**h for h in range(2, max_hops + 1)))


def test_multihop_chain_answers_name_every_hop_innermost_first():
    kb = tasks.knowledge_base(3, 30, 3)
    final = tasks.multihop(200, 3, 3, 30, 3, hop_answer="final")[1]
    chain = tasks.multihop(200, 3, 3, 30, 3, hop_answer="chain")[1]
    assert final["prompt"] == chain["prompt"]  # only the answers differ
    for row, last in zip(chain, final["answer"], strict=True):
        path = row["answer"].split(", ")
        assert len(path) == row["difficulty"] and path[-1] == last
        names, start = parse_question(row["prompt"])
        assert path == kb.path(tuple(names), start)
    with pytest.raises(ConfigError, match="hop_answer.*allowed: chain, final"):
        tasks.multihop(10, 2, 0, hop_answer="reversed")


def test_multihop_one_hop_has_no_compositions():
    facts, comps = tasks.multihop(100, 1, 0, n_entities=10, n_relations=2)
    assert len(facts) == 20 and len(comps) == 0
    assert comps.features == facts.features


def test_multihop_splits_hold_out_compositions():
    splits = tasks.multihop_splits(300, 3, 0, val_size=40, test_size=50, n_entities=50)
    facts, comps = tasks.multihop(300, 3, 0, n_entities=50)
    assert len(splits["test"]) == 50 and len(splits["validation"]) == 40
    assert len(splits["train"]) == len(facts) + len(comps) - 90
    assert set(facts["prompt"]) <= set(splits["train"]["prompt"])
    for name in ("validation", "test"):
        assert min(splits[name]["difficulty"]) >= 2
    assert_disjoint(splits)
    held_out = prompts_of(splits)["validation"] | prompts_of(splits)["test"]
    assert held_out | set(splits["train"]["prompt"]) == set(facts["prompt"]) | set(comps["prompt"])
    # Train is shuffled: the facts are not all in front.
    assert set(splits["train"]["difficulty"][: len(facts)]) != {1}


def test_multihop_splits_too_few_compositions():
    with pytest.raises(ConfigError, match=r"val_size: only 30 multi-hop compositions exist"):
        tasks.multihop_splits(30, 2, 0, val_size=20, test_size=20, n_entities=20)
    with pytest.raises(ConfigError, match=r"test_size: only 0 multi-hop compositions"):
        tasks.multihop_splits(30, 1, 0, val_size=0, test_size=1, n_entities=20)


# ---------------------------------------------------------------- files

ROWS = {"question": ["1+1=", "2+2=", "3+3=", "1+1="], "solution": ["2", "4", "6", "2"],
        "level": [1, 2, 3, 1]}


def write(tmp_path, kind: str, rows: dict = ROWS) -> str:
    ds = datasets.Dataset.from_dict(rows)
    if kind == "jsonl":
        ds.to_json(tmp_path / "data.jsonl")
        return str(tmp_path / "data.jsonl")
    if kind == "csv":
        ds.to_csv(tmp_path / "data.csv", index=False)
        return str(tmp_path / "data.csv")
    if kind == "parquet":
        ds.to_parquet(tmp_path / "data.parquet")
        return str(tmp_path / "data.parquet")
    if kind == "saved_dataset":
        ds.save_to_disk(tmp_path / "saved")
    else:  # a DatasetDict: its splits come back concatenated
        half = len(ds) // 2
        parts = {"train": ds.select(range(half)), "test": ds.select(range(half, len(ds)))}
        datasets.DatasetDict(parts).save_to_disk(tmp_path / "saved")
    return str(tmp_path / "saved")


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "saved_dataset", "saved_dict"])
def test_load_file_formats_and_custom_columns(tmp_path, kind):
    ds = files.load_file(write(tmp_path, kind), "question", "solution", "level")
    assert ds.column_names == ["prompt", "answer", "difficulty"]
    assert ds.features["difficulty"].dtype == "int64"
    assert ds.features["answer"].dtype == "string"  # csv parses "2" as a number: cast back
    assert ds.to_dict() == {"prompt": ROWS["question"], "answer": ROWS["solution"],
                            "difficulty": ROWS["level"]}


def test_load_file_defaults_and_unscored(tmp_path):
    path = write(tmp_path, "jsonl", {"prompt": ["a", "b"], "answer": [1, 2], "extra": [0, 0]})
    ds = files.load_file(path)
    assert ds.to_dict() == {"prompt": ["a", "b"], "answer": ["1", "2"], "difficulty": [0, 0]}


def test_load_file_float_difficulty(tmp_path):
    path = write(tmp_path, "parquet", {"prompt": ["a", "b"], "answer": ["x", "y"],
                                       "score": pa.array([0.5, 2.0], pa.float32())})
    ds = files.load_file(path, difficulty_col="score")
    assert ds.features["difficulty"].dtype == "float64"
    assert ds["difficulty"] == [0.5, 2.0]


def test_build_splits_from_file_with_duplicates(tmp_path):
    rows = {"question": [f"q{i % 10}" for i in range(40)], "solution": ["a"] * 40,
            "level": list(range(40))}
    splits = tasks.build_splits(DataConfig(task=None, data_path=write(tmp_path, "csv", rows), seed=0,
                                           n_examples=999, val_size=2, test_size=3, prompt_col="question",
                                           answer_col="solution", difficulty_col="level"))
    assert [len(splits[s]) for s in tasks.SPLITS] == [20, 8, 12]
    assert_disjoint(splits)


def test_load_file_missing_column_lists_columns(tmp_path):
    path = write(tmp_path, "jsonl")
    with pytest.raises(ConfigError) as err:
        files.load_file(path, prompt_col="question")
    assert str(err.value) == ("answer_col: column 'answer' not found in data.jsonl "
                              "(columns found: question, solution, level)")
    with pytest.raises(ConfigError, match=r"^prompt_col: column 'prompt' not found .*question"):
        files.load_file(path)
    with pytest.raises(ConfigError, match=r"^difficulty_col: column 'hardness' not found"):
        files.load_file(path, "question", "solution", "hardness")


def test_load_file_missing_path_lists_parent(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ConfigError) as err:
        files.load_file(str(tmp_path / "trian.jsonl"))
    assert err.value.field == "data"
    assert "trian.jsonl not found" in str(err.value)
    assert "notes.txt, train.jsonl" in str(err.value)


def test_load_file_missing_path_long_listing(tmp_path):
    for i in range(25):
        (tmp_path / f"f{i:02d}.csv").write_text("")
    with pytest.raises(ConfigError, match=r"f19\.csv, \.\.\. \(\d+ more\)"):
        files.load_file(str(tmp_path / "nope.csv"))


def test_load_file_missing_parent(tmp_path):
    with pytest.raises(ConfigError, match=r"^data: .*nowhere.*does not exist"):
        files.load_file(str(tmp_path / "nowhere" / "data.jsonl"))


def test_load_file_unsupported_extension(tmp_path):
    (tmp_path / "data.txt").write_text("1+1=\t2\n")
    with pytest.raises(ConfigError) as err:
        files.load_file(str(tmp_path / "data.txt"))
    assert "unsupported file type '.txt'" in str(err.value)
    assert {".jsonl", ".json", ".csv", ".parquet"} <= set(err.value.allowed)


def test_load_file_not_a_saved_dataset(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match="not one written by Dataset.save_to_disk"):
        files.load_file(str(tmp_path / "folder"))


def test_load_file_saved_splits_must_match(tmp_path):
    a = datasets.Dataset.from_dict({"prompt": ["a"], "answer": ["x"]})
    b = datasets.Dataset.from_dict({"prompt": ["b"], "answer": [1]})
    datasets.DatasetDict({"train": a, "test": b}).save_to_disk(tmp_path / "saved")
    with pytest.raises(ConfigError, match=r"^data: the splits in .*saved differ in columns"):
        files.load_file(str(tmp_path / "saved"))


def test_load_file_zero_rows(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"^data: .*empty\.jsonl has no rows"):
        files.load_file(str(tmp_path / "empty.jsonl"))
    table = pa.table({"prompt": pa.array([], pa.string()), "answer": pa.array([], pa.string())})
    pq.write_table(table, tmp_path / "empty.parquet")
    with pytest.raises(ConfigError, match=r"^data: .*empty\.parquet has no rows"):
        files.load_file(str(tmp_path / "empty.parquet"))


@pytest.mark.parametrize("name, text, detail", [
    ("bad.jsonl", '{"prompt": "a", "answer": \n', "JSON parse error"),
    ("bad.csv", 'prompt,answer\n"a,b\n', "EOF inside string"),
    ("bad.parquet", "not parquet", "Parquet"),
])
def test_load_file_malformed(tmp_path, name, text, detail):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=rf"^data: could not read .*{name}: .*{detail}"):
        files.load_file(str(tmp_path / name))


def test_load_file_non_numeric_difficulty(tmp_path):
    path = write(tmp_path, "jsonl", {"prompt": ["a", "b"], "answer": ["x", "y"],
                                     "level": ["easy", "hard"]})
    with pytest.raises(ConfigError, match=r"^difficulty_col: column 'level' .* not numeric"):
        files.load_file(path, difficulty_col="level")


def test_load_file_null_cell(tmp_path):
    path = write(tmp_path, "jsonl", {"prompt": ["a", None], "answer": ["x", "y"]})
    with pytest.raises(ConfigError, match=r"^prompt_col: column 'prompt' .* empty in row 1"):
        files.load_file(path)


# ---------------------------------------------------------------- build_splits

def test_build_splits_addition():
    splits = tasks.build_splits(DataConfig(task="addition", seed=0, n_examples=500, val_size=50,
                                           test_size=60, max_digits=3))
    assert [len(splits[s]) for s in tasks.SPLITS] == [390, 50, 60]
    assert max(splits["train"]["difficulty"]) == 3
    assert_disjoint(splits)


def test_build_splits_multihop():
    splits = tasks.build_splits(DataConfig(task="multihop", seed=0, n_examples=200, val_size=30,
                                           test_size=40, max_hops=4))
    assert [len(splits[s]) for s in tasks.SPLITS] == [100 * 4 + 130, 30, 40]
    assert max(splits["test"]["difficulty"]) <= 4
    assert_disjoint(splits)


@pytest.mark.parametrize("task, data_path, message", [
    ("subtraction", None, "task: unknown task 'subtraction' (allowed: addition, multihop)"),
    (None, None, "task: give exactly one of a task or a data file (got neither)"),
    ("addition", "data.jsonl", "task: give exactly one of a task or a data file (got both)"),
])
def test_build_splits_task_errors(task, data_path, message):
    with pytest.raises(ConfigError) as err:
        tasks.build_splits(DataConfig(task=task, data_path=data_path, seed=0, n_examples=10, val_size=1,
                                      test_size=1))
    assert str(err.value).startswith(message)
    assert err.value.allowed == list(tasks.TASKS)
