"""`check`: everything about a RunConfig that can be wrong, found without reading data or
importing jax, so `recoup train` fails on bad input in a second (the build step calls it first)."""

from __future__ import annotations

import os

from curricula.registry import CURRICULA, PACINGS, SCORERS
from framework.config import RunConfig, hf_source, resolve_init_from
from framework.data.registry import HOP_ANSWERS, OPERAND_FORMATS, RELATIONS, TASKS
from framework.errors import ConfigError
from framework.stopping.registry import build as build_stop_rule
from framework.training.registry import DECAY_SHAPES, OPTIMIZERS, SCHEDULES


def check(cfg: RunConfig):
    """Everything about `cfg` that can be wrong without reading data: its fields (`validate`), the
    names it gives (each checked by the registry that owns it), the stopping rules it names, its
    run directory being a directory, its `init_from` / `branch_from` sources. Returns the stopping
    rule (None for none)."""
    cfg.validate()
    check_names(cfg)
    if hf_source(cfg.init_from):  # first: the model and the tokenizer below are read from it
        check_hf_source(hf_source(cfg.init_from))
    if ":" in cfg.optim.optimizer:  # the user's optax factory: called once, nothing compiled
        from framework.training.optimizers import check_user

        check_user(cfg.optim.optimizer)
    if cfg.model.factory or cfg.model.hf_config:  # built abstractly (a user's module traced once), nothing compiled
        from framework.data.tokenizer import load as load_tokenizer
        from framework.models import protocol

        protocol.check(cfg.model, load_tokenizer(cfg.data.tokenizer).vocab_size)
    if os.path.isfile(cfg.out_dir):
        raise ConfigError("out", f"{cfg.out_dir} is a file; give a directory for the run")
    stop_rule = build_stop_rule(cfg.stop_rules, cfg.stop_combine)
    if cfg.init_from and not hf_source(cfg.init_from):
        resolve_init_from(cfg)
    if cfg.branch_from:
        resolve_init_from(cfg, "branch_from")
    return stop_rule


def check_hf_source(directory: str) -> None:
    """A Hugging Face checkpoint directory to start from: its config readable, its weights there (their
    names and shapes are checked, all at once, when they are read)."""
    from pathlib import Path

    from framework.models import hf

    try:
        hf.read_config(directory)
        hf.tensor_files(Path(directory))
    except ConfigError as e:
        raise ConfigError("init_from", f"{e.field}: {e.message}") from None


def check_names(cfg: RunConfig) -> None:
    """Each name `cfg` gives, against the registry that owns it (importing none of their code)."""
    if cfg.data.task is not None:
        TASKS.check(cfg.data.task)
    OPERAND_FORMATS.check(cfg.data.operand_format)
    HOP_ANSWERS.check(cfg.data.hop_answer)
    if not 1 <= cfg.data.kb_relations <= len(RELATIONS):
        raise ConfigError("data.kb_relations", f"{cfg.data.kb_relations} must be in 1..{len(RELATIONS)} "
                                               "(the relation names a knowledge base draws from)")
    SCHEDULES.check(cfg.optim.schedule)
    DECAY_SHAPES.check(cfg.optim.decay_shape)
    OPTIMIZERS.check(cfg.optim.optimizer)
    CURRICULA.check(cfg.curriculum)
    PACINGS.check(cfg.pacing)
    if cfg.scorer is not None:
        SCORERS.check(cfg.scorer)
