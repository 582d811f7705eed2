"""Stopping-point checkpoints with Orbax: one step directory per stopping point.

Each checkpoint holds the items `params`, `opt_state`, `sampler` (the data position), `progress`
(JSON: step, tokens, RNG, which stopping points are done) and, when the run keeps any, `averages`
(the EMA / SWA running averages of the weights, `{name: {"total": tree, "weight": scalar}}`), plus
custom metadata `tokens, fraction, step, val_em, val_loss, wall_s, kind, averages` that
`recoup runs show` lists.

Saving is asynchronous. Orbax writes into a temporary directory and renames it only when the
write is complete, so a crash mid-save leaves the earlier checkpoints intact and no half-written
step is ever listed.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from framework.config import require_run_dir
from framework.errors import ConfigError

ITEMS = ("params", "opt_state", "sampler", "progress", "averages")
METRICS_FILE = "metrics.jsonl"

# Orbax logs at INFO/WARNING on every open and partial restore; users need none of it.
absl_logging.set_verbosity(absl_logging.ERROR)


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(os.path.abspath(run_dir), "checkpoints")


def open_manager(run_dir: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True)
    return ocp.CheckpointManager(checkpoint_dir(run_dir), options=options, item_names=ITEMS)


def save(
    mgr: ocp.CheckpointManager,
    step: int,
    *,
    params,
    opt_state,
    sampler_state,
    progress: dict[str, Any],
    metadata: dict[str, Any],
    averages: dict[str, Any] | None = None,
) -> None:
    """Start an asynchronous save; `mgr.wait_until_finished()` before reading it back."""
    items = {
        "params": ocp.args.StandardSave(params),
        "opt_state": ocp.args.StandardSave(opt_state),
        "sampler": ocp.args.StandardSave(_as_arrays(sampler_state)),
        "progress": ocp.args.JsonSave(progress),
    }
    if averages:
        items["averages"] = ocp.args.StandardSave(averages)
    mgr.save(step, args=ocp.args.Composite(**items), custom_metadata=metadata)


def restore(mgr: ocp.CheckpointManager, step: int, **targets) -> Any:
    """Restore the named items into abstract targets, e.g. `restore(mgr, 7, params=abstract)`.

    `progress` needs no target; pass `progress=None`.
    """
    if "sampler" in targets:
        targets["sampler"] = _as_arrays(targets["sampler"])
    args = {
        name: ocp.args.JsonRestore() if name == "progress" else ocp.args.StandardRestore(target)
        for name, target in targets.items()
    }
    return mgr.restore(step, args=ocp.args.Composite(**args))


def _as_arrays(tree):
    """Orbax stores arrays, not Python or numpy scalars: a sampler state may hold either."""
    return jax.tree.map(np.asarray, tree)


# -- reading a run directory (CLI, eval, init_from) ------------------------------------------


def list_checkpoints(run_dir: str) -> list[dict[str, Any]]:
    """Metadata of every complete checkpoint of a run, oldest first."""
    require_run_dir(run_dir)
    if not os.path.isdir(checkpoint_dir(run_dir)):
        return []
    mgr = open_manager(run_dir)
    try:
        return [{"step": s, **(mgr.metadata(s).custom_metadata or {})} for s in mgr.all_steps()]
    finally:
        mgr.close()


def resolve_step(run_dir: str, step: int | None) -> int:
    """`step`, or the newest checkpoint when None; a missing one lists the steps that exist."""
    steps = [c["step"] for c in list_checkpoints(run_dir)]
    if not steps:
        raise ConfigError("step", f"{run_dir} has no checkpoints yet")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ConfigError("step", f"no checkpoint at step {step} in {run_dir}", steps)
    return step
