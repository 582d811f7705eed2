"""Output ensembles: k members all run at inference time, for k times the cost of one model.

Two ways to combine what the members say:

- **Log-prob averaging** (`ensemble_greedy_decode`, `decode_split_ensemble`,
  `ensemble_teacher_forced`): at every decoding step each member's next-token log-probabilities
  (a log_softmax per member) are averaged with weights, the argmax is taken, and that same token
  is fed to every member. The members' parameters are stacked on a leading axis (`stack_params`)
  and run with `jax.vmap` inside the one compiled decode loop of `framework.evaluation.evaluate.decode_loop`,
  each member with its own KV cache (the cache is vmapped too). The ensemble's distribution is
  the softmax of the averaged log-probs (a renormalized weighted geometric mean of the members'):
  its argmax is what decoding picks, and its cross-entropy is the loss teacher forcing reports.
- **Majority vote** (`vote`): each member decodes alone, and per prompt the answer (text, and
  whether it ended with EOS) that most members give wins; a tie goes to the answer with the
  highest mean log-probability over the members that gave it (`majority`).

Teacher forcing is what selection uses on the validation split: one vmapped forward pass per
batch, and its strict EM is exactly what log-prob-averaged greedy decoding would score.

    stacked = stack_params([run.params(s) for s in steps])
    decoded = decode_split_ensemble(run.graphdef, stacked, None, run.split("test"), 256)
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from framework.data.encoding import EncodedSplit
from framework.data.tokenizer import Ends
from framework.errors import ConfigError
from framework.evaluation import evaluate
from framework.evaluation.evaluate import Decoded
from framework.models.transformer import forward

Params = Any  # a parameter tree, e.g. the nnx.State of `nnx.split(model, nnx.Param)`
Answer = Hashable  # what a vote counts; `vote` uses (text, ended)


# == members ====================================================================================


def stack_params(params_list: Sequence[Params]) -> Params:
    """One tree whose every leaf has a leading member axis: `jax.vmap` runs the members at once.

    Raises ConfigError naming the first leaf whose path, shape or dtype differs from member 0's
    (members must share an architecture: checkpoints of one run, or runs of one model config).
    """
    if not params_list:
        raise ConfigError("members", "an ensemble needs at least one member")
    ref_leaves, ref_def = jax.tree_util.tree_flatten_with_path(params_list[0])
    for i, params in enumerate(params_list[1:], start=1):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        for (ref_path, ref), (path, leaf) in zip(ref_leaves, leaves, strict=False):
            if _leaf_name(path) != _leaf_name(ref_path):
                raise ConfigError("members", f"member {i} has parameter {_leaf_name(path)} where member 0 has "
                                  f"{_leaf_name(ref_path)}: members must share one architecture")
            if leaf.shape != ref.shape or leaf.dtype != ref.dtype:
                raise ConfigError("members", f"parameter {_leaf_name(path)} is {leaf.dtype}{list(leaf.shape)} in "
                                  f"member {i} but {ref.dtype}{list(ref.shape)} in member 0: members must "
                                  "share one architecture")
        if treedef != ref_def:  # same leading leaves, but one tree has more (or other containers)
            longer, other = (leaves, ref_leaves) if len(leaves) > len(ref_leaves) else (ref_leaves, leaves)
            extra = _leaf_name(longer[len(other)][0]) if len(longer) > len(other) else "a container"
            raise ConfigError("members", f"member {i} and member 0 differ in structure (first difference: {extra}): "
                              "members must share one architecture")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *params_list)


def n_members(stacked: Params) -> int:
    return jax.tree.leaves(stacked)[0].shape[0]


def member_weights(weights: Sequence[float] | np.ndarray | None, k: int) -> np.ndarray:
    """Weights [k] normalized to sum to 1 (uniform when None); ConfigError unless non-negative with a positive sum."""
    if weights is None:
        return np.full(k, 1.0 / k, np.float32)
    w = np.asarray(weights, np.float64)
    if w.shape != (k,):
        raise ConfigError("weights", f"got {w.size} weights for {k} members")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError("weights", f"{w.tolist()} must be finite and non-negative with a positive sum")
    return (w / w.sum()).astype(np.float32)


def average_logprobs(logits: jax.Array, weights: jax.Array) -> jax.Array:
    """Members' logits [k, ..., vocab] -> the weighted mean of their log-probabilities [..., vocab].

    `weights` [k] should sum to 1. The mean is not itself normalized: its argmax is the ensemble's
    choice, and a softmax of it (what the loss applies) gives the ensemble's distribution. That is
    also the softmax of the averaged logits (log_softmax shifts each member's row by a constant),
    but not the mean of the members' probabilities: tests tell the two apart.
    """
    return jnp.tensordot(weights, jax.nn.log_softmax(logits, axis=-1), axes=1)


def _leaf_name(path) -> str:
    name = jax.tree_util.keystr(path, simple=True, separator=".")
    return name.removesuffix(".value")  # nnx.Param leaves end in `.value`; the parameter is the rest


# == log-prob averaging =========================================================================


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def ensemble_greedy_decode(graphdef, stacked_params: Params, weights: jax.Array | None, prompts: jax.Array,
                           max_new: int, ends: Ends) -> jax.Array:
    """Greedy decoding by averaged log-probs: `evaluate.greedy_decode`'s contract, for stacked members.

    Args:
      graphdef: the members' shared graph definition.
      stacked_params: parameters from `stack_params`, leading axis k.
      weights: [k] member weights (normalized here), or None for uniform.
      prompts: [batch, width] left-padded prompts (`evaluate.left_padded_prompts`).
      max_new: tokens to generate at most.
      ends: the tokenizer's PAD and end-of-answer ids (`Tokenizer.ends`).

    Returns:
      [batch, max_new] token ids: the answer, then EOS, then PAD.
    """
    step, cache = ensemble_step(graphdef, stacked_params, weights, prompts.shape[0], prompts.shape[1] + max_new)
    return evaluate.decode_loop(step, cache, prompts, max_new, ends)


def ensemble_step(graphdef, stacked_params: Params, weights: jax.Array | None, batch: int, length: int):
    """(step, empty cache) of the averaged-log-prob ensemble for `evaluate.decode_loop` (inside jit):
    the members run vmapped, each with its own KV cache, all fed the same (ensemble) token."""
    k = n_members(stacked_params)
    w = jnp.full(k, 1.0 / k) if weights is None else jnp.asarray(weights, jnp.float32)
    if w.shape != (k,):
        raise ConfigError("weights", f"got {w.size} weights for {k} members")
    w = w / w.sum()

    def member(params, tokens, positions, mask, cache, index):
        return nnx.merge(graphdef, params)(tokens, positions, mask, cache, index)

    # Tokens, positions and the mask are shared: every member is fed the same (ensemble) token.
    members = jax.vmap(member, in_axes=(0, None, None, None, 0, None))

    def step(tokens, positions, mask, cache, index):
        logits, cache = members(stacked_params, tokens, positions, mask, cache, index)
        return average_logprobs(logits, w), cache

    cache = jax.vmap(lambda p: nnx.merge(graphdef, p).init_cache(batch, length))(stacked_params)
    return step, cache


def decode_split_ensemble(graphdef, stacked: Params, weights, split: EncodedSplit, batch_size: int,
                          slack: int = 4, rows: np.ndarray | None = None) -> Decoded:
    """Averaged-log-prob greedy answers for every prompt of a split (see `evaluate.decode_split`), or for
    the prompts at `rows` only (`evaluate.decode_batches`: each decoded as it is among all of them)."""
    w = member_weights(weights, n_members(stacked))
    tok = split.tokenizer
    decode = functools.partial(ensemble_greedy_decode, graphdef, stacked, w)
    tokens = evaluate.decode_batches(lambda p, m: decode(p, m, tok.ends), split, batch_size, slack, rows)
    return evaluate.to_decoded(tokens, tok)


@functools.partial(jax.jit, static_argnums=0)
def _ensemble_teacher_forced_batch(graphdef, stacked, weights, inputs, targets, loss_mask):
    logits = jax.vmap(lambda params: forward(nnx.merge(graphdef, params), inputs))(stacked)
    return evaluate.answer_stats(average_logprobs(logits, weights), targets, loss_mask)


def ensemble_teacher_forced(graphdef, stacked: Params, weights, split: EncodedSplit,
                            batch_size: int) -> dict[str, Any]:
    """`evaluate.teacher_forced` for the averaged-log-prob ensemble: same keys and meaning.

    `strict_em`/`correct` are what `decode_split_ensemble` would score as strict EM; `loss` is the
    cross-entropy of the ensemble's (renormalized) distribution per answer token.
    """
    w = member_weights(weights, n_members(stacked))
    batch_fn = functools.partial(_ensemble_teacher_forced_batch, graphdef, stacked, w)
    return evaluate.teacher_forced_with(batch_fn, split, batch_size)


# == majority vote ==============================================================================


def majority(answers: Sequence[Sequence[Answer]], scores) -> list[Answer]:
    """Per prompt, the answer most members gave; ties go to the highest mean score of its givers.

    Args:
      answers: `answers[m][i]` is member m's answer to prompt i (any hashable, e.g. (text, ended)).
      scores: [members, prompts], `scores[m][i]` member m's log-probability of its answer i.

    Returns:
      The winning answer per prompt. An exact tie in count and mean score goes to the answer met
      first (the lowest member index), so the result never depends on hashing order.
    """
    scores = np.asarray(scores, np.float64)
    n = len(answers[0]) if answers else 0
    if not answers or scores.shape != (len(answers), n) or any(len(a) != n for a in answers):
        raise ValueError(f"answers ({len(answers)} members) and scores {scores.shape} must both be [members, prompts]")
    winners = []
    for i in range(n):
        givers: dict[Answer, list[float]] = {}  # insertion order = first member to give it
        for m, member_answers in enumerate(answers):
            givers.setdefault(member_answers[i], []).append(scores[m, i])
        winners.append(max(givers, key=lambda a: (len(givers[a]), np.mean(givers[a]))))
    return winners


def vote(graphdef, params_list: Sequence[Params], split: EncodedSplit, batch_size: int, slack: int = 4) -> Decoded:
    """Majority vote over the members' greedy answers (text, ended), each member decoded alone.

    A member's score for its answer is the sum of the log-probabilities of the tokens it
    generated, EOS included; ties in the count go to the highest mean score (`majority`).
    """
    if not params_list:
        raise ConfigError("members", "an ensemble needs at least one member")
    answers, scores = [], []
    for params in params_list:
        decode = functools.partial(evaluate.greedy_decode_with_logprob, graphdef, params)
        tokens, logprob = evaluate.decode_batches(lambda p, m, d=decode: d(p, m, split.tokenizer.ends), split,
                                                  batch_size, slack)
        decoded = evaluate.to_decoded(tokens, split.tokenizer)
        answers.append(list(zip(decoded.texts, decoded.ended, strict=True)))
        scores.append(logprob)
    winners = majority(answers, np.stack(scores))
    return Decoded([text for text, _ in winners], [ended for _, ended in winners])
