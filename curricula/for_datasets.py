"""The named curricula over a `datasets.Dataset` of your own: batches of row indices, drawn by the
rows' difficulty column and paced by tokens, for a training loop that is not recoup's.

    ds = score_dataset(ds, prompt_length())          # curricula.scorers: or bring a difficulty column
    sampler = dataset_sampler(ds, "easy-to-hard", batch_size=32, seed=0, budget_tokens=1_000_000,
                              pacing="linear", pacing_args={"start": 0.2, "ramp": 0.5})
    state = sampler.init()
    rows, state = sampler.next(state, tokens_seen)   # indices into ds; batch = ds[rows]
    state = sampler.observe(state, rows, losses)     # only self-paced curricula observe (else None)

The sampler is the one recoup's trainer uses: its state is a tuple of numpy arrays (save it with
your checkpoint and the draws continue exactly), and step s's draw is seeded by (seed, s).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import datasets
import numpy as np

from curricula.build import sampler_factory
from framework.data.encoding import Sampler
from framework.data.files import column
from framework.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Examples:
    """What a curriculum reads of the rows it draws from (recoup's `EncodedSplit` has the same fields)."""

    difficulty: np.ndarray  # [n] float64
    prompt_lens: np.ndarray  # [n] tokens of each row (seqlen-warmup draws the shortest first)
    answer_lens: np.ndarray  # [n] more tokens of each row, added to prompt_lens

    def __len__(self) -> int:
        return len(self.difficulty)


def examples_of(ds: datasets.Dataset, difficulty_col: str = "difficulty", length_col: str | None = None) -> Examples:
    """The difficulty (and, from `length_col`, the length in tokens) of each row of `ds`. Without
    `length_col`, lengths are the UTF-8 bytes of a `prompt` and an `answer` column if `ds` has them
    (recoup's byte-level tokens), else 0 (then seqlen-warmup draws uniformly)."""
    for field, col in (("difficulty_col", difficulty_col), ("length_col", length_col)):
        if col is not None and col not in ds.column_names:
            raise ConfigError(field, f"the dataset has no column {col!r}", ds.column_names)
    try:
        difficulty = np.asarray(column(ds, difficulty_col), np.float64)
    except (TypeError, ValueError):
        raise ConfigError("difficulty_col", f"column {difficulty_col!r} must hold numbers") from None
    if difficulty.ndim != 1 or not np.isfinite(difficulty).all():
        raise ConfigError("difficulty_col", f"column {difficulty_col!r} must hold one finite number per row")
    if length_col is not None:
        lengths = np.asarray(column(ds, length_col), np.int64)
        answers = np.zeros_like(lengths)
    elif {"prompt", "answer"} <= set(ds.column_names):
        lengths = np.asarray([len(str(p).encode()) for p in column(ds, "prompt")], np.int64)
        answers = np.asarray([len(str(a).encode()) for a in column(ds, "answer")], np.int64)
    else:
        lengths = answers = np.zeros(len(difficulty), np.int64)
    return Examples(difficulty, lengths, answers)


def dataset_sampler(ds: datasets.Dataset, curriculum: str = "uniform", *, batch_size: int, seed: int,
                    budget_tokens: int, pacing: str = "constant", pacing_args: dict[str, Any] | None = None,
                    curriculum_args: dict[str, Any] | None = None, difficulty_col: str = "difficulty",
                    length_col: str | None = None) -> Sampler:
    """A sampler of `ds`'s rows for the curriculum and pacing named (curricula.registry, or your own
    "module:attr"), planned over `budget_tokens`: the same names and arguments as `recoup train
    --curriculum/--pacing`, checked the same way."""
    if len(ds) == 0:
        raise ConfigError("dataset", "the dataset has no rows")
    make = sampler_factory(curriculum, curriculum_args or {}, pacing, pacing_args or {}, budget_tokens)
    return make(examples_of(ds, difficulty_col, length_col), batch_size, seed)
