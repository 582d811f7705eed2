"""Built-in curricula: factories that return a `framework.data.encoding.Sampler`.

Every curriculum, built in or yours, has one signature:

    def my_curriculum(train: EncodedSplit, *, batch_size: int, seed: int, budget_tokens: int,
                      pacing: PacingFn, **args) -> Sampler

`train.difficulty` holds the split's difficulty scores (the data's `difficulty` column; see
`curricula.scorers` to compute another), `pacing(tokens_seen)` the share of the data open now.
The sampler's state is a NamedTuple of numpy arrays: it is saved in every checkpoint, and the
random draw of step s is seeded by `(seed, s)`, so a resumed run draws exactly the same batches.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from curricula.pacing import PacingFn
from curricula.registry import CURRICULA
from curricula.scorers import percentiles
from framework.data.encoding import EncodedSplit, Sampler, uniform_sampler
from framework.errors import ConfigError


class StepState(NamedTuple):
    step: np.ndarray  # int64 scalar: batches drawn so far


def _draw(seed: int, step, pool: np.ndarray, k: int, salt: int = 0) -> np.ndarray:
    """k examples of `pool`, without replacement when the pool is large enough."""
    rng = np.random.default_rng([seed, int(step), salt])
    return rng.choice(pool, k, replace=len(pool) < k)


def uniform(train: EncodedSplit, *, batch_size: int, seed: int, budget_tokens: int, pacing: PacingFn) -> Sampler:
    """No curriculum: a fresh permutation of the data every epoch (the default)."""
    del budget_tokens, pacing
    return uniform_sampler(len(train), batch_size, seed)


def by_percentile(order: np.ndarray, *, batch_size: int, seed: int, pacing: PacingFn) -> Sampler:
    """Draw uniformly among examples whose percentile in `order` is <= the pacing fraction.

    The pool never empties: it always holds at least the lowest tie group.
    """
    pct = percentiles(order)
    floor = pct.min()

    def init() -> StepState:
        return StepState(np.asarray(0, np.int64))

    def next_(state: StepState, tokens_seen: int):
        limit = max(float(pacing(tokens_seen)), floor)
        pool = np.flatnonzero(pct <= limit)
        return _draw(seed, state.step, pool, batch_size), StepState(np.asarray(int(state.step) + 1, np.int64))

    def info(state, tokens_seen):
        return {"pacing_fraction": float(pacing(tokens_seen))}

    return Sampler(init, next_, info=info)


def easy_to_hard(train: EncodedSplit, *, batch_size: int, seed: int, budget_tokens: int,
                 pacing: PacingFn) -> Sampler:
    """The easiest `pacing(t)` share of the data by difficulty (Bengio et al. 2009)."""
    return by_percentile(train.difficulty, batch_size=batch_size, seed=seed, pacing=pacing)


def hard_to_easy(train: EncodedSplit, *, batch_size: int, seed: int, budget_tokens: int,
                 pacing: PacingFn) -> Sampler:
    """The hardest `pacing(t)` share first (an anti-curriculum, a useful control)."""
    return by_percentile(-train.difficulty, batch_size=batch_size, seed=seed, pacing=pacing)


def seqlen_warmup(train: EncodedSplit, *, batch_size: int, seed: int, budget_tokens: int,
                  pacing: PacingFn) -> Sampler:
    """Sequence-length warmup (Li, Zhang, He 2022), adapted to QA: short examples first.

    The paper truncates pretraining sequences; truncating a question would cut off what the
    answer needs, so here the `pacing(t)` share of shortest examples (prompt + answer tokens) is
    drawn instead, which keeps the same early-steps-see-short-sequences effect.
    """
    lengths = (train.prompt_lens + train.answer_lens).astype(np.float64)
    return by_percentile(lengths, batch_size=batch_size, seed=seed, pacing=pacing)


class SelfPacedState(NamedTuple):
    step: np.ndarray  # int64 scalar
    loss: np.ndarray  # [n] float32: the latest training loss of each example
    seen: np.ndarray  # [n] bool: whether that loss has been observed


def self_paced(train: EncodedSplit, *, batch_size: int, seed: int, budget_tokens: int,
               pacing: PacingFn) -> Sampler:
    """Self-paced learning (Kumar et al. 2010), driven by the model's own training losses.

    An example is drawn when its latest observed loss is within the `pacing(t)` quantile of the
    losses seen so far; examples never seen are always eligible (nothing says they are hard). The
    losses come from the train step itself (`observe`), so this costs no extra forward pass.
    """
    n = len(train)

    def init() -> SelfPacedState:
        return SelfPacedState(np.asarray(0, np.int64), np.zeros(n, np.float32), np.zeros(n, bool))

    def threshold(state: SelfPacedState, tokens_seen: int) -> float:
        if not state.seen.any():
            return float("inf")
        return float(np.quantile(state.loss[state.seen], float(pacing(tokens_seen))))

    def next_(state: SelfPacedState, tokens_seen: int):
        pool = np.flatnonzero(~state.seen | (state.loss <= threshold(state, tokens_seen)))
        idx = _draw(seed, state.step, pool, batch_size)
        return idx, state._replace(step=np.asarray(int(state.step) + 1, np.int64))

    def observe(state: SelfPacedState, idx: np.ndarray, losses: np.ndarray) -> SelfPacedState:
        loss, seen = state.loss.copy(), state.seen.copy()
        loss[idx], seen[idx] = losses, True
        return state._replace(loss=loss, seen=seen)

    def info(state: SelfPacedState, tokens_seen: int):
        return {"pacing_fraction": float(pacing(tokens_seen)), "self_paced_threshold": threshold(state, tokens_seen),
                "self_paced_seen": float(state.seen.mean())}

    return Sampler(init, next_, observe, info)


class ReplayState(NamedTuple):
    step: np.ndarray  # int64 scalar
    base: tuple  # the wrapped curriculum's state


def replay_mix(train: EncodedSplit, *, batch_size: int, seed: int, budget_tokens: int, pacing: PacingFn,
               share: float = 0.5, base: str = "easy-to-hard") -> Sampler:
    """A curriculum with a share of every batch drawn uniformly from all the data.

    Nothing is starved (hard examples appear from the first step) or forgotten (easy ones keep
    coming back). `base` names the curriculum that draws the rest of the batch.
    """
    if not 0.0 <= share <= 1.0:
        raise ConfigError("curriculum_args.share", f"{share!r} is outside [0, 1]")
    if base not in CURRICULA or base == "replay-mix":
        raise ConfigError("curriculum_args.base", f"unknown base curriculum {base!r}",
                          [k for k in CURRICULA if k != "replay-mix"])
    k = int(round(share * batch_size))
    inner = CURRICULA[base](train, batch_size=batch_size - k, seed=seed, budget_tokens=budget_tokens,
                            pacing=pacing) if k < batch_size else None
    everything = np.arange(len(train))

    def init() -> ReplayState:
        return ReplayState(np.asarray(0, np.int64), inner.init() if inner else ())

    def next_(state: ReplayState, tokens_seen: int):
        replayed = _draw(seed, state.step, everything, k, salt=1)
        base_state = state.base
        if inner:
            rest, base_state = inner.next(state.base, tokens_seen)
            replayed = np.concatenate([replayed, rest])
        return replayed, ReplayState(np.asarray(int(state.step) + 1, np.int64), base_state)

    def observe(state: ReplayState, idx, losses):
        return state._replace(base=inner.observe(state.base, idx, losses))

    def info(state: ReplayState, tokens_seen: int):
        return {"replay_share": share, **(inner.info(state.base, tokens_seen) if inner and inner.info else {})}

    return Sampler(init, next_, observe if inner and inner.observe else None, info)
