"""`check`: everything about a RunConfig that can be wrong, found without reading data or
importing jax, so `recoup train` fails on bad input in a second (the build step calls it first)."""

from __future__ import annotations

import os

from curricula.registry import CURRICULA, PACINGS, SCORERS
from framework.config import RunConfig, hf_source
from framework.data.registry import HOP_ANSWERS, OPERAND_FORMATS, RELATIONS, TASKS
from framework.errors import ConfigError
from framework.run_dirs import resolve_init_from
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
    check_packed(cfg)
    if os.path.isfile(cfg.out_dir):
        raise ConfigError("out", f"{cfg.out_dir} is a file; give a directory for the run")
    stop_rule = build_stop_rule(cfg.stop_rules, cfg.stop_combine)
    if cfg.init_from and not hf_source(cfg.init_from):
        resolve_init_from(cfg)
    if cfg.branch_from:
        resolve_init_from(cfg, "branch_from")
    return stop_rule


# Stopping rules that watch validation EM, or per-example correctness, by default or always.
EM_RULES = {"patience": "val_em", "moving-average": "val_em", "paired-test": None, "budget": None}


def check_packed(cfg: RunConfig) -> None:
    """A text run (data.text) reads its corpus in order and validates by the loss on packed rows; packed
    examples (data.pack) come in a seeded shuffle, several to a row. What chooses among examples, or (a
    text run) needs an exact match, is a one-line error here, and so is a row longer than the model's."""
    data = cfg.data
    if data.text is None and not data.pack:
        return
    why = ("a text run (data.text) has none: it streams its corpus in order, packed into rows" if data.text else
           "packed examples (data.pack) are drawn in a seeded shuffle, as many to a row as fit")
    for field, value, plain in (("curriculum", cfg.curriculum, "uniform"), ("pacing", cfg.pacing, "constant"),
                                ("scorer", cfg.scorer, None)):
        if value != plain:
            raise ConfigError(field, f"{value!r} chooses among training examples, and {why}")
    for spec in cfg.stop_rules if data.text else ():
        name = spec.get("rule") if isinstance(spec, dict) else None  # a malformed spec: build_stop_rule says so
        if name in EM_RULES and (EM_RULES[name] is None or spec.get("metric", "val_em") == "val_em"):
            raise ConfigError("stop_rules", f"rule {name!r} watches validation EM, which a text run (data.text) does "
                                            "not have (it validates by loss): use patience or moving-average with "
                                            "metric=val_loss, or grad-norm")
    if cfg.model.hf_config is not None:
        from framework.models import hf

        longest = hf.read_config(cfg.model.hf_config).max_position_embeddings
        if data.seq_len > longest:
            raise ConfigError("data.seq_len", f"{data.seq_len} is over the model's max_position_embeddings "
                                              f"{longest} ({cfg.model.hf_config}/config.json)")


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
