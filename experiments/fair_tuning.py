"""Fair tuning (issue 19): tune the plain recipe, re-set each budget where it converges, then tune
recoup's anytime recipe with the same sweep and the same number of trials.

    python -m experiments.fair_tuning --task addition          # every stage; a rerun continues
    python -m experiments.fair_tuning --task multihop --stage ladder0

Stages, per task, in runs/tuning/TASK (each reuses what is finished):
  plain0    `recoup sweep` of the plain recipe (uniform data, AdamW, cosine planned for the budget,
            final checkpoint) at today's budget B0, objective: final validation EM
  ladder0   its winner at budgets B0 * 1.25^k on LADDER0_SEEDS: the new budget B is the plateau, the
            smallest budget from which every 25% more tokens adds < 0.5 validation points (mean of the seeds)
  plain     the plain recipe swept again at B (TRIALS trials), and its plateau checked around B
  anytime   recoup's anytime recipe (constant learning rate, any optimizer, averages kept) swept at B
            with the same sampler, pruner and number of trials; objective: the mean over the stops
            0.38..1.0 of the best single model there (checkpoint or EMA), validation EM
  confirm   the top CONFIRM of each sweep retrained on CONFIRM_SEEDS; the best mean objective wins;
            the plain winner's plateau checked again around B
  cooldown  the anytime winner's cooldown before a known stop: its share of the stop's tokens and
            its shape (linear or 1-sqrt), by the mean validation EM at 0.62·B on CONFIRM_SEEDS
  ablate    each lever the anytime winner uses, turned off on CONFIRM_SEEDS: does it pay?

Every sweep trains on seed SWEEP_SEED, the confirmations and ladders on other seeds, none of them
the flagship's 0..4; every choice is made on the validation split. The state of each task is kept
in runs/tuning/TASK/tuned.json; `--export` copies the winners of every tuned task into
experiments/tuned.json, which the flagship (`experiments.early_stop_recovery`) reads.

    python -m experiments.fair_tuning --export

This file is the recipe: the spaces, seeds and frames below. The machinery is harness.tuning.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from experiments.common import TASKS, task_config
from framework.config import DEFAULT_STOPS, RunConfig
from harness import tuning
from harness.tuning import STAGES, Tuning

SWEEP_SEED = 100
ANYTIME_STOPS = (0.38, 0.5, 0.62, 0.75, 0.88, 1.0)  # where the anytime objective looks
EMA_FRACTIONS = (0.0125, 0.025, 0.05, 0.1)  # the anytime recipe's EMAs, as shares of the budget

# Both arms search the same optimizer hyperparameters; the anytime arm adds its own levers.
COMMON_SPACE = {
    "optim.peak_lr": "log:3e-4:3e-2",
    "optim.warmup_frac": "choice:0.01,0.05,0.1,0.15,0.2",  # 0.15: the demo's, so the base is trial 0
    "batch_size": "choice:8,16,32,64,128",
    "optim.b1": "choice:0.9,0.95",
    "optim.b2": "choice:0.95,0.98,0.99,0.995",
    "optim.weight_decay": "choice:0.0,0.1",
}
PLAIN_SPACE = {**COMMON_SPACE, "optim.end_lr_frac": "choice:0.0,0.1"}
ANYTIME_SPACE = {
    **COMMON_SPACE,
    "optim.optimizer": "choice:adamw,schedule-free,muon",
    "optim.b2_batch": "choice:null,128",
    "optim.grokfast_lambda": "choice:0.0,0.5,2.0",
    "batch_warmup": "choice:0.0,0.1,0.25",
}
LEVERS_OFF = {"optim.optimizer": "adamw", "optim.grokfast_lambda": 0.0, "batch_warmup": 0.0, "optim.b2_batch": None}
EXPORT_FILE = os.path.join(os.path.dirname(__file__), "tuned.json")
RESULTS_FILE = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir, "docs", "results.md"))


def plain_config(task: str, budget: int, data_dir: str, out_dir: str = "unused") -> RunConfig:
    """The plain recipe at `budget`: the flagship's task config, nothing kept but the stopping points.
    `data_dir`: where the byo task's data file is (written there if missing)."""
    base = task_config(task, out_dir, data_dir)
    return dataclasses.replace(base, out_dir=out_dir, budget_tokens=budget, stops=DEFAULT_STOPS, every_tokens=None,
                               ema_half_lives=(), swa_start=None, seed=SWEEP_SEED)


def anytime_config(task: str, budget: int, data_dir: str, out_dir: str = "unused") -> RunConfig:
    """The anytime recipe's frame: a constant learning rate after warmup, EMAs at shares of the budget."""
    base = plain_config(task, budget, data_dir, out_dir)
    return dataclasses.replace(base, stops=ANYTIME_STOPS, ema_half_lives=tuple(int(f * budget) for f in EMA_FRACTIONS),
                               optim=dataclasses.replace(base.optim, schedule="constant"))


def today_budget(task: str, data_dir: str) -> int:
    return task_config(task, "unused", data_dir).budget_tokens


# Every sweep trains on seed 100, the confirmations and ladders on 101..103 (the first, wide ladder
# only locates the plateau: 2 seeds), none of them the flagship's 0..4.
TUNING = Tuning(plain=plain_config, anytime=anytime_config, b0=today_budget, plain_space=PLAIN_SPACE,
                anytime_space=ANYTIME_SPACE, trials=16, sweep_seed=SWEEP_SEED, ladder0_seeds=(101, 102),
                ladder_seeds=(101, 102, 103), confirm_seeds=(101, 102, 103), confirm=2, plateau_step=1.25,
                plateau_gain=0.005, cooldown_fractions=(0.1, 0.2, 0.3), cooldown_shapes=("linear", "1-sqrt"),
                cooldown_stop=0.62, levers_off=LEVERS_OFF)


def recipe(task: str, kind: str, budget: int, params: dict, data_dir: str) -> RunConfig:
    """A tuned recipe ("plain" or "anytime") of `task` at `budget`: its frame with the tuned `params`."""
    return TUNING.recipe(task, kind, budget, params, data_dir)


def export(out: str = "runs/tuning", path: str = EXPORT_FILE, results_path: str | None = None) -> dict:
    return tuning.export(TASKS, out, path, results_path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", help="addition|multihop|byo")
    p.add_argument("--export", action="store_true", help=f"merge every tuned task's winners into {EXPORT_FILE}")
    p.add_argument("--stage", default="all", help=f"{'|'.join(STAGES)}|all, or a comma-separated list")
    p.add_argument("--out", default="runs/tuning")
    p.add_argument("--jobs", type=int, default=1,
                   help="processes side by side: sweep workers sharing each study, runs of the other stages")
    args = p.parse_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"--jobs {args.jobs}: give 1 or more")
    tuning.JOBS[0] = args.jobs
    if args.export:
        tasks = export(args.out, results_path=RESULTS_FILE)
        print(f"wrote {EXPORT_FILE} and the Fair tuning section of {RESULTS_FILE}: {', '.join(tasks) or 'no task'}")
        return
    stages = list(STAGES) if args.stage == "all" else args.stage.split(",")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or args.task not in TASKS:
        raise SystemExit(f"unknown stage(s) {unknown} or task {args.task!r}; stages: {', '.join(STAGES)}")
    t0 = time.perf_counter()
    tuning.run_task(TUNING, args.task, stages, args.out, log=lambda line: print(f"[{args.task}] {line}", flush=True))
    print(f"[{args.task}] done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
