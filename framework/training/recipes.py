"""Recipes: the settings `recoup train --recipe NAME` starts from; any flag beside it overrides.

    recoup train --task addition --recipe anytime --budget-tokens 400k --out runs/a
    recoup train --task addition --recipe plain --budget-tokens 400k --out runs/b

`plain` is the conventional recipe, for a run that will reach its budget: AdamW on a cosine
schedule planned for the budget, uniform data, the final checkpoint shipped. `anytime` is recoup's,
for a run that may be stopped anywhere: a constant learning rate after its warmup, so that no
point of the run is mid-decay, Muon on the block matrices, a batch that grows over the first 25%
of the budget, and EMAs of the weights kept in every checkpoint; when it stops it cools down
(`recoup cooldown --shape 1-sqrt`, or the controller: `--stop-rule budget:price=P --cooldown-on-stop`).

Both were tuned by `experiments.fair_tuning` (`recoup sweep`, 16 trials each, the top two confirmed
on three more seeds) on 8-digit addition; the values here are the winners there, learning rates to
3 digits (experiments/tuned.json holds them per task; docs/results.md, "Fair tuning", the tables).
The ablation there: Muon and the batch warmup each pay 9 validation points of the anytime
objective; Grokfast (0.5) and the b2 rescale pay 0.3 and 0.1, within the seeds' noise. Before a known
stop, the tuned cooldown is the last 30% of the stop's tokens, 1-sqrt.

A recipe is a function of the budget, since the EMAs' half-lives are shares of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from framework.errors import ConfigError

Recipe = Callable[[int], dict[str, Any]]  # budget_tokens -> {dotted RunConfig field: value}

EMA_SHARES = (0.0125, 0.025, 0.05, 0.1)  # the anytime recipe's EMA half-lives, as shares of the budget


def plain(budget: int) -> dict[str, Any]:
    del budget  # planned for the budget through the schedule, which is a share of it
    return {"optim.schedule": "cosine", "optim.optimizer": "adamw", "optim.peak_lr": 9.38e-4,
            "optim.warmup_frac": 0.15, "optim.end_lr_frac": 0.1, "optim.b1": 0.95, "optim.b2": 0.95,
            "optim.weight_decay": 0.0, "batch_size": 8, "curriculum": "uniform", "ema_half_lives": ()}


def anytime(budget: int) -> dict[str, Any]:
    return {"optim.schedule": "constant", "optim.optimizer": "muon", "optim.peak_lr": 1.87e-3,
            "optim.warmup_frac": 0.2, "optim.b1": 0.95, "optim.b2": 0.99, "optim.b2_batch": 128,
            "optim.grokfast_lambda": 0.5, "optim.weight_decay": 0.1, "batch_size": 16, "batch_warmup": 0.25,
            "curriculum": "uniform", "ema_half_lives": tuple(max(1, round(s * budget)) for s in EMA_SHARES)}


RECIPES: dict[str, Recipe] = {"plain": plain, "anytime": anytime}


def settings(name: str, budget: int) -> dict[str, Any]:
    """The fields recipe `name` sets at `budget`; an unknown name lists the known ones."""
    if name not in RECIPES:
        raise ConfigError("recipe", f"unknown recipe {name!r}", RECIPES)
    return RECIPES[name](budget)
