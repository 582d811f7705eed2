"""Stopping rules: pure `init` / `update` pairs over evaluation events, composable with any / all.

A rule sees one `Observation` per evaluation (every stopping point and periodic checkpoint) and
returns its new state and a `Decision`. State is plain JSON (numbers, lists, None), saved in every
checkpoint's progress record, so a resumed run decides exactly as an uninterrupted one, and
`recoup tune-stopping` can replay a rule over a logged run. No jax here: rules run on the host,
once per evaluation, and the CLI checks them before jax starts.

    rule = any_of(patience(patience=3, min_delta=0.005), paired_test(alpha=0.05, patience=2))
    state = rule.init()
    state, decision = rule.update(state, obs)    # decision.stop, decision.reason
    rule.best_step(state)                        # what restore-best restores (or None)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from framework.errors import ConfigError

State = Any  # JSON: dicts, lists, numbers, None


class Observation(NamedTuple):
    """One evaluation, as a rule sees it."""

    step: int
    tokens: int  # counted training tokens so far
    fraction: float  # tokens / planned budget
    val_em: float  # validation strict EM (teacher-forced)
    val_loss: float  # validation answer loss
    grad_norm: float | None = None  # the latest logged training gradient norm
    correct: tuple[int, ...] | None = None  # per-example validation correctness (0/1), for paired tests
    average_em: float | None = None  # the best validation EM of the weight averages kept so far (EMA / SWA)


class Decision(NamedTuple):
    stop: bool
    reason: str = ""


class StopRule(NamedTuple):
    name: str
    init: Callable[[], State]
    update: Callable[[State, Observation], tuple[State, Decision]]
    best_step: Callable[[State], int | None] = lambda state: None  # the step restore-best would restore
    report: Callable[[State], dict] = lambda state: {}  # what the trainer logs at each evaluation


GO_ON = Decision(False)


# == patience (Keras EarlyStopping semantics) ===================================================


def patience(metric: str = "val_em", patience: int = 3, min_delta: float = 0.0, mode: str = "auto",
             baseline: float | None = None, start: float = 0.0, restore_best: bool = True) -> StopRule:
    """Stop after `patience` evaluations without an improvement of more than `min_delta`.

    As Keras' EarlyStopping: every evaluation adds one to `wait`; a value better than the best by
    more than `min_delta` becomes the best, and resets `wait` only if it also beats `baseline`
    (when given). Evaluations before `start` (a fraction of the budget) are ignored. With
    `restore_best`, `best_step` names the best evaluation, which the trainer restores when the run
    is stopped, whichever rule stopped it.

    Args:
      metric: "val_em" or "val_loss".
      mode: "max", "min", or "auto" (max for EM, min for loss).
    """
    _check_choice("stop_rules.metric", metric, METRICS)
    _check_choice("stop_rules.mode", mode, ("auto", "max", "min"))
    _check_int("patience", patience, 1)
    _check_number("min_delta", min_delta, 0.0)
    _check_fraction("start", start)
    if baseline is not None:
        _check_number("baseline", baseline, 0.0)
    if not isinstance(restore_best, bool):
        raise ConfigError("stop_rules.restore_best", f"{restore_best!r} must be true or false")
    sign = _sign(metric, mode)

    def better(value, reference) -> bool:
        return reference is None or sign * (value - reference) > min_delta

    def init():
        return {"best": None, "best_step": None, "wait": 0}

    def update(s, obs):
        if obs.fraction < start:
            return s, GO_ON
        value = getattr(obs, metric)
        s = {**s, "wait": s["wait"] + 1}
        if better(value, s["best"]):
            s.update(best=value, best_step=obs.step)
            if baseline is None or better(value, baseline):
                s["wait"] = 0
            return s, GO_ON
        if s["wait"] >= patience:
            return s, Decision(True, f"patience: {metric} did not improve by more than {min_delta} in {s['wait']} "
                                     f"evaluations (best {s['best']:.4f} at step {s['best_step']})")
        return s, GO_ON

    return StopRule("patience", init, update, (lambda s: s["best_step"]) if restore_best else (lambda s: None))


_patience_rule = patience  # `patience` is also an argument name below


def moving_average(window: int = 3, patience: int = 2, min_delta: float = 0.0, metric: str = "val_em",
                   start: float = 0.0) -> StopRule:
    """Patience on the mean of the last `window` values of `metric`: one noisy evaluation neither
    stops the run nor resets the count."""
    _check_int("window", window, 1)
    _check_choice("stop_rules.metric", metric, METRICS)
    inner = _patience_rule(metric, patience, min_delta, start=start, restore_best=False)

    def init():
        return {"recent": [], "inner": inner.init()}

    def update(s, obs):
        recent = [*s["recent"], getattr(obs, metric)][-window:]
        smoothed = obs._replace(**{metric: sum(recent) / len(recent)})
        inner_state, decision = inner.update(s["inner"], smoothed)
        reason = f"moving average of {window}: {decision.reason}" if decision.stop else ""
        return {"recent": recent, "inner": inner_state}, Decision(decision.stop, reason)

    return StopRule("moving-average", init, update)


# == gradient-norm plateau ======================================================================


def grad_norm_plateau(window: int = 3, rel_tol: float = 0.05, patience: int = 2, start: float = 0.25) -> StopRule:
    """Stop once the moving average of the training gradient norm changes by less than `rel_tol`
    (relative) between evaluations, `patience` times in a row: the updates have stopped moving."""
    _check_int("window", window, 1)
    _check_int("patience", patience, 1)
    _check_number("rel_tol", rel_tol, 0.0)
    _check_fraction("start", start)

    def init():
        return {"recent": [], "previous": None, "flat": 0}

    def update(s, obs):
        if obs.grad_norm is None or obs.fraction < start:
            return s, GO_ON
        recent = [*s["recent"], float(obs.grad_norm)][-window:]
        mean = sum(recent) / len(recent)
        prev = s["previous"]
        flat = s["flat"] + 1 if prev and abs(mean - prev) / prev < rel_tol else 0
        s = {"recent": recent, "previous": mean, "flat": flat}
        if flat >= patience:
            return s, Decision(True, f"grad-norm plateau: its moving average moved less than {rel_tol:.0%} in "
                                     f"{flat} evaluations (now {mean:.4f})")
        return s, GO_ON

    return StopRule("grad-norm", init, update)


# == paired test on per-example correctness =====================================================


def sign_test_p(gained: int, lost: int) -> float:
    """One-sided exact sign test: P(at least `gained` of the `gained + lost` changed examples went
    the right way | no real change). 1.0 when nothing changed."""
    n = gained + lost
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(gained, n + 1)) / 2**n


def paired_test(alpha: float = 0.05, patience: int = 2, start: float = 0.0) -> StopRule:
    """Stop after `patience` evaluations none of which is significantly better than the best so far.

    EM moves in steps of 1/n and is noisy; this compares the same validation examples between
    two evaluations (like Optuna's Wilcoxon pruner, here the exact sign test on examples that
    changed: McNemar's test, one-sided). An evaluation replaces the best only when it is better
    at level `alpha`.
    """
    _check_number("alpha", alpha, 0.0)
    _check_int("patience", patience, 1)
    _check_fraction("start", start)

    def init():
        return {"best": None, "best_step": None, "best_em": None, "wait": 0, "p": None}

    def update(s, obs):
        if obs.correct is None:
            raise ConfigError("stop_rules", "paired-test needs per-example validation correctness")
        if obs.fraction < start:
            return s, GO_ON
        now = [int(c) for c in obs.correct]
        if s["best"] is None:
            return {**s, "best": now, "best_step": obs.step, "best_em": obs.val_em, "wait": 0}, GO_ON
        gained = sum(1 for a, b in zip(now, s["best"], strict=True) if a and not b)
        lost = sum(1 for a, b in zip(now, s["best"], strict=True) if b and not a)
        p = sign_test_p(gained, lost)
        if p < alpha:
            return {"best": now, "best_step": obs.step, "best_em": obs.val_em, "wait": 0, "p": p}, GO_ON
        s = {**s, "wait": s["wait"] + 1, "p": p}
        if s["wait"] >= patience:
            return s, Decision(True, f"paired test: no evaluation in {s['wait']} beat step {s['best_step']} at "
                                     f"p < {alpha} (last p = {p:.3f}: +{gained} / -{lost} examples)")
        return s, GO_ON

    return StopRule("paired-test", init, update, lambda s: s["best_step"])


# == composition ================================================================================


def _combine(rules: Sequence[StopRule], need_all: bool) -> StopRule:
    if not rules:
        raise ConfigError("stop_rules", "give at least one rule to combine")

    def init():
        return [r.init() for r in rules]

    def update(states, obs):
        results = [r.update(s, obs) for r, s in zip(rules, states, strict=True)]
        new_states = [s for s, _ in results]
        fired = [d for _, d in results if d.stop]
        stop = len(fired) == len(rules) if need_all else bool(fired)
        return new_states, Decision(stop, "; ".join(d.reason for d in fired) if stop else "")

    def best_step(states):
        steps = [r.best_step(s) for r, s in zip(rules, states, strict=True)]
        return next((s for s in steps if s is not None), None)  # the first rule that keeps a best

    def report(states):
        out = {}
        for r, s in zip(rules, states, strict=True):
            out.update(r.report(s))
        return out

    name = (" & " if need_all else " | ").join(r.name for r in rules)
    return StopRule(name, init, update, best_step, report)


def any_of(*rules: StopRule) -> StopRule:
    """Stops when any rule fires (every rule still sees every evaluation)."""
    return _combine(rules, need_all=False)


def all_of(*rules: StopRule) -> StopRule:
    """Stops only when every rule fires at the same evaluation."""
    return _combine(rules, need_all=True)


# == argument checks ===========================================================================

METRICS = ("val_em", "val_loss")


def _sign(metric: str, mode: str) -> int:
    if mode == "auto":
        return 1 if metric == "val_em" else -1
    return 1 if mode == "max" else -1


def _check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(field, f"unknown value {value!r}", allowed)


def _check_int(field: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"stop_rules.{field}", f"{value!r} must be an integer >= {minimum}")


def _check_number(field: str, value, minimum: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"stop_rules.{field}", f"{value!r} must be a number >= {minimum}")


def _check_fraction(field: str, value) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"stop_rules.{field}", f"{value!r} must be a budget fraction in [0, 1]")
