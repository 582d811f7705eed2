"""Config names and import paths -> the pacing function, the sampler factory and the rescored split
the trainer takes, each checked once at start-up (wrong arguments fail here, naming the field).
The names themselves live in `curricula.registry`."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import datasets
import numpy as np

from curricula import pacing as P
from curricula import scorers as S
from curricula.registry import CURRICULA, PACINGS, SCORERS
from framework.data.encoding import EncodedSplit, Sampler
from framework.errors import ConfigError
from framework.registry import import_object


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
    make = CURRICULA.resolve(curriculum)
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
    make = SCORERS.resolve(scorer)
    _check_call(make, "scorer_args", **args)
    fn = make(**args)
    ds = datasets.Dataset.from_dict({"prompt": train.prompts, "answer": train.answers,
                                     "difficulty": train.difficulty.tolist()})
    scored = S.score_dataset(ds, fn, column="difficulty", as_percentile=as_percentile)
    return dataclasses.replace(train, difficulty=np.asarray(scored["difficulty"], np.float64))
