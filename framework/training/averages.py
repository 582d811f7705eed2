"""Weight averages kept during training: an EMA whose half-life is counted in tokens, and a
SWA-style running mean from a start point, each updated after every step.

Each is an `AverageRule`: a pure `update(state, params, n_tokens, tokens_seen) -> state` over an
explicit `RunningAverage` state that the trainer saves in every checkpoint. A `RunningAverage` holds
`total = sum_i w_i * decay^(...) * params_i` and the matching `weight`, and
`value(state) = total / weight`. For an EMA started from zeros `weight = 1 - prod(decay)`, so the
division is exactly Adam-style bias correction: the first steps are not pulled towards zero.

    state = init(params)
    state = update(state, params, weight=1.0)        # plain running mean
    averaged = value(state)

Averages of finished checkpoints (`ensembles.averaging.average`) use the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from framework.errors import ConfigError

Params = Any  # a pytree of arrays


class RunningAverage(NamedTuple):
    total: Params  # float32 weighted sum of parameter trees
    weight: jax.Array  # float32 scalar: the sum of the weights in `total`


def init(params: Params) -> RunningAverage:
    """An empty average with the structure of `params` (float32 accumulators)."""
    return RunningAverage(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params), jnp.zeros((), jnp.float32))


def update(state: RunningAverage, params: Params, weight, decay=1.0) -> RunningAverage:
    """`total <- decay * total + weight * params`, and the same for the weight (jax-traceable)."""
    total = jax.tree.map(lambda t, p: decay * t + weight * p.astype(jnp.float32), state.total, params)
    return RunningAverage(total, decay * state.weight + weight)


def value(state: RunningAverage, like: Params | None = None) -> Params:
    """The average `total / weight`, cast to the dtypes of `like` when given (NaN if nothing was added)."""
    mean = jax.tree.map(lambda t: t / state.weight, state.total)
    return mean if like is None else jax.tree.map(lambda m, p: m.astype(p.dtype), mean, like)


class AverageRule(NamedTuple):
    """A named average kept during training; `update` is pure and jax-traceable."""

    name: str  # how checkpoints and ensembles refer to it, e.g. "ema-50000"
    update: Callable[[RunningAverage, Params, Any, Any], RunningAverage]  # (state, params, n_tokens, tokens_seen)


def ema(half_life_tokens: int) -> AverageRule:
    """Exponential moving average whose half-life is counted in training tokens, not steps.

    A step of n tokens multiplies the old average's weight by `0.5 ** (n / half_life_tokens)`, so
    the same half-life means the same thing at any batch size or sequence length.
    """
    if not isinstance(half_life_tokens, int) or isinstance(half_life_tokens, bool) or half_life_tokens <= 0:
        raise ConfigError("ema_half_lives", f"{half_life_tokens!r} must be a positive token count")

    def rule(state, params, n_tokens, tokens_seen):
        decay = jnp.exp2(-jnp.asarray(n_tokens, jnp.float32) / half_life_tokens)
        return update(state, params, 1.0 - decay, decay)

    return AverageRule(f"ema-{half_life_tokens}", rule)


def swa(start_tokens: int) -> AverageRule:
    """Running mean of the weights after every step from `start_tokens` on, weighted by the step's tokens."""

    def rule(state, params, n_tokens, tokens_seen):
        w = jnp.where(jnp.asarray(tokens_seen) >= start_tokens, jnp.asarray(n_tokens, jnp.float32), 0.0)
        return update(state, params, w)

    return AverageRule(f"swa-{start_tokens}", rule)


def make_update(rules: Sequence[AverageRule]):
    """One jitted function updating every rule's state: `(states, params, n_tokens, tokens_seen) -> states`.

    `tokens_seen` is the count *after* the step. Nothing is donated: an asynchronous checkpoint
    save may still be reading the previous states (the same reason the train step donates nothing).
    """

    @jax.jit
    def update_all(states: dict[str, RunningAverage], params, n_tokens, tokens_seen):
        return {r.name: r.update(states[r.name], params, n_tokens, tokens_seen) for r in rules}

    return update_all
