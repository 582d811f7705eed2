"""The flagship: stop at 62% of the tokens, then win the EM back, over seeds, on three tasks.

    make demo                                          # --quick: addition, 2 seeds, <= 10 min -> runs/demo
    python -m experiments.early_stop_recovery          # full: 3 tasks x 5 seeds, ~2.5 h -> docs/results.md
    python -m experiments.early_stop_recovery --jobs 2 # the same, two (task, seed) at once: 119 min (make flagship)

Tasks: `addition` (8-digit, the demo recipe), `multihop` (chain answers over 100 names x 4
relations) and `byo`, a JSON Lines file of word problems that the experiment writes itself and
reads like any user's file (`experiments.byo_task`). Per task and seed it trains:

    cosine      the plain recipe: uniform data, cosine planned for the full budget B, a checkpoint
                every 10% of B (and at every stop), EMAs (0.6%..5% of B) kept during training
    wsd         warmup-stable-decay planned for B and ended at 0.62·B (`train_until`): up to there
                it is a constant learning rate at the cosine's peak, with the same averages kept
    curriculum  the best curriculum of the curricula study (self-paced on addition and byo,
                replay-mix on multihop), cosine planned for B, ended at 0.62·B, the same averages
                kept (full size only; its full-budget figures are in the curricula section)

and branches cooldowns from them (`recoup cooldown`: the learning rate decays linearly to 0; every
token is counted): cosine at 0.62 + 5% of B; wsd at 0.5 + 12% (ends at 0.62·B); wsd at 0.62 + 5%.
Then every variant is scored on the test split (strict EM, one teacher-forced pass; a vote decodes);
everything chosen (k, half-lives, soups, the best recipe, the controller's stop) is chosen on the
validation split. `experiments.flagship_report` turns the rows into tables, targets and a plot.

Finished runs and scored seeds are reused, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import os
import sys
import time
from typing import Any, NamedTuple

from experiments import byo_task
from experiments.curriculum_vs_uniform import VARIANTS as CURRICULA
from experiments.curriculum_vs_uniform import base_config
from framework.config import DataConfig, RunConfig, load_run_config
from framework.integrity import write_atomic

BYO_BUDGET = 700_000  # counted tokens: chosen on validation EM of seed 0 (see experiments.byo_task)
BUDGET = 0.62  # the early stop: 38% fewer tokens than planned
# Of B; the "ema" method picks one on validation. On 5 seeds of addition and byo and one of multihop,
# validation picked 0.025 (16 of 33), 0.0125 (10), 0.00625 (4), 0.05 (2) and 0.1 (1): the 0.1 one and
# a SWA from 0.25 (never picked) cost an evaluation at every checkpoint and are no longer kept.
EMA_HALF_LIVES = (0.00625, 0.0125, 0.025, 0.05)
BEST_CURRICULUM = {"addition": "self-paced", "multihop": "replay-mix", "byo": "self-paced"}
PRICES_PER_BUDGET = (2, 8, 32)  # the controller's prices: EM points that the whole planned budget B costs
ROWS_VERSION = 2  # bump when what a scored seed holds changes: cached seeds are then rescored


COOLDOWNS = {  # variant -> (source run, from fraction, extra tokens as a share of B)
    "cosine-cooldown": ("cosine", "0.62", "0.05"),
    "wsd-cooldown-in-budget": ("wsd", "0.5", "0.12"),  # ends at BUDGET
    "wsd-cooldown": ("wsd", "0.62", "0.05"),
}


class Plan(NamedTuple):
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    curriculum: bool  # train the curriculum runs
    ema_half_lives: tuple[float, ...]  # of B
    every: float = 0.1  # a checkpoint every this share of B (and at every stop): the members of latest-k,
    # soups and output ensembles. Every 0.05 doubled training's evaluations, and what validation picked
    # from them was the last two or three checkpoints before 0.62 anyway.
    cooldowns: dict = COOLDOWNS  # as COOLDOWNS; each "from" must be a checkpoint of the plan (see `every`)
    vote: bool = True  # the vote decodes every member: the slowest variant to score


# Quick: the levers that matter most, sized for <= 10 minutes on 2 cores (the full run has them all).
QUICK = Plan(("addition",), (0, 1), curriculum=False, ema_half_lives=(0.0125, 0.025),
             cooldowns={"wsd-cooldown-in-budget": COOLDOWNS["wsd-cooldown-in-budget"]}, vote=False)
FULL = Plan(("addition", "multihop", "byo"), (0, 1, 2, 3, 4), curriculum=True, ema_half_lives=EMA_HALF_LIVES)


# == configs ==================================================================================


def task_config(task: str, out_dir: str, data_dir: str) -> RunConfig:
    """The recipe of a task: the demo's for addition, its multihop twin, and for byo the demo's
    model, batch and schedule on the multiplication file the experiment writes."""
    if task != "byo":
        return base_config(task, out_dir)
    path = os.path.join(data_dir, "multiply.jsonl")
    if not os.path.isfile(path):
        byo_task.write(path)
    cfg = base_config("addition", out_dir)
    return dataclasses.replace(cfg, budget_tokens=BYO_BUDGET, data=DataConfig(
        task=None, data_path=path, prompt_col=byo_task.PROMPT_COL, answer_col=byo_task.ANSWER_COL,
        difficulty_col=byo_task.DIFFICULTY_COL, val_size=500, test_size=2_000))


def run_configs(task: str, seed: int, out: str, plan: Plan) -> dict[str, RunConfig]:
    """The trained runs of one (task, seed): name -> config."""
    task_dir = os.path.join(out, task)
    base = dataclasses.replace(task_config(task, task_dir, task_dir), seed=seed)
    b = base.budget_tokens
    kept = dict(every_tokens=round(b * plan.every), ema_half_lives=tuple(int(h * b) for h in plan.ema_half_lives))
    out_of = lambda name: os.path.join(task_dir, f"{name}-seed{seed}")  # noqa: E731
    cfgs = {
        "cosine": dataclasses.replace(base, out_dir=out_of("cosine"), **kept),
        "wsd": dataclasses.replace(base, out_dir=out_of("wsd"), train_until=BUDGET, **kept,
                                   optim=dataclasses.replace(base.optim, schedule="wsd")),
    }
    if plan.curriculum:
        name = BEST_CURRICULUM[task]
        curriculum, cargs, pacing, pargs = CURRICULA[name]
        cfgs["curriculum"] = dataclasses.replace(base, out_dir=out_of(name), curriculum=curriculum, train_until=BUDGET,
                                                 curriculum_args=cargs, pacing=pacing, pacing_args=pargs, **kept)
    return cfgs


# == training =================================================================================


def _same_run(saved: RunConfig, cfg: RunConfig) -> bool:
    """A saved run serves `cfg` if it is the same run that trained at least as far."""
    strip = dict(out_dir="", train_until=1.0)
    return (dataclasses.replace(saved, **strip) == dataclasses.replace(cfg, **strip)
            and saved.train_until >= cfg.train_until)


def ensure_trained(cfg: RunConfig, log=print) -> float:
    """Train `cfg` unless its directory already holds that run, finished; resume an unfinished one.
    Returns the seconds spent training here (0 when reused)."""
    from framework.checkpoints import list_checkpoints
    from framework.train import train

    if os.path.isfile(os.path.join(cfg.out_dir, "config.json")):
        saved = load_run_config(cfg.out_dir)
        if not _same_run(saved, cfg):
            raise SystemExit(f"{cfg.out_dir} holds a different run; move it away or choose another --out")
        if any(c["fraction"] >= cfg.train_until - 1e-9 for c in list_checkpoints(cfg.out_dir)):
            return 0.0
        cfg = dataclasses.replace(cfg, train_until=saved.train_until)  # resume exactly the saved run
    t = time.perf_counter()
    log(f"  training {cfg.out_dir} (to {cfg.train_until:.0%} of {cfg.budget_tokens:,} tokens)")
    train(cfg, resume=os.path.isdir(cfg.out_dir), show_progress=False)
    return time.perf_counter() - t


def ensure_cooldown(src_dir: str, from_frac: str, extra: str, log=print) -> tuple[str, float]:
    from framework.checkpoints import list_checkpoints
    from framework.cooldown import cooldown_config
    from framework.train import train

    cfg = cooldown_config(src_dir, from_frac, extra)
    if os.path.isfile(os.path.join(cfg.out_dir, "config.json")) and list_checkpoints(cfg.out_dir):
        return cfg.out_dir, 0.0
    t = time.perf_counter()
    log(f"  cooldown {cfg.out_dir}")
    train(cfg, resume=os.path.isdir(cfg.out_dir), show_progress=False)
    return cfg.out_dir, time.perf_counter() - t


# == scoring ==================================================================================


def _row(em, variant: str, c, budget_tokens: int, flops_per_token: float, val_em: float | None = None,
         **extra) -> dict[str, Any]:
    """`em(candidate, split)`: strict EM, memoized by the caller."""
    return {"variant": variant, "tokens": c.training_tokens, "fraction": c.training_tokens / budget_tokens,
            "flops": flops_per_token * c.training_tokens, "inference_cost": c.inference_cost,
            "val_em": em(c, "validation") if val_em is None else val_em, "test_em": em(c, "test"),
            "what": c.describe(), **extra}


def _flops_per_token(run_dir: str) -> float:
    import jax

    from framework.data import mean_counted_tokens
    from framework.model import training_flops
    from framework.runs import open_run

    run = open_run(run_dir)
    n_params = sum(x.size for x in jax.tree.leaves(run.abstract_params))
    return training_flops(run.cfg.model, n_params, 1, mean_counted_tokens(run.split("train")))


def score_seed(dirs: dict[str, str], budget_tokens: int, vote: bool = True, log=print) -> tuple[list[dict], list[dict]]:
    """Every variant of one (task, seed): training tokens, FLOPs, inference cost, val and test EM;
    and the plain recipe's curve: test EM of its checkpoint and of its best EMA at every stop."""
    from ensembles.members import Candidate, ParamStore, run_members, strict_em
    from ensembles.select import select
    from framework.tune import load_evaluations, replay

    store, b62 = ParamStore(), int(BUDGET * budget_tokens)
    em = functools.cache(lambda c, split: strict_em(store, c, split))  # variants share candidates (0.62, 1.0)
    fpt = _flops_per_token(dirs["cosine"])
    quiet = lambda _: None  # noqa: E731
    rows = []

    def single(variant, run_dir, budget=None):
        m = run_members(run_dir, budget)[-1]
        rows.append(_row(em, variant, Candidate("single", (m,), (1.0,), "weights"), budget_tokens, fpt))

    def chosen(variant, run_dir, budget, cost, method):
        sel = select([run_dir], budget, cost, method, store=store, log=quiet)
        rows.append(_row(em, variant, sel.best, budget_tokens, fpt, sel.val_em))

    single("full", dirs["cosine"])
    single("plain", dirs["cosine"], b62)
    methods = {"latest-k": ("latest-k", 1), "ema": ("ema", 1), "soup": ("soup", 1), "logits-3": ("logits", 3)}
    for variant, (method, cost) in (methods | ({"vote-5": ("vote", 5)} if vote else {})).items():
        log(f"    {variant}")
        chosen(variant, dirs["cosine"], b62, cost, method)
    single("wsd-plain", dirs["wsd"], b62)
    chosen("wsd-ema", dirs["wsd"], b62, 1, "ema")
    chosen("wsd-logits-3", dirs["wsd"], b62, 3, "logits")
    for variant in (v for v in COOLDOWNS if v in dirs):
        single(variant, dirs[variant])
    if "curriculum" in dirs:
        single("curriculum-plain", dirs["curriculum"], b62)
        chosen("curriculum-ema", dirs["curriculum"], b62, 1, "ema")
    curve = []  # the plain recipe and its EMA at every configured stop: the EM-vs-tokens curve
    for f in sorted(set(load_run_config(dirs["cosine"]).stops)):
        budget = int(f * budget_tokens)
        m = run_members(dirs["cosine"], budget)[-1]
        sel = select([dirs["cosine"]], budget, 1, "ema", store=store, log=quiet)
        curve.append({"fraction": f, "tokens": m.tokens,
                      "single": em(Candidate("single", (m,), (1.0,), "weights"), "test"),
                      "ema": em(sel.best, "test"), "ema_tokens": sel.best.training_tokens})
    # The controller: the budget rule, replayed on the plain recipe's logged validation curve, says
    # when to stop; it ships the better on validation of the checkpoint there and its best EMA.
    # It watches the checkpoints' own validation EM: runs trained before averages were logged with
    # each evaluation would otherwise be judged on a different curve than newer ones.
    evaluations = [o._replace(average_em=None) for o in load_evaluations(dirs["cosine"])]
    for k in PRICES_PER_BUDGET:
        price = k / (budget_tokens / 1e6)  # EM points per million tokens
        out = replay([{"rule": "budget", "price": price}], "any", evaluations)
        ema = select([dirs["cosine"]], out.tokens, 1, "ema", store=store, log=quiet)
        last = Candidate("single", (run_members(dirs["cosine"], out.tokens)[-1],), (1.0,), "weights")
        best, val = max([(last, em(last, "validation")), (ema.best, ema.val_em)], key=lambda x: x[1])
        rows.append(_row(em, f"controller-{k}", best, budget_tokens, fpt, val,
                         price=price, stopped_at=out.tokens, reason=out.reason))
    return rows, curve


def run_seed(task: str, seed: int, out: str, plan: Plan, log=print) -> dict[str, Any]:
    """Train (or reuse) and score one (task, seed); the scored rows are cached in OUT/TASK/seedN.json."""
    cfgs = run_configs(task, seed, out, plan)
    runs = sorted(cfgs) + sorted(plan.cooldowns)
    cache = os.path.join(out, task, f"seed{seed}.json")
    if os.path.isfile(cache):
        with open(cache) as f:
            saved = json.load(f)
        if saved.get("version") == ROWS_VERSION and saved.get("runs") == runs:
            return saved
    t0 = time.perf_counter()
    train_s = sum(ensure_trained(cfg, log) for cfg in cfgs.values())
    dirs = {name: cfg.out_dir for name, cfg in cfgs.items()}
    for variant, (src, frm, extra) in plan.cooldowns.items():
        dirs[variant], s = ensure_cooldown(dirs[src], frm, extra, log)
        train_s += s
    log(f"  scoring {task} seed {seed}")
    rows, curve = score_seed(dirs, cfgs["cosine"].budget_tokens, plan.vote, log)
    result = {"version": ROWS_VERSION, "task": task, "seed": seed, "runs": runs,
              "budget_tokens": cfgs["cosine"].budget_tokens, "train_seconds": round(train_s, 1),
              "seconds": round(time.perf_counter() - t0, 1), "dirs": dirs, "rows": rows, "curve": curve}
    write_atomic(cache, json.dumps(result, indent=2))
    return result


class PrefixedLines(io.TextIOBase):
    """A text stream that writes each whole line to `out` after `prefix`: two workers share one
    terminal, and the trainer's own progress lines must say whose they are too."""

    def __init__(self, prefix: str, out):
        self._prefix, self._out, self._partial = prefix, out, ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._out.write(f"{self._prefix}{line.strip()}\n")
        self._out.flush()
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self.write("\n")
        self._out.flush()


def _run_seed_in_worker(task: str, seed: int, out: str, plan: Plan) -> dict[str, Any]:
    stream = PrefixedLines(f"[{task} seed {seed}] ", sys.stdout)
    with contextlib.redirect_stdout(stream):  # the worker process is reused: restore it after
        try:
            return run_seed(task, seed, out, plan)
        finally:
            stream.flush()


def run_pairs(pairs, work, jobs: int, t0: float) -> list[Any]:
    """`work(task, seed)` for each pair, each in a process of its own, `jobs` at a time; results in
    the order of `pairs`. `work` must pickle: a module-level function or a partial of one.

    On 2 cores two processes side by side did 1.23-1.27x the work of one (XLA's own threads leave
    the cores idle part of the time), and gave bitwise the same rows as one after another."""
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter each: jax must not be forked
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {pool.submit(work, task, seed): (task, seed) for task, seed in pairs}
        for done in concurrent.futures.as_completed(futures):
            task, seed = futures[done]
            done.result()  # a failed seed stops the sweep here, with its traceback
            print(f"{task} seed {seed} done ({time.perf_counter() - t0:.0f} s so far)", flush=True)
        return [f.result() for f in futures]


def main(argv=None) -> None:
    from experiments import flagship_report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="addition only, 2 seeds, no curriculum: <= 10 min")
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
        unknown = sorted(set(args.tasks.split(",")) - set(FULL.tasks))
        if unknown:
            raise SystemExit(f"unknown tasks {unknown}; known: {', '.join(FULL.tasks)}")
        plan = plan._replace(tasks=tuple(args.tasks.split(",")))
    if args.seeds:
        plan = plan._replace(seeds=tuple(int(s) for s in args.seeds.split(",")))
    out = args.out or ("runs/demo" if args.quick else "runs/flagship")
    docs = args.docs if args.docs is not None else (None if args.quick else "docs/results.md")
    for task in plan.tasks:  # every config is checked before anything trains
        for seed in plan.seeds:
            for cfg in run_configs(task, seed, out, plan).values():
                cfg.validate()

    t0 = time.perf_counter()
    pairs = [(task, seed) for task in plan.tasks for seed in plan.seeds]
    if args.jobs > 1:
        seeds = run_pairs(pairs, functools.partial(_run_seed_in_worker, out=out, plan=plan), args.jobs, t0)
    else:
        seeds = []
        for task, seed in pairs:
            print(f"{task} seed {seed} ({time.perf_counter() - t0:.0f} s so far)", flush=True)
            seeds.append(run_seed(task, seed, out, plan))
    given = sys.argv[1:] if argv is None else argv
    command = "make demo" if args.quick and out == "runs/demo" else \
        " ".join(["python -m experiments.early_stop_recovery", *given])
    summary = flagship_report.summarize(seeds, command=command, wall_s=time.perf_counter() - t0)
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
