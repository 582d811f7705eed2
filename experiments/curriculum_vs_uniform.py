"""Uniform sampling against curricula at the same token budget, over seeds.

    python -m experiments.curriculum_vs_uniform --task addition --seeds 0,1,2 --out runs/curricula
    python -m experiments.curriculum_vs_uniform --task multihop --seeds 0,1,2 --out runs/curricula

Each variant trains the demo recipe (`experiments.demo.get_config`, or its multihop twin) with only
the curriculum changed (easy-to-hard-gentle: half the data open from the start, all of it from a
quarter of the budget), then scores the test split at every stopping point with one teacher-forced
pass (strict EM: equal to greedy-decoded strict EM, tested in tests/test_model.py; on addition
strict EM and normalized EM coincide). Finished runs are skipped, so an interrupted sweep resumes.
Results go to OUT/TASK/results.json and a markdown table to stdout (copied into docs/results.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

from experiments.demo import get_config
from framework.config import DataConfig, RunConfig
from framework.evaluation.metrics import by_bucket
from harness.report import ci95_half_width

# name -> (curriculum, curriculum_args, pacing, pacing_args). Pacing ramps over half the budget.
VARIANTS = {
    "uniform": ("uniform", {}, "constant", {}),
    "easy-to-hard": ("easy-to-hard", {}, "linear", {"start": 0.2, "ramp": 0.5}),
    "easy-to-hard-gentle": ("easy-to-hard", {}, "linear", {"start": 0.5, "ramp": 0.25}),
    "replay-mix": ("replay-mix", {"share": 0.5, "base": "easy-to-hard"}, "linear", {"start": 0.2, "ramp": 0.5}),
    "self-paced": ("self-paced", {}, "linear", {"start": 0.5, "ramp": 0.5}),
    "hard-to-easy": ("hard-to-easy", {}, "linear", {"start": 0.2, "ramp": 0.5}),
}


def base_config(task: str, out_dir: str) -> RunConfig:
    """The demo recipe; for multihop its twin: chain answers over 100 names x 4 relations, batch 32
    (a fact needs many updates to be memorized: at batch 128, 2M tokens are only 220 steps), 2M tokens.
    Only the stopping points: no periodic checkpoints or weight averages (they do not change training)."""
    cfg = dataclasses.replace(get_config(out_dir), every_tokens=None, ema_half_lives=())
    if task == "multihop":
        cfg = dataclasses.replace(cfg, budget_tokens=2_000_000, batch_size=32,
                                  data=DataConfig(task="multihop", max_hops=3, n_examples=30_000))
    return cfg


def run_variant(task: str, name: str, seed: int, out: str) -> dict:
    from framework.checkpoints.store import list_checkpoints
    from framework.evaluation import evaluate
    from framework.runner.build import train
    from framework.training.runs import open_run

    run_dir = os.path.join(out, task, f"{name}-seed{seed}")
    curriculum, cargs, pace, pargs = VARIANTS[name]
    cfg = dataclasses.replace(base_config(task, run_dir), seed=seed, curriculum=curriculum, curriculum_args=cargs,
                              pacing=pace, pacing_args=pargs)
    done = os.path.isfile(os.path.join(run_dir, "config.json")) and any(
        c["fraction"] == 1.0 for c in list_checkpoints(run_dir))
    if not done:
        t = time.perf_counter()
        train(cfg, resume=os.path.isdir(run_dir), show_progress=False)
        print(f"{task} {name} seed {seed}: trained in {time.perf_counter() - t:.0f} s", flush=True)
    run = open_run(run_dir)
    test = run.split("test")
    rows = []
    for c in list_checkpoints(run_dir):
        tf = evaluate.teacher_forced(run.graphdef, run.params(c["step"]), test, cfg.eval_batch_size)
        rows.append({"fraction": c["fraction"], "tokens": c["tokens"], "val_em": c["val_em"],
                     "test_em": tf["strict_em"], "test_em_by_difficulty": by_bucket(tf["correct"], test.difficulty)})
    return {"task": task, "variant": name, "seed": seed, "stops": rows}


def table(results: list[dict], task: str, variants: list[str]) -> str:
    fractions = [r["fraction"] for r in results[0]["stops"]]
    head = "| variant | " + " | ".join(f"{f:g}" for f in fractions) + " |"
    lines = [head, "|" + "---|" * (len(fractions) + 1)]
    for name in variants:
        runs = [r for r in results if r["task"] == task and r["variant"] == name]
        cells = []
        for i in range(len(fractions)):
            v = np.array([r["stops"][i]["test_em"] for r in runs])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f} (±{ci95_half_width(v):.3f})")
        lines.append(f"| {name} (n={len(runs)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="addition", choices=("addition", "multihop"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="uniform,easy-to-hard,replay-mix,self-paced")
    parser.add_argument("--out", default="runs/curricula")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    results = [run_variant(args.task, v, int(s), args.out) for s in args.seeds.split(",") for v in variants]
    os.makedirs(os.path.join(args.out, args.task), exist_ok=True)
    with open(os.path.join(args.out, args.task, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\ntest strict EM, {args.task}, mean ± sd (95% t half-width), seeds {args.seeds}:\n")
    print(table(results, args.task, variants))


if __name__ == "__main__":
    main()
