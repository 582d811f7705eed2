"""Run directories, read without jax: a run's saved config.json, its copy of a Hugging Face model
config, and the source run that `init_from` or `branch_from` names.

Like framework.config, this imports neither jax nor datasets, so a bad path or an edited config
fails before anything compiles.
"""

from __future__ import annotations

import dataclasses
import json
import os

from framework.config import SHAPE_FIELDS, ModelConfig, RunConfig
from framework.errors import ConfigError

CONFIG_FILE = "config.json"
MODEL_DIR = "model"  # RUN/model/config.json: a copy of a Hugging Face model's config, made when the run starts


def run_model(cfg: RunConfig, run_dir: str) -> ModelConfig:
    """`cfg.model` as the run in `run_dir` builds it: a Hugging Face config read from the run's own copy
    (the checkpoint directory it came from may be gone, or elsewhere on this machine)."""
    copy = os.path.join(run_dir, MODEL_DIR)
    if cfg.model.hf_config is not None and os.path.isfile(os.path.join(copy, "config.json")):
        return dataclasses.replace(cfg.model, hf_config=copy)
    return cfg.model


def require_run_dir(run_dir: str) -> None:
    """A clear error for a path that is not a run directory, listing what is there instead."""
    if not os.path.isdir(run_dir):
        parent = os.path.dirname(os.path.abspath(run_dir))
        found = sorted(os.listdir(parent))[:20] if os.path.isdir(parent) else []
        where = f"{parent} holds: {', '.join(found)}" if found else f"{parent} is empty or missing"
        raise ConfigError("run_dir", f"no run directory at {run_dir} ({where})")
    if not os.path.isfile(os.path.join(run_dir, CONFIG_FILE)):
        found = ", ".join(sorted(os.listdir(run_dir))[:20]) or "nothing"
        raise ConfigError("run_dir", f"{run_dir} has no {CONFIG_FILE}, so it is not a recoup run (found: {found})")


def load_run_config(run_dir: str) -> RunConfig:
    """The RunConfig saved in a run directory, validated (an edited or corrupted file fails here, not
    inside jax); a missing, unreadable or invalid file is a ConfigError."""
    require_run_dir(run_dir)
    path = os.path.join(run_dir, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            cfg = RunConfig.from_dict(json.load(f))
        cfg.validate()
    except ConfigError as e:  # a bad field: say which file holds it
        raise ConfigError(e.field, f"{e.message} (in {path})", e.allowed) from None
    except (ValueError, TypeError, AttributeError, RecursionError) as e:  # ValueError: not JSON, not UTF-8
        raise ConfigError("run_dir", f"{path} is not a valid recoup config ({e})") from None
    return cfg


def resolve_init_from(cfg: RunConfig, field: str = "init_from") -> tuple[str, int | None]:
    """Check `cfg.init_from` (or `cfg.branch_from`) without jax: (source run directory, step or
    None for the newest).

    Accepts RUN_DIR or RUN_DIR/checkpoints/STEP. The source must exist, have a checkpoint, and
    hold a model of the same shape (dropout may differ: it is not a parameter).
    """
    given = getattr(cfg, field)
    path = os.path.normpath(given)
    run_dir, step = path, None
    parent, leaf = os.path.split(path)
    if leaf.isdigit() and os.path.basename(parent) == "checkpoints":
        run_dir, step = os.path.dirname(parent), int(leaf)
    try:
        source = load_run_config(run_dir)
    except ConfigError as e:  # name the field the user gave (and the source's own bad field, if that is it)
        raise ConfigError(field, e.message if e.field == "run_dir" else f"{e.field}: {e.message}", e.allowed) from None
    for name in SHAPE_FIELDS:
        if getattr(source.model, name) != getattr(cfg.model, name):
            raise ConfigError(field, f"{given} holds a model with {name}="
                              f"{getattr(source.model, name)!r}, this run has {getattr(cfg.model, name)!r}")
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if os.path.isdir(ckpt_dir) else []
    if not steps or (step is not None and step not in steps):
        raise ConfigError(field, f"no checkpoint {'' if step is None else step} in {run_dir}",
                          steps or ["none yet"])
    return run_dir, step
