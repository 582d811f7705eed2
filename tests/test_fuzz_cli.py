"""Property-based fuzzing of `recoup` arguments.

The contract every property checks, and how to run more examples: tests/fuzz_support.py.
"""

from __future__ import annotations

import math
import os
import re

from hypothesis import given
from hypothesis import strategies as st

from curricula.registry import CURRICULA, PACINGS, SCORERS
from framework.app.train_commands import TRAIN_FLAGS
from framework.config import (
    DTYPES,
    MAX_KB_ENTITIES,
    NONFINITE_POLICIES,
    PRESETS,
)
from framework.data.registry import HOP_ANSWERS, OPERAND_FORMATS, RELATIONS, TASKS
from framework.training.registry import SCHEDULES
from tests.conftest import fuzz
from tests.fuzz_support import (
    _fails,
    _fresh,
    error_field,
    json_values,
    outside,
    run_cli,
    some_of,
)

# == 2. command-line arguments ===================================================================

BASE = ["--task", "addition", "--preset", "tiny", "--max-digits", "3", "--budget-tokens", "1k", "--no-progress"]


_TEXT = st.text(max_size=10)
NOT_INT_TEXT = _TEXT.filter(_fails(int)) | st.sampled_from(["1.5", "1e3", "nan", "", "0x10"])
NOT_FLOAT_TEXT = _TEXT.filter(_fails(float)) | st.sampled_from(["", "one", "1,5"])


def int_text(bad_ints):
    return NOT_INT_TEXT | bad_ints.map(str)


def float_text(lo, hi, lo_ok=True, hi_ok=True):
    return NOT_FLOAT_TEXT | outside(lo, hi, lo_ok, hi_ok).map(repr)


def name_text(known, paths_ok=False):
    return _TEXT.filter(lambda s: s not in known and not (paths_ok and ":" in s))


TOKENS_TEXT = _TEXT.filter(lambda s: not re.fullmatch(r"\s*[0-9]*\.?[0-9]+(e[0-9]+)?\s*[kmbg]?\s*", s.lower())) | \
    st.sampled_from(["0", "0.4", "-5", "1e400", "1.5e", "k"])

# flag -> garbage that is wrong for it, whatever the other flags say
INVALID_FLAGS = {
    **{flag: int_text(st.integers(max_value=0)) for flag in ("n_examples", "val_size", "test_size", "batch_size",
                                                            "max_rollbacks", "max_hops")},
    "max_digits": int_text(st.integers(max_value=0) | st.integers(510, 10**40)),
    "max_seq_len": int_text(st.integers(max_value=10)),  # 3-digit problems take 11 tokens
    "kb_entities": int_text(st.integers(max_value=1) | st.integers(MAX_KB_ENTITIES + 1, 10**40)),
    "kb_relations": int_text(st.integers(max_value=0) | st.integers(len(RELATIONS) + 1, 10**40)),
    **{flag: int_text(st.integers(max_value=-1) | st.integers(2**63, 10**40)) for flag in ("seed", "data_seed")},
    "dropout": float_text(0.0, 1.0, hi_ok=False),
    "lr": float_text(0.0, math.inf, lo_ok=False),
    "clip": float_text(0.0, math.inf, lo_ok=False),
    "warmup": float_text(0.0, 1.0),
    "decay": float_text(0.0, 1.0),
    "weight_decay": float_text(0.0, math.inf, hi_ok=False),
    "train_until": float_text(0.0, 1.0, lo_ok=False),
    "swa_start": float_text(0.0, 1.0, hi_ok=False),
    "rollback_lr_factor": float_text(0.0, 1.0, lo_ok=False, hi_ok=False),
    **{flag: TOKENS_TEXT for flag in ("budget_tokens", "every_tokens")},
    "ema_half_life": st.sampled_from(["0", "0.4", "x", "-5", "1e400", "5k,5k", "1k,0", "1k,x"]),
    "stops": st.sampled_from(["x", "0", "0.5,0", "-1", "2", "nan", "1,inf", "0.5,,a"]),
    "mesh": st.sampled_from(["1", "1,2,3", "a,b", "0,1", "-2,1", "1,0", "", ","]),
    "task": name_text(TASKS),
    "operand_format": name_text(OPERAND_FORMATS),
    "hop_answer": name_text(HOP_ANSWERS),
    "dtype": name_text(DTYPES),
    "preset": name_text(PRESETS),
    "schedule": name_text(SCHEDULES),
    "nonfinite": name_text(NONFINITE_POLICIES),
    "stop_combine": name_text(("any", "all")),
    "curriculum": name_text(CURRICULA, paths_ok=True),
    "pacing": name_text(PACINGS, paths_ok=True),
    "scorer": name_text(SCORERS, paths_ok=True),
    **{flag: _TEXT.filter(lambda s: "=" not in s) | st.just("=v")
       for flag in ("curriculum_arg", "pacing_arg", "scorer_arg")},
    "stop_rule": st.sampled_from(["", "nope", "patience:patience=0", "patience:x", "patience:=3", "budget",
                                  "grad-norm:rel_tol=-1", "paired-test:alpha=nan", "patience:metric=em"]),
    "out": st.just(""),
    "init_from": _TEXT.map(lambda s: ("path", s)),  # under the sandbox: no run directory there
    "data": _TEXT.map(lambda s: ("path", s + ".jsonl")),
    "config": st.one_of(
        st.sampled_from([b"def get_config(:\n", b"get_config = 3\n", b"x = 1\n", b"\x00", b"\xff\xfeuh",
                         b"def get_config():\n    return {'task': 'addition'}\n",
                         b"from framework.config import RunConfig\n"
                         b"def get_config():\n    return RunConfig(out_dir='x', budget_tokens=1, data={})\n"]),
        json_values(finite=True).map(  # repr(nan) is no Python
            lambda v: f"def get_config():\n    return {v!r}\n".encode())).map(lambda b: ("file", b))
    | st.sampled_from(["", ".", ".relative", "no_such_module_for_recoup_fuzz", "a/b"]),
    "num_processes": NOT_INT_TEXT,  # argparse: type=int
    "process_id": NOT_INT_TEXT,
}
# Fields an error may name for a flag, besides the flag and the field it sets.
RELATED = {"config": {"data", "model", "optim"}, "out": {"out_dir"}, "data": {"task", "data_path"},
           "max_seq_len": {"data.max_digits", "data.max_hops"}, "task": {"data.max_hops", "data.max_digits"},
           "max_digits": {"data.max_seq_len"}, "warmup": {"optim.decay_frac"},
           "d_model": {"model.n_heads"}, "budget_tokens": {"optim.decay_start"}}


def names_flag(field: str, flags: list[str]) -> bool:
    for flag in flags:
        section, name = (TRAIN_FLAGS[flag].section, TRAIN_FLAGS[flag].field) if flag in TRAIN_FLAGS else ("", flag)
        if field in {flag, name, f"{section}.{name}", *RELATED.get(flag, ())} or field.startswith(name + "."):
            return True
    return False


def materialize(sandbox, value) -> str:
    """A value drawn as ("path", name) or ("file", content) becomes a path in the sandbox."""
    if isinstance(value, tuple):
        kind, what = value
        path = _fresh(sandbox, "cfg.py" if kind == "file" else re.sub(r"[^\w.]", "_", what))
        if kind == "file":
            with open(path, "wb") as f:
                f.write(what)
        return path
    return value


def train_argv(sandbox, pairs, out) -> list[str]:
    return ["train", *BASE, "--out", out, *(f"--{flag.replace('_', '-')}={materialize(sandbox, value)}"
                                            for flag, value in pairs)]


@fuzz(60)
@given(pairs=some_of(INVALID_FLAGS))
def test_train_with_invalid_flags_exits_2_naming_one_of_them(sandbox, pairs):
    out = _fresh(sandbox, "out")
    outcome, err = run_cli(train_argv(sandbox, pairs, out))
    flags = [f for f, _ in pairs]
    assert outcome == "rc=2", f"{outcome}: invalid {flags} accepted"
    field = error_field(err)
    assert names_flag(field, flags), f"the error names {field!r}, not one of {flags}: {err}"
    assert not os.path.exists(out)


ANY_FLAGS = sorted(set(TRAIN_FLAGS) - {"data", "out", "init_from"} | {"preset", "num_processes"})


@fuzz(60)
@given(pairs=st.lists(st.tuples(st.sampled_from(ANY_FLAGS), st.text(max_size=12) | st.sampled_from(
    ["0", "1", "-1", "0.5", "1e9", "1e400", "nan", "inf", "multihop", "wsd", "cooldown", "a:b", "k=v", "2,1"])),
    min_size=1, max_size=3, unique_by=lambda p: p[0]))
def test_train_with_any_flag_values_trains_or_exits_2_naming_one(sandbox, pairs):
    outcome, err = run_cli(train_argv(sandbox, pairs, _fresh(sandbox, "out")))
    if outcome == "reached":  # valid after all: the config passed every check before data preparation
        return
    assert outcome == "rc=2", outcome
    field = error_field(err)
    assert names_flag(field, [f for f, _ in pairs]), f"the error names {field!r}, not one of {pairs}: {err}"


JUNK = st.text(max_size=8) | st.sampled_from(["-1", "0", "nan", "1e400", ".", ""])


@st.composite
def other_commands(draw):
    """(argv, fields its error may name) of a read-only subcommand, its arguments valid or not. RUN
    stands for an empty run directory, NOWHERE for a missing one, OUT for a new directory."""
    run_dir = draw(st.sampled_from(["RUN", "RUN", "NOWHERE"]))

    def opt(flag, values):  # an optional flag, given or not
        return [f"{flag}={draw(values)}"] if draw(st.booleans()) else []

    command = draw(st.sampled_from(["runs", "eval", "build", "ens-eval", "reselect", "cooldown", "tune", "report"]))
    if command == "runs":
        return ["runs", "show", run_dir] + (["--json"] if draw(st.booleans()) else []), {"run_dir"}
    if command == "eval":
        return (["eval", run_dir, *opt("--step", JUNK | st.integers(-3, 3).map(str)),
                 *opt("--split", JUNK | st.sampled_from(["test", "train"]))], {"run_dir", "step", "split"})
    if command == "build":
        return (["ensemble", "build", run_dir, f"--budget={draw(JUNK | st.sampled_from(['0.5', '1', '500']))}",
                 "--out", "OUT", *opt("--max-cost", JUNK | st.sampled_from(["1", "3"])),
                 *opt("--method", JUNK | st.sampled_from(["auto", "soup", "vote"]))],
                {"run_dir", "budget", "max_cost", "method", "out"})
    if command == "ens-eval":
        return ["ensemble", "eval", run_dir, *opt("--split", JUNK)], {"ensemble", "split"}
    if command == "reselect":
        return ["ensemble", "reselect", run_dir, f"--feedback={draw(JUNK)}"], {"ensemble", "feedback"}
    if command == "cooldown":
        return (["cooldown", run_dir, f"--from={draw(JUNK | st.just('0.5'))}",
                 f"--tokens={draw(JUNK | st.just('0.05'))}"], {"run_dir", "from", "tokens"})
    if command == "tune":
        return ["tune-stopping", run_dir, f"--price={draw(JUNK | st.just('2'))}"], {"run_dir", "price"}
    return (["report", run_dir, "--out", "OUT", *opt("--prices", JUNK | st.just("1,2")),
             *opt("--max-cost", JUNK | st.just("2"))], {"run_dir", "run_dirs", "out", "prices", "max_cost"})


@fuzz(40)
@given(command=other_commands())
def test_other_commands_with_bad_arguments_exit_2_naming_the_argument(sandbox, command):
    argv, fields = command
    out, nowhere = _fresh(sandbox, "out"), _fresh(sandbox, "nowhere")
    argv = [{"RUN": sandbox["run"], "NOWHERE": nowhere, "OUT": out}.get(a, a) for a in argv]
    outcome, err = run_cli(argv)
    if outcome == "rc=0":  # only listing an empty run's checkpoints can succeed: it has none
        assert argv[:2] == ["runs", "show"]
        return
    assert outcome == "rc=2", outcome
    assert error_field(err) in fields, err
    assert not os.path.exists(out)
