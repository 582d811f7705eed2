"""Every ensembling method at 62% of the tokens, per learning-rate schedule, over seeds.

    python -m experiments.ensembles_at_budget --task addition --seeds 0,1,2 --out runs/ensembles   # ~35 min

Each (schedule, seed) trains the demo recipe (`experiments.demo.get_config`: checkpoints every 5%
of the budget) with only the schedule changed, keeping EMAs with half-lives of 0.6%..10% of the
budget (the "ema" method picks one on validation) and a SWA running mean from 25% of the budget.
Then, within 62% of the planned tokens, each method is selected on the validation split
(`ensembles.select`) and scored once on the test split:

    plain      the latest checkpoint within the budget (what early stopping ships)
    latest-k   uniform weight average of the k latest checkpoints, k chosen on validation
    ema / swa  the running averages kept during training, at the latest checkpoint
    soup       greedy soup over the checkpoints
    logits-3   log-prob averaging of up to 3 checkpoints (k chosen on validation)
    vote-5     majority vote of 3..5 checkpoints

Recovery is against the same run's full-budget checkpoint, and against the plain recipe's
(cosine) full-budget model of the same seed. Results: OUT/TASK/results.json and a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

from ensembles.artifact import recovery
from experiments.curriculum_vs_uniform import base_config
from harness.report import ci95_half_width

BUDGET = 0.62
EMA_HALF_LIVES = (0.00625, 0.0125, 0.025, 0.05, 0.1)  # of the budget: 5k..80k tokens on addition; chosen on validation
SCHEDULES = ("cosine", "wsd", "constant")
# name -> (ensembles.select method, max inference cost)
METHODS = {"latest-k": ("latest-k", 1), "ema": ("ema", 1), "swa": ("swa", 1), "soup": ("soup", 1),
           "logits-3": ("logits", 3), "vote-5": ("vote", 5)}


def run_config(task: str, schedule: str, seed: int, out: str):
    run_dir = os.path.join(out, task, f"{schedule}-seed{seed}")
    cfg = base_config(task, run_dir)
    return dataclasses.replace(cfg, seed=seed, swa_start=0.25, every_tokens=cfg.budget_tokens // 20,
                               ema_half_lives=tuple(int(h * cfg.budget_tokens) for h in EMA_HALF_LIVES),
                               optim=dataclasses.replace(cfg.optim, schedule=schedule))


def evaluate_run(cfg) -> dict:
    from ensembles.artifact import baselines, evaluate_candidate
    from ensembles.members import ParamStore
    from ensembles.select import select

    store = ParamStore()
    budget = int(BUDGET * cfg.budget_tokens)
    base = baselines(store, cfg.out_dir, budget)
    row = {"plain": base["single_at_budget"]["em"], "full": base["single_full"]["em"], "methods": {}}
    for name, (method, cost) in METHODS.items():
        sel = select([cfg.out_dir], budget, cost, method, store=store, log=lambda _: None)
        test = evaluate_candidate(store, sel.best, "test")
        row["methods"][name] = {"test_em": test["em"], "val_em": sel.val_em,
                                "members": [m.label for m in sel.best.members],
                                "inference_cost": sel.best.inference_cost, "training_tokens": sel.best.training_tokens}
        print(f"    {name:<9} {sel.best.describe():<50} val {sel.val_em:.3f}  test EM {test['em']:.3f}", flush=True)
    return row


def _mean_sd(values) -> str:
    v = np.asarray(values, float)
    if len(v) < 2:
        return f"{v.mean():.3f}"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f} (±{ci95_half_width(v):.3f})"


def table(results: list[dict]) -> str:
    """Rows: schedule x method; test EM mean ± sd (95% t half-width); recovery vs own and plain full budget.
    The cost column lists the inference costs the seeds' chosen ensembles have (k is chosen on validation)."""
    lines = ["| schedule | method | cost | test EM at 0.62 | recovery (own full) | recovery (cosine full) |",
             "|---|---|---|---|---|---|"]
    cosine = {r["seed"]: r for r in results if r["schedule"] == "cosine"}
    for schedule in dict.fromkeys(r["schedule"] for r in results):
        rows = [r for r in results if r["schedule"] == schedule]
        lines.append(f"| {schedule} | full budget (1.0) | 1 | {_mean_sd([r['full'] for r in rows])} | | |")
        lines.append(f"| {schedule} | plain stop at 0.62 | 1 | {_mean_sd([r['plain'] for r in rows])} | 0 | "
                     f"{_rec_cell(rows, lambda r: r['plain'], cosine)} |")
        for name in METHODS:
            ems = [r["methods"][name]["test_em"] for r in rows]
            own = [recovery(r["methods"][name]["test_em"], r["plain"], r["full"]) for r in rows]
            own = [x for x in own if x is not None]
            cost = "/".join(str(c) for c in sorted({r["methods"][name]["inference_cost"] for r in rows}))
            lines.append(f"| {schedule} | {name} | {cost} | {_mean_sd(ems)} | "
                         f"{_pct(own)} | {_rec_cell(rows, lambda r, n=name: r['methods'][n]['test_em'], cosine)} |")
    return "\n".join(lines)


def _rec_cell(rows, em_of, cosine) -> str:
    """Recovery against the plain recipe (cosine) of the same seed: its 0.62 and full-budget EM."""
    vals = [recovery(em_of(r), cosine[r["seed"]]["plain"], cosine[r["seed"]]["full"]) for r in rows
            if r["seed"] in cosine]
    return _pct([v for v in vals if v is not None])


def _pct(values) -> str:
    if not values:
        return "n/a"
    return f"{np.mean(values):.0%} (" + " / ".join(f"{v:.0%}" for v in values) + ")"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="addition", choices=("addition", "multihop"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--schedules", default=",".join(SCHEDULES))
    p.add_argument("--out", default="runs/ensembles")
    args = p.parse_args(argv)
    from framework.checkpoints.store import list_checkpoints
    from framework.runner.build import train

    results = []
    for schedule in args.schedules.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = run_config(args.task, schedule, seed, args.out)
            cfg.validate()
            done = os.path.isdir(cfg.out_dir) and any(c["fraction"] == 1.0 for c in list_checkpoints(cfg.out_dir))
            if not done:
                t = time.perf_counter()
                train(cfg, resume=os.path.isdir(cfg.out_dir), show_progress=False)
                print(f"{args.task} {schedule} seed {seed}: trained in {time.perf_counter() - t:.0f} s", flush=True)
            row = {"task": args.task, "schedule": schedule, "seed": seed, **evaluate_run(cfg)}
            print(f"  plain 0.62 {row['plain']:.3f}, full {row['full']:.3f}", flush=True)
            results.append(row)
    os.makedirs(os.path.join(args.out, args.task), exist_ok=True)
    with open(os.path.join(args.out, args.task, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(table(results))


if __name__ == "__main__":
    main()
