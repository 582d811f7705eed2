"""The flagship: a fairly tuned baseline, stopped early, against recoup's anytime recipe, over seeds.

    make demo                                           # --quick: addition, 2 seeds -> runs/demo
    python -m experiments.early_stop_recovery --jobs 2  # full: 3 tasks x 5 seeds -> docs/results.md (make flagship)

Both recipes and each task's budget B come from `experiments.fair_tuning` (experiments/tuned.json):
B is where the tuned plain recipe converges, so a stop at 0.62·B costs EM for the right reason.
Per task and seed it trains:

    plain     the tuned plain recipe (uniform data, AdamW, cosine planned for B); its checkpoint
              at each stop is what stopping a run planned for B gives, its final one the target
    oracle-f  the tuned plain recipe planned from the start for f·B (f in ORACLES): what knowing
              the stop in advance gives (on `oracle_seeds`)
    anytime   recoup's anytime recipe (tuned: a constant learning rate, its optimizer, batch and
              EMAs) to B, a checkpoint every 5% of B
    cool-f    for each stop f, a cooldown branched from the anytime run that ends at f·B (the
              tuned share and shape; tokens counted): what a run that knows its stop does

Then every variant is scored on the test split (strict EM, one teacher-forced pass), with every
choice made on validation: recoup's model at a stop is the best on validation of the anytime
checkpoint, its EMAs and the cooldown ending there. The controller replays the budget rule on the
anytime run's validation curve; where it fires, it cools down from there (tokens counted) and
ships the best of that and the EMAs (framework.runner.controller). `experiments.flagship_report` turns
the rows into tables, the issue's targets and a plot. Finished runs and scored seeds are reused.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any, NamedTuple

from experiments.common import TASKS
from framework.checkpoints.integrity import write_atomic
from framework.config import RunConfig
from harness.studies import ensure_branch, ensure_trained, in_worker, run_pairs

STOPS = (0.38, 0.5, 0.62, 0.75, 0.88, 1.0)
ORACLES = (0.38, 0.5, 0.62, 0.75)
PRICES_PER_BUDGET = (2, 8, 32)  # the controller's prices: EM points that the whole budget B costs
ROWS_VERSION = 3  # bump when what a scored seed holds changes: cached seeds are then rescored
TUNED_FILE = os.path.join(os.path.dirname(__file__), "tuned.json")
# Today's plain recipe (before issue 19: untuned, budget B0) at its full budget, test EM over 5 seeds
# (docs/results.md at commit 6b4f02f): the EM recoup's anytime recipe is asked to reach with fewer tokens.
TODAY = {"addition": (800_000, 0.980), "multihop": (2_000_000, 0.979), "byo": (700_000, 0.928)}


class Plan(NamedTuple):
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    oracle_seeds: tuple[int, ...]
    oracles: tuple[float, ...] = ORACLES
    cooldowns: tuple[float, ...] = STOPS  # stops that get an in-budget cooldown from the anytime run
    prices: tuple[float, ...] = PRICES_PER_BUDGET
    every: float = 0.05  # the anytime run's checkpoint cadence: the controller's evaluations


# Quick: the headline stop only, sized for <= 10 minutes on 2 cores (the full run has every stop).
QUICK = Plan(("addition",), (0, 1), (0, 1), oracles=(0.62,), cooldowns=(0.62,), prices=(8,))
FULL = Plan(TASKS, (0, 1, 2, 3, 4), (0, 1, 2, 3, 4))


# == configs ==================================================================================


def load_tuned(path: str = TUNED_FILE) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise SystemExit(f"{path} is missing: run `python -m experiments.fair_tuning --task TASK` and "
                         "`python -m experiments.fair_tuning --export` first")
    with open(path) as f:
        return json.load(f)


def branch_fraction(f: float, cooldown: dict) -> float:
    """Where the cooldown that ends at stop `f` branches from the anytime run (a stop of that run)."""
    return round(f * (1.0 - cooldown["fraction"]), 4)


def run_configs(task: str, seed: int, out: str, plan: Plan, tuned: dict) -> dict[str, RunConfig]:
    """The trained runs of one (task, seed): name -> config."""
    import dataclasses

    from experiments.fair_tuning import recipe

    t, task_dir = tuned[task], os.path.join(out, task)
    b = t["budget"]
    run = lambda name, kind, budget, **kw: dataclasses.replace(  # noqa: E731
        recipe(task, kind, budget, t[kind], task_dir), seed=seed, out_dir=os.path.join(task_dir, f"{name}-seed{seed}"),
        **kw)
    cfgs = {"plain": run("plain", "plain", b, stops=STOPS)}
    if seed in plan.oracle_seeds:
        cfgs |= {f"oracle-{f}": run(f"oracle{f}", "plain", round(f * b), stops=(1.0,)) for f in plan.oracles}
    branches = {branch_fraction(f, t["cooldown"]) for f in plan.cooldowns}
    cfgs["anytime"] = run("anytime", "anytime", b, stops=tuple(sorted(set(STOPS) | branches)),
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
    for f in STOPS[:-1]:
        rows.append(_row(em, f"plain-{f}", at(dirs["plain"], round(f * b)), b, fpt))
    for f in plan.oracles:
        if f"oracle-{f}" in dirs:
            rows.append(_row(em, f"oracle-{f}", at(dirs[f"oracle-{f}"]), b, fpt))
    for f in STOPS:
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


def run_seed(task: str, seed: int, out: str, plan: Plan, tuned: dict | None = None, log=print) -> dict[str, Any]:
    """Train (or reuse) and score one (task, seed); the scored rows are cached in OUT/TASK/seedN.json."""
    tuned = tuned or load_tuned()
    t = tuned[task]
    cfgs = run_configs(task, seed, out, plan, tuned)
    runs = sorted(cfgs) + [f"cool-{f}" for f in plan.cooldowns] + [f"controller-{k}" for k in plan.prices]
    cache = os.path.join(out, task, f"seed{seed}.json")
    if os.path.isfile(cache):
        with open(cache) as f:
            saved = json.load(f)
        if saved.get("version") == ROWS_VERSION and saved.get("runs") == runs and saved.get("tuned") == t:
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
              "budget_tokens": t["budget"], "today": list(TODAY[task]), "train_seconds": round(train_s, 1),
              "seconds": round(time.perf_counter() - t0, 1), "dirs": dirs | {f"cool-{f}": d for f, d in cool.items()},
              "rows": rows, "curve": curve}
    write_atomic(cache, json.dumps(result, indent=2))
    return result


def _run_seed_in_worker(task: str, seed: int, out: str, plan: Plan) -> dict[str, Any]:
    return in_worker(run_seed, task, seed, out, plan)


def main(argv=None) -> None:
    from experiments import flagship_report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="addition only, 2 seeds, the 0.62 stop: <= 10 min")
    p.add_argument("--tasks", help="comma-separated subset of addition,multihop,byo")
    p.add_argument("--seeds", help="comma-separated seeds (full: 0..4, quick: 0,1)")
    p.add_argument("--out", help="run directory (full: runs/flagship, quick: runs/demo)")
    p.add_argument("--docs", default=None,
                   help="results file to write the flagship section into (full default: docs/results.md; "
                        "quick: none)")
    p.add_argument("--jobs", type=int, default=1,
                   help="(task, seed) pairs run at once, each in its own process (make flagship: 2 on 2 cores)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be at least 1, got {args.jobs}")
    plan = QUICK if args.quick else FULL
    if args.tasks:
        unknown = sorted(set(args.tasks.split(",")) - set(TASKS))
        if unknown:
            raise SystemExit(f"unknown tasks {unknown}; known: {', '.join(TASKS)}")
        plan = plan._replace(tasks=tuple(args.tasks.split(",")))
    if args.seeds:
        seeds = tuple(int(s) for s in args.seeds.split(","))
        plan = plan._replace(seeds=seeds, oracle_seeds=tuple(s for s in seeds if s in plan.oracle_seeds) or seeds)
    out = args.out or ("runs/demo" if args.quick else "runs/flagship")
    docs = args.docs if args.docs is not None else (None if args.quick else "docs/results.md")
    tuned = load_tuned()
    for task in plan.tasks:  # every config is checked before anything trains
        if task not in tuned:
            raise SystemExit(f"{TUNED_FILE} has no tuned recipes for {task}: run experiments.fair_tuning --task {task}")
        for seed in plan.seeds:
            for cfg in run_configs(task, seed, out, plan, tuned).values():
                cfg.validate()

    t0 = time.perf_counter()
    pairs = [(task, seed) for task in plan.tasks for seed in plan.seeds]
    if args.jobs > 1:
        seeds = run_pairs(pairs, functools.partial(_run_seed_in_worker, out=out, plan=plan), args.jobs, t0)
    else:
        seeds = []
        for task, seed in pairs:
            print(f"{task} seed {seed} ({time.perf_counter() - t0:.0f} s so far)", flush=True)
            seeds.append(run_seed(task, seed, out, plan, tuned))
    given = sys.argv[1:] if argv is None else argv
    command = "make demo" if args.quick and out == "runs/demo" else \
        " ".join(["python -m experiments.early_stop_recovery", *given])
    summary = flagship_report.summarize(seeds, plan, command=command, wall_s=time.perf_counter() - t0)
    path = os.path.join(out, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    print(flagship_report.headline(summary))
    if docs:
        readme = "README.md" if args.docs is None and os.path.isfile("README.md") else None
        flagship_report.write_docs(summary, docs, plot_dir=os.path.dirname(docs) or ".", readme_path=readme)
        print(f"wrote {docs}")
    print(f"wrote {path} ({summary['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
