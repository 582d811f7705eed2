"""The controller: when a stopping rule ends a run, cool it down and ship the best 1x model.

    recoup train ... --stop-rule budget:price=8 --cooldown-on-stop 0.1

A run on a constant (anytime) learning rate can stop anywhere, but its weights at the stop have
not settled. When a rule fires, the controller branches a cooldown from that checkpoint (the rate
decays to 0 over `extra` more tokens; they count: `framework.training.cooldown`), then ships whichever of
the cooled-down weights and the run's own weight averages at the stop scored best on validation.
Everything it compares was already evaluated on the validation split when it was saved, so the
choice costs no evaluation.
"""

from __future__ import annotations

import json
import os
from typing import Any

from framework.checkpoints.integrity import write_atomic
from framework.checkpoints.store import list_checkpoints
from framework.run_dirs import CONFIG_FILE

SHIPPED_FILE = "shipped.json"


def stopping_checkpoint(run_dir: str) -> dict | None:
    """The checkpoint a stopping rule ended the run with, or None (the run went to its budget, or a
    hook, a pruning sweep or a non-finite loss stopped it)."""
    ckpts = list_checkpoints(run_dir)
    last = ckpts[-1] if ckpts else None
    return last if last and last.get("kind") == "stopped" and "fired_evaluation" in last else None


def branch_point(run_dir: str, stopped: dict) -> dict:
    """The checkpoint to cool down from: the stopped one, or the best evaluation's when the rule
    restored it (the stopped checkpoint then pairs the best weights with the last optimizer state)."""
    best = stopped.get("restored_best_step")
    if best is None:
        return stopped
    return next(c for c in list_checkpoints(run_dir) if c["step"] == best)


def candidates_at(ckpt: dict) -> dict[str | None, float]:
    """{average name or None for the checkpoint's own weights: validation EM} of one checkpoint."""
    return {None: ckpt["val_em"], **ckpt.get("average_val_em", {})}


def cool_down_and_ship(run_dir: str, step: int, extra: str, *, shape: str | None = None, out_dir: str | None = None,
                       train_fn=None, log=print) -> dict[str, Any]:
    """Cool `run_dir` down from checkpoint `step` for `extra` tokens (a share of its budget, or a count),
    and choose what ships on validation: the cooled-down weights, or a weight average at `step`.

    Returns (and writes to COOLDOWN_DIR/shipped.json) {"run_dir", "step", "average", "val_em",
    "tokens" (the training tokens spent: the cooldown's end), "stopped_at", "cooldown_dir", "considered"}.
    """
    from framework.training.cooldown import checkpoint_at, cooldown_config

    source = checkpoint_at(run_dir, step)
    cfg = cooldown_config(run_dir, str(source["fraction"]), extra, out_dir, shape, step=step)
    done = list_checkpoints(cfg.out_dir) if os.path.isfile(os.path.join(cfg.out_dir, CONFIG_FILE)) else []
    if not any(c.get("fraction") == 1.0 for c in done):
        if train_fn is None:
            from framework.runner.build import train as train_fn
        log(f"cooling {run_dir} down from step {step} ({source['tokens']:,} tokens) over "
            f"{cfg.budget_tokens - source['tokens']:,} more tokens into {cfg.out_dir}")
        train_fn(cfg, resume=os.path.isdir(cfg.out_dir), show_progress=False)
    cooled = list_checkpoints(cfg.out_dir)[-1]
    considered = [{"run_dir": cfg.out_dir, "step": cooled["step"], "average": None, "val_em": cooled["val_em"]}]
    considered += [{"run_dir": run_dir, "step": step, "average": name, "val_em": em}
                   for name, em in candidates_at(source).items()]
    best = max(considered, key=lambda c: c["val_em"])  # the first of equals: the cooled-down weights
    # Whatever ships, the cooldown's tokens were spent: they count.
    shipped = {**best, "tokens": cooled["tokens"], "stopped_at": source["tokens"], "cooldown_dir": cfg.out_dir,
               "considered": considered}
    write_atomic(os.path.join(cfg.out_dir, SHIPPED_FILE), json.dumps(shipped, indent=2))
    return shipped
