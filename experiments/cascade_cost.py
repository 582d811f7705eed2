"""EM against mean inference cost at one stop of the flagship's anytime runs (issue 24's results).

    python -m experiments.cascade_cost --flagship runs/flagship --tasks addition,byo,multihop
        [--stop 0.62] [--seeds 0,1,2,3,4] [--docs docs/results.md] [--scored docs/flagship_scores] [--jobs 2]

For every (task, seed) the flagship trained (OUT/TASK/seedN.json names the runs), the anytime run's
checkpoints up to `stop`·B are the pool, and `ensembles.select` picks, on validation, the best
candidate of each kind under each inference-cost cap:

    1x                 the best one model (a checkpoint, an EMA, an average, a soup): cost 1
    cascade <= c       a 1x model that escalates its unsure queries to a log-prob ensemble, mean cost <= c
    logits <= k        a log-prob average of at most k checkpoints: cost k
    vote <= k          a majority vote of at most k checkpoints: cost k
    best <= 3x         the better on validation of logits <= 3 and vote <= 3 (the issue's "best 3x ensemble")

and reports its test EM (mean over seeds, 95% t-interval) and its mean cost on the test split (a
cascade's escalation rate differs there from validation's). The target (issue 24): at 62% of the
tokens, a cascade of mean cost <= 1.3 reaches at least the EM of the best 3x ensemble, judged by the
paired difference over seeds. Each (task, seed) is cached in OUT/TASK/cascade-S-seedN.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any

import numpy as np

from framework.checkpoints.integrity import write_atomic
from harness.report import ci95_half_width
from harness.studies import in_worker, run_pairs

CASCADE_CAPS = (1.1, 1.3, 1.5, 2.0)
ENSEMBLE_SIZES = (2, 3, 5)
TARGET_CAP, TARGET_K = 1.3, 3
VERSION = 1
BEGIN, END = "<!-- cascade-cost:begin (written by experiments.cascade_cost) -->", "<!-- cascade-cost:end -->"


def kinds() -> list[tuple[str, str, float]]:
    """(row name, ensembles.select method, cap) in the order of the table."""
    rows = [("1x", "auto", 1.0)]
    rows += [(f"cascade <= {c:g}", "cascade", c) for c in CASCADE_CAPS]
    for k in ENSEMBLE_SIZES:
        rows += [(f"logits <= {k}", "logits", float(k)), *([(f"vote <= {k}", "vote", float(k))] if k >= 3 else [])]
    return rows


def score_seed(run_dir: str, budget: int, log=print) -> list[dict[str, Any]]:
    """Every row of `kinds` for one anytime run, chosen on validation, scored on test."""
    from ensembles.artifact import evaluate_candidate
    from ensembles.cascade import Cascade, evaluate_cascade
    from ensembles.members import ParamStore
    from ensembles.select import select

    store, rows = ParamStore(), []
    for name, method, cap in kinds():
        t0 = time.perf_counter()
        sel = select([run_dir], budget, max_cost=cap, method=method, store=store, log=lambda _: None)
        c = sel.best
        if isinstance(c, Cascade):
            test = evaluate_cascade(store, c, "test")
            cost, extra = test["mean_cost"], {"signal": c.signal, "tau": c.tau, "val_cost": c.inference_cost,
                                             "test_escalation_rate": test["escalation_rate"]}
        else:
            test, cost, extra = evaluate_candidate(store, c, "test"), float(c.inference_cost), {}
        rows.append({"kind": name, "chosen": c.describe(), "val_em": sel.val_em, "test_em": test["strict_em"],
                     "cost": cost, **extra})
        log(f"    {name:<14} {c.describe()[:70]:<70} val {sel.val_em:.3f} test {test['strict_em']:.3f} "
            f"cost {cost:.2f} ({time.perf_counter() - t0:.0f} s)")
    best3 = max((r for r in rows if r["kind"] in (f"logits <= {TARGET_K}", f"vote <= {TARGET_K}")),
                key=lambda r: r["val_em"])
    rows.append({**best3, "kind": f"best <= {TARGET_K}x"})
    return rows


def _kept(dirs: list[str], name: str) -> str | None:
    """The first of DIR/name that exists."""
    return next((p for d in dirs if os.path.isfile(p := os.path.join(d, name))), None)


def cached_rows(flagship: str, task: str, seed: int, stop: float, scored: str | None = None) -> dict[str, Any] | None:
    """seed_rows' saved result for (task, seed), where one is kept for this stop and budget."""
    dirs = [os.path.join(d, task) for d in (scored, flagship) if d]
    with open(_kept(dirs, f"seed{seed}.json")) as f:
        budget = round(stop * json.load(f)["budget_tokens"])
    if cache := _kept(dirs, f"cascade-{stop:g}-seed{seed}.json"):
        with open(cache) as f:
            saved = json.load(f)
        if saved.get("version") == VERSION and saved.get("budget") == budget:
            return saved
    return None


def _seed_rows_in_worker(task: str, seed: int, flagship: str, stop: float, scored: str | None) -> dict[str, Any]:
    return in_worker(lambda t, s: seed_rows(flagship, t, s, stop, print, scored), task, seed)


def seed_rows(flagship: str, task: str, seed: int, stop: float, log=print, scored: str | None = None) -> dict[str, Any]:
    """One (task, seed)'s rows, cached in FLAGSHIP/TASK/cascade-S-seedN.json (and in SCORED/TASK/ too, where
    `scored` keeps them apart from the runs: see experiments.early_stop_recovery --scored)."""
    if (saved := cached_rows(flagship, task, seed, stop, scored)) is not None:
        return saved
    dirs = [os.path.join(d, task) for d in (scored, flagship) if d]
    name = f"cascade-{stop:g}-seed{seed}.json"
    with open(_kept(dirs, f"seed{seed}.json")) as f:
        flagship_seed = json.load(f)
    budget = round(stop * flagship_seed["budget_tokens"])
    run_dir = os.path.join(flagship, task, os.path.basename(flagship_seed["dirs"]["anytime"]))
    log(f"  {task} seed {seed}: {run_dir}, checkpoints up to {budget:,} tokens")
    t0 = time.perf_counter()
    out = {"version": VERSION, "task": task, "seed": seed, "budget": budget, "run": run_dir,
           "rows": score_seed(run_dir, budget, log)}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        write_atomic(os.path.join(d, name), json.dumps(out, indent=2))
    return out


def summarize(per_seed: dict[str, list[dict]]) -> dict[str, Any]:
    """Per task: each kind's mean test EM and cost over seeds with 95% CIs, and the target's paired gap."""
    tasks = {}
    for task, seeds in per_seed.items():
        kinds_of = [{r["kind"]: r for r in s["rows"]} for s in seeds]  # per seed: kind -> row
        by_kind = {}
        for name in kinds_of[0]:
            rs = [k[name] for k in kinds_of]
            em, cost = [r["test_em"] for r in rs], [r["cost"] for r in rs]
            by_kind[name] = {"test_em": float(np.mean(em)), "test_em_ci95": ci95_half_width(em),
                             "cost": float(np.mean(cost)), "cost_ci95": ci95_half_width(cost),
                             "val_em": float(np.mean([r["val_em"] for r in rs]))}
        gap = np.asarray([k[f"cascade <= {TARGET_CAP:g}"]["test_em"] - k[f"best <= {TARGET_K}x"]["test_em"]
                          for k in kinds_of])
        tasks[task] = {"seeds": [s["seed"] for s in seeds], "budget": seeds[0]["budget"], "kinds": by_kind,
                       "seconds": sum(s["seconds"] for s in seeds),
                       "target": {"gap": float(gap.mean()), "gap_ci95": ci95_half_width(gap),
                                  "met": bool(gap.mean() >= 0)}}
    return tasks


def plot(tasks: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.2), dpi=110, squeeze=False)
    styles = {"1x": ("black", "o"), "cascade": ("tab:red", "D"), "logits": ("tab:blue", "s"),
              "vote": ("tab:green", "^")}
    for ax, (task, t) in zip(axes[0], tasks.items(), strict=True):
        for family, (color, marker) in styles.items():
            pts = [(k, v) for k, v in t["kinds"].items() if k.split(" ")[0] == family]
            ax.errorbar([v["cost"] for _, v in pts], [v["test_em"] for _, v in pts],
                        xerr=[v["cost_ci95"] for _, v in pts], yerr=[v["test_em_ci95"] for _, v in pts],
                        color=color, marker=marker, linestyle="-" if len(pts) > 1 else "none", markersize=4,
                        capsize=2, linewidth=1, label=family)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{task} ({len(t['seeds'])} seeds, {t['budget']:,} tokens)")
        ax.set_xlabel("mean inference cost (forward passes per query, x one model)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test exact match (mean, 95% CI)")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def section(tasks: dict[str, Any], stop: float, command: str, plot_name: str) -> str:
    lines = [BEGIN, f"## EM against inference cost at {stop:.0%} of the tokens: cascades (issue 24)", "",
             "```bash", command, "```", "",
             f"The pool is each seed's anytime run (the flagship above), its checkpoints up to {stop:g}·B. Every row "
             "is chosen on validation by `ensembles.select` under its cost cap and scored on test; a cascade's cost "
             "is its mean on the test split. Mean over seeds with 95% t-intervals.", ""]
    for task, t in tasks.items():
        lines += [f"### {task} ({len(t['seeds'])} seeds; {t['budget']:,} tokens; "
                  f"scoring took {t['seconds'] / 60:.0f} min)", "",
                  "| kind (cap) | test EM | mean cost | val EM |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['test_em']:.3f} ± {v['test_em_ci95']:.3f} | {v['cost']:.2f} ± {v['cost_ci95']:.2f} "
                  f"| {v['val_em']:.3f} |" for k, v in t["kinds"].items()]
        g = t["target"]
        lines += ["", f"Target, a cascade of mean cost <= {TARGET_CAP:g} ≥ the best {TARGET_K}x ensemble: paired "
                      f"difference {g['gap'] * 100:+.1f} ± {g['gap_ci95'] * 100:.1f} points: "
                      f"**{'met' if g['met'] else 'not met'}** (on the mean).", ""]
    lines += [f"![EM against mean inference cost]({plot_name})", "", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--flagship", default="runs/flagship", help="the flagship's output directory")
    p.add_argument("--tasks", default="addition,byo,multihop")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--stop", type=float, default=0.62, help="the share of B whose checkpoints form the pool")
    p.add_argument("--docs", default="docs/results.md", help="results file to write the section into ('' for none)")
    p.add_argument("--scored", default=None, help="where the scored seeds are kept apart from the runs, read first "
                                                 "and written too (docs/flagship_scores)")
    p.add_argument("--jobs", type=int, default=1, help="seeds scored at once, each in a fresh process (default 1)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be at least 1, got {args.jobs}")
    seeds = [int(s) for s in args.seeds.split(",")]
    have = {}
    for task in args.tasks.split(","):
        dirs = [os.path.join(d, task) for d in (args.scored, args.flagship) if d]
        have[task] = [s for s in seeds if _kept(dirs, f"seed{s}.json")]
        if not have[task]:
            print(f"{task}: no scored flagship seed in {' or '.join(dirs)}; skipped")
    rows = {(task, s): cached_rows(args.flagship, task, s, args.stop, args.scored) for task in have for s in have[task]}
    # Each seed left to score runs in a fresh process: one that scored three seeds in a row held 6.7 GB
    # (decodes compiled per candidate, members' weights), a third of the 24 GB machine.
    todo = [pair for pair, r in rows.items() if r is None]
    work = functools.partial(_seed_rows_in_worker, flagship=args.flagship, stop=args.stop, scored=args.scored)
    rows |= dict(zip(todo, run_pairs(todo, work, args.jobs, time.perf_counter()), strict=True))
    per_seed = {task: [rows[task, s] for s in have[task]] for task in have if have[task]}
    tasks = summarize(per_seed)
    for task, t in tasks.items():
        g = t["target"]
        print(f"{task}: cascade <= {TARGET_CAP:g} minus best {TARGET_K}x: {g['gap'] * 100:+.1f} ± "
              f"{g['gap_ci95'] * 100:.1f} points ({'met' if g['met'] else 'not met'})")
    if args.docs:
        from harness.flagship_report import replace_block

        plot_name = "cascade_cost.png"
        plot(tasks, os.path.join(os.path.dirname(args.docs), plot_name))
        command = "python -m experiments.cascade_cost " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(args.docs) as f:
            text = f.read()
        write_atomic(args.docs, replace_block(text, section(tasks, args.stop, command.strip(), plot_name),
                                              BEGIN, END, r"^<!-- fair-tuning:end -->$"))


if __name__ == "__main__":
    main()
