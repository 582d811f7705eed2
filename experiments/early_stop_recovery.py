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
ships the best of that and the EMAs (framework.runner.controller). `harness.flagship_report` turns
the rows into tables, the issue's targets and a plot. Finished runs and scored seeds are reused.

This file is the recipe: the stops, oracles, prices, seeds and today's figures below; the machinery
is harness.flagship.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from experiments.common import TASKS
from experiments.fair_tuning import recipe
from harness import flagship, flagship_report
from harness.flagship import Plan

STOPS = (0.38, 0.5, 0.62, 0.75, 0.88, 1.0)
ORACLES = (0.38, 0.5, 0.62, 0.75)
PRICES_PER_BUDGET = (2, 8, 32)  # the controller's prices: EM points that the whole budget B costs
TUNED_FILE = os.path.join(os.path.dirname(__file__), "tuned.json")
# Today's plain recipe (before issue 19: untuned, budget B0) at its full budget, test EM over 5 seeds
# (docs/results.md at commit 6b4f02f): the EM recoup's anytime recipe is asked to reach with fewer tokens.
TODAY = {"addition": (800_000, 0.980), "multihop": (2_000_000, 0.979), "byo": (700_000, 0.928)}

# Quick: the headline stop only, sized for <= 10 minutes on 2 cores (the full run has every stop).
QUICK = Plan(("addition",), (0, 1), (0, 1), STOPS, recipe, TODAY, oracles=(0.62,), cooldowns=(0.62,), prices=(8,))
# multihop's runs are ~4x addition's tokens (B = 2M at batch 16): its oracles, 4.5M tokens a seed, train
# on 3 seeds, as issue 19 allows when time demands it (make flagship is over its 2 hours regardless)
FULL = Plan(TASKS, (0, 1, 2, 3, 4), (0, 1, 2, 3, 4), STOPS, recipe, TODAY, ORACLES, STOPS, PRICES_PER_BUDGET,
            task_oracle_seeds={"multihop": (0, 1, 2)})


def load_tuned(path: str = TUNED_FILE) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise SystemExit(f"{path} is missing: run `python -m experiments.fair_tuning --task TASK` and "
                         "`python -m experiments.fair_tuning --export` first")
    with open(path) as f:
        return json.load(f)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="addition only, 2 seeds, the 0.62 stop: <= 10 min")
    p.add_argument("--tasks", help="comma-separated subset of addition,multihop,byo")
    p.add_argument("--seeds", help="comma-separated seeds (full: 0..4, quick: 0,1)")
    p.add_argument("--out", help="run directory (full: runs/flagship, quick: runs/demo)")
    p.add_argument("--docs", default=None,
                   help="results file to write the flagship section into (full default: docs/results.md; "
                        "quick: none)")
    p.add_argument("--scored", default=None,
                   help="a directory that keeps the scored seeds apart from the runs (TASK/seedN.json, read first, "
                        "written too): docs/flagship_scores, committed, rebuilds the tables without the runs")
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
    t0 = time.perf_counter()
    seeds = flagship.run(plan, out, tuned, args.jobs, scored=args.scored)
    given = sys.argv[1:] if argv is None else argv
    command = "make demo" if args.quick and out == "runs/demo" else \
        " ".join(["python -m experiments.early_stop_recovery", *given])
    summary = flagship_report.summarize(seeds, plan, command=command, wall_s=time.perf_counter() - t0)
    path = os.path.join(out, "summary.json")
    os.makedirs(out, exist_ok=True)  # every seed may have come from --scored, with nothing trained into OUT
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
