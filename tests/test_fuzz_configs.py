"""Property-based fuzzing of configs.

The contract every property checks, and how to run more examples: tests/fuzz_support.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from curricula.registry import CURRICULA, PACINGS, SCORERS
from framework.config import (
    DTYPES,
    MAX_KB_ENTITIES,
    MAX_LAYERS,
    MAX_WIDTH,
    MLPS,
    NONFINITE_POLICIES,
    PRESETS,
    SHAPE_FIELDS,
)
from framework.data.registry import HOP_ANSWERS, OPERAND_FORMATS, RELATIONS, TASKS
from framework.errors import ConfigError
from framework.run_dirs import load_run_config
from framework.training.registry import SCHEDULES
from tests.conftest import fuzz
from tests.fuzz_support import JSON_VALUES, _fresh, _int, outside, some_of

# == 1. configs ==================================================================================
# A valid tiny config with one to three fields broken: validate() names one of those fields.

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
    "data.kb_relations": not_positive_int(len(RELATIONS)),
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
    "keep_latest": NOT_INT.filter(lambda v: v is not None) | st.integers(max_value=0),
    "keep_best": not_seed(),
    "seed": not_seed(),
    "eval_batch_size": not_positive_int(),
    "log_every": not_positive_int(),
    "tensorboard": _json_junk.filter(lambda v: not isinstance(v, bool)),
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
        if kind == "bytes":  # the whole file replaced: any field may be the one it names
            return
        # the field edited, or one of its section checked against it (data.max_seq_len: data.max_digits;
        # data.task, data.data_path: task), or run_dir for a file that holds no config at all; a model
        # shape field is checked against the preset that labels it (preset names the pair)
        section = path.rpartition(".")[0]
        shape_vs_preset = e.field == "preset" and path.removeprefix("model.") in SHAPE_FIELDS
        assert e.field in (path, "run_dir", "task") or e.field.startswith(path) or shape_vs_preset or (
            section and e.field.startswith(section + ".")), f"{e} for an edit of {path}"
    else:
        assert kind in ("set", "delete"), f"{kind} of {path} was accepted"
