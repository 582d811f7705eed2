"""A custom scorer, pacing function and curriculum, each selected by import path.

    recoup train --task addition --preset small --budget-tokens 800k --out runs/carries \\
        --scorer experiments.custom_curriculum:carries \\
        --curriculum experiments.custom_curriculum:fewest_carries_first --curriculum-arg replay=0.25 \\
        --pacing experiments.custom_curriculum:warm_then_all --pacing-arg knee=0.3

Carries, not digits, are what make addition hard: 5000+5000 needs one, 9999+1 needs four.
"""

import jax.numpy as jnp
import numpy as np

from curricula.samplers import by_percentile
from framework.data.encoding import Sampler


def carries():
    """A scorer factory: returns `batch -> scores`, the number of carries of each LSB-first sum."""

    def score(batch):
        out = []
        for prompt in batch["prompt"]:
            a, b = prompt.rstrip("=").split("+")
            carry = count = 0
            for x, y in zip(a, b, strict=True):  # least significant digit first
                carry = (int(x) + int(y) + carry) // 10
                count += carry
            out.append(float(count))
        return out

    return score


def warm_then_all(tokens_seen, budget_tokens, knee=0.3):
    """A pacing function: 30% of the data (the easiest) until `knee` of the budget, then all of it."""
    return jnp.where(tokens_seen < knee * budget_tokens, 0.3, 1.0)


def fewest_carries_first(train, *, batch_size, seed, budget_tokens, pacing, replay=0.0) -> Sampler:
    """A curriculum: easy-to-hard by `train.difficulty` (the scorer's carries), with `replay` of
    each batch drawn from all the data so the hardest sums are never starved."""
    k = int(round(replay * batch_size))
    paced = by_percentile(train.difficulty, batch_size=batch_size - k, seed=seed, pacing=pacing)

    def next_(state, tokens_seen):
        idx, state = paced.next(state, tokens_seen)
        extra = np.random.default_rng([seed, int(state.step), 7]).integers(0, len(train), k)
        return np.concatenate([idx, extra]), state

    return Sampler(paced.init, next_, info=paced.info)
