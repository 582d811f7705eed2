"""Evaluation: teacher-forced strict EM and loss in one pass, and batched greedy decoding.

Teacher forcing is what makes scoring many stopping points cheap: greedy decoding reproduces the
reference exactly iff the argmax equals the reference token at every answer position, EOS
included, so one forward pass gives strict EM (tests check that it agrees with real decoding).
Decoding is still what `recoup eval` reports, since normalized EM and F1 need the text.

Both are jitted once per shape: batches are padded to a fixed batch size, prompts to a multiple
of 8, and the whole decode loop is one `lax.while_loop` with a KV cache.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from framework import metrics, tokenizer
from framework.data import EncodedSplit, make_batch, round_up
from framework.model import forward
from framework.tokenizer import BOS, EOS, PAD


@functools.partial(jax.jit, static_argnums=0)
def _teacher_forced_batch(graphdef, params, inputs, targets, loss_mask):
    logits = forward(nnx.merge(graphdef, params), inputs)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    hit = (jnp.argmax(logits, -1) == targets) | (loss_mask == 0)
    return (ce * loss_mask).sum(1), loss_mask.sum(1), hit.all(1)


def teacher_forced(graphdef, params, split: EncodedSplit, batch_size: int) -> dict[str, Any]:
    """Per-example strict correctness and answer loss from one forward pass per batch.

    Returns `strict_em`, `loss` (mean per answer token), and arrays `correct` [n], `example_loss` [n].
    """
    n = len(split)
    correct, loss_sum, count = np.zeros(n, bool), np.zeros(n), np.zeros(n)
    for start in range(0, n, batch_size):
        idx = _padded_indices(start, n, batch_size)
        b = make_batch(split, idx)
        ls, cnt, ok = _teacher_forced_batch(graphdef, params, b.inputs, b.targets, b.loss_mask)
        k = min(batch_size, n - start)
        correct[start : start + k] = np.asarray(ok)[:k]
        loss_sum[start : start + k] = np.asarray(ls)[:k]
        count[start : start + k] = np.asarray(cnt)[:k]
    return {
        "strict_em": float(correct.mean()),
        "loss": float(loss_sum.sum() / count.sum()),
        "correct": correct,
        "example_loss": loss_sum / count,
    }


@functools.partial(jax.jit, static_argnums=(0, 3))
def greedy_decode(graphdef, params, prompts: jax.Array, max_new: int) -> jax.Array:
    """Greedy continuation of left-padded prompts (each row `PAD.. BOS prompt`).

    Returns [batch, max_new] token ids: the answer, then EOS, then PAD. Stops early once every
    row has emitted EOS. RoPE positions count only real tokens, so a left-padded row computes the
    same logits as the right-padded training layout.
    """
    model = nnx.merge(graphdef, params)
    b, p = prompts.shape
    s = p + max_new
    valid = prompts != PAD
    n_real = valid.sum(1)
    key_valid = jnp.concatenate([valid, jnp.zeros((b, max_new), bool)], axis=1)
    keys = jnp.arange(s)
    mask = (keys[None, None, :] <= jnp.arange(p)[None, :, None]) & key_valid[:, None, :]
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    logits, cache = model(prompts, positions, mask, model.init_cache(b, s), 0)
    first = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)

    def cond(carry):
        t, _, _, _, done, _ = carry
        return (t < max_new) & ~done.all()

    def body(carry):
        t, tok, cache, key_valid, done, out = carry
        out = out.at[:, t].set(jnp.where(done, PAD, tok))
        done = done | (tok == EOS)
        key_valid = key_valid.at[:, p + t].set(True)
        step_mask = ((keys <= p + t)[None, :] & key_valid)[:, None, :]
        logits, cache = model(tok[:, None], (n_real + t)[:, None], step_mask, cache, p + t)
        return t + 1, jnp.argmax(logits[:, 0], -1).astype(jnp.int32), cache, key_valid, done, out

    init = (0, first, cache, key_valid, jnp.zeros(b, bool), jnp.full((b, max_new), PAD, jnp.int32))
    return jax.lax.while_loop(cond, body, init)[-1]


def left_padded_prompts(prompts: list[str], multiple: int = 8) -> np.ndarray:
    """`PAD.. BOS prompt` rows, width rounded up to `multiple` so few shapes are compiled."""
    rows = [[BOS, *tokenizer.encode(p)] for p in prompts]
    width = round_up(max(len(r) for r in rows), multiple)
    out = np.full((len(rows), width), PAD, np.int32)
    for i, r in enumerate(rows):
        out[i, width - len(r) :] = r
    return out


class Decoded(NamedTuple):
    texts: list[str]  # the answer text of every prompt
    ended: list[bool]  # whether it ended with EOS (an unended answer is a miss)


def decode_split(graphdef, params, split: EncodedSplit, batch_size: int, slack: int = 4) -> Decoded:
    """Greedy answers for every prompt of a split."""
    max_new = int(split.answer_lens.max()) + 1 + slack  # answer, EOS, and room to overshoot
    all_prompts = left_padded_prompts(split.prompts)  # one width for the whole split
    texts, ended = [], []
    for start in range(0, len(split), batch_size):
        idx = _padded_indices(start, len(split), batch_size)
        out = np.asarray(greedy_decode(graphdef, params, all_prompts[idx], max_new))
        for row in out[: min(batch_size, len(split) - start)]:
            text, done = tokenizer.decode_generated(row)
            texts.append(text)
            ended.append(done)
    return Decoded(texts, ended)


def score(decoded: Decoded, split: EncodedSplit) -> dict[str, Any]:
    """EM (SQuAD-normalized), strict EM, token F1, n, and EM per difficulty bucket.

    An answer that never ended with EOS counts as wrong for EM and strict EM (F1 still gives
    partial credit for its text).
    """
    pairs = list(zip(decoded.texts, decoded.ended, split.answers, strict=True))
    em = [done and metrics.exact_match(p, r) for p, done, r in pairs]
    strict = [done and metrics.strict_exact_match(p, r) for p, done, r in pairs]
    f1 = [metrics.token_f1(p, r) for p, _, r in pairs]
    return {
        "em": float(np.mean(em)),
        "strict_em": float(np.mean(strict)),
        "f1": float(np.mean(f1)),
        "n": len(pairs),
        "em_by_difficulty": metrics.by_bucket(em, split.difficulty),
    }


def _padded_indices(start: int, n: int, batch_size: int) -> np.ndarray:
    """Indices of one batch; the last batch repeats row `n - 1` so every batch has one shape."""
    idx = np.arange(start, start + batch_size)
    return np.minimum(idx, n - 1)
