"""Weight averages: one model whose parameters are a weighted mean of others (no inference cost).

Two uses, one piece of arithmetic:

- **Across checkpoints** after training: `average(trees, weights)` streams parameter trees one at
  a time into a running sum, so peak memory is two trees however many checkpoints are averaged.
- **During training**: an EMA (`ema(half_life_tokens)`) or a SWA-style running mean from a start
  point (`swa(start_tokens)`) is updated after every step. Each is an `AverageRule`: a pure
  `update(state, params, n_tokens, tokens_seen) -> state` over an explicit `RunningAverage` state
  that the trainer saves in every checkpoint.

A `RunningAverage` holds `total = sum_i w_i * decay^(...) * params_i` and the matching `weight`, and
`value(state) = total / weight`. For an EMA started from zeros `weight = 1 - prod(decay)`, so the
division is exactly Adam-style bias correction: the first steps are not pulled towards zero.

    state = init(params)
    state = update(state, params, weight=1.0)        # plain running mean
    averaged = value(state)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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


# == during training ============================================================================


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


# == across checkpoints =========================================================================


@functools.partial(jax.jit, donate_argnums=0)
def _accumulate(state: RunningAverage, params: Params, weight) -> RunningAverage:
    return update(state, params, weight)


def average(trees: Iterable[Params], weights: Sequence[float] | None = None) -> Params:
    """Weighted mean of parameter trees, read one at a time (pass a generator to stream from disk).

    Args:
      trees: parameter trees of one structure and shape; consumed once, in order.
      weights: one non-negative weight per tree (normalized here); None for a uniform mean.

    Returns:
      The averaged tree in the dtypes of the first tree.

    Raises:
      ConfigError: no trees, a weight count that does not match, negative or all-zero weights, or
        a tree whose structure or shapes differ from the first (naming the first mismatching leaf).
    """
    state, first, n = None, None, 0
    for i, tree in enumerate(trees):
        w = 1.0 if weights is None else _weight(weights, i)
        if first is None:  # keep the first tree's shapes and dtypes, not its arrays
            first, state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree), init(tree)
        else:
            check_same_shapes(first, tree, f"member {i}")
        state = _accumulate(state, tree, jnp.float32(w))
        n = i + 1
    if first is None:
        raise ConfigError("members", "nothing to average: give at least one checkpoint")
    if weights is not None and len(weights) != n:
        raise ConfigError("weights", f"{len(weights)} weights for {n} members")
    if not float(state.weight) > 0:
        raise ConfigError("weights", "the weights sum to zero")
    return value(state, like=first)


def _weight(weights: Sequence[float], i: int) -> float:
    if i >= len(weights):
        raise ConfigError("weights", f"{len(weights)} weights for at least {i + 1} members")
    w = float(weights[i])
    if not np.isfinite(w) or w < 0:
        raise ConfigError("weights", f"weight {i} is {weights[i]!r}; weights must be finite and >= 0")
    return w


def check_same_shapes(reference: Params, other: Params, what: str) -> None:
    """A ConfigError naming the first leaf where `other` differs from `reference` in path or shape."""
    ref = jax.tree_util.tree_flatten_with_path(reference)[0]
    got = jax.tree_util.tree_flatten_with_path(other)[0]
    ref_paths = [jax.tree_util.keystr(p) for p, _ in ref]
    got_paths = [jax.tree_util.keystr(p) for p, _ in got]
    if ref_paths != got_paths:
        missing = sorted(set(ref_paths) ^ set(got_paths))
        raise ConfigError("members", f"{what} has a different parameter structure (first difference: "
                                     f"{missing[0] if missing else 'leaf order'}); members must share one model config")
    for (path, a), (_, b) in zip(ref, got, strict=True):
        if np.shape(a) != np.shape(b):
            raise ConfigError("members", f"{what} has {jax.tree_util.keystr(path)} of shape {np.shape(b)}, "
                                         f"the first member {np.shape(a)}; members must share one model config")
