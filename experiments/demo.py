"""The main job: train the `small` preset on `addition`, checkpoint at the default stopping points,
and print validation and test EM at each one.

    make demo                     # = python -m experiments.demo --out runs/demo

It writes `runs/demo/summary.json`: {"stops": [{"fraction", "tokens", "val_em", "test_em"}, ...]}.
Test EM is greedy-decoded, SQuAD-normalized EM on 2,000 held-out problems that nothing was tuned on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time

from framework.config import PRESETS, DataConfig, OptimConfig, RunConfig


def get_config(out_dir: str = "runs/demo") -> RunConfig:
    return RunConfig(
        out_dir=out_dir,
        budget_tokens=3_000_000,
        data=DataConfig(task="addition", max_digits=5, n_examples=30_000, val_size=500, test_size=2_000),
        model=PRESETS["small"],
        preset="small",
        optim=OptimConfig(schedule="cosine", peak_lr=3e-3, warmup_frac=0.05),
        batch_size=128,
        seed=0,
    )


def stop_table(run_dir: str) -> list[dict]:
    """Test EM (greedy decoding) at every stopping point of a finished run."""
    from framework.runs import evaluate_checkpoint, open_run

    run = open_run(run_dir)
    from framework.checkpoints import list_checkpoints

    rows = []
    for ckpt in list_checkpoints(run_dir):
        result = evaluate_checkpoint(run, ckpt["step"], "test")
        rows.append(
            {
                "fraction": ckpt["fraction"],
                "step": ckpt["step"],
                "tokens": ckpt["tokens"],
                "val_em": ckpt["val_em"],
                "test_em": result["em"],
                "test_em_by_difficulty": result["em_by_difficulty"],
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'stop':>6} {'step':>6} {'tokens':>11} {'val EM':>7} {'test EM':>8}"]
    for r in rows:
        lines.append(
            f"{r['fraction']:>6.2f} {r['step']:>6} {r['tokens']:>11,} {r['val_em']:>7.3f} {r['test_em']:>8.3f}"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-tokens", type=int, default=None, help="override (tuning)")
    parser.add_argument("--lr", type=float, default=None, help="override (tuning)")
    parser.add_argument("--schedule", default=None, help="override (tuning)")
    args = parser.parse_args(argv)

    cfg = get_config(args.out)
    optim = cfg.optim
    if args.lr is not None:
        optim = dataclasses.replace(optim, peak_lr=args.lr)
    if args.schedule is not None:
        optim = dataclasses.replace(optim, schedule=args.schedule)
    cfg = dataclasses.replace(
        cfg, seed=args.seed, optim=optim, budget_tokens=args.budget_tokens or cfg.budget_tokens
    )
    cfg.validate()

    from framework.train import train  # jax is imported only once the config is known good

    if os.path.isdir(cfg.out_dir):
        print(f"removing the previous demo run in {cfg.out_dir}")
        shutil.rmtree(cfg.out_dir)
    t0 = time.perf_counter()
    train(cfg)
    train_s = time.perf_counter() - t0
    rows = stop_table(cfg.out_dir)
    print()
    print(format_table(rows))
    summary = {
        "config": cfg.to_dict(),
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "stops": rows,
    }
    path = os.path.join(cfg.out_dir, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nwrote {path} (training {train_s:.0f} s, total {summary['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
