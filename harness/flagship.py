"""The machinery of the flagship (experiments.early_stop_recovery): per (task, seed), the runs of a
`Plan` (the tuned plain recipe, its oracles, recoup's anytime recipe, cooldowns before each stop,
the controller), trained or reused, then every variant scored on the test split with every choice
made on validation. Scored seeds are cached in OUT/TASK/seedN.json.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from framework.checkpoints.integrity import write_atomic
from framework.config import RunConfig
from harness.studies import ensure_branch, ensure_trained, in_worker, run_pairs, share_compilations

ROWS_VERSION = 3  # bump when what a scored seed holds changes: cached seeds are then rescored


class Plan(NamedTuple):
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    oracle_seeds: tuple[int, ...]
    stops: tuple[float, ...]  # where every run is scored; the last is 1.0
    recipe: Callable[..., RunConfig]  # (task, "plain"|"anytime", budget, params, data_dir) -> a tuned config
    today: Mapping[str, tuple[int, float]]  # task -> (today's budget, today's plain full-budget test EM)
    oracles: tuple[float, ...] = (0.38, 0.5, 0.62, 0.75)
    cooldowns: tuple[float, ...] = ()  # stops that get an in-budget cooldown from the anytime run
    prices: tuple[float, ...] = (2, 8, 32)  # the controller's prices: EM points that the whole budget B costs
    every: float = 0.05  # the anytime run's checkpoint cadence: the controller's evaluations
    # task -> the seeds its oracles train on, where fewer than oracle_seeds (issue 19 allows 3 seeds
    # for the oracle rows when time demands it)
    task_oracle_seeds: Mapping[str, tuple[int, ...]] = {}

    def oracle_seeds_of(self, task: str) -> tuple[int, ...]:
        return tuple(s for s in self.task_oracle_seeds.get(task, self.oracle_seeds) if s in self.oracle_seeds)


# == configs ==================================================================================


def branch_fraction(f: float, cooldown: dict) -> float:
    """Where the cooldown that ends at stop `f` branches from the anytime run (a stop of that run)."""
    return round(f * (1.0 - cooldown["fraction"]), 4)


def run_configs(task: str, seed: int, out: str, plan: Plan, tuned: dict) -> dict[str, RunConfig]:
    """The trained runs of one (task, seed): name -> config."""
    import dataclasses

    t, task_dir = tuned[task], os.path.join(out, task)
    b = t["budget"]
    run = lambda name, kind, budget, **kw: dataclasses.replace(  # noqa: E731
        plan.recipe(task, kind, budget, t[kind], task_dir), seed=seed,
        out_dir=os.path.join(task_dir, f"{name}-seed{seed}"), **kw)
    cfgs = {"plain": run("plain", "plain", b, stops=plan.stops)}
    if seed in plan.oracle_seeds_of(task):
        cfgs |= {f"oracle-{f}": run(f"oracle{f}", "plain", round(f * b), stops=(1.0,)) for f in plan.oracles}
    branches = {branch_fraction(f, t["cooldown"]) for f in plan.cooldowns}
    cfgs["anytime"] = run("anytime", "anytime", b, stops=tuple(sorted(set(plan.stops) | branches)),
                          every_tokens=round(plan.every * b))
    return cfgs


def _takes(ckpt: dict, fraction: float) -> bool:
    """Whether `ckpt` was taken at stopping fraction `fraction` (a batch may cross two stops at once:
    the checkpoint then lists both in `fractions`)."""
    return any(abs(f - fraction) < 1e-9 for f in ckpt.get("fractions", [ckpt["fraction"]]))


def cooldown_configs(anytime_dir: str, plan: Plan, t: dict) -> dict[float, RunConfig]:
    """stop f -> the cooldown branched from the anytime run that ends at f·B (tokens counted)."""
    from framework.checkpoints.store import list_checkpoints
    from framework.training.cooldown import cooldown_config

    ckpts = list_checkpoints(anytime_dir)
    out = {}
    for f in plan.cooldowns:
        start = branch_fraction(f, t["cooldown"])
        src = next(c for c in ckpts if _takes(c, start))
        extra = round(f * t["budget"]) - src["tokens"]
        out[f] = cooldown_config(anytime_dir, str(start), str(extra), f"{anytime_dir}-cool{f}",
                                 shape=t["cooldown"]["shape"], step=src["step"])
    return out


# == scoring ==================================================================================


def _row(em, variant: str, c, budget_tokens: int, fpt: float, tokens: int | None = None, **extra) -> dict[str, Any]:
    """`em(candidate, split)`: strict EM, memoized by the caller."""
    tokens = c.training_tokens if tokens is None else tokens
    return {"variant": variant, "tokens": tokens, "fraction": tokens / budget_tokens, "flops": fpt * tokens,
            "inference_cost": c.inference_cost, "val_em": em(c, "validation"), "test_em": em(c, "test"),
            "what": c.describe(), **extra}


def _flops_per_token(run_dir: str) -> float:
    import jax

    from framework.data.encoding import mean_counted_tokens
    from framework.models.transformer import training_flops
    from framework.training.runs import open_run

    run = open_run(run_dir)
    n_params = sum(x.size for x in jax.tree.leaves(run.abstract_params))
    return training_flops(run.cfg.model, n_params, 1, mean_counted_tokens(run.split("train")))


def score_seed(dirs: dict[str, str], cool: dict[float, str], plan: Plan, t: dict, task: str,
               log=print) -> tuple[list[dict], list[dict]]:
    """Every variant of one (task, seed), and the anytime run's curve (its best 1x on validation at
    every checkpoint, with that model's test EM): what it takes to reach today's EM."""
    from ensembles.members import Candidate, Member, ParamStore, run_members, strict_em
    from framework.runner import controller
    from framework.stopping.tune import load_evaluations, replay

    store, b, shape = ParamStore(), t["budget"], t["cooldown"]["shape"]
    em = functools.cache(lambda c, split: strict_em(store, c, split))
    fpt = _flops_per_token(dirs["plain"])
    single = lambda m: Candidate("single", (m,), (1.0,), "weights")  # noqa: E731

    def at(run_dir: str, budget: int | None = None):
        return single(run_members(run_dir, budget)[-1])

    def best_1x(m: Member, extra=()):
        """The best on validation of a checkpoint, its EMAs, and `extra` candidates."""
        kept = store.metadata(m.run, m.step).get("averages", [])
        options = [single(m), *(Candidate("ema", (Member(m.run, m.step, m.tokens, m.fraction, a),), (1.0,),
                                          "weights") for a in kept), *extra]
        return max(options, key=lambda c: em(c, "validation"))  # the first of equals: the plain weights

    rows = [_row(em, "full", at(dirs["plain"]), b, fpt)]
    for f in plan.stops[:-1]:
        rows.append(_row(em, f"plain-{f}", at(dirs["plain"], round(f * b)), b, fpt))
    for f in plan.oracles:
        if f"oracle-{f}" in dirs:
            rows.append(_row(em, f"oracle-{f}", at(dirs[f"oracle-{f}"]), b, fpt))
    for f in plan.stops:
        m = run_members(dirs["anytime"], round(f * b))[-1]
        cooled = (at(cool[f]),) if f in cool else ()
        rows.append(_row(em, f"anytime-{f}", best_1x(m, cooled), b, fpt))
        rows.append(_row(em, f"anytime-ckpt-{f}", single(m), b, fpt))
        if cooled:
            rows.append(_row(em, f"cooldown-{f}", cooled[0], b, fpt))
    evaluations = load_evaluations(dirs["anytime"])  # the rule fits what could ship: the better of weights and EMAs
    for k in plan.prices:
        price = k / (b / 1e6)  # EM points per million tokens
        out = replay([{"rule": "budget", "price": price}], "any", evaluations)
        if not out.reason:  # never fired: the run went to its budget
            rows.append(_row(em, f"controller-{k}", best_1x(run_members(dirs["anytime"])[-1]), b, fpt, price=price,
                             stopped_at=out.tokens, reason="never fired"))
            continue
        log(f"    controller, price {k}: fired at {out.tokens:,} tokens ({out.tokens / b:.2f} B)")
        shipped = controller.cool_down_and_ship(dirs["anytime"], out.step,
                                                str(round(t["cooldown"]["fraction"] * out.tokens)),
                                                shape=shape, out_dir=f"{dirs['anytime']}-controller{k}", log=log)
        m = next(x for x in run_members(shipped["run_dir"]) if x.step == shipped["step"])
        c = single(m) if shipped["average"] is None else Candidate(
            "ema", (Member(m.run, m.step, m.tokens, m.fraction, shipped["average"]),), (1.0,), "weights")
        rows.append(_row(em, f"controller-{k}", c, b, fpt, tokens=shipped["tokens"], price=price,
                         stopped_at=shipped["stopped_at"], reason=out.reason))
    curve = [{"tokens": m.tokens, "fraction": m.tokens / b, "test_em": em(best_1x(m), "test")}
             for m in run_members(dirs["anytime"])]
    return rows, curve


def _saved(path: str, runs: list[str], t: dict) -> dict[str, Any] | None:
    """The scored seed at `path` if these runs of these recipes made it (and rows of this version)."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    return saved if saved.get("version") == ROWS_VERSION and saved.get("runs") == runs and saved.get("tuned") == t \
        else None


def run_seed(task: str, seed: int, out: str, plan: Plan, tuned: dict, log=print,
             scored: str | None = None) -> dict[str, Any]:
    """Train (or reuse) and score one (task, seed) of `tuned` (experiments/tuned.json's recipes); the
    scored rows are cached in OUT/TASK/seedN.json. `scored`: a directory that keeps scored seeds apart
    from the runs (SCORED/TASK/seedN.json, read first and written too), so a small directory that is
    committed (docs/flagship_scores) lets the tables be rebuilt where the runs are gone."""
    t = tuned[task]
    cfgs = run_configs(task, seed, out, plan, tuned)
    runs = sorted(cfgs) + [f"cool-{f}" for f in plan.cooldowns] + [f"controller-{k}" for k in plan.prices]
    name = os.path.join(task, f"seed{seed}.json")
    kept = os.path.join(scored, name) if scored else None
    for path in filter(None, (kept, os.path.join(out, name))):
        if (saved := _saved(path, runs, t)) is not None:
            return saved
    t0 = time.perf_counter()
    train_s = sum(ensure_trained(cfg, log) for cfg in cfgs.values())
    dirs = {name: cfg.out_dir for name, cfg in cfgs.items()}
    cool = {}
    for f, cfg in cooldown_configs(dirs["anytime"], plan, t).items():
        train_s += ensure_branch(cfg, log)
        cool[f] = cfg.out_dir
    log(f"  scoring {task} seed {seed}")
    rows, curve = score_seed(dirs, cool, plan, t, task, log)
    result = {"version": ROWS_VERSION, "task": task, "seed": seed, "runs": runs, "tuned": t,
              "budget_tokens": t["budget"], "today": list(plan.today[task]), "train_seconds": round(train_s, 1),
              "seconds": round(time.perf_counter() - t0, 1), "dirs": dirs | {f"cool-{f}": d for f, d in cool.items()},
              "rows": rows, "curve": curve}
    for path in filter(None, (os.path.join(out, name), kept)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, json.dumps(result, indent=2))
    return result


def _run_seed_in_worker(task: str, seed: int, out: str, plan: Plan, tuned: dict,
                        scored: str | None) -> dict[str, Any]:
    return in_worker(run_seed, task, seed, out, plan, tuned, print, scored)


def run(plan: Plan, out: str, tuned: dict, jobs: int = 1, scored: str | None = None) -> list[dict[str, Any]]:
    """Every (task, seed) of `plan`, `jobs` at a time (each in a process of its own when > 1), after
    checking every config; their scored results in order (`scored`: see run_seed)."""
    for task in plan.tasks:
        for seed in plan.seeds:
            for cfg in run_configs(task, seed, out, plan, tuned).values():
                cfg.validate()
    share_compilations(out)
    t0 = time.perf_counter()
    pairs = [(task, seed) for task in plan.tasks for seed in plan.seeds]
    if jobs > 1:
        work = functools.partial(_run_seed_in_worker, out=out, plan=plan, tuned=tuned, scored=scored)
        return run_pairs(pairs, work, jobs, t0)
    seeds = []
    for task, seed in pairs:
        print(f"{task} seed {seed} ({time.perf_counter() - t0:.0f} s so far)", flush=True)
        seeds.append(run_seed(task, seed, out, plan, tuned, scored=scored))
    return seeds
