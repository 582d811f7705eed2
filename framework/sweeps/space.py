"""The inputs of `recoup sweep`: search spaces over RunConfig fields and the sweep's options, parsed,
checked and applied without jax (so bad input fails before anything compiles).

A space maps a dotted field name (`optim.peak_lr`, `batch_size`, `data.max_digits`) to a spec:

    choice:a,b,c      one of the values, each read as JSON when it parses (0.003, 32, true, null,
                      [20000, 80000], {"share": 0.25}), else kept as a string (cosine)
    log:LO:HI         a float, sampled on a log scale (LO > 0)
    uniform:LO:HI     a float
    int:LO:HI         an integer in [LO, HI]
    logint:LO:HI      an integer on a log scale (LO >= 1)

Values are applied literally: a token-valued field (`budget_tokens`, `every_tokens`,
`ema_half_lives`) takes counted tokens (`choice:12000,24000`), not budget fractions or '12k'.
A tuple field (`stops`, `ema_half_lives`) takes a JSON list in a choice: `choice:[20000],[20000,80000]`.
Every name is checked against the dataclasses before anything trains, so a typo fails at once,
listing the fields its section has.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, NamedTuple

from framework.config import RunConfig
from framework.errors import ConfigError
from framework.runner.check import check_names
from framework.stopping.registry import build as build_stop_rule

KINDS = ("choice", "log", "uniform", "int", "logint")
OBJECTIVES = ("final", "anytime")  # framework.sweeps.report scores them
SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("sha", "none")
SECTIONS = ("data", "model", "optim")  # RunConfig fields that are dataclasses of their own
# Fields the sweep itself sets for every trial: a space over them would be overwritten.
RESERVED = {"out_dir": "the sweep gives every trial its own run directory",
            "seed": "give training seeds with --seeds (seeds=...), averaged per config"}

Space = dict[str, str]  # {dotted field: spec}, as the user writes it
Point = dict[str, Any]  # {dotted field: value}, one trial's values as the sampler sees them


class Param(NamedTuple):
    field: str  # dotted RunConfig field, e.g. "optim.peak_lr"
    kind: str  # KINDS
    low: float | int | None = None  # range kinds
    high: float | int | None = None
    choices: tuple = ()  # choice: the values, JSON-decoded


# == parsing ====================================================================================


def parse_space(space: Space) -> list[Param]:
    """Check every field and spec of `space`; the parameters, sorted by field name.

    >>> [p.kind for p in parse_space({"optim.peak_lr": "log:1e-4:1e-2", "batch_size": "choice:32,64"})]
    ['choice', 'log']
    """
    if not isinstance(space, dict) or not space:
        raise ConfigError("space", "give at least one parameter, e.g. --param optim.peak_lr=log:1e-4:1e-2")
    return [parse_spec(field, spec) for field, spec in sorted(space.items())]


def parse_spec(field: str, spec: str) -> Param:
    """One `field=spec` entry, the field checked against RunConfig; a ConfigError names the field."""
    check_field(field)
    if not isinstance(spec, str):
        raise ConfigError(field, f"{spec!r} is not a spec string such as 'log:1e-4:1e-2'", KINDS)
    kind, sep, rest = spec.partition(":")
    if kind not in KINDS or not sep:
        raise ConfigError(field, f"{spec!r} is not KIND:... with a known kind", KINDS)
    if kind == "choice":
        values = tuple(_json_or_text(v) for v in split_top_level(rest))
        if not values or any(v == "" for v in values):
            raise ConfigError(field, f"{spec!r} needs comma-separated values, e.g. choice:32,64,128")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(field, f"{spec!r} repeats a value")
        return Param(field, kind, choices=values)
    bounds = rest.split(":")
    integer = kind in ("int", "logint")
    try:
        low, high = (int(b) if integer else float(b) for b in bounds)
    except ValueError:
        raise ConfigError(field, f"{spec!r} must be {kind}:LO:HI with {'integer' if integer else 'number'} "
                                 "bounds") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(field, f"{spec!r}: the bounds must be finite numbers with LO < HI")
    if kind in ("log", "logint") and low <= 0:
        raise ConfigError(field, f"{spec!r}: a log scale needs LO > 0")
    return Param(field, kind, low, high)


def split_top_level(text: str) -> list[str]:
    """Split at the commas outside brackets, braces and strings: '[1,2],[3],x' -> ['[1,2]', '[3]', 'x']."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"' and (i == 0 or text[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch in "[{":
            depth += 1
        elif not quoted and ch in "]}":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            parts.append(text[start:i].strip())
            start = i + 1
    return parts + [text[start:].strip()] if text.strip() else []


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def check_field(field: str) -> None:
    """A ConfigError unless `field` names a RunConfig field (nested as section.field)."""
    if not isinstance(field, str) or not field:
        raise ConfigError("space", f"{field!r} is not a field name such as optim.peak_lr")
    if field in RESERVED:
        raise ConfigError(field, f"cannot be searched: {RESERVED[field]}")
    section, _, name = field.rpartition(".")
    if section and section not in SECTIONS:
        raise ConfigError(field, f"unknown section {section!r}", SECTIONS)
    known = sorted(f.name for f in dataclasses.fields(_section_class(section)))
    if name not in known:
        where = f"the {section} section" if section else "RunConfig"
        raise ConfigError(field, f"unknown field of {where}", known)
    if not section and name in SECTIONS:
        raise ConfigError(field, "is a section: name one of its fields", [f"{name}.{f}" for f in _field_names(name)])


def _section_class(section: str) -> type:
    """RunConfig for "", else the dataclass of that section (the type of its default value)."""
    if not section:
        return RunConfig
    return type(next(f.default for f in dataclasses.fields(RunConfig) if f.name == section))


def _field_names(section: str) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(_section_class(section)))


def parse_param_flags(pairs: list[str]) -> Space:
    """--param FIELD=SPEC ... -> {field: spec}; a later flag for the same field wins."""
    out = {}
    for pair in pairs:
        field, sep, spec = pair.partition("=")
        if not sep or not field.strip():
            raise ConfigError("param", f"{pair!r} is not FIELD=SPEC (e.g. optim.peak_lr=log:1e-4:1e-2)")
        out[field.strip()] = spec.strip()
    return out


# == the sweep's options =========================================================================


def check_options(base: RunConfig, params: list[Param], out_dir: str, objective: str, sampler, pruner,
                  seeds, levels, eta: int, min_resource: float | None) -> None:
    """The sweep's options, base config and space, before optuna, data or jax: one ConfigError naming
    what is wrong. A space whose low end (first choices) is no valid run fails here, not after a trial
    compiled. `sampler` and `pruner` may also be optuna objects (not checked here)."""
    for name, value, allowed in (("objective", objective, OBJECTIVES), ("sampler", sampler, SAMPLERS),
                                 ("pruner", pruner, PRUNERS)):
        if isinstance(value, str) and value not in allowed:
            raise ConfigError(name, f"unknown {name} {value!r}", allowed)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError("seeds", f"{seeds!r} must be one or more integers >= 0")
    if not levels or not all(isinstance(v, float | int) and 0 < v <= 1 for v in levels):
        raise ConfigError("levels", f"{levels!r} must be EM levels in (0, 1]")
    if not (isinstance(eta, int) and eta >= 2):
        raise ConfigError("eta", f"{eta!r} must be an integer >= 2 (the share of trials kept per rung is 1/eta)")
    if min_resource is not None and not (isinstance(min_resource, float | int) and 0 < min_resource <= 1):
        raise ConfigError("min-resource", f"{min_resource!r} must be a budget fraction in (0, 1]")
    if sampler == "grid":
        grid(params)  # every parameter must be a choice
    if os.path.isfile(out_dir):
        raise ConfigError("out", f"{out_dir} is a file; give a directory for the sweep")
    placeholder = os.path.join(out_dir, "trials", "check")
    dataclasses.replace(base, out_dir=placeholder).validate()
    check_names(base)
    build_stop_rule(base.stop_rules, base.stop_combine)  # names and arguments: what validate() leaves to the build
    try:
        low = apply(dataclasses.replace(base, out_dir=placeholder), low_point(params))
        low.validate()
        check_names(low)
    except ConfigError as e:
        raise ConfigError(e.field, f"{e.message} (at the space's low end: {describe(low_point(params))})",
                          e.allowed) from None


# == points: what a sampler suggests, and the config it stands for ==============================


def encode(value):
    """A choice as the sampler stores it: optuna's categorical values are scalars, so a list or a
    mapping travels as its JSON text (decoded again by `decode`)."""
    return value if value is None or isinstance(value, bool | int | float | str) else json.dumps(value)


def decode(param: Param, stored):
    """The value a sampler stored for `param`, as `apply` needs it."""
    if param.kind != "choice":
        return stored
    return next(v for v in param.choices if encode(v) == stored)


def apply(base: RunConfig, point: Point) -> RunConfig:
    """`base` with the point's values, set through `dataclasses.replace` on the nested sections.

    A list goes into a tuple field as a tuple (`stops`, `ema_half_lives`); nothing is validated here.

    >>> apply(RunConfig(out_dir="r", budget_tokens=10), {"optim.peak_lr": 1e-3, "batch_size": 16}).optim.peak_lr
    0.001
    """
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for field, value in point.items():
        section, _, name = field.rpartition(".")
        current = getattr(getattr(base, section) if section else base, name)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        (nested.setdefault(section, {}) if section else top)[name] = value
    for section, values in nested.items():
        top[section] = dataclasses.replace(getattr(base, section), **values)
    return dataclasses.replace(base, **top)


def value_of(cfg: RunConfig, field: str):
    """The value of a dotted field: value_of(cfg, "optim.peak_lr") is cfg.optim.peak_lr."""
    section, _, name = field.rpartition(".")
    return getattr(getattr(cfg, section) if section else cfg, name)


def base_point(base: RunConfig, params: list[Param]) -> Point | None:
    """The base config's own values as a point (in the sampler's encoding) when they lie in the
    space, else None (the sweep then trains the base as a separate reference run)."""
    point = {}
    for p in params:
        value = value_of(base, p.field)
        if p.kind == "choice":
            as_json = json.dumps(list(value) if isinstance(value, tuple) else value, sort_keys=True)
            match = [c for c in p.choices if json.dumps(c, sort_keys=True) == as_json]
            if not match:
                return None
            point[p.field] = encode(match[0])
        elif isinstance(value, bool) or not isinstance(value, int | float) or not p.low <= value <= p.high:
            return None
        elif p.kind in ("int", "logint") and not isinstance(value, int):
            return None
        else:
            point[p.field] = value
    return point


def describe(params: dict) -> str:
    """{'optim.peak_lr': 0.00213, 'batch_size': 32} -> 'peak_lr=0.00213 batch_size=32'."""
    def short(v):
        return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, list | dict) else str(v)
    return " ".join(f"{k.rpartition('.')[2]}={short(v)}" for k, v in params.items())


def low_point(params: list[Param]) -> Point:
    """Each parameter's low end or first choice: a point to validate before anything trains."""
    return {p.field: p.choices[0] if p.kind == "choice" else p.low for p in params}


def grid(params: list[Param]) -> dict[str, list]:
    """The grid sampler's search space (encoded choices); every parameter must be a choice."""
    for p in params:
        if p.kind != "choice":
            raise ConfigError(p.field, f"the grid sampler needs choice:... values, not {p.kind}:{p.low}:{p.high}",
                              ["choice"])
    return {p.field: [encode(v) for v in p.choices] for p in params}


def suggest(trial, p: Param):
    """Ask an optuna trial for `p`'s value (a choice comes back encoded: see `decode`)."""
    if p.kind == "choice":
        return trial.suggest_categorical(p.field, [encode(v) for v in p.choices])
    if p.kind in ("log", "uniform"):
        return trial.suggest_float(p.field, p.low, p.high, log=p.kind == "log")
    return trial.suggest_int(p.field, p.low, p.high, log=p.kind == "logint")
