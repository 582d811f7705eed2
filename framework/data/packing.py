"""Packed rows: several sequences share one row of `seq_len` slots, kept apart by segment ids.

A row holds (input, target) pairs. Each piece of a sequence placed in a row is a segment: its
`segment_ids` (1, 2, ...; 0 marks an empty slot) keep attention inside it and its `positions` restart
at 0 (framework.models.transformer.segment_causal_mask), so a packed row computes what each piece
computes alone. Two things are packed:

- text documents (framework.data.text), split across rows where they do not fit, the loss on every
  pair (`pack_documents`, and the streamed `TextStream`);
- prompt/answer examples (`packed_examples`, `DataConfig.pack`): whole, as many as fit in a row (the
  next one starts the next row), the loss on the answer and its EOS as without packing. A row of
  short examples then carries several instead of one and its padding.

Counted tokens keep their one definition (framework.data.encoding.counted_tokens): the non-PAD inputs.
A packed example's inputs are `prefix prompt answer` (the EOS only a target), as `make_batch` counts it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from framework.data.encoding import Batch, Batches, EncodedSplit, EpochState
from framework.errors import ConfigError


class PackedRows(NamedTuple):
    inputs: np.ndarray  # [n, seq_len] int32, PAD in empty slots
    targets: np.ndarray  # [n, seq_len] int32
    loss_mask: np.ndarray  # [n, seq_len] float32: the slots the loss is on (text: every filled one)
    positions: np.ndarray  # [n, seq_len] int32, from 0 in each segment
    segment_ids: np.ndarray  # [n, seq_len] int32, 1.. per piece of a sequence in the row; 0: empty

    def batch(self) -> Batch:
        """As a training batch (framework.data.encoding.Batch, packed)."""
        return Batch(self.inputs, self.targets, self.loss_mask, self.positions, self.segment_ids)


def empty_rows(n: int, seq_len: int, pad: int) -> PackedRows:
    return PackedRows(np.full((n, seq_len), pad, np.int32), np.full((n, seq_len), pad, np.int32),
                      np.zeros((n, seq_len), np.float32), np.zeros((n, seq_len), np.int32),
                      np.zeros((n, seq_len), np.int32))


def place(rows: PackedRows, r: int, col: int, seq, start: int, k: int, segment: int, loss_mask=1.0) -> None:
    """Pairs start..start+k of token sequence `seq` into row `r` from slot `col`, as segment `segment`;
    `loss_mask`: 1 on every pair, or one value per pair."""
    piece = slice(col, col + k)
    rows.inputs[r, piece] = seq[start:start + k]
    rows.targets[r, piece] = seq[start + 1:start + k + 1]
    rows.loss_mask[r, piece] = loss_mask
    rows.positions[r, piece] = np.arange(k)
    rows.segment_ids[r, piece] = segment


def pack_documents(docs: list[list[int]], seq_len: int, pad: int) -> PackedRows:
    """Every pair of `docs` in rows of `seq_len`, as `TextStream` packs them (a document goes on in the
    next row where it does not fit); only the last row has empty slots. A text run's validation rows."""
    rows = empty_rows(max(1, -(-sum(len(d) - 1 for d in docs) // seq_len)), seq_len, pad)
    r, col, segment = 0, 0, 0
    for doc in docs:
        at = 0
        while at < len(doc) - 1:
            if col == seq_len:
                r, col, segment = r + 1, 0, 0
            k = min(seq_len - col, len(doc) - 1 - at)
            segment += 1
            place(rows, r, col, doc, at, k, segment)
            col, at = col + k, at + k
    return rows


def example_pairs(split: EncodedSplit) -> np.ndarray:
    """Each example's (input, target) pairs: `prefix prompt answer` predicting the next token, the
    last one the EOS."""
    return split.prompt_lens.astype(np.int64) + split.answer_lens + 1


def packed_examples(split: EncodedSplit, seq_len: int, batch_size: int, seed: int) -> Batches:
    """Batches of `batch_size` rows of `seq_len` slots, each holding as many whole examples of `split`
    as fit, in the order of a fresh seeded permutation every epoch (the uniform sampler's, so a packed
    run meets the examples in the order an unpacked one does). The loss is on each example's answer
    and EOS; the state is an `EpochState` (epoch, examples of its permutation drawn)."""
    pairs = example_pairs(split)
    if int(pairs.max()) > seq_len:
        i = int(np.argmax(pairs))
        raise ConfigError("data.seq_len", f"{seq_len} cannot hold the example with prompt {split.prompts[i][:40]!r} "
                                          f"({int(pairs[i])} tokens with its prefix and answer): raise --seq-len")
    n, pad = len(split), split.tokenizer.pad

    @functools.lru_cache(maxsize=2)  # the current and the next epoch
    def permutation(epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(n)

    def draw(state: EpochState, tokens_seen: int):
        del tokens_seen  # a seeded shuffle: what is drawn does not depend on progress
        epoch, cursor = int(state.epoch), int(state.cursor)
        rows = empty_rows(batch_size, seq_len, pad)
        for r in range(batch_size):
            col, segment = 0, 0
            while col + pairs[i := permutation(epoch)[cursor]] <= seq_len:
                k, start = int(pairs[i]), int(split.prompt_lens[i])  # targets[start..k-1]: the answer, EOS
                segment += 1
                place(rows, r, col, split.tokens[i], 0, k, segment, np.arange(k) >= start)
                col, cursor = col + k, cursor + 1
                if cursor == n:
                    epoch, cursor = epoch + 1, 0
        return rows.batch(), None, EpochState(np.asarray(epoch, np.int64), np.asarray(cursor, np.int64))

    return Batches(lambda: EpochState(np.asarray(0, np.int64), np.asarray(0, np.int64)), draw)


def mixed_batches(sources: list[Batches], shares: list[float], batch_size: int, seed: int) -> Batches:
    """Batches of `batch_size` rows, each drawn from one of `sources` (each a `Batches` of one row a draw):
    the i-th with probability `shares[i]`, by a seeded draw per row (the r-th row of the run: the same
    on resume). The state: the rows drawn so far and each source's state."""
    cum = np.cumsum(shares) / np.sum(shares)
    cum[-1] = 1.0

    def init() -> dict:
        return {"rows": np.asarray(0, np.int64), **{f"source{k}": s.init() for k, s in enumerate(sources)}}

    def draw(state: dict, tokens_seen: int):
        state, parts = dict(state), []
        for r in range(int(state["rows"]), int(state["rows"]) + batch_size):
            k = int(np.searchsorted(cum, np.random.default_rng([seed, 0x6D6978, r]).random(), side="right"))
            part, _, state[f"source{k}"] = sources[k].draw(state[f"source{k}"], tokens_seen)
            parts.append(part)
        state["rows"] = np.asarray(int(state["rows"]) + batch_size, np.int64)
        return Batch(*(np.concatenate(column) for column in zip(*parts, strict=True))), None, state

    return Batches(init, draw)
