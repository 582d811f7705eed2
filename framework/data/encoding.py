"""From `datasets.Dataset` splits to fixed-shape numpy batches, and the one definition of a token.

Sequence layout (right-padded to a fixed width so the train step compiles once):

    tokens  = prefix p1 .. pP a1 .. aA EOS PAD ..
    inputs  = tokens[:, :-1], EOS -> PAD   targets = tokens[:, 1:]
    loss_mask[j] = 1  iff targets[j] is an answer token or the EOS

`prefix`, PAD and EOS are the tokenizer's (`framework/data/tokenizer.py`): BOS for the byte
tokenizer, whatever a Hugging Face tokenizer's post-processor puts first (BOS, or nothing for
Qwen). The prompt and the answer are encoded separately, so the boundary between them is a token
boundary whatever the tokenizer would merge across it.

**Counted training token** (the unit of every budget, stopping point and schedule in recoup):
every non-PAD token of a training batch's `inputs`. Per example that is len(prefix) + P + A (the
final EOS is only a target). **Answer tokens**: `loss_mask.sum()` = A + 1 per example.

Which examples a batch draws is decided on the host by a `Sampler` (an optax-style pair of pure
functions with explicit state), so a curriculum can change what is drawn as tokens are seen
without ever touching the compiled train step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import datasets
import numpy as np

from framework.config import DataConfig
from framework.data import tasks
from framework.data.files import column
from framework.data.tokenizer import Tokenizer, load
from framework.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
    """One split, tokenized once. Row i is example i of the split."""

    tokens: np.ndarray  # [n, width] int32, prefix prompt answer EOS PAD..
    # [n] where the answer starts among the targets: targets[prompt_lens] is the first answer token, so it
    # is len(prefix) + P - 1 (the prompt's P tokens for the byte tokenizer, whose prefix is BOS)
    prompt_lens: np.ndarray
    answer_lens: np.ndarray  # [n] answer tokens (without EOS)
    difficulty: np.ndarray  # [n] float64
    prompts: list[str]
    answers: list[str]
    tokenizer: Tokenizer  # what encoded it, and decodes what a model answers

    def __len__(self) -> int:
        return len(self.prompts)


class Batch(NamedTuple):
    inputs: np.ndarray  # [b, width - 1] int32
    targets: np.ndarray  # [b, width - 1] int32
    loss_mask: np.ndarray  # [b, width - 1] float32: answer tokens and EOS
    # Packed rows (framework.data.text): positions restart and attention stays inside each segment
    # (1, 2, ...; 0: empty). None: one example per row, right-padded, positions 0.. and a causal mask.
    positions: np.ndarray | None = None  # [b, width - 1] int32
    segment_ids: np.ndarray | None = None  # [b, width - 1] int32


def sequence_width(splits: dict[str, datasets.Dataset], tok: Tokenizer, multiple: int = 8,
                   max_len: int | None = None) -> int:
    """Smallest width holding every example of every split, so inputs are a multiple of 8 wide.

    An example longer than `max_len` tokens (`prefix prompt answer EOS`) is a ConfigError naming it.
    """
    longest, prompt = 0, ""
    for ds in splits.values():
        for p, a in zip(column(ds, "prompt"), column(ds, "answer"), strict=True):
            n = len(tok.prefix) + len(tok.encode(p)) + len(tok.encode(a)) + 1
            if n > longest:
                longest, prompt = n, p
    if max_len is not None and longest > max_len:
        shown = prompt[:40] + ("..." if len(prompt) > 40 else "")
        raise ConfigError("data.max_seq_len", f"the example with prompt {shown!r} is {longest} tokens "
                          f"(prompt and answer, with the {'BOS' if tok.prefix else 'prefix'} and EOS), over the "
                          f"limit of {max_len}; shorten or drop such rows, or raise max_seq_len")
    return round_up(longest - 1, multiple) + 1


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` >= n (shapes in buckets: fewer compilations)."""
    return -(-n // multiple) * multiple


def encode_split(ds: datasets.Dataset, width: int, tok: Tokenizer) -> EncodedSplit:
    prompts, answers = column(ds, "prompt"), column(ds, "answer")
    tokens = np.full((len(prompts), width), tok.pad, np.int32)
    plens, alens = np.zeros(len(prompts), np.int32), np.zeros(len(prompts), np.int32)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        pt, at = [*tok.prefix, *tok.encode(p)], tok.encode(a)
        if not pt:
            raise ConfigError("data", f"example {i} has an empty prompt and the tokenizer puts no BOS before "
                                      "it: there is nothing to predict its first answer token from")
        seq = [*pt, *at, tok.eos]
        if len(seq) > width:
            raise ValueError(f"example {i} needs {len(seq)} tokens, width is {width}")
        tokens[i, : len(seq)] = seq
        plens[i], alens[i] = len(pt) - 1, len(at)  # targets[plens] is the first answer token
    difficulty = np.asarray(column(ds, "difficulty"), np.float64)
    return EncodedSplit(tokens, plens, alens, difficulty, prompts, answers, tok)


def make_batch(split: EncodedSplit, idx: np.ndarray) -> Batch:
    tokens = split.tokens[idx]
    targets = tokens[:, 1:]
    # EOS is only ever a target: as an input it would predict padding, which nothing trains on.
    # Blanking it keeps the counted tokens of an example (1 + P + A) independent of the width.
    pad, eos = split.tokenizer.pad, split.tokenizer.eos
    inputs = np.where(tokens[:, :-1] == eos, pad, tokens[:, :-1])
    j = np.arange(inputs.shape[1])[None]
    start = split.prompt_lens[idx][:, None]  # targets[start] is the first answer token
    end = start + split.answer_lens[idx][:, None]  # targets[end] is the EOS
    loss_mask = ((j >= start) & (j <= end)).astype(np.float32)
    return Batch(inputs, targets, loss_mask)


def rows_of(batch: Batch, rows: np.ndarray | slice) -> Batch:
    """Rows `rows` of `batch`: a batch-warmup step's share of the batch drawn (row by row what
    `make_batch` of those examples gives)."""
    return Batch(*(None if a is None else a[rows] for a in batch))


def counted_tokens(batch: Batch, pad: int) -> int:
    """THE definition of a counted training token: a non-PAD input token of a training batch
    (`pad`: the PAD id of the tokenizer that encoded it)."""
    return int(np.count_nonzero(batch.inputs != pad))


def mean_counted_tokens(split: EncodedSplit) -> float:
    """Counted tokens per example of a split, on average (the s̄ of `model.training_flops`)."""
    return counted_tokens(make_batch(split, np.arange(len(split))), split.tokenizer.pad) / len(split)


def answer_tokens(batch: Batch) -> int:
    """Tokens the loss is computed on (answer bytes and the EOS)."""
    return int(batch.loss_mask.sum())


# -- samplers --------------------------------------------------------------------------------
# A sampler decides which training examples each step draws. It is a set of pure functions:
#   init() -> state
#   next(state, tokens_seen) -> (indices [batch_size] int, new_state)
#   observe(state, indices, losses) -> new_state      optional: per-example losses of a step
#   info(state, tokens_seen) -> {name: float}         optional: logged to metrics.jsonl
# `state` is a NamedTuple (or tuple) of numpy arrays, saved in every checkpoint, so a resumed run
# draws the same batches as an uninterrupted one. `tokens_seen` is what a curriculum paces on.
# The trainer calls `observe` with step t's losses just before drawing step t + 2's batch, so the
# host never waits on the step it has just dispatched.

SamplerState = Any


class Sampler(NamedTuple):
    init: Callable[[], SamplerState]
    next: Callable[[SamplerState, int], tuple[np.ndarray, SamplerState]]
    observe: Callable[[SamplerState, np.ndarray, np.ndarray], SamplerState] | None = None
    info: Callable[[SamplerState, int], dict[str, float]] | None = None


class EpochState(NamedTuple):
    epoch: np.ndarray  # int64 scalar
    cursor: np.ndarray  # int64 scalar: examples of this epoch's permutation already drawn


def uniform_sampler(n_examples: int, batch_size: int, seed: int) -> Sampler:
    """Uniform sampling without replacement: a fresh seeded permutation every epoch.

    A batch that runs past the end of an epoch is completed from the next epoch's permutation.
    """
    if n_examples <= 0:
        raise ValueError("the training split is empty")

    @functools.lru_cache(maxsize=2)  # the current and the next epoch
    def permutation(epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(n_examples)

    def init() -> EpochState:
        return EpochState(np.asarray(0, np.int64), np.asarray(0, np.int64))

    def next_(state: EpochState, tokens_seen: int) -> tuple[np.ndarray, EpochState]:
        del tokens_seen  # uniform: what is drawn does not depend on progress
        epoch, cursor, out = int(state.epoch), int(state.cursor), []
        need = batch_size
        while need:
            take = permutation(epoch)[cursor : cursor + need]
            out.append(take)
            need -= len(take)
            cursor += len(take)
            if cursor == n_examples:
                epoch, cursor = epoch + 1, 0
        return np.concatenate(out), EpochState(np.asarray(epoch, np.int64), np.asarray(cursor, np.int64))

    return Sampler(init, next_)


# -- batches ---------------------------------------------------------------------------------
# Where a run's training batches come from, as a pair of pure functions with explicit state (saved in
# every checkpoint as its `sampler` item):
#   init() -> state
#   draw(state, tokens_seen) -> (batch, example indices or None, new_state)
# Examples drawn by a sampler (`sampled_batches`, the indices those of the split), or rows packed from
# a text corpus (framework.data.text.packed_batches, no indices).


class Batches(NamedTuple):
    init: Callable[[], Any]
    draw: Callable[[Any, int], tuple[Batch, np.ndarray | None, Any]]


def sampled_batches(split: EncodedSplit, sampler: Sampler) -> Batches:
    """Batches of the examples of `split` that `sampler` picks, one right-padded example a row; the
    state is the sampler's."""

    def draw(state: SamplerState, tokens_seen: int):
        idx, state = sampler.next(state, tokens_seen)
        return make_batch(split, idx), idx, state

    return Batches(sampler.init, draw)


def prepare(cfg: DataConfig) -> dict[str, EncodedSplit]:
    """Build (or load) the task's train/validation/test splits and tokenize them once.

    Deterministic in `cfg`: the trainer and `recoup eval` call it with the run's saved config and
    get identical splits. The width is shared by all splits (a shape, not a tuned choice).
    """
    if cfg.text is not None:  # what every reader of a run's examples (eval, ensembles, report) comes through
        raise ConfigError("data.text", f"{cfg.text} is a text corpus: it has no prompts and answers, so there is "
                                       "no exact match to score (a text run's validation is its loss: metrics.jsonl, "
                                       "recoup runs show)")
    tok = load(cfg.tokenizer)
    raw = tasks.build_splits(cfg)
    width = sequence_width(raw, tok, max_len=cfg.max_seq_len)
    return {name: encode_split(raw[name], width, tok) for name in tasks.SPLITS}
