"""The build step: a RunConfig in, the trainer's plain objects (`framework.training.parts.Parts`) out.

    from framework.runner.build import train
    train(cfg)                                   # = training.train.train(cfg, build(cfg))

Every name a config holds (a curriculum, a pacing, a scorer, a schedule, an optimizer, a stopping
rule) is looked up here, so a bad one fails naming its field before any data is encoded or anything
compiles, and the trainer below only ever sees values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from curricula.build import rescore, sampler_factory
from framework.checkpoints.retention import Retention
from framework.config import BATCH_WARMUP_SPLITS, DataConfig, RunConfig, hf_source
from framework.data import identity, mixture, packing, text
from framework.data.encoding import Batches, EncodedSplit, Sampler, prepare, sampled_batches
from framework.errors import ConfigError
from framework.run_dirs import resolve_init_from
from framework.runner.check import check
from framework.stopping.points import stop_points
from framework.training import averages, optimizers, schedules
from framework.training.parts import NonFinitePolicy, Parts
from framework.training.train import train as train_parts


def steps_per_batch(cfg: RunConfig, tokens: int) -> int:
    """How many optimizer steps share the batch drawn at `tokens` (RunConfig.batch_warmup): 8, 4, 2
    in the thirds of the warmup, then 1."""
    if cfg.batch_warmup <= 0:
        return 1
    third = int(tokens // (cfg.batch_warmup * cfg.budget_tokens / 3))
    return BATCH_WARMUP_SPLITS[third] if third < len(BATCH_WARMUP_SPLITS) else 1


def average_rules(cfg: RunConfig) -> list[averages.AverageRule]:
    """The weight averages `cfg` asks the run to keep: one EMA per half-life, then SWA if set."""
    rules = [averages.ema(h) for h in cfg.ema_half_lives]
    if cfg.swa_start is not None:
        rules.append(averages.swa(int(cfg.swa_start * cfg.budget_tokens)))
    return rules


def nonfinite_policy(cfg: RunConfig) -> NonFinitePolicy:
    rollbacks = cfg.max_rollbacks if cfg.nonfinite == "rollback" else 0
    return NonFinitePolicy(skip=cfg.nonfinite == "skip", max_rollbacks=rollbacks, lr_factor=cfg.rollback_lr_factor)


def hf_params(directory: str, dtype: str) -> Callable[[], Any]:
    """Reads the weights of a Hugging Face checkpoint directory when called (streamed: framework.models.hf)."""

    def read():
        from flax import nnx

        from framework.models import hf

        return nnx.split(hf.load(directory, dtype), nnx.Param)[1]

    return read


def mixed(cfg: RunConfig, data: DataConfig, main: Callable[[int], Batches]) -> Batches:
    """The training batches of packed rows: `main(rows)` (the main data's, `rows` a draw), or with a
    mixture (`data.mixture`), one row at a time from the main data or a mixed-in source (a corpus, or a
    prompt/answer file's train split: framework.data.mixture) by their shares."""
    if not data.mixture:
        return main(cfg.batch_size)
    shares = [1 - sum(share for _, share in data.mixture), *(share for _, share in data.mixture)]
    return packing.mixed_batches([main(1), *mixture.sources(data, cfg.seed)], shares, cfg.batch_size, cfg.seed)


def build(cfg: RunConfig, *, sampler_fn: Callable[[Any, int, int], Sampler] | None = None,
          splits: dict[str, EncodedSplit] | text.TextData | None = None) -> Parts:
    """The objects `cfg` names. `sampler_fn`: `(train_split, batch_size, seed) -> Sampler` instead of
    the curriculum `cfg` names; `splits`: `prepare(cfg.data)` (`text.prepare` for a text corpus) if the
    caller already built it."""
    stop_rule = check(cfg)  # before any data is read
    data = identity.data_of(cfg)
    common = dict(
        schedule=schedules.build(cfg.optim, cfg.budget_tokens),
        optimizer=functools.partial(optimizers.build, cfg.optim),
        steps_per_batch=functools.partial(steps_per_batch, cfg),
        points=stop_points(cfg.budget_tokens, cfg.stops, cfg.every_tokens, cfg.train_until),
        average_rules=tuple(average_rules(cfg)),
        stop_rule=stop_rule,
        init_from=resolve_init_from(cfg) if cfg.init_from and not hf_source(cfg.init_from) else None,
        init_params=hf_params(hf_source(cfg.init_from), cfg.model.dtype) if hf_source(cfg.init_from) else None,
        branch_from=resolve_init_from(cfg, "branch_from") if cfg.branch_from else None,
        nonfinite=nonfinite_policy(cfg),
        retention=Retention(cfg.keep_latest, cfg.keep_best),
    )
    if data.text is not None:  # a corpus streamed in order: no examples, so no sampler or curriculum
        corpus = splits or text.prepare(data)
        batches = mixed(cfg, data, functools.partial(text.packed_batches, corpus.stream))
        return Parts(tokenizer=corpus.tokenizer, batches=batches, val_split=corpus.validation.batch(),
                     data_identity={**identity.text_record(data, corpus), **identity.mixture_record(data)}, **common)
    if data.pack and sampler_fn is not None:
        raise ConfigError("sampler_fn", "packed examples (data.pack) are drawn in a seeded shuffle, not by a sampler")
    if not data.pack:  # a bad curriculum argument fails before the data is read
        sampler_fn = sampler_fn or sampler_factory(cfg.curriculum, cfg.curriculum_args, cfg.pacing,
                                                   cfg.pacing_args, cfg.budget_tokens)
    splits = splits or prepare(data)
    train_split, common["data_identity"] = splits["train"], identity.record(data, splits)
    if data.pack:  # several whole examples a row (check_packed refused curricula)
        batches = mixed(cfg, data, lambda rows: packing.packed_examples(train_split, data.seq_len, rows, cfg.seed))
        common["data_identity"].update(identity.mixture_record(data))
        return Parts(tokenizer=train_split.tokenizer, val_split=splits["validation"], train_split=train_split,
                     batches=batches, **common)
    if cfg.scorer:  # what the curriculum sorts by; validation and test keep the data's difficulty
        train_split = rescore(train_split, cfg.scorer, cfg.scorer_args, cfg.scorer_percentile)
    sampler = sampler_fn(train_split, cfg.batch_size, cfg.seed)
    return Parts(tokenizer=train_split.tokenizer, batches=sampled_batches(train_split, sampler),
                 val_split=splits["validation"], train_split=train_split, sampler=sampler, **common)


def train(cfg: RunConfig, *, resume: bool = False, hooks: Sequence = (),
          sampler_fn: Callable[[Any, int, int], Sampler] | None = None, show_progress: bool = True,
          splits: dict[str, EncodedSplit] | None = None, allow_changed_data: bool = False) -> list[dict[str, Any]]:
    """Build `cfg`'s objects and train them (framework.training.train.train); returns the
    checkpoints' metadata. `hooks` see every step and evaluation and may raise StopTraining.
    `allow_changed_data`: resume (or branch from) a run whose data changed since, saying so."""
    return train_parts(cfg, build(cfg, sampler_fn=sampler_fn, splits=splits), resume=resume, hooks=hooks,
                       show_progress=show_progress, allow_changed_data=allow_changed_data)
