"""Names and import paths -> pacing functions and curricula: the one place config strings become code.

    --curriculum easy-to-hard --pacing root --pacing-arg start=0.2 --pacing-arg ramp=0.5
    --curriculum my_pkg.curricula:shortest_first --curriculum-arg share=0.3
    --pacing my_pkg.pacing:warm --pacing-arg knee=0.4
    --scorer model-loss --scorer-arg run_dir=runs/earlier --scorer-arg step=120 --scorer-percentile

Built-in pacing functions take their ramp as a share of the token budget (`ramp=0.5`: all the
data is open from half-way). A custom pacing function is any importable `f(tokens_seen,
budget_tokens, **args) -> fraction`; a custom curriculum follows the signature in
`curricula.samplers`. Wrong paths, missing attributes and arguments the callable does not take
fail at start-up, naming the field.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from curricula import pacing as P
from curricula import scorers as S
from curricula.samplers import BUILT_IN
from framework.data.encoding import EncodedSplit, Sampler
from framework.errors import ConfigError

PACINGS: dict[str, Callable[..., P.PacingFn]] = {
    "constant": lambda budget, fraction=1.0: P.constant(fraction),
    "linear": lambda budget, start=0.1, ramp=0.5: P.linear(ramp * budget, start),
    "root": lambda budget, start=0.1, p=2.0, ramp=0.5: P.root(ramp * budget, start, p),
    "geometric": lambda budget, start=0.1, ramp=0.5: P.geometric(ramp * budget, start),
    "steps": lambda budget, boundaries=(0.125, 0.25, 0.375), fractions=(0.25, 0.5, 0.75, 1.0): P.steps(
        [b * budget for b in boundaries], fractions),
}
CURRICULA = BUILT_IN
SCORERS: dict[str, Callable[..., S.Scorer]] = {
    "column": S.from_column,  # args: name
    "prompt-length": S.prompt_length,
    "answer-length": S.answer_length,
    "model-loss": S.model_loss,  # args: run_dir, step
}


def import_object(spec: str, field: str) -> Any:
    """`"package.module:attribute"` -> the attribute, with errors that say which part is wrong."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(field, f"{spec!r} is neither a built-in name nor an import path 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(field, f"cannot import module {module_name!r} ({e})") from None
    if not hasattr(module, attr):
        public = sorted(n for n in dir(module) if not n.startswith("_"))[:20]
        raise ConfigError(field, f"module {module_name!r} has no attribute {attr!r} (it has: {', '.join(public)})")
    obj = getattr(module, attr)
    if not callable(obj):
        raise ConfigError(field, f"{spec} is not callable")
    return obj


def _check_call(fn: Callable, field: str, *args, **kwargs) -> None:
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(field, f"{getattr(fn, '__name__', fn)} cannot take these arguments: {e}") from None
    except ValueError:  # no signature (a builtin): let the call itself decide
        pass


def build_pacing(name: str, args: dict[str, Any], budget_tokens: int) -> P.PacingFn:
    """A one-argument pacing function from a built-in name or an import path, checked once."""
    if name in PACINGS:  # built-ins check their own arguments
        _check_call(PACINGS[name], "pacing_args", budget_tokens, **args)
        return PACINGS[name](budget_tokens, **args)
    custom = import_object(name, "pacing")
    _check_call(custom, "pacing", 0, budget_tokens, **args)
    for t in (0, budget_tokens // 2, budget_tokens):  # a bad pacing function fails now, not mid-run
        value = float(custom(np.float32(t), budget_tokens, **args))
        if not 0.0 < value <= 1.0:
            raise ConfigError("pacing", f"{name} gave {value} at {t} tokens; a fraction must be in (0, 1]")
    return P.bind(lambda t, b: custom(t, b, **args), budget_tokens)


def sampler_factory(curriculum: str, curriculum_args: dict[str, Any], pacing: str, pacing_args: dict[str, Any],
                    budget_tokens: int) -> Callable[[EncodedSplit, int, int], Sampler]:
    """What the trainer calls with (train split, batch size, seed) to get its Sampler."""
    pace = build_pacing(pacing, pacing_args, budget_tokens)
    make = CURRICULA.get(curriculum) or import_object(curriculum, "curriculum")
    _check_call(make, "curriculum_args", None, batch_size=1, seed=0, budget_tokens=budget_tokens, pacing=pace,
                **curriculum_args)

    def factory(train: EncodedSplit, batch_size: int, seed: int) -> Sampler:
        sampler = make(train, batch_size=batch_size, seed=seed, budget_tokens=budget_tokens, pacing=pace,
                       **curriculum_args)
        if not isinstance(sampler, Sampler):
            raise ConfigError("curriculum", f"{curriculum} returned {type(sampler).__name__}, not a Sampler")
        return sampler

    return factory


def rescore(train: EncodedSplit, scorer: str, args: dict[str, Any], as_percentile: bool) -> EncodedSplit:
    """`train` with its difficulty replaced by a scorer's scores (computed once, map(batched=True))."""
    import dataclasses

    import datasets

    make = SCORERS.get(scorer) or import_object(scorer, "scorer")
    _check_call(make, "scorer_args", **args)
    fn = make(**args)
    ds = datasets.Dataset.from_dict({"prompt": train.prompts, "answer": train.answers,
                                     "difficulty": train.difficulty.tolist()})
    scored = S.score_dataset(ds, fn, column="difficulty", as_percentile=as_percentile)
    return dataclasses.replace(train, difficulty=np.asarray(scored["difficulty"], np.float64))
