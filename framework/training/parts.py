"""The plain objects a run trains with, built once from its RunConfig by `framework.runner.build`.

The trainer takes these, not names: it never looks up a schedule, an optimizer, a curriculum or a
stopping rule by the string a config holds, so a user's own sampler, schedule or rule is just
another value here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from framework.checkpoints.retention import KEEP_ALL, Retention
from framework.data.encoding import Batch, Batches, EncodedSplit, Sampler
from framework.data.tokenizer import Tokenizer
from framework.stopping.points import StopPoint
from framework.stopping.rules import StopRule
from framework.training.averages import AverageRule
from framework.training.optimizers import Optimizer
from framework.training.schedules import Schedule


class NonFinitePolicy(NamedTuple):
    """What a non-finite loss or gradient does (its update is always dropped first)."""

    skip: bool = False  # go on training, logging the skipped steps
    max_rollbacks: int = 0  # else restore the last checkpoint, this many times at most; then stop
    lr_factor: float = 0.5  # each rollback multiplies the learning rate by this


@dataclasses.dataclass(frozen=True)
class Parts:
    tokenizer: Tokenizer  # what encoded the data (its PAD defines a counted token)
    # where training batches come from: the examples a sampler picks, or a text corpus's packed rows
    batches: Batches
    # scored at every stopping point: an EncodedSplit (strict EM and answer loss), or a text run's packed
    # validation rows (loss only)
    val_split: EncodedSplit | Batch
    schedule: Schedule  # counted tokens -> learning rate
    optimizer: Callable[[int], Optimizer]  # rows per step -> the optimizer (Adam's b2 may depend on them)
    steps_per_batch: Callable[[int], int]  # tokens seen -> optimizer steps sharing the batch drawn there
    points: Sequence[StopPoint]  # where to evaluate and checkpoint
    # the examples `batches` draws from (each row's difficulty is logged) and its sampler (a loss-driven one
    # observes each step's per-example losses); None for a text run, which has no examples
    train_split: EncodedSplit | None = None
    sampler: Sampler | None = None
    average_rules: Sequence[AverageRule] = ()  # weight averages kept in every checkpoint
    stop_rule: StopRule | None = None  # may end the run at an evaluation
    # (run directory, step or None for its newest) whose evaluated weights a new run starts from;
    # None: a fresh model (RunConfig.init_from)
    init_from: tuple[str, int | None] | None = None
    # () -> the nnx.Param state a new run starts from, read from elsewhere (a Hugging Face checkpoint)
    init_params: Callable[[], Any] | None = None
    # (run directory, step or None) whose whole training state a branch continues (RunConfig.branch_from)
    branch_from: tuple[str, int | None] | None = None
    nonfinite: NonFinitePolicy = NonFinitePolicy()
    retention: Retention = KEEP_ALL  # which checkpoints stay on disk (the default: all of them)
    # What the data was (framework.data.identity.record): written with a new run, compared on resume
    # and with a branch's source. None: not recorded (a caller that built its own parts).
    data_identity: dict | None = None
