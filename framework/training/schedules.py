"""Learning-rate schedules planned over the token budget.

Each factory returns a plain `tokens_seen -> learning rate` callable built from optax schedules
(which accept any monotone count, here counted tokens), traceable by jax: the train step receives
`tokens_seen` as an array and computes its own learning rate, so nothing recompiles as it moves.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from framework.training.registry import DECAY_SHAPES, SCHEDULES

Schedule = Callable[[jax.Array | float], jax.Array]


def decay(peak: float, length: int, shape: str = "linear") -> Schedule:
    """From `peak` at count 0 to 0 at `length`, then 0: "linear", or "1-sqrt", which holds the
    rate higher for longer and drops it at the end (Hägele et al. 2024 found it beats linear).

    >>> float(decay(1.0, 100, "1-sqrt")(25))
    0.5
    """
    DECAY_SHAPES.check(shape)
    return DECAY_SHAPES[shape](peak, max(length, 1))


def linear_decay(peak: float, length: int) -> Schedule:
    return optax.linear_schedule(peak, 0.0, length)


def one_minus_sqrt_decay(peak: float, length: int) -> Schedule:
    return lambda count: peak * (1.0 - jnp.sqrt(jnp.clip(jnp.asarray(count, jnp.float32) / length, 0.0, 1.0)))


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
    budget: int, peak: float, warmup_frac: float = 0.05, decay_frac: float = 0.2, shape: str = "linear"
) -> Schedule:
    """WSD (Hägele et al. 2024): warmup, constant `peak`, decay to 0 over the last `decay_frac`
    (`shape`: see `decay`).

    A run stopped during the stable phase has seen a constant rate: the regime where checkpoint
    averaging pays (see RESEARCH_NOTES.md).
    """
    warmup = max(int(warmup_frac * budget), 1)
    decay_start = budget - int(decay_frac * budget)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, peak, warmup),
            optax.constant_schedule(peak),
            decay(peak, budget - decay_start, shape),
        ],
        boundaries=[warmup, decay_start],
    )


def warmup_constant(budget: int, peak: float, warmup_frac: float = 0.05) -> Schedule:
    """Linear warmup, then `peak` until the end."""
    warmup = max(int(warmup_frac * budget), 1)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
    )


def cooldown(budget: int, peak: float, decay_start: int, shape: str = "linear") -> Schedule:
    """`peak` until `decay_start` tokens, then down to 0 at `budget` (the cooldown of a branch
    taken from a stopping point: WSD's decay phase on its own; `shape`: see `decay`)."""
    if shape == "linear":  # the form every earlier cooldown ran with, kept bit for bit
        return optax.linear_schedule(peak, 0.0, max(budget - decay_start, 1), transition_begin=decay_start)
    return optax.join_schedules([optax.constant_schedule(peak), decay(peak, budget - decay_start, shape)],
                                [decay_start])


# OptimConfig.schedule's names (framework.training.registry.SCHEDULES): each builds its schedule
# from the OptimConfig and the token budget.
def cosine_from(o, budget: int) -> Schedule:
    return warmup_cosine(budget, o.peak_lr, o.warmup_frac, o.end_lr_frac)


def wsd_from(o, budget: int) -> Schedule:
    return warmup_stable_decay(budget, o.peak_lr, o.warmup_frac, o.decay_frac, o.decay_shape)


def constant_from(o, budget: int) -> Schedule:
    return warmup_constant(budget, o.peak_lr, o.warmup_frac)


def cooldown_from(o, budget: int) -> Schedule:
    return cooldown(budget, o.peak_lr, o.decay_start, o.decay_shape)


def build(o, budget_tokens: int) -> Schedule:
    """The schedule an OptimConfig names, planned over `budget_tokens`."""
    return SCHEDULES[o.schedule](o, budget_tokens)
