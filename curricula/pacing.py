"""Pacing functions: `tokens_seen -> fraction in (0, 1]` of the data (by difficulty) a batch may draw.

Each factory returns a plain jax-traceable callable, like an optax schedule, and `join` composes
them the way `optax.join_schedules` does. A curriculum reads the fraction on the host each step;
it never enters the compiled train step, so changing it recompiles nothing.

    pace = join([linear(500_000, start=0.2), constant()], boundaries=[500_000])
    float(pace(250_000))  # 0.6: half-way up the ramp

A *custom* pacing function is any callable `f(tokens_seen, budget_tokens) -> fraction`; `bind`
turns it into the one-argument form.

References: root-p is the competence function of Platanios et al. 2019; geometric and steps are
the exponential and fixed-step pacing of Hacohen and Weinshall 2019.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from framework.errors import ConfigError

PacingFn = Callable[[jax.Array | float], jax.Array]

MIN_FRACTION = 1e-6  # a fraction is never 0: some data is always drawable


def _check_start(start: float) -> None:
    if not 0.0 < start <= 1.0:
        raise ConfigError("pacing.start", f"{start!r} is outside (0, 1]")


def _check_length(name: str, tokens) -> None:
    if not tokens > 0:
        raise ConfigError(f"pacing.{name}", f"{tokens!r} must be > 0 tokens")


def _finish(x: jax.Array) -> jax.Array:
    return jnp.clip(x, MIN_FRACTION, 1.0)


def constant(fraction: float = 1.0) -> PacingFn:
    """The same fraction always; `constant()` (all the data) is no curriculum.

    >>> float(constant(0.5)(10**6))
    0.5
    """
    _check_start(fraction)
    return lambda tokens: _finish(jnp.full(jnp.shape(tokens), fraction, jnp.float32))


def linear(ramp_tokens: float, start: float = 0.1) -> PacingFn:
    """From `start` up to 1 in a straight line over `ramp_tokens`, then 1.

    >>> round(float(linear(1000, start=0.2)(500)), 4)
    0.6
    """
    _check_start(start)
    _check_length("ramp_tokens", ramp_tokens)

    def pace(tokens):
        t = jnp.asarray(tokens, jnp.float32) / ramp_tokens
        return _finish(start + (1.0 - start) * t)

    return pace


def root(ramp_tokens: float, start: float = 0.1, p: float = 2.0) -> PacingFn:
    """Competence-based root-p pacing (Platanios et al. 2019): c(t) = (t (1 - c0^p) / T + c0^p)^(1/p).

    Fast at first, gentle later: with p = 2 half of the data is open after about 25% of the ramp.
    """
    _check_start(start)
    _check_length("ramp_tokens", ramp_tokens)
    if not p > 0:
        raise ConfigError("pacing.p", f"{p!r} must be > 0")

    def pace(tokens):
        t = jnp.minimum(jnp.asarray(tokens, jnp.float32) / ramp_tokens, 1.0)
        return _finish((t * (1.0 - start**p) + start**p) ** (1.0 / p))

    return pace


def geometric(ramp_tokens: float, start: float = 0.1) -> PacingFn:
    """Fixed exponential pacing, continuous (Hacohen and Weinshall 2019): start * (1/start)^(t/T).

    Slow at first, fast at the end: the mirror image of `root`.
    """
    _check_start(start)
    _check_length("ramp_tokens", ramp_tokens)

    def pace(tokens):
        t = jnp.minimum(jnp.asarray(tokens, jnp.float32) / ramp_tokens, 1.0)
        return _finish(start * (1.0 / start) ** t)

    return pace


def steps(boundaries: Sequence[float], fractions: Sequence[float]) -> PacingFn:
    """Discrete pacing: `fractions[0]` before `boundaries[0]` tokens, then `fractions[i]` from
    `boundaries[i - 1]` (a staircase, Hacohen and Weinshall's fixed step length when evenly spaced).

    >>> [float(steps([100, 200], [0.25, 0.5, 1.0])(t)) for t in (0, 100, 250)]
    [0.25, 0.5, 1.0]
    """
    if len(fractions) != len(boundaries) + 1:
        raise ConfigError("pacing.fractions", f"give one more fraction than boundaries "
                          f"({len(boundaries)} boundaries, {len(fractions)} fractions)")
    if list(boundaries) != sorted(boundaries):
        raise ConfigError("pacing.boundaries", f"{list(boundaries)} must be increasing")
    for f in fractions:
        _check_start(f)
    bounds = jnp.asarray(boundaries, jnp.float32)
    values = jnp.asarray(fractions, jnp.float32)

    def pace(tokens):
        i = jnp.sum(bounds <= jnp.asarray(tokens, jnp.float32))
        return _finish(values[i])

    return pace


def join(pacings: Sequence[PacingFn], boundaries: Sequence[float]) -> PacingFn:
    """Pacing `i` from `boundaries[i - 1]` on, fed tokens counted from its own start
    (as `optax.join_schedules`).

    >>> pace = join([linear(100, start=0.5), constant(0.25)], boundaries=[100])
    >>> [round(float(pace(t)), 2) for t in (0, 50, 100, 500)]
    [0.5, 0.75, 0.25, 0.25]
    """
    if len(pacings) != len(boundaries) + 1:
        raise ConfigError("pacing.boundaries", f"give one boundary fewer than pacings "
                          f"({len(pacings)} pacings, {len(boundaries)} boundaries)")
    if list(boundaries) != sorted(boundaries):
        raise ConfigError("pacing.boundaries", f"{list(boundaries)} must be increasing")
    starts = [0.0, *boundaries]

    def pace(tokens):
        t = jnp.asarray(tokens, jnp.float32)
        out = pacings[0](t)
        for start, fn in zip(starts[1:], pacings[1:], strict=True):
            out = jnp.where(t >= start, fn(t - start), out)
        return out

    return pace


def bind(fn: Callable[[jax.Array | float, int], jax.Array | float], budget_tokens: int) -> PacingFn:
    """A custom `f(tokens_seen, budget_tokens)` as a one-argument pacing function, clipped to (0, 1]."""
    return lambda tokens: _finish(jnp.asarray(fn(tokens, budget_tokens), jnp.float32))


# PACINGS' names (curricula.registry): each built from the token budget and its arguments, with
# ramps as a share of the budget (`ramp=0.5`: all the data is open from half-way).
def constant_share(budget: int, fraction: float = 1.0) -> PacingFn:
    return constant(fraction)


def linear_share(budget: int, start: float = 0.1, ramp: float = 0.5) -> PacingFn:
    return linear(ramp * budget, start)


def root_share(budget: int, start: float = 0.1, p: float = 2.0, ramp: float = 0.5) -> PacingFn:
    return root(ramp * budget, start, p)


def geometric_share(budget: int, start: float = 0.1, ramp: float = 0.5) -> PacingFn:
    return geometric(ramp * budget, start)


def steps_share(budget: int, boundaries: Sequence[float] = (0.125, 0.25, 0.375),
                fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0)) -> PacingFn:
    return steps([b * budget for b in boundaries], fractions)
