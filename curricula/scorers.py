"""Difficulty scorers: plain functions from a batch of examples to one score per example.

A scorer takes the batch dict that `datasets.Dataset.map(batched=True)` passes (columns -> lists)
and returns a list of floats. `score_dataset` runs it once over a data set and writes the scores
as a column, raw or as percentiles, which is what curricula sample by.

    ds = score_dataset(ds, prompt_length(), column="difficulty", as_percentile=True)

Built in: an existing column, prompt or answer length in tokens, and the answer loss of an
existing checkpoint ("transfer" scoring, Hacohen and Weinshall 2019: examples a model trained
earlier finds hard are hard).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
import numpy as np

from framework.data.tokenizer import load as load_tokenizer
from framework.errors import ConfigError

Batch = dict[str, list[Any]]
Scorer = Callable[[Batch], list[float]]


def from_column(name: str) -> Scorer:
    """Scores already in the data: a numeric column, e.g. the built-in tasks' `difficulty`."""

    def score(batch: Batch) -> list[float]:
        if name not in batch:
            raise ConfigError("scorer.column", f"column {name!r} not found (columns found: {', '.join(batch)})")
        return [float(x) for x in batch[name]]

    return score


def prompt_length(tokenizer: str = "byte") -> Scorer:
    """Prompt length in tokens of `tokenizer` ("byte": bytes; or a tokenizer.json, or a directory with one)."""
    tok = load_tokenizer(tokenizer)
    return lambda batch: [float(len(tok.encode(p))) for p in batch["prompt"]]


def answer_length(tokenizer: str = "byte") -> Scorer:
    """Answer length in tokens of `tokenizer` (as `prompt_length`)."""
    tok = load_tokenizer(tokenizer)
    return lambda batch: [float(len(tok.encode(a))) for a in batch["answer"]]


def model_loss(run_dir: str, step: int | None = None, batch_size: int = 256) -> Scorer:
    """Mean answer-token loss of a checkpoint ("transfer" scoring): higher loss = harder.

    Args:
      run_dir: a recoup run directory; its model is loaded once, on first use.
      step: the checkpoint (default: the newest). An early stopping point of a previous run works
        well: it ranks what is learned first.
      batch_size: examples per forward pass.
    """
    loaded: dict[str, Any] = {}

    def score(batch: Batch) -> list[float]:
        from framework.data import encoding as data
        from framework.evaluation import evaluate
        from framework.training.runs import open_run

        if not loaded:
            run = open_run(run_dir)
            loaded.update(graphdef=run.graphdef, params=run.params(step), tokenizer=run.tokenizer)
        ds = datasets.Dataset.from_dict({"prompt": batch["prompt"], "answer": batch["answer"],
                                         "difficulty": [0] * len(batch["prompt"])})
        tok = loaded["tokenizer"]  # the checkpoint reads text as it was trained to
        split = data.encode_split(ds, data.sequence_width({"batch": ds}, tok), tok)
        result = evaluate.teacher_forced(loaded["graphdef"], loaded["params"], split, batch_size)
        return [float(x) for x in result["example_loss"]]

    return score


def percentiles(scores) -> np.ndarray:
    """Empirical CDF of each score: the share of examples scoring <= it, in (0, 1].

    Ties share one value, so "percentile <= f" never splits a group of equal difficulty.

    >>> percentiles([3, 1, 2, 2]).tolist()
    [1.0, 0.25, 0.75, 0.75]
    """
    scores = np.asarray(scores, np.float64)
    if scores.size == 0:
        return scores
    ordered = np.sort(scores)
    return np.searchsorted(ordered, scores, side="right") / scores.size


def score_dataset(ds: datasets.Dataset, scorer: Scorer, column: str = "difficulty",
                  as_percentile: bool = False, batch_size: int = 1_000) -> datasets.Dataset:
    """`ds` with `column` set to the scorer's scores (raw, or as percentiles over the whole set).

    Scores are computed once, with `.map(batched=True)`, in memory.
    """
    def add(batch: Batch) -> Batch:
        scores = scorer(batch)
        if len(scores) != len(batch["prompt"]):
            raise ConfigError("scorer", f"returned {len(scores)} scores for {len(batch['prompt'])} examples")
        return {column: scores}

    # In memory and never cached, so no fingerprint is needed: a fixed one spares `datasets`
    # hashing the scorer (a model-loss scorer closes over a whole model's weights).
    out = ds.map(add, batched=True, batch_size=batch_size, keep_in_memory=True,
                 load_from_cache_file=False, new_fingerprint=f"recoup-scores-{column}")
    if as_percentile:
        values = percentiles(out[column])
        out = out.remove_columns(column).add_column(column, values.tolist())
    return out
