"""Weight averages across checkpoints: one model whose parameters are a weighted mean of others
(no inference cost).

`average(trees, weights)` streams parameter trees one at a time into a running sum
(`framework.training.averages`, the arithmetic the trainer's EMAs use), so peak memory is two trees
however many checkpoints are averaged.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from framework.errors import ConfigError
from framework.training.averages import RunningAverage, init, update, value

Params = Any  # a pytree of arrays


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
