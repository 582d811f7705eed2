"""Cooldown: from a stopping checkpoint, decay the learning rate to zero over a few more tokens.

    recoup cooldown runs/a --from 0.62 --tokens 0.05 [--shape 1-sqrt]   # -> runs/a-cooldown0.62+0.05

WSD-style (Hägele et al. 2024): a run stopped while its learning rate is still high has not
settled; a short linear decay to zero often buys back much of what the rest of the schedule
would have. The cooldown is a new run directory that *branches* from the checkpoint (weights,
optimizer, data position, token count, RNG: `RunConfig.branch_from`), so its tokens continue the
source's count: a cooldown of 5% of B from 0.62 ends at 0.67·B tokens, and every report compares it
with ensembles at what it really cost. Its own budget is where it ends (fraction 1.0 of itself).
"""

from __future__ import annotations

import dataclasses

from framework.checkpoints.store import list_checkpoints
from framework.config import RunConfig
from framework.errors import ConfigError
from framework.parsing import parse_share_or_tokens
from framework.run_dirs import load_run_config


def pick_checkpoint(run_dir: str, spec: str) -> dict:
    """The checkpoint labelled with fraction `spec`, else the latest with tokens <= spec * budget if it
    is within one training step of it; anything further is an error listing the fractions there are."""
    cfg = load_run_config(run_dir)
    try:
        f = float(spec)
    except ValueError:
        raise ConfigError("from", f"{spec!r} is not a budget fraction such as 0.62") from None
    ckpts = list_checkpoints(run_dir)
    labelled = [c for c in ckpts if abs(c["fraction"] - f) < 1e-9 and c.get("kind") != "stopped"]
    if labelled:
        return labelled[-1]
    under = [c for c in ckpts if c["tokens"] <= f * cfg.budget_tokens]
    # One step's tokens, as the run trained them (its last checkpoint's tokens per step).
    step_tokens = max(ckpts[-1]["tokens"] / max(ckpts[-1]["step"], 1), 1.0) if ckpts else 0.0
    if not under or f * cfg.budget_tokens - under[-1]["tokens"] > step_tokens:
        raise ConfigError("from", f"no checkpoint of {run_dir} at {f} of its budget (within one step, "
                                  f"{step_tokens:,.0f} tokens)", [round(c["fraction"], 3) for c in ckpts] or
                          ["no checkpoints"])
    return under[-1]


def checkpoint_at(run_dir: str, step: int) -> dict:
    ckpts = list_checkpoints(run_dir)
    found = [c for c in ckpts if c["step"] == step]
    if not found:
        raise ConfigError("step", f"no checkpoint at step {step} in {run_dir}", [c["step"] for c in ckpts])
    return found[0]


def cooldown_config(run_dir: str, from_spec: str, tokens_spec: str, out_dir: str | None = None,
                    shape: str | None = None, step: int | None = None) -> RunConfig:
    """The RunConfig of a cooldown branch (validated; nothing is written). `shape`: "linear" or
    "1-sqrt" (OptimConfig.decay_shape); None keeps the source run's. `step`: branch from that
    checkpoint (a stopped one too) instead of the one `from_spec` picks."""
    src = load_run_config(run_dir)
    ckpt = pick_checkpoint(run_dir, from_spec) if step is None else checkpoint_at(run_dir, step)
    extra = parse_share_or_tokens(tokens_spec, src.budget_tokens, "tokens", minimum=src.batch_size)
    lr = float(_schedule(src)(ckpt["tokens"]))
    out = out_dir or f"{run_dir.rstrip('/')}-cooldown{ckpt['fraction']:g}+{tokens_spec}"
    cfg = dataclasses.replace(
        src, out_dir=out, budget_tokens=ckpt["tokens"] + extra, stops=(1.0,), train_until=1.0, every_tokens=None,
        branch_from=f"{run_dir.rstrip('/')}/checkpoints/{ckpt['step']}", init_from=None,
        ema_half_lives=(), swa_start=None, stop_rules=(),
        optim=dataclasses.replace(src.optim, schedule="cooldown", peak_lr=lr, decay_start=ckpt["tokens"],
                                  decay_shape=src.optim.decay_shape if shape is None else shape))
    cfg.validate()
    return cfg


def _schedule(cfg: RunConfig):
    from framework.training import schedules  # jax: only once the input is known good

    return schedules.build(cfg.optim, cfg.budget_tokens)
