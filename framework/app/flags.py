"""`recoup train`'s config flags, generated from the config dataclasses: one flag per field, its help
the field's comment in framework/config.py, its parser from the field's type.

    --max-digits N        addition: operands have 1..max_digits digits (default 5)
    --optimizer OPTIMIZER ... (adamw|schedule-free|muon; default adamw)

A new field is a new flag with nothing else to write. What is written here is only what a field
cannot say for itself: the short names flags had before they were generated (`--lr`, `--out`),
the parsers of token counts and lists, the help groups of the run's fields, and the fields that
are not flags. Values stay strings until `parse` turns them into field values, so a bad one is a
ConfigError naming its flag, not an argparse usage line.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import tokenize
from collections.abc import Callable
from typing import Any, NamedTuple

from curricula.registry import CURRICULA, PACINGS, SCORERS
from framework.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from framework.data.registry import HOP_ANSWERS, OPERAND_FORMATS, TASKS
from framework.errors import ConfigError
from framework.parsing import parse_stops, parse_tokens
from framework.stopping.registry import RULES as STOP_RULES
from framework.training.registry import DECAY_SHAPES, OPTIMIZERS, SCHEDULES

SECTIONS = (("data", DataConfig), ("model", ModelConfig), ("optim", OptimConfig), ("run", RunConfig))
NOT_FLAGS = {
    "run.data", "run.model", "run.optim",  # sections: their fields are the flags
    "run.preset",  # --preset names a whole model (a command option); the field is its label
    "run.branch_from",  # `recoup cooldown` sets it
    "data.split_cuts",  # a run's first build sets them (RUN/data.json); later builds of the run reuse them
}
# The short names of flags that users already type.
RENAMED = {"data.data_path": "data", "model.factory": "model", "data.mixture": "mix",
           "data.seed": "data_seed", "optim.peak_lr": "lr", "optim.warmup_frac": "warmup",
           "optim.decay_frac": "decay", "optim.clip_norm": "clip", "run.out_dir": "out", "run.mesh_shape": "mesh",
           "run.ema_half_lives": "ema_half_life", "run.stop_rules": "stop_rule",
           "run.curriculum_args": "curriculum_arg", "run.pacing_args": "pacing_arg", "run.scorer_args": "scorer_arg"}
GROUPS = {  # where a run field's flag is listed in --help; the other sections are groups of their own
    "curriculum (see curricula/ and the README)": ("curriculum", "curriculum_args", "pacing", "pacing_args", "scorer",
                                                   "scorer_args", "scorer_percentile"),
    "weight averages kept in every checkpoint": ("ema_half_lives", "swa_start"),
    "stopping rules": ("stop_rules", "stop_combine"),
    "non-finite losses": ("nonfinite", "rollback_lr_factor", "max_rollbacks"),
    "checkpoints kept on disk (default: all)": ("keep_latest", "keep_best"),
}
SECTION_GROUPS = {"data": "data (one of --task / --data / --text)", "model": "model (each flag overrides the preset's)",
                  "optim": "optimizer", "run": "run"}
REGISTRIES = (TASKS, OPERAND_FORMATS, HOP_ANSWERS, SCHEDULES, DECAY_SHAPES, OPTIMIZERS, CURRICULA, PACINGS, SCORERS)


def _kv(pairs: list[str], field: str) -> dict:
    """--x-arg k=v ... -> {k: v}, values read as JSON when they parse ('0.2' -> 0.2)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(field, f"{pair!r} is not key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def int_list(text: str, field: str, what: str = "comma-separated integers, e.g. 1,8,32") -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(field, f"{text!r} must be {what}") from None


def _mesh(text: str) -> tuple[int, int]:
    what = "DATA,FSDP device counts, e.g. -1,1 or 2,4"
    counts = int_list(text, "mesh_shape", what)
    if len(counts) != 2:
        raise ConfigError("mesh_shape", f"{text!r} must be {what}")
    return counts


def _stop_rule(spec: str) -> dict:
    """'patience:patience=3,min_delta=0.01' -> {"rule": "patience", "patience": 3, "min_delta": 0.01}."""
    name, _, args = spec.partition(":")
    return {"rule": name, **_kv([a for a in args.split(",") if a], "stop_rules")}


def _mixture(specs: list[str]) -> tuple[tuple[str, float], ...]:
    """['corpus/=0.3', 'qa:train.jsonl=0.2', ...] -> (('corpus/', 0.3), ('qa:train.jsonl', 0.2), ...): a path
    may hold '=', the share is after the last."""
    out = []
    for spec in specs:
        path, _, share = spec.rpartition("=")
        try:
            out.append((path, float(share)))
        except ValueError:
            raise ConfigError("data.mixture", f"{spec!r} is not PATH=SHARE (corpus/=0.3) or qa:FILE=SHARE "
                                              "(qa:train.jsonl=0.2)") from None
    return tuple(out)


def _token_list(text: str) -> tuple[int, ...]:
    return tuple(parse_tokens(t, "ema_half_lives") for t in text.split(",") if t.strip())


# Fields whose values are not a plain int, float or string: (parser, metavar, repeatable).
PARSERS: dict[str, tuple[Callable[[Any], Any], str, bool]] = {
    "run.budget_tokens": (lambda s: parse_tokens(s, "budget_tokens"), "TOKENS", False),
    "run.every_tokens": (lambda s: parse_tokens(s, "every_tokens"), "TOKENS", False),
    "run.keep_latest": (lambda s: None if s.strip().lower() == "all" else int(s), "N|all", False),  # all: None
    "optim.decay_start": (lambda s: parse_tokens(s, "decay_start"), "TOKENS", False),
    "run.ema_half_lives": (_token_list, "TOKENS[,TOKENS]", False),
    "run.stops": (parse_stops, "FRACTIONS", False),
    "run.mesh_shape": (_mesh, "DATA,FSDP", False),
    "data.text": (str, "PATH", False),
    "data.text_col": (str, "C", False),
    "data.seq_len": (int, "N", False),
    "data.mixture": (_mixture, "PATH=SHARE", True),
    "run.stop_rules": (lambda specs: tuple(_stop_rule(s) for s in specs), "RULE[:K=V,...]", True),
    **{f"run.{name}": ((lambda field: lambda pairs: _kv(pairs, field))(name), "K=V", True)
       for name in ("curriculum_args", "pacing_args", "scorer_args")},
}
_BY_TYPE = {"int": int, "float": float, "str": str}


class Flag(NamedTuple):
    name: str  # argparse dest: --max-digits is "max_digits"
    section: str  # "data", "model", "optim" or "run"
    field: str  # the dataclass field it sets
    parse: Callable[[Any], Any]  # the flag's text (a list of texts when repeatable) -> the field's value
    help: str
    metavar: str | None = None
    repeatable: bool = False
    switch: bool = False  # a bool field: --NAME sets it true, --no-NAME false
    group: str = "run"


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in `cls`'s source: the comment lines right above it, then the one on its line."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}  # line -> comment text
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(iter(source.splitlines(keepends=True)).__next__):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    out = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above, line = [], node.lineno - 1
            while line in comments and line not in code_lines:
                above.insert(0, comments[line])
                line -= 1
            own = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            out[node.target.id] = " ".join(above + own)
    return out


def _help(key: str, comment: str, default: Any, section: str, repeatable: bool) -> str:
    text = comment
    registry = next((r for r in REGISTRIES if r.field in (key, key.partition(".")[2])), None)
    if registry is not None:
        text += f" ({'|'.join(registry)}{'|module:attr' if registry.import_paths else ''})"
    if key == "run.stop_rules":
        text += f"; on the command line RULE:K=V,... with RULE one of {'|'.join(STOP_RULES)}, e.g. patience:patience=3"
    if repeatable:
        text += " (repeatable)"
    if section == "model":
        return text + " (default: the preset's)"
    if not (default is None or default is dataclasses.MISSING or default is False or default in ((), {})):
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text += f" (default {shown})"
    return text.replace("%", "%%")  # argparse formats help with %


def _type_name(annotation: Any) -> str:
    """"int | None" from a string annotation (config.py postpones them) or from the type itself."""
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def train_flags() -> dict[str, Flag]:
    """Every config flag of `recoup train`, by argparse dest, in the dataclasses' order."""
    group_of = {name: group for group, names in GROUPS.items() for name in names}
    flags = {}
    for section, cls in SECTIONS:
        comments = field_comments(cls)
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            if key in NOT_FLAGS:
                continue
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            name = RENAMED.get(key, f.name)
            group = group_of.get(f.name, SECTION_GROUPS[section]) if section == "run" else SECTION_GROUPS[section]
            parse, metavar, repeatable = PARSERS.get(key, (None, None, False))
            help_ = _help(key, comments.get(f.name, ""), default, section, repeatable)
            if parse is not None:
                flags[name] = Flag(name, section, f.name, parse, help_, metavar, repeatable, group=group)
            elif _type_name(f.type) == "bool":
                flags[name] = Flag(name, section, f.name, bool, help_, switch=True, group=group)
            else:
                base = _type_name(f.type).removesuffix(" | None")
                if base not in _BY_TYPE:
                    raise TypeError(f"{key}: no parser for type {f.type!r}; add one to PARSERS")
                flags[name] = Flag(name, section, f.name, _BY_TYPE[base], help_, group=group)
    return flags


def add_train_flags(parser, flags: dict[str, Flag], groups: dict | None = None) -> dict:
    """One argparse option per flag, under its group (made when first needed, unless `groups` has
    it); each defaults to None ("not given"). Returns the groups by title, for options of the command's own."""
    groups = {} if groups is None else groups
    for flag in flags.values():
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        option = "--" + flag.name.replace("_", "-")
        if flag.switch:
            groups[flag.group].add_argument(option, action=argparse.BooleanOptionalAction, help=flag.help)
        else:
            groups[flag.group].add_argument(option, action="append" if flag.repeatable else "store",
                                            metavar=flag.metavar, help=flag.help)
    return groups
