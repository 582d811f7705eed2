"""`check`: everything about a RunConfig that can be wrong, found without reading data or
importing jax, so `recoup train` fails on bad input in a second (the build step calls it first)."""

from __future__ import annotations

import os

from framework.config import RunConfig, resolve_init_from
from framework.errors import ConfigError
from framework.stopping.registry import build as build_stop_rule


def check(cfg: RunConfig):
    """Everything about `cfg` that can be wrong without reading data: its fields (`validate`), the
    stopping rules it names, its run directory being a directory, its `init_from` / `branch_from`
    sources. Returns the stopping rule (None for none)."""
    cfg.validate()
    if os.path.isfile(cfg.out_dir):
        raise ConfigError("out", f"{cfg.out_dir} is a file; give a directory for the run")
    stop_rule = build_stop_rule(cfg.stop_rules, cfg.stop_combine)
    if cfg.init_from:
        resolve_init_from(cfg)
    if cfg.branch_from:
        resolve_init_from(cfg, "branch_from")
    return stop_rule
