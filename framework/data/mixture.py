"""The sources a mixture draws its rows from (`--mix`, DataConfig.mixture): text corpora and prompt/answer files.

Each entry of the mixture is one source of packed rows of `seq_len` slots, drawn a row at a time by
`packing.mixed_batches`, and read with the main data's tokenizer (`data.tokenizer`):

- `PATH`: a text corpus, streamed from its start as `--text` streams one (framework.data.text), nothing
  of it held out; the loss is on every token.
- `qa:FILE` (config.QA_PREFIX): prompt/answer examples, read and split as this run would read and split
  `--data FILE` (framework.data.encoding.prepare, with the run's --prompt-col, --answer-col, --val-size,
  --test-size, --data-seed, --split-by). Only the train split is packed, whole examples as
  `--pack --data FILE` packs them (packing.packed_examples, in the seeded shuffle it has with the run's
  seed): the loss on each answer and its EOS, the counted tokens `prefix prompt answer`. Its validation
  and test prompts are never trained on, so a later run or evaluation on that file's held-out splits
  stays honest.

Said by a prefix, not found from the columns: a JSON Lines or Parquet file can be either (a `text`
column, or `prompt` and `answer`, or all three), and a renamed column must not silently change what a
source is. A source's state (a corpus's stream position, a file's `EpochState`) is part of the mixture's
checkpointed state. Anything wrong with a source is a ConfigError naming data.mixture and the source.
"""

from __future__ import annotations

import dataclasses

from framework.config import DataConfig, qa_source
from framework.data import packing, text
from framework.data.encoding import Batches, EncodedSplit, prepare
from framework.data.tokenizer import load
from framework.errors import ConfigError


def qa_config(data: DataConfig, file: str) -> DataConfig:
    """How this run reads prompt/answer `file`: as its `--data` (the same columns, splits, seed and tokenizer).
    Difficulty is not read: packed examples come in a seeded shuffle, never by difficulty."""
    return dataclasses.replace(data, task=None, data_path=file, text=None, pack=False, seq_len=None, mixture=(),
                               difficulty_col=None, split_cuts=None)


def qa_train_split(data: DataConfig, file: str) -> EncodedSplit:
    """The train split of prompt/answer `file` as this run splits it (`qa_config`)."""
    return prepare(qa_config(data, file))["train"]


def source(data: DataConfig, entry: str, seed: int) -> Batches:
    """`Batches` of one packed row a draw from mixture entry `entry` (a corpus path, or "qa:FILE")."""
    file = qa_source(entry)
    try:
        if file is None:
            return text.packed_batches(text.TextStream(entry, load(data.tokenizer), data.seq_len, data.text_col), 1)
        return packing.packed_examples(qa_train_split(data, file), data.seq_len, 1, seed)
    except ConfigError as e:  # the mixture is the field to fix; the source's own field says what in it
        raise ConfigError("data.mixture", f"{entry}: {e.field}: {e.message}", e.allowed) from None


def sources(data: DataConfig, seed: int) -> list[Batches]:
    """One `source` per entry of `data.mixture`, in its order; `seed`: the run's (each file's shuffle)."""
    return [source(data, entry, seed) for entry, _ in data.mixture]
