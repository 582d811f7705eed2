"""Property-based fuzzing of what users write: configs, `recoup` arguments and data files.

Whatever the input, it ends in a ConfigError naming the field, flag, file, line or column (the CLI
prints it as one line and exits 2), never in a traceback from inside jax or datasets, and never in
a started run: the CLI's data preparation is stubbed so that a test fails if bad input gets that far.
Each property runs a bounded number of examples; `make chaos` runs many more:

    RECOUP_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_fuzz_inputs.py -q -p no:cacheprovider
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import itertools
import json
import math
import os
import re

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import framework.data.encoding
from framework.app.cli import main
from framework.app.train_commands import _TRAIN_FLAGS
from framework.config import (
    CURRICULA,
    DTYPES,
    HOP_ANSWERS,
    MAX_KB_ENTITIES,
    MAX_LAYERS,
    MAX_WIDTH,
    MLPS,
    N_RELATIONS,
    NONFINITE_POLICIES,
    OPERAND_FORMATS,
    PACINGS,
    PRESETS,
    SCHEDULES,
    SCORERS,
    TASKS,
    load_run_config,
)
from framework.data.files import load_file
from framework.errors import ConfigError
from tests.conftest import fuzz


class Reached(Exception):
    """Raised by the stubbed data preparation: the CLI accepted its input and would have trained."""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A scratch directory, an empty run directory (config.json, no checkpoints) and a datasets
    cache of our own."""
    from tests.conftest import tiny_config

    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(tiny_config(run).dumps())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "hf-cache"))
        yield {"root": root, "run": str(run), "n": itertools.count()}


def stop_before_training(cfg):
    raise Reached()


_REAL_PREPARE = framework.data.encoding.prepare


def stop_after_reading_data(cfg):
    _REAL_PREPARE(cfg)  # reads the data file: the errors under test come from here
    raise Reached()


def _fresh(sandbox, name: str = "f") -> str:
    return str(sandbox["root"] / f"{next(sandbox['n'])}-{name}")


def run_cli(argv: list[str], prepare=stop_before_training) -> tuple[str, str]:
    """(outcome, stderr) of `recoup ARGV` in process: outcome is "rc=N", or "reached" where
    `recoup train` called `prepare`. It is patched for train only, which imports it at call time:
    a module that binds it at import (framework.training.runs, for eval) must never catch the stub."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as mp:
        if argv[0] == "train":
            mp.setattr(framework.data.encoding, "prepare", prepare)
        try:
            outcome = f"rc={main(argv)}"
        except SystemExit as e:  # argparse: a flag's value of the wrong type
            outcome = f"rc={e.code}"
        except Reached:
            outcome = "reached"
    note(f"recoup {argv!r} -> {outcome}\n{err.getvalue()}")
    assert "Traceback" not in err.getvalue() + out.getvalue()
    return outcome, err.getvalue()


def error_field(stderr: str) -> str:
    """The field or flag that the CLI's error line names: 'recoup: error: FIELD: ...' (ours, one
    line) or '... error: argument --FLAG: ...' (argparse, after its usage lines)."""
    lines = stderr.strip().splitlines()
    assert lines, "no error message"
    m = re.match(r"recoup: error: ([\w.\-]+): \S", lines[-1])
    if m:
        assert len(lines) == 1, f"more than the one error line: {lines}"
        return m.group(1).replace("-", "_")
    m = re.match(r"recoup[\w -]*: error: argument --([\w-]+)", lines[-1])
    assert m, f"not a recoup error line: {lines[-1]!r}"
    return m.group(1).replace("-", "_")


# == 1. configs ==================================================================================
# A valid tiny config with one to three fields broken: validate() names one of those fields.

_int = st.integers(-2**70, 2**70)
NOT_INT = (st.none() | st.booleans() | st.floats() | st.text(max_size=6) | st.lists(st.integers(), max_size=2)
           | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
NOT_LIST = st.none() | st.booleans() | _int | st.floats() | st.text(max_size=6) | st.just({"a": 1})
NOT_DICT = st.none() | st.booleans() | _int | st.floats() | st.text(max_size=6) | st.lists(st.integers(), max_size=2)
_json_junk = NOT_INT | _int
NOT_NUMBER = st.none() | st.booleans() | st.text(max_size=6) | st.lists(st.floats(), max_size=2) | st.just({})
NOT_TEXT = st.sampled_from(["", None, 0, 1.5, True]) | st.lists(st.text(max_size=3), max_size=2) | st.just({})
NOT_TEXT_OR_NONE = st.sampled_from(["", 0, 1.5, True]) | st.lists(st.text(max_size=3), max_size=2) | st.just({})


def not_positive_int(most: int | None = None):
    """Not an int in [1, most]: wrong types, zero, negatives, and (given a most) huge values."""
    bad = NOT_INT | st.integers(max_value=0)
    return bad | st.integers(most + 1, 2**100) if most else bad


def not_seed():
    return NOT_INT | st.integers(max_value=-1) | st.integers(2**63, 2**100)


def outside(lo: float, hi: float, lo_ok: bool = True, hi_ok: bool = True):
    """Floats outside the interval (lo_ok: lo itself is inside), NaN and infinities."""
    out = st.floats(max_value=lo, exclude_max=lo_ok) | st.sampled_from([math.nan, math.inf, -math.inf])
    return out | st.floats(min_value=hi, exclude_min=hi_ok) if math.isfinite(hi) else out


def not_in(lo: float, hi: float, lo_ok: bool = True, hi_ok: bool = True, none_ok: bool = False):
    """Not a number in the interval: outside it, NaN, +-inf, or no number at all."""
    bad = outside(lo, hi, lo_ok, hi_ok) | NOT_NUMBER
    return bad.filter(lambda v: v is not None) if none_ok else bad


def not_positive():
    return not_in(0.0, math.inf, lo_ok=False)


def unknown_name(known, none_ok: bool = False, paths_ok: bool = False):
    """Neither a known name nor (for curricula, pacings, scorers) an import path 'module:attr'."""
    names = st.text(max_size=12).filter(lambda s: s not in known and not (paths_ok and ":" in s))
    return names | (NOT_TEXT_OR_NONE if none_ok else NOT_TEXT)


def not_text(none_ok: bool = False):
    return NOT_TEXT_OR_NONE if none_ok else NOT_TEXT


_D_MODEL = PRESETS["tiny"].d_model
_BAD_RULE_ARGS = {  # (rule, argument) -> values that rule rejects
    ("patience", "patience"): not_positive_int(),
    ("patience", "min_delta"): not_in(0.0, math.inf, hi_ok=False),
    ("patience", "metric"): unknown_name(("val_em", "val_loss")),
    ("patience", "mode"): unknown_name(("auto", "max", "min")),
    ("patience", "start"): not_in(0.0, 1.0, lo_ok=True, hi_ok=True),
    ("patience", "baseline"): not_in(0.0, math.inf, hi_ok=False, none_ok=True),
    ("patience", "restore_best"): st.sampled_from([None, "", 0, 1, "true", 1.5, []]),
    ("moving-average", "window"): not_positive_int(),
    ("grad-norm", "rel_tol"): not_in(0.0, math.inf, hi_ok=False),
    ("paired-test", "alpha"): not_in(0.0, math.inf, hi_ok=False),
    ("budget", "price"): not_in(0.0, math.inf, hi_ok=False),
    ("budget", "curve"): unknown_name(("logistic", "power")),
    ("budget", "n_val"): not_positive_int(),
}
BAD_STOP_RULE = (
    NOT_DICT
    | st.dictionaries(st.text(max_size=4).filter(lambda k: k != "rule"), st.integers(), max_size=2)
    | unknown_name(("patience", "moving-average", "grad-norm", "paired-test", "budget")).map(lambda r: {"rule": r})
    | st.sampled_from(["patience", "grad-norm", "paired-test"]).map(lambda r: {"rule": r, "frobnicate": 1})
    | st.sampled_from(sorted(_BAD_RULE_ARGS)).flatmap(
        lambda ra: _BAD_RULE_ARGS[ra].map(lambda v: {"rule": ra[0], **({"price": 1.0} if ra[0] == "budget" else {}),
                                                       ra[1]: v})))

# field path -> values that are invalid there, whatever the other fields hold
BROKEN = {
    "data": _json_junk,
    "model": _json_junk,
    "optim": _json_junk,
    "data.task": unknown_name(TASKS, none_ok=True),  # None, with a broken data_path, could be valid
    "data.data_path": not_text(none_ok=True),  # with a task given, any data path is one too many
    "data.prompt_col": not_text(),
    "data.answer_col": not_text(),
    "data.difficulty_col": not_text(none_ok=True),
    "data.max_digits": not_positive_int(510),  # 511 digits: over max_seq_len=1024
    "data.operand_format": unknown_name(OPERAND_FORMATS),
    "data.max_hops": not_positive_int(),
    "data.kb_entities": not_positive_int(MAX_KB_ENTITIES) | st.just(1),
    "data.kb_relations": not_positive_int(N_RELATIONS),
    "data.hop_answer": unknown_name(HOP_ANSWERS),
    "data.n_examples": not_positive_int(),
    "data.val_size": not_positive_int(),
    "data.test_size": not_positive_int(),
    "data.seed": not_seed(),
    "data.max_seq_len": not_positive_int() | st.integers(1, 10),  # 3-digit problems take 11 tokens
    "model.d_model": not_positive_int(MAX_WIDTH),
    "model.n_layers": not_positive_int(MAX_LAYERS),
    "model.n_heads": not_positive_int() | st.integers(1, 4 * _D_MODEL).filter(
        lambda h: _D_MODEL % h or (_D_MODEL // h) % 2),
    "model.d_ff": not_positive_int(MAX_WIDTH),
    "model.mlp": unknown_name(MLPS),
    "model.dropout": not_in(0.0, 1.0, hi_ok=False),
    "model.rope_base": not_positive(),
    "model.dtype": unknown_name(DTYPES),
    "optim.schedule": unknown_name(SCHEDULES),
    "optim.peak_lr": not_positive(),
    "optim.warmup_frac": not_in(0.0, 1.0),
    "optim.decay_frac": not_in(0.0, 1.0),
    "optim.end_lr_frac": not_in(0.0, 1.0),
    "optim.decay_start": not_seed(),
    "optim.weight_decay": not_in(0.0, math.inf, hi_ok=False),
    "optim.clip_norm": not_positive(),
    "optim.b1": not_in(0.0, 1.0, hi_ok=False),
    "optim.b2": not_in(0.0, 1.0, hi_ok=False),
    "out_dir": not_text(),
    "budget_tokens": not_positive_int(),
    "preset": not_text(none_ok=True),
    "batch_size": not_positive_int(),
    "stops": NOT_LIST | st.just([]) | st.lists(not_in(0.0, 1.0, lo_ok=False), min_size=1, max_size=3),
    "train_until": not_in(0.0, 1.0, lo_ok=False),
    "every_tokens": NOT_INT.filter(lambda v: v is not None) | st.integers(max_value=0),
    "seed": not_seed(),
    "eval_batch_size": not_positive_int(),
    "log_every": not_positive_int(),
    "init_from": not_text(none_ok=True),
    "curriculum": unknown_name(CURRICULA, paths_ok=True),
    "curriculum_args": NOT_DICT | st.just({1: 2}),
    "pacing": unknown_name(PACINGS, paths_ok=True),
    "pacing_args": NOT_DICT,
    "scorer": unknown_name(SCORERS, none_ok=True, paths_ok=True),
    "scorer_args": NOT_DICT,
    "scorer_percentile": _json_junk.filter(lambda v: not isinstance(v, bool)),
    "ema_half_lives": NOT_LIST | st.lists(not_positive_int(), min_size=1, max_size=2)
    | st.integers(1, 10**6).map(lambda h: [h, h]),
    "swa_start": not_in(0.0, 1.0, hi_ok=False, none_ok=True),
    "stop_rules": NOT_LIST | st.lists(BAD_STOP_RULE, min_size=1, max_size=2),
    "stop_combine": unknown_name(("any", "all")),
    "branch_from": not_text(none_ok=True),
    "mesh_shape": _json_junk | st.lists(st.integers(-2, 4), max_size=4).filter(lambda m: len(m) != 2).map(tuple)
    | st.tuples(st.integers(-9, 0).filter(lambda d: d != -1), st.integers(1, 4))
    | st.tuples(st.integers(1, 4), st.integers(-9, 0)) | st.tuples(NOT_INT, st.integers(1, 4)),
    "nonfinite": unknown_name(NONFINITE_POLICIES),
    "rollback_lr_factor": not_in(0.0, 1.0, lo_ok=False, hi_ok=False),
    "max_rollbacks": not_positive_int(),
}
# Fields an error may name for a broken field besides the field itself: the one it is checked against.
ALSO_NAMED = {"data.task": {"task"}, "data.data_path": {"task"}, "data.max_seq_len": {"data.max_digits"}}


def some_of(strategies: dict) -> st.SearchStrategy:
    """One to three distinct keys of `strategies`, each with a value drawn from its strategy."""
    return st.lists(st.sampled_from(sorted(strategies)).flatmap(lambda k: st.tuples(st.just(k), strategies[k])),
                    min_size=1, max_size=3).map(lambda pairs: tuple(dict(pairs).items()))


def names_broken(field: str, broken: list[str]) -> bool:
    allowed = set(broken) | {extra for path in broken for extra in ALSO_NAMED.get(path, ())}
    return field in allowed or (field.startswith("stop_rules") and "stop_rules" in broken)


def with_changes(cfg, changes: list[tuple[str, object]]):
    """`cfg` with each (path, value) set; whole sections last, so their fields can still be set."""
    for path, value in sorted(changes, key=lambda c: "." not in c[0]):
        if "." in path:
            section, field = path.split(".")
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{field: value})})
        else:
            cfg = dataclasses.replace(cfg, **{path: value})
    return cfg


def test_the_base_config_is_valid(sandbox):
    from tests.conftest import tiny_config

    tiny_config(_fresh(sandbox, "out")).validate()  # else every property below proves nothing


@fuzz(60)
@given(changes=some_of(BROKEN))
def test_a_config_with_broken_fields_names_one_of_them(sandbox, changes):
    from framework.runner.check import check
    from tests.conftest import tiny_config

    cfg = with_changes(tiny_config(_fresh(sandbox, "out")), list(changes))
    with pytest.raises(ConfigError) as err:  # anything else (TypeError, OverflowError, ...) fails the test
        check(cfg)  # validate() and what the build step looks up by name, before any data is read
    broken = [p for p, _ in changes]
    assert names_broken(err.value.field, broken), f"{err.value} names none of {broken}"
    assert str(err.value).startswith(f"{err.value.field}: ")


def json_values(finite: bool = False):
    floats = st.floats(allow_nan=not finite, allow_infinity=not finite)
    return st.recursive(st.none() | st.booleans() | _int | floats | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                    max_size=3), max_leaves=6)


JSON_VALUES = json_values()


@st.composite
def saved_configs(draw):
    """A run's config.json, edited: a field set to any JSON value, deleted or unknown, or the
    file's bytes cut short or garbled. (kind, path, text or bytes)."""
    from tests.conftest import tiny_config

    cfg = tiny_config("runs/x").to_dict()
    paths = [k for k in cfg if not isinstance(cfg[k], dict)] + [f"{s}.{k}" for s in ("data", "model", "optim")
                                                                 for k in cfg[s]]
    kind = draw(st.sampled_from(["set", "delete", "unknown", "cut", "bytes"]))
    path = draw(st.sampled_from(sorted(paths)))
    *section, key = path.split(".")
    where = cfg[section[0]] if section else cfg
    if kind == "set":
        where[key] = draw(JSON_VALUES)
    elif kind == "delete":
        del where[key]
    elif kind == "unknown":
        key = draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in where and "." not in k))
        path = f"{section[0] if section else 'config'}.{key}"
        where[key] = 1
    text = json.dumps(cfg).encode()
    if kind == "cut":
        text = text[:draw(st.integers(0, len(text) - 1))]
    elif kind == "bytes":
        text = draw(st.binary(max_size=40))
    return kind, path, text


@fuzz(60)
@given(saved=saved_configs())
def test_an_edited_config_json_loads_or_names_the_field_and_file(sandbox, saved):
    kind, path, text = saved
    run_dir = _fresh(sandbox, "run")
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.json"), "wb") as f:
        f.write(text)
    try:
        load_run_config(run_dir)  # validated: every later command may trust it
    except ConfigError as e:
        assert "config.json" in str(e)
        # the field edited, or one of its section checked against it (data.max_seq_len: data.max_digits;
        # data.task, data.data_path: task), or run_dir for a file that holds no config at all
        section = path.rpartition(".")[0]
        assert e.field in (path, "run_dir", "task") or e.field.startswith(path) or (
            section and e.field.startswith(section + ".")), f"{e} for an edit of {path}"
    else:
        assert kind in ("set", "delete"), f"{kind} of {path} was accepted"


# == 2. command-line arguments ===================================================================

BASE = ["--task", "addition", "--preset", "tiny", "--max-digits", "3", "--budget-tokens", "1k", "--no-progress"]


def _fails(parse):
    def fails(text: str) -> bool:
        try:
            parse(text)
        except (ValueError, OverflowError):
            return True
        return False
    return fails


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
    "kb_relations": int_text(st.integers(max_value=0) | st.integers(N_RELATIONS + 1, 10**40)),
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
           "max_digits": {"data.max_seq_len"}, "warmup": {"optim.decay_frac"}}


def names_flag(field: str, flags: list[str]) -> bool:
    for flag in flags:
        section, name, _ = _TRAIN_FLAGS.get(flag, ("", flag, None))
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


ANY_FLAGS = sorted(set(_TRAIN_FLAGS) - {"data", "out", "init_from"} | {"preset", "num_processes"})


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

    command = draw(st.sampled_from(["runs", "eval", "build", "ens-eval", "cooldown", "tune", "report"]))
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


# == 3. data files ===============================================================================
# A file that is malformed in one known way: load_file, and `recoup train --data`, name the file and
# the line or the column at fault.

CELL = st.text(alphabet="abcxyz 0123+=?,.é✓", max_size=8).map(lambda s: "q" + s)  # never a pandas NA
ROWS = st.lists(st.fixed_dictionaries({"prompt": CELL, "answer": CELL, "difficulty": st.integers(0, 9)}),
                min_size=1, max_size=6)


def jsonl(rows) -> list[str]:
    return [json.dumps(r, ensure_ascii=False) for r in rows]


def csv_lines(rows, header=("prompt", "answer", "difficulty")) -> list[str]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([r.get(c, "") for c in header] for r in rows)
    return buf.getvalue().splitlines()


def encode(lines) -> bytes:
    return ("\n".join(lines) + "\n").encode()


@st.composite
def malformed_files(draw):
    """(file name, bytes, load_file keyword arguments, field named, fragments of the message)."""
    rows = draw(ROWS)
    n = len(rows)
    fault = draw(st.sampled_from(["not utf-8", "truncated", "not an object", "garbage line", "missing column",
                                  "empty cell", "nested cell", "bad difficulty", "empty", "csv ragged",
                                  "csv header only", "csv duplicate header", "csv missing column", "json document",
                                  "parquet bytes", "parquet wrong type"]))
    k = draw(st.integers(1, n))  # the line (JSON Lines) or data row (CSV) at fault, from 1
    col = draw(st.sampled_from(["prompt", "answer"]))
    if fault == "not utf-8":
        kind = draw(st.sampled_from(["jsonl", "csv"]))
        lines = [line.encode() for line in (jsonl(rows) if kind == "jsonl" else csv_lines(rows))]
        line = k if kind == "jsonl" else k + 1
        at = draw(st.integers(0, len(lines[line - 1])))
        bad = draw(st.sampled_from([b"\xff", b"\xc0", b"\x80", b"\xe9"]))  # the line is no UTF-8, wherever it lands
        lines[line - 1] = lines[line - 1][:at] + bad + lines[line - 1][at:]
        return f"x.{kind}", b"\n".join(lines) + b"\n", {}, "data", [f"line {line} ", "not UTF-8"]
    if fault == "truncated":
        lines = jsonl(rows)
        lines[k - 1] = lines[k - 1][:draw(st.integers(1, len(lines[k - 1]) - 1))]
        return "x.jsonl", encode(lines), {}, "data", [f"line {k} "]
    if fault == "not an object":
        lines = jsonl(rows)
        lines[k - 1] = json.dumps(draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict))))
        return "x.jsonl", encode(lines), {}, "data", [f"line {k} ", "not an object"]
    if fault == "garbage line":
        lines = jsonl(rows)
        lines[k - 1] = draw(st.text(min_size=1, max_size=20).filter(lambda s: "\n" not in s and s.strip()
                                                                     and _fails(json.loads)(s)))
        return "x.jsonl", encode(lines), {}, "data", [f"line {k} "]
    if fault == "missing column":
        for r in rows:
            del r[col]
        return "x.jsonl", encode(jsonl(rows)), {}, f"{col}_col", [f"column '{col}' not found", "x.jsonl"]
    if fault == "empty cell":  # null, or the key left out (while other rows have it)
        rows[k - 1][col] = None
        if n > 1 and draw(st.booleans()):
            del rows[k - 1][col]
        return "x.jsonl", encode(jsonl(rows)), {}, f"{col}_col", [f"'{col}'", "x.jsonl", f"row {k - 1} "]
    if fault == "nested cell":
        small = st.integers(-9, 9)  # a huge one is another fault: "does not fit in 64 bits", naming the line
        rows[k - 1][col] = draw(st.lists(small, max_size=2) | st.dictionaries(st.text(max_size=2), small, max_size=2))
        fragments = [f"'{col}'", "x.jsonl"] + ([f"row {k - 1} "] if n > 1 else [])
        return "x.jsonl", encode(jsonl(rows)), {}, f"{col}_col", fragments
    if fault == "bad difficulty":
        bad = draw(st.sampled_from([None, "hard", True, math.nan, math.inf, [1], {"a": 1}]))
        rows[k - 1]["difficulty"] = bad
        row = [f"row {k - 1} "] if n > 1 or not isinstance(bad, list | dict) else []  # else: a column of lists
        return ("x.jsonl", encode(jsonl(rows)), {"difficulty_col": "difficulty"}, "difficulty_col",
                ["'difficulty'", "x.jsonl", *row])
    if fault == "empty":
        kind = draw(st.sampled_from(["jsonl", "json", "csv", "parquet"]))
        text = b"" if kind == "parquet" else draw(st.text(alphabet=" \t\r\n", max_size=5)).encode()
        return f"x.{kind}", text, {}, "data", ["has no rows"]
    if fault == "csv ragged":
        lines = csv_lines(rows)
        extra = draw(st.integers(1, 3))
        lines[k] += "," * extra
        return "x.csv", encode(lines), {}, "data", [f"line {k + 1} has {3 + extra} fields"]
    if fault == "csv header only":
        return "x.csv", encode(csv_lines([])), {}, "data", ["no rows"]
    if fault == "csv duplicate header":
        return "x.csv", encode(csv_lines(rows, ("prompt", "answer", col))), {}, "data", [f"names column '{col}' twice"]
    if fault == "csv missing column":
        header = [c for c in ("prompt", "answer", "difficulty") if c != col]
        return "x.csv", encode(csv_lines(rows, header)), {}, f"{col}_col", [f"column '{col}' not found", "x.csv"]
    if fault == "json document":  # one JSON array, cut short
        text = json.dumps(rows, indent=1, ensure_ascii=False)
        text = text[:draw(st.integers(1, len(text) - 1))]
        return "x.json", text.encode(), {}, "data", ["line ", "JSON parse error"]
    if fault == "parquet bytes":
        return "x.parquet", draw(st.binary(min_size=1, max_size=64)), {}, "data", ["could not read", "x.parquet"]
    # parquet with a column of the wrong type: lists of numbers, or text for the difficulty
    wrong = draw(st.sampled_from([col, "difficulty"]))
    values = [[i] for i in range(n)] if wrong != "difficulty" else [f"level {i}" for i in range(n)]
    table = pa.table({c: values if c == wrong else [r[c] for r in rows] for c in ("prompt", "answer", "difficulty")})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return "x.parquet", buf.getvalue(), {"difficulty_col": "difficulty"}, f"{wrong}_col", [f"'{wrong}'", "x.parquet"]


def _write_data(sandbox, name: str, content: bytes) -> str:
    path = os.path.join(_fresh(sandbox, "data"), name)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(content)
    return path


def test_the_base_files_are_valid(sandbox):
    rows = [{"prompt": "q1+2=", "answer": "q3", "difficulty": 1}, {"prompt": "qé,", "answer": "q✓", "difficulty": 2}]
    for name, content in (("x.jsonl", encode(jsonl(rows))), ("x.csv", encode(csv_lines(rows)))):
        ds = load_file(_write_data(sandbox, name, content), difficulty_col="difficulty")
        assert ds.to_dict() == {c: [r[c] for r in rows] for c in ("prompt", "answer", "difficulty")}


@fuzz(60)
@given(case=malformed_files())
def test_a_malformed_data_file_names_the_file_and_the_line_or_column(sandbox, case):
    name, content, kwargs, field, fragments = case
    path = _write_data(sandbox, name, content)
    note(f"{name}: {content[:300]!r}")
    with pytest.raises(ConfigError) as err:  # never a datasets, pyarrow, pandas or json exception
        load_file(path, **kwargs)
    assert err.value.field == field, str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value), f"{fragment!r} not in {err.value}"


@fuzz(30)
@given(case=malformed_files(), columns=st.booleans())
def test_train_with_a_malformed_data_file_exits_2_naming_it(sandbox, case, columns):
    name, content, kwargs, field, fragments = case
    path = _write_data(sandbox, name, content)
    argv = ["train", "--data", path, "--preset", "tiny", "--budget-tokens", "1k", "--val-size", "1",
            "--test-size", "1", "--out", _fresh(sandbox, "out")]
    if "difficulty_col" in kwargs:
        argv += ["--difficulty-col", kwargs["difficulty_col"]]
    if columns:  # the defaults, given explicitly
        argv += ["--prompt-col", "prompt", "--answer-col", "answer"]
    outcome, err = run_cli(argv, prepare=stop_after_reading_data)
    assert outcome == "rc=2", outcome
    assert error_field(err) == field, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err}"


@fuzz(40)
@given(kind=st.sampled_from(["jsonl", "json", "csv", "parquet"]), content=st.binary(min_size=1, max_size=200))
def test_random_bytes_as_a_data_file_are_a_clear_error(sandbox, kind, content):
    path = _write_data(sandbox, f"x.{kind}", content)
    try:
        load_file(path)
    except ConfigError as e:
        assert e.field in ("data", "prompt_col", "answer_col"), str(e)
        assert "x." + kind in str(e)
