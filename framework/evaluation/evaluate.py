"""Evaluation: teacher-forced strict EM and loss in one pass, and batched greedy decoding.

Teacher forcing is what makes scoring many stopping points cheap: greedy decoding reproduces the
reference exactly iff the argmax equals the reference token at every answer position, EOS
included, so one forward pass gives strict EM (tests check that it agrees with real decoding).
Decoding is still what `recoup eval` reports, since normalized EM and F1 need the text.

Both are jitted once per shape: batches are padded to a fixed batch size, prompts to a multiple
of 8, and the whole decode loop is one `lax.while_loop` with a KV cache. The loop (`decode_loop`)
and the host-side batching (`teacher_forced_with`, `decode_batches`) take the model as a function,
so an output ensemble (ensembles/output.py) decodes and scores through the same code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from framework.data.encoding import Batch, EncodedSplit, make_batch, round_up
from framework.data.tokenizer import Ends, Tokenizer
from framework.evaluation import metrics
from framework.models.transformer import batch_logits, forward


def answer_stats(scores: jax.Array, targets: jax.Array, loss_mask: jax.Array):
    """Per-row answer loss, answer-token count and strict correctness from next-token scores.

    `scores` [b, t, vocab] are logits or (possibly unnormalized) log-probabilities: the loss
    normalizes them with a softmax, and strict correctness is their argmax, which is what greedy
    decoding picks. A row is correct iff the argmax hits every answer target, EOS included.
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(scores, targets)
    hit = (jnp.argmax(scores, -1) == targets) | (loss_mask == 0)
    return (ce * loss_mask).sum(1), loss_mask.sum(1), hit.all(1)


@functools.partial(jax.jit, static_argnums=0)
def _teacher_forced_batch(graphdef, params, inputs, targets, loss_mask):
    return answer_stats(forward(nnx.merge(graphdef, params), inputs), targets, loss_mask)


# (inputs, targets, loss_mask) of one batch -> (loss sum [b], answer tokens [b], correct [b]).
TeacherForcedFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[jax.Array, jax.Array, jax.Array]]


def teacher_forced(graphdef, params, split: EncodedSplit, batch_size: int) -> dict[str, Any]:
    """Per-example strict correctness and answer loss from one forward pass per batch.

    Returns `strict_em`, `loss` (mean per answer token), and arrays `correct` [n], `example_loss` [n].
    """
    return teacher_forced_with(functools.partial(_teacher_forced_batch, graphdef, params), split, batch_size)


def teacher_forced_with(batch_fn: TeacherForcedFn, split: EncodedSplit, batch_size: int) -> dict[str, Any]:
    """`teacher_forced` for any scorer of a batch (one model, an ensemble): same keys, same batching."""
    n = len(split)
    correct, loss_sum, count = np.zeros(n, bool), np.zeros(n), np.zeros(n)
    for start in range(0, n, batch_size):
        idx = _padded_indices(start, n, batch_size)
        b = make_batch(split, idx)
        ls, cnt, ok = batch_fn(b.inputs, b.targets, b.loss_mask)
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


@functools.partial(jax.jit, static_argnums=0)
def _packed_batch(graphdef, params, batch: Batch):
    logits = batch_logits(nnx.merge(graphdef, params), batch)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch.targets)
    return (ce * batch.loss_mask).sum(), batch.loss_mask.sum()


def packed_loss(graphdef, params, rows: Batch, batch_size: int) -> float:
    """Mean loss per token of packed rows (a text run's validation), `batch_size` rows a pass."""
    n, total, count = len(rows.inputs), 0.0, 0.0
    batch_size = min(batch_size, n)  # a few validation rows: one pass of their own shape
    for start in range(0, n, batch_size):
        part = Batch(*(a[start:start + batch_size] for a in rows))
        if len(part.inputs) < batch_size:  # the last pass: empty rows (segment 0, no loss) keep one shape
            part = Batch(*(np.concatenate([a, np.zeros((batch_size - len(a), *a.shape[1:]), a.dtype)]) for a in part))
        ls, cnt = _packed_batch(graphdef, params, part)
        total, count = total + float(ls), count + float(cnt)
    return total / max(count, 1.0)


def validation(graphdef, params, val: EncodedSplit | Batch, batch_size: int) -> dict[str, Any]:
    """What a run scores at each stopping point: `teacher_forced` on a split of examples; on a text run's
    packed rows, which have no answers to match, the loss only (`strict_em` and `correct` None)."""
    if isinstance(val, EncodedSplit):
        return teacher_forced(graphdef, params, val, batch_size)
    return {"strict_em": None, "loss": packed_loss(graphdef, params, val, batch_size), "correct": None}


# (tokens [b, t], positions [b, t], mask [b, t, s], cache, cache_index) -> (scores [b, t, vocab], cache).
# A Transformer is one; an ensemble's is its members' averaged log-probs with a cache per member.
# Decoding takes the argmax of the scores.
StepFn = Callable[[jax.Array, jax.Array, jax.Array, Any, jax.Array | int], tuple[jax.Array, Any]]


class Confidence(NamedTuple):
    """Per-row statistics of the generated tokens (EOS included, PAD excluded) under the distribution
    decoding read them from (the softmax of the step's scores: a model's, or an ensemble's
    renormalized average): what a cascade's confidence signals are computed from."""

    logprob: jax.Array  # [b] sum of the chosen tokens' log-probabilities (what `with_logprob` returns)
    min_logprob: jax.Array  # [b] the lowest chosen-token log-probability
    min_margin: jax.Array  # [b] the smallest top-2 margin p(first) - p(second) over the tokens
    length: jax.Array  # [b] int32, tokens generated


def decode_loop(step: StepFn, cache, prompts: jax.Array, max_new: int, ends: Ends, with_logprob: bool = False,
                sampling: tuple[jax.Array, jax.Array] | None = None, limits: jax.Array | None = None,
                with_confidence: bool = False):
    """Greedy (or sampled) decoding of left-padded prompts as one `lax.while_loop`; call it inside `jax.jit`.

    `cache` is the empty cache `step` expects, `prompts.shape[1] + max_new` long; `ends` the
    tokenizer's PAD (the prompts' left padding, and what follows an answer) and its end-of-answer
    ids. Returns the [batch, max_new] tokens (answer, EOS, PAD..), and with `with_logprob` also the
    per-row sum of the chosen tokens' log-probabilities (log_softmax of the scores), EOS included,
    PAD excluded. With `with_confidence` (and not `with_logprob`) the second output is a
    `Confidence` instead, whose `logprob` is that same sum; the tokens do not change.

    `sampling` = (temperature [b], keys [b, 2]): a row with temperature > 0 samples from
    softmax(scores / temperature), its t-th token with `fold_in(key, t)`, so what a row draws
    does not depend on the rows batched with it; a row at 0 takes the argmax, as without
    `sampling`. `limits` [b] (each <= max_new) ends a row after that many tokens: the loop stops
    as soon as every row has ended or hit its limit. Both are arrays, so they never recompile.
    """
    b, p = prompts.shape
    s = p + max_new
    pad, stop = ends.pad, jnp.asarray(ends.stop, jnp.int32)
    valid = prompts != pad
    n_real = valid.sum(1)
    key_valid = jnp.concatenate([valid, jnp.zeros((b, max_new), bool)], axis=1)
    keys = jnp.arange(s)
    mask = (keys[None, None, :] <= jnp.arange(p)[None, :, None]) & key_valid[:, None, :]
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    limits = jnp.full(b, max_new) if limits is None else limits
    if with_logprob and with_confidence:
        raise ValueError("ask for with_logprob or with_confidence, not both: a Confidence holds the summed log-prob")

    def pick(scores, t):  # [b, vocab] -> the chosen token, its log-prob when asked for (else 0), its top-2 margin
        tok = jnp.argmax(scores, -1).astype(jnp.int32)
        if sampling is not None:
            temperature, row_keys = sampling
            hot = temperature > 0
            scaled = scores / jnp.where(hot, temperature, 1.0)[:, None]
            drawn = jax.vmap(lambda k, x: jax.random.categorical(jax.random.fold_in(k, t), x))(row_keys, scaled)
            tok = jnp.where(hot, drawn.astype(jnp.int32), tok)
        if not (with_logprob or with_confidence):
            return tok, jnp.zeros(b, jnp.float32), ()
        logp = jax.nn.log_softmax(scores, -1)
        lp = jnp.take_along_axis(logp, tok[:, None], -1)[:, 0]
        if not with_confidence:
            return tok, lp, ()
        top = jnp.exp(jax.lax.top_k(logp, 2)[0])
        return tok, lp, top[:, 0] - top[:, 1]

    def confidence(conf, live, tok_lp, tok_margin):  # the running minima and length of the live rows
        if not with_confidence:
            return ()
        min_lp, min_margin, length = conf
        return (jnp.where(live, jnp.minimum(min_lp, tok_lp), min_lp),
                jnp.where(live, jnp.minimum(min_margin, tok_margin), min_margin), length + live)

    scores, cache = step(prompts, positions, mask, cache, 0)
    first, first_lp, first_margin = pick(scores[:, -1], 0)

    def cond(carry):
        t, done = carry[0], carry[6]
        return (t < max_new) & ~done.all()

    def body(carry):
        t, tok, tok_lp, tok_margin, cache, key_valid, done, out, total, conf = carry
        out = out.at[:, t].set(jnp.where(done, pad, tok))
        total = total + jnp.where(done, 0.0, tok_lp)
        conf = confidence(conf, ~done, tok_lp, tok_margin)
        done = done | (tok[:, None] == stop[None]).any(1) | (t + 1 >= limits)
        key_valid = key_valid.at[:, p + t].set(True)
        step_mask = ((keys <= p + t)[None, :] & key_valid)[:, None, :]
        scores, cache = step(tok[:, None], (n_real + t)[:, None], step_mask, cache, p + t)
        tok, tok_lp, tok_margin = pick(scores[:, 0], t + 1)
        return t + 1, tok, tok_lp, tok_margin, cache, key_valid, done, out, total, conf

    zeros = jnp.zeros(b, jnp.float32)
    conf = (jnp.full(b, jnp.inf), jnp.full(b, jnp.inf), jnp.zeros(b, jnp.int32)) if with_confidence else ()
    init = (0, first, first_lp, first_margin, cache, key_valid, jnp.zeros(b, bool),
            jnp.full((b, max_new), pad, jnp.int32), zeros, conf)
    *_, out, total, conf = jax.lax.while_loop(cond, body, init)
    if with_confidence:
        return out, Confidence(total, *conf)
    return (out, total) if with_logprob else out


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def greedy_decode(graphdef, params, prompts: jax.Array, max_new: int, ends: Ends) -> jax.Array:
    """Greedy continuation of left-padded prompts (each row `PAD.. prefix prompt`; `ends`: the tokenizer's).

    Returns [batch, max_new] token ids: the answer, then EOS, then PAD. Stops early once every
    row has emitted EOS. RoPE positions count only real tokens, so a left-padded row computes the
    same logits as the right-padded training layout.
    """
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(prompts.shape[0], prompts.shape[1] + max_new)
    return decode_loop(model, cache, prompts, max_new, ends)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def greedy_decode_with_logprob(graphdef, params, prompts: jax.Array, max_new: int,
                               ends: Ends) -> tuple[jax.Array, jax.Array]:
    """`greedy_decode`, plus each row's summed log-probability of the tokens it generated (EOS included)."""
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(prompts.shape[0], prompts.shape[1] + max_new)
    return decode_loop(model, cache, prompts, max_new, ends, with_logprob=True)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def greedy_decode_with_confidence(graphdef, params, prompts: jax.Array, max_new: int,
                                  ends: Ends) -> tuple[jax.Array, Confidence]:
    """`greedy_decode`, plus each row's `Confidence` in its generated answer (EOS included)."""
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(prompts.shape[0], prompts.shape[1] + max_new)
    return decode_loop(model, cache, prompts, max_new, ends, with_confidence=True)


def left_padded_prompts(prompts: list[str], tok: Tokenizer, multiple: int = 8) -> np.ndarray:
    """`PAD.. prefix prompt` rows, width rounded up to `multiple` so few shapes are compiled."""
    rows = [[*tok.prefix, *tok.encode(p)] for p in prompts]
    width = round_up(max(len(r) for r in rows), multiple)
    out = np.full((len(rows), width), tok.pad, np.int32)
    for i, r in enumerate(rows):
        out[i, width - len(r) :] = r
    return out


class Decoded(NamedTuple):
    texts: list[str]  # the answer text of every prompt
    ended: list[bool]  # whether it ended with EOS (an unended answer is a miss)


def decode_split(graphdef, params, split: EncodedSplit, batch_size: int, slack: int = 4) -> Decoded:
    """Greedy answers for every prompt of a split."""
    tok = split.tokenizer
    tokens = decode_batches(lambda prompts, max_new: greedy_decode(graphdef, params, prompts, max_new, tok.ends),
                            split, batch_size, slack)
    return to_decoded(tokens, tok)


def decode_batches(decode_fn: Callable[[np.ndarray, int], Any], split: EncodedSplit, batch_size: int,
                   slack: int = 4, rows: np.ndarray | None = None) -> Any:
    """`decode_fn(prompts, max_new)` over a split in fixed-shape batches, outputs as numpy, padding rows dropped.

    `decode_fn` returns an array or a tuple of arrays with the batch first (`greedy_decode`,
    `greedy_decode_with_logprob`, an ensemble's decode); the same structure comes back with n rows.
    `rows` (indices, not empty): decode only those, in that order, at the width and `max_new` of the
    whole split, so each row is decoded exactly as it is among all of them (a cascade's escalated rows).
    """
    max_new = int(split.answer_lens.max()) + 1 + slack  # answer, EOS, and room to overshoot
    all_prompts = left_padded_prompts(split.prompts, split.tokenizer)  # one width for the whole split
    if rows is not None:
        if len(rows) == 0:
            raise ValueError("decode_batches: rows must not be empty")
        all_prompts = all_prompts[np.asarray(rows)]
    n, parts = len(all_prompts), []
    for start in range(0, n, batch_size):
        parts.append(jax.tree.map(np.asarray, decode_fn(all_prompts[_padded_indices(start, n, batch_size)], max_new)))
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *parts)  # only the last batch has padding rows


def to_decoded(tokens: np.ndarray, tok: Tokenizer) -> Decoded:
    """Answer texts, and whether each ended with EOS, from generated token rows [n, max_new]."""
    rows = [tok.decode_generated(row) for row in tokens]
    return Decoded([text for text, _ in rows], [done for _, done in rows])


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
