"""Offline tuning of stopping rules: replay them over the logged curves of finished runs.

    recoup tune-stopping runs/a runs/b runs/c --price 2 [--json]

Each run's `metrics.jsonl` holds one `eval` line per checkpoint (tokens, validation EM and loss,
per-example correctness) and the training gradient norms: exactly what a rule saw live. Replaying
a rule walks those evaluations in order until it fires; what would have shipped is the stopping
evaluation, or the one restore-best names. The objective, in EM points, is

    J = 100 * EM_val(shipped) - price * tokens / 1e6        (price: EM points per million tokens)

averaged over the runs; "never stop" (the full budget) is always a candidate, so a rule is only
chosen when it pays. Replay is pure Python over the logs: deterministic, and no jax.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Any, NamedTuple

import numpy as np

from framework.checkpoints.integrity import read_metrics
from framework.checkpoints.store import METRICS_FILE
from framework.errors import ConfigError
from framework.run_dirs import load_run_config
from framework.stopping.registry import build
from framework.stopping.rules import Observation


def load_evaluations(run_dir: str) -> list[Observation]:
    """The evaluations a run logged, each with the latest grad norm: a `stopped` line counts as the
    evaluation at which its rule fired (a stop from a hook, with no such evaluation, is skipped)."""
    cfg = load_run_config(run_dir)  # also says clearly if it is not a run directory
    if cfg.data.text is not None:
        raise ConfigError("run_dir", f"{run_dir} trained on a text corpus (data.text): its evaluations have no "
                                     "validation EM for stopping rules to be tuned on")
    budget = cfg.budget_tokens
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise ConfigError("run_dir", f"{run_dir} has no {METRICS_FILE}: it has not started training")
    out, grad = [], None
    for _, rec in read_metrics(path, "run_dir"):  # a torn last line (a run killed mid-write) is left out
        if rec.get("event") == "train":
            grad = rec.get("grad_norm")
        elif rec.get("event") == "eval":
            if rec.get("kind") == "stopped":  # replay what the rule saw when it fired, if one did
                if "fired_evaluation" not in rec:
                    continue
                rec = {**rec, **rec["fired_evaluation"]}
            correct = None
            if rec.get("val_correct") is not None:
                bits = np.unpackbits(np.frombuffer(bytes.fromhex(rec["val_correct"]), np.uint8))
                correct = tuple(int(b) for b in bits[: rec["val_n"]])  # packbits pads to bytes
            out.append(Observation(rec["step"], rec["tokens"], rec["tokens"] / budget,
                                   rec["val_em"], rec["val_loss"], grad, correct,
                                   max(rec.get("average_val_em", {}).values(), default=None)))
    if not out:
        raise ConfigError("run_dir", f"{run_dir} has no evaluations in {METRICS_FILE}")
    return out


class Outcome(NamedTuple):
    tokens: int
    em: float  # validation EM of what would ship
    reason: str
    step: int  # the evaluation that would ship (the stopping one, or the best one a rule restores)


def replay(specs: list[dict], combine: str, evaluations: list[Observation]) -> Outcome:
    """Where the rule would have stopped this run, and the validation EM of what it would ship."""
    rule = build(specs, combine)
    last = evaluations[-1]
    if rule is None:
        return Outcome(last.tokens, last.val_em, "", last.step)
    by_step = {o.step: o for o in evaluations}
    state = rule.init()
    for obs in evaluations:
        state, decision = rule.update(state, obs)
        if decision.stop:
            best = rule.best_step(state)
            shipped = by_step.get(best, obs) if best is not None else obs
            return Outcome(obs.tokens, shipped.val_em, decision.reason, shipped.step)
    return Outcome(last.tokens, last.val_em, "", last.step)


def default_grid(price: float) -> list[tuple[list[dict], str]]:
    """Settings tried by `tune`: each rule family over a small grid (single rules, combined with any)."""
    grid: list[list[dict]] = [[]]  # never stop
    grid += [[{"rule": "patience", "patience": p, "min_delta": d}]
             for p, d in itertools.product((1, 2, 3, 5), (0.0, 0.005, 0.01, 0.02))]
    grid += [[{"rule": "moving-average", "window": w, "patience": p}]
             for w, p in itertools.product((2, 3, 5), (1, 2, 3))]
    grid += [[{"rule": "paired-test", "alpha": a, "patience": p}]
             for a, p in itertools.product((0.01, 0.05, 0.1), (1, 2, 3))]
    grid += [[{"rule": "grad-norm", "rel_tol": t, "patience": p}]
             for t, p in itertools.product((0.02, 0.05, 0.1), (1, 2, 3))]
    grid += [[{"rule": "budget", "price": price, "min_points": m, "start": s}]
             for m, s in itertools.product((3, 4, 6), (0.2, 0.4))]
    return [(g, "any") for g in grid]


def tune(run_dirs: list[str], price: float, grid: list[tuple[list[dict], str]] | None = None) -> dict[str, Any]:
    """Every setting of the grid replayed on every run; the one with the best mean J first."""
    if not (isinstance(price, int | float) and math.isfinite(price) and price >= 0):
        raise ConfigError("price", f"{price!r} must be a number >= 0 (EM points per million tokens)")
    curves = {d: load_evaluations(d) for d in run_dirs}
    full = {d: replay([], "any", ev) for d, ev in curves.items()}
    rows, skipped = [], []
    for specs, combine in grid or default_grid(price):
        try:
            outcomes = {d: replay(specs, combine, ev) for d, ev in curves.items()}
        except ConfigError as e:  # e.g. a paired test on runs logged without per-example correctness
            skipped.append({"rules": specs, "why": str(e)})
            continue
        j = [100 * o.em - price * o.tokens / 1e6 for o in outcomes.values()]
        rows.append({
            "rules": specs, "combine": combine,
            "mean_j": float(np.mean(j)),
            "mean_tokens_saved_frac": float(np.mean([1 - o.tokens / full[d].tokens for d, o in outcomes.items()])),
            "mean_tokens": float(np.mean([o.tokens for o in outcomes.values()])),
            "mean_em_lost": float(np.mean([full[d].em - o.em for d, o in outcomes.items()])),
            "per_run": {d: o._asdict() for d, o in outcomes.items()},
        })
    rows.sort(key=lambda r: -r["mean_j"])
    return {"price": price, "runs": list(run_dirs), "best": rows[0], "ranked": rows, "skipped": skipped}


def describe(specs: list[dict]) -> str:
    if not specs:
        return "never stop (full budget)"
    return " | ".join(s["rule"] + ":" + ",".join(f"{k}={v}" for k, v in s.items() if k != "rule") for s in specs)
