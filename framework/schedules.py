"""Learning-rate schedules planned over the token budget.

Each factory returns a plain `tokens_seen -> learning rate` callable built from optax schedules
(which accept any monotone count, here counted tokens), traceable by jax: the train step receives
`tokens_seen` as an array and computes its own learning rate, so nothing recompiles as it moves.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

Schedule = Callable[[jax.Array | float], jax.Array]


def warmup_cosine(budget: int, peak: float, warmup_frac: float = 0.05, end_frac: float = 0.0) -> Schedule:
    """Linear warmup to `peak`, then cosine decay to `end_frac * peak` at the budget.

    >>> lr = warmup_cosine(1_000_000, 3e-3); float(lr(1_000_000))
    0.0
    """
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=max(int(warmup_frac * budget), 1),
        decay_steps=budget,  # optax: the total length, warmup included
        end_value=end_frac * peak,
    )


def warmup_stable_decay(
    budget: int, peak: float, warmup_frac: float = 0.05, decay_frac: float = 0.2
) -> Schedule:
    """WSD (Hägele et al. 2024): warmup, constant `peak`, linear decay to 0 over the last `decay_frac`.

    A run stopped during the stable phase has seen a constant rate: the regime where checkpoint
    averaging pays (see RESEARCH_NOTES.md).
    """
    warmup = max(int(warmup_frac * budget), 1)
    decay_start = budget - int(decay_frac * budget)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, peak, warmup),
            optax.constant_schedule(peak),
            optax.linear_schedule(peak, 0.0, max(budget - decay_start, 1)),
        ],
        boundaries=[warmup, decay_start],
    )


def warmup_constant(budget: int, peak: float, warmup_frac: float = 0.05) -> Schedule:
    """Linear warmup, then `peak` until the end."""
    warmup = max(int(warmup_frac * budget), 1)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
    )


def cooldown(budget: int, peak: float, decay_start: int) -> Schedule:
    """`peak` until `decay_start` tokens, then linear to 0 at `budget` (the cooldown of a branch
    taken from a stopping point: WSD's decay phase on its own)."""
    return optax.linear_schedule(peak, 0.0, max(budget - decay_start, 1), transition_begin=decay_start)
