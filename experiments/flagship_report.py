"""Tables, targets and the plot of the flagship (`experiments.early_stop_recovery`).

`summarize` turns the per-seed rows into means with 95% t-intervals, recovery against the plain
recipe of the same seed, and the three targets of the flagship; `write_docs` writes them into a
marked section of docs/results.md (and the README's headline), so those numbers always come from
the last full run and never from a hand copy.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from typing import Any

import numpy as np

from ensembles.artifact import recovery
from experiments.demo import ci95_half_width as _ci
from experiments.early_stop_recovery import BEST_CURRICULUM
from framework.integrity import write_atomic
from framework.report import pareto

# variant -> (label, family); the order of every table
VARIANTS = {
    "full": ("plain recipe, full budget (cosine, final checkpoint)", "single"),
    "plain": ("plain recipe stopped at 0.62", "single"),
    "latest-k": ("cosine + latest-k weight average", "average"),
    "ema": ("cosine + EMA", "average"),
    "soup": ("cosine + greedy soup", "average"),
    "logits-3": ("cosine + log-prob ensemble of <= 3", "output"),
    "vote-5": ("cosine + vote of <= 5", "output"),
    "cosine-cooldown": ("cosine + cooldown 0.62 -> 0.67", "cooldown"),
    "wsd-plain": ("WSD/constant LR stopped at 0.62", "wsd"),
    "wsd-ema": ("WSD/constant LR + EMA", "wsd"),
    "wsd-logits-3": ("WSD/constant LR + log-prob ensemble of <= 3", "output"),
    "wsd-cooldown-in-budget": ("WSD: constant, then a cooldown ending at 0.62", "cooldown"),
    "wsd-cooldown": ("WSD: constant to 0.62, cooldown to 0.67", "cooldown"),
    "curriculum-plain": ("best curriculum stopped at 0.62", "curriculum"),
    "curriculum-ema": ("best curriculum + EMA", "curriculum"),
}
STYLE = {"single": ("tab:gray", "o"), "average": ("tab:blue", "s"), "output": ("tab:orange", "^"),
         "cooldown": ("tab:green", "D"), "wsd": ("tab:purple", "P"), "curriculum": ("tab:brown", "v"),
         "controller": ("black", "X")}
ONE_X_IN_BUDGET = ("plain", "latest-k", "ema", "soup", "wsd-plain", "wsd-ema", "wsd-cooldown-in-budget",
                   "curriculum-plain", "curriculum-ema")  # the 1x-cost models that stay within 0.62 of the tokens
THREE_X_IN_BUDGET = ("logits-3", "wsd-logits-3")
BEGIN, END = "<!-- flagship:begin (written by experiments.early_stop_recovery) -->", "<!-- flagship:end -->"
README_BEGIN = "<!-- headline:begin (written by experiments.early_stop_recovery) -->"
README_END = "<!-- headline:end -->"


def label(variant: str, task: str) -> str:
    if variant.startswith("controller-"):
        return f"controller, price {variant.split('-')[1]} EM points per budget"
    return VARIANTS[variant][0].replace("best curriculum", f"best curriculum ({BEST_CURRICULUM.get(task, '?')})")


def family(variant: str) -> str:
    return "controller" if variant.startswith("controller-") else VARIANTS[variant][1]


def aggregate(seed_results: list[dict]) -> list[dict]:
    """One row per variant: means over seeds, the test EM's sd and 95% t half-width, recovery and the
    paired difference from the same seed's full-budget plain recipe."""
    task = seed_results[0]["task"]
    by_variant: dict[str, list[tuple[int, dict, dict]]] = defaultdict(list)  # (seed, row, that seed's rows)
    for s in seed_results:
        ref = {r["variant"]: r for r in s["rows"]}
        for r in s["rows"]:
            by_variant[r["variant"]].append((s["seed"], r, ref))
    out = []
    others = sorted((v for v in by_variant if v not in VARIANTS), key=lambda v: (len(v), v))  # prices ascending
    order = list(VARIANTS) + others
    for v in (v for v in order if v in by_variant):
        rows = [r for _, r, _ in by_variant[v]]
        test = [r["test_em"] for r in rows]
        deltas = [r["test_em"] - ref["full"]["test_em"] for _, r, ref in by_variant[v]]
        recs = [recovery(r["test_em"], ref["plain"]["test_em"], ref["full"]["test_em"])
                for _, r, ref in by_variant[v]]
        recs = [x for x in recs if x is not None]
        out.append({
            "variant": v, "label": label(v, task), "family": family(v), "n": len(rows),
            "test_em": float(np.mean(test)), "test_em_sd": float(np.std(test, ddof=1)) if len(test) > 1 else 0.0,
            "test_em_ci95": _ci(test), "test_em_per_seed": test, "seeds": [seed for seed, _, _ in by_variant[v]],
            "val_em": float(np.mean([r["val_em"] for r in rows])),
            "fraction": float(np.mean([r["fraction"] for r in rows])),
            "tokens": float(np.mean([r["tokens"] for r in rows])), "flops": float(np.mean([r["flops"] for r in rows])),
            "inference_cost": max(r["inference_cost"] for r in rows),
            "recovery": float(np.mean(recs)) if recs else None, "recovery_per_seed": recs,
            "delta_vs_full": float(np.mean(deltas)), "delta_vs_full_ci95": _ci(deltas),
            "what": [r["what"] for r in rows],
        })
    return out


def targets(rows: list[dict]) -> dict[str, Any]:
    """The flagship's three targets, each chosen on validation and judged on test means."""
    by = {r["variant"]: r for r in rows}
    full = by["full"]
    out: dict[str, Any] = {"full_test_em": full["test_em"]}
    ones = [by[v] for v in ONE_X_IN_BUDGET if v in by]
    best = max(ones, key=lambda r: r["val_em"])
    out["best_1x"] = {"variant": best["variant"], "test_em": best["test_em"], "ci95": best["test_em_ci95"],
                      "recovery": best["recovery"], "delta_vs_full": best["delta_vs_full"],
                      "delta_ci95": best["delta_vs_full_ci95"], "met": best["test_em"] >= full["test_em"]}
    threes = [by[v] for v in THREE_X_IN_BUDGET if v in by]
    best3 = max(threes, key=lambda r: r["val_em"])
    out["best_3x"] = {"variant": best3["variant"], "test_em": best3["test_em"], "ci95": best3["test_em_ci95"],
                      "delta_vs_full": best3["delta_vs_full"], "delta_ci95": best3["delta_vs_full_ci95"],
                      "met": best3["test_em"] > full["test_em"]}
    ctrl = []
    for r in rows:
        if r["family"] == "controller":
            saved, lost = 1 - r["fraction"], full["test_em"] - r["test_em"]
            ctrl.append({"variant": r["variant"], "tokens_saved": saved, "em_lost": lost,
                         "met": saved >= 0.30 and lost <= 0.01})
    out["controller"] = {"prices": ctrl, "met": any(c["met"] for c in ctrl)}
    return out


def aggregate_curve(seed_results: list[dict]) -> list[dict]:
    """The plain recipe's checkpoint and its best EMA at every stop: mean test EM and 95% half-width."""
    out = []
    for i, first in enumerate(seed_results[0]["curve"]):
        at = [s["curve"][i] for s in seed_results]
        row = {"fraction": first["fraction"], "tokens": float(np.mean([a["tokens"] for a in at]))}
        for key in ("single", "ema"):
            values = [a[key] for a in at]
            row[key], row[key + "_ci95"] = float(np.mean(values)), _ci(values)
        out.append(row)
    return out


def summarize(seed_results: list[dict], command: str, wall_s: float) -> dict[str, Any]:
    tasks = {}
    for task in dict.fromkeys(s["task"] for s in seed_results):
        runs = [s for s in seed_results if s["task"] == task]
        rows = aggregate(runs)
        tasks[task] = {"budget_tokens": runs[0]["budget_tokens"], "seeds": [s["seed"] for s in runs],
                       "seconds": round(sum(s["seconds"] for s in runs), 1),
                       "train_seconds": round(sum(s["train_seconds"] for s in runs), 1),
                       "rows": rows, "curve": aggregate_curve(runs), "targets": targets(rows)}
    return {"command": command, "wall_s": round(wall_s, 1), "tasks": tasks, "per_seed": seed_results}


# == text =====================================================================================


def _em(r: dict) -> str:
    return f"{r['test_em']:.3f} ± {r['test_em_ci95']:.3f}"


def _pct(x) -> str:
    return "" if x is None else f"{x:.0%}"


def task_table(rows: list[dict]) -> str:
    lines = ["| variant | test EM (95% CI) | Δ vs full (95% CI) | recovery | tokens (of B) | training FLOPs | "
             "inference cost |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {_em(r)} | {r['delta_vs_full']:+.3f} ± {r['delta_vs_full_ci95']:.3f} | "
                     f"{_pct(r['recovery'])} | {r['fraction']:.2f} | {r['flops']:.2e} | {r['inference_cost']}x |")
    return "\n".join(lines)


def per_seed_table(rows: list[dict], seeds: list[int]) -> str:
    """Every variant's test EM on each seed: the spread behind each interval, never copied by hand."""
    lines = ["| variant | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for r in rows:
        em = dict(zip(r["seeds"], r["test_em_per_seed"], strict=True))
        lines.append(f"| {r['variant']} | " + " | ".join(f"{em[s]:.3f}" if s in em else "–" for s in seeds) + " |")
    return "\n".join(lines)


def targets_text(task: str, t: dict) -> str:
    b1, b3, c = t["best_1x"], t["best_3x"], t["controller"]
    yes = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731
    ctrl = "; ".join(f"price {x['variant'].split('-')[1]}: saves {x['tokens_saved']:.0%} of the tokens, "
                     f"loses {100 * x['em_lost']:+.1f} EM points" for x in c["prices"])
    return "\n".join([
        f"- 1x at 62% ≥ full budget: {yes(b1['met'])}. Best 1x model within 0.62 of the tokens (chosen on "
        f"validation): {label(b1['variant'], task)}, test EM {b1['test_em']:.3f} ± {b1['ci95']:.3f} against "
        f"{t['full_test_em']:.3f} at the full budget (Δ {b1['delta_vs_full']:+.3f} ± {b1['delta_ci95']:.3f}, "
        f"recovery {_pct(b1['recovery'])}).",
        f"- 3x output ensemble at 62% > full budget: {yes(b3['met'])}. Best (chosen on validation): "
        f"{label(b3['variant'], task)}, {b3['test_em']:.3f} ± {b3['ci95']:.3f} (Δ {b3['delta_vs_full']:+.3f} ± "
        f"{b3['delta_ci95']:.3f}).",
        f"- controller saves ≥ 30% of the tokens and loses ≤ 1 point at some price: {yes(c['met'])}. {ctrl}.",
    ])


def headline(summary: dict) -> str:
    lines = []
    for task, t in summary["tasks"].items():
        lines += [f"\n{task}: {len(t['seeds'])} seeds, budget B = {t['budget_tokens']:,} tokens; test strict EM, "
                  "mean ± 95% t half-width", ""]
        w = max(len(r["label"]) for r in t["rows"])
        lines.append(f"{'variant':<{w}}  {'test EM':>15}  {'vs full':>7}  {'recov':>6}  {'tokens':>6}  cost")
        for r in t["rows"]:
            lines.append(f"{r['label']:<{w}}  {_em(r):>15}  {r['delta_vs_full']:+7.3f}  {_pct(r['recovery']):>6}  "
                         f"{r['fraction']:>6.2f}  {r['inference_cost']}x")
        lines += ["", targets_text(task, t["targets"])]
    return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
    """Per task: EM against tokens with the Pareto front (top), and every variant's EM with its
    95% interval against the full-budget model's (bottom: most variants sit at 0.62 of the tokens)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = summary["tasks"]
    n_rows = max(len(t["rows"]) for t in tasks.values())
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.6 * len(tasks), 4.2 + 0.28 * n_rows), dpi=110,
                             squeeze=False, gridspec_kw={"height_ratios": [4.2, 0.28 * n_rows]})
    for col, (task, t) in enumerate(tasks.items()):
        ax, bx, b = axes[0][col], axes[1][col], t["budget_tokens"]
        for key, fam, name in (("single", "single", "plain recipe, every stop"), ("ema", "average", "+ best EMA")):
            color, marker = STYLE[fam]
            ax.errorbar([c["tokens"] / b for c in t["curve"]], [c[key] for c in t["curve"]],
                        yerr=[c[key + "_ci95"] for c in t["curve"]], color=color, marker=marker, markersize=3,
                        linewidth=1, alpha=0.7, capsize=2, label=name)
        seen = set()
        for r in t["rows"]:
            color, marker = STYLE[r["family"]]
            ax.plot(r["fraction"], r["test_em"], color=color, marker=marker, linestyle="none", alpha=0.85,
                    label=None if r["family"] in seen else r["family"])
            seen.add(r["family"])
        ones = [{"tokens": r["fraction"], "em": r["test_em"]} for r in t["rows"] if r["inference_cost"] == 1]
        ones += [{"tokens": c["tokens"] / b, "em": max(c["single"], c["ema"])} for c in t["curve"]]
        front = pareto(ones)
        ax.step([r["tokens"] for r in front], [r["em"] for r in front], where="post", color="black",
                linestyle="--", linewidth=1, label="Pareto front (1x cost, means)")
        ax.axvline(0.62, color="red", linewidth=0.8, alpha=0.5)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{task} ({len(t['seeds'])} seeds, B = {b / 1e6:g}M tokens)")
        ax.set_xlabel("training tokens (share of the planned budget B)")
        ax.grid(alpha=0.3)
        full = next(r for r in t["rows"] if r["variant"] == "full")
        bx.axvspan(full["test_em"] - full["test_em_ci95"], full["test_em"] + full["test_em_ci95"], color="gray",
                   alpha=0.2)
        bx.axvline(full["test_em"], color="black", linewidth=1)
        for i, r in enumerate(t["rows"]):
            color, marker = STYLE[r["family"]]
            bx.errorbar(r["test_em"], i, xerr=r["test_em_ci95"], color=color, marker=marker, capsize=2)
        bx.set_yticks(range(len(t["rows"])))
        bx.set_yticklabels([f"{r['variant']} ({r['fraction']:.2f} B, {r['inference_cost']}x)" for r in t["rows"]],
                           fontsize=7)
        bx.invert_yaxis()
        lo = min(r["test_em"] - r["test_em_ci95"] for r in t["rows"])
        bx.set_xlim(max(0.0, lo - 0.02), 1.005)
        bx.set_xlabel("test exact match (gray: full-budget plain recipe, 95% CI)")
        bx.grid(alpha=0.3, axis="x")
    axes[0][0].set_ylabel("test exact match (mean)")
    axes[0][0].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def section(summary: dict, plot_name: str) -> str:
    per_task = ", ".join(f"{task} {t['seconds'] / 60:.0f} min" for task, t in summary["tasks"].items())
    lines = [BEGIN, "## The flagship: 38% fewer tokens, and the EM won back", "", "```bash",
             summary["command"], "```", "",
             f"Wall-clock time on this 2-core machine, summed over the seeds when they were computed (training "
             f"and scoring, including any time shared with other jobs; a reused run counts no training; with "
             f"`--jobs 2` two seeds run at once, so the sums exceed the sweep's own time): {per_task}.",
             "Every figure is test-split strict EM, mean ± 95% t half-width over seeds; Δ is the paired "
             "difference from the same seed's full-budget plain recipe; recovery = (EM − EM at 0.62) / "
             "(EM at 1.0 − EM at 0.62) of the plain recipe, per seed, averaged. Tokens are the training "
             "tokens a variant used, as a share of the planned budget B (cooldowns count theirs); FLOPs "
             "= 6·N·T + causal attention. k, half-lives, soups, the best recipe and the controller's "
             "stop were chosen on validation only.", "", f"![EM against training tokens]({plot_name})", ""]
    for task, t in summary["tasks"].items():
        lines += [f"### {task} ({len(t['seeds'])} seeds: {', '.join(map(str, t['seeds']))}; "
                  f"B = {t['budget_tokens']:,} tokens; best curriculum: {BEST_CURRICULUM.get(task, '?')})", "",
                  targets_text(task, t["targets"]), "",
                  task_table(t["rows"]), "", "The plain recipe along the budget (test EM, mean ± 95% half-width):", "",
                  "| stop | " + " | ".join(f"{c['fraction']:g}" for c in t["curve"]) + " |",
                  "|---|" + "---|" * len(t["curve"]),
                  *(f"| {name} | " + " | ".join(f"{c[key]:.3f} ± {c[key + '_ci95']:.3f}" for c in t["curve"]) + " |"
                    for key, name in (("single", "checkpoint"), ("ema", "best EMA"))), "",
                  "Per seed (test EM):", "", per_seed_table(t["rows"], t["seeds"]), ""]
    lines.append(END)
    return "\n".join(lines)


def _replace_block(text: str, block: str, begin: str, end: str, after: str) -> str:
    """Swap the marked block; insert it after the first line matching `after` when it is absent."""
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    m = re.search(after, text, re.M)
    at = m.end() if m else 0
    return text[:at] + "\n\n" + block + "\n" + text[at:]


def readme_block(summary: dict, plot_path: str) -> str:
    """The README's headline: per task, the plain recipe against the best 1x and 3x models at 62%."""
    lines = [README_BEGIN, "", "| task (seeds) | full budget | stopped at 0.62 | best 1x at 0.62 (chosen on "
             "validation) | best 3x at 0.62 | recovery (1x) | controller: tokens saved, EM lost |",
             "|---|---|---|---|---|---|---|"]
    for task, t in summary["tasks"].items():
        by, tg = {r["variant"]: r for r in t["rows"]}, t["targets"]
        b1, b3 = by[tg["best_1x"]["variant"]], by[tg["best_3x"]["variant"]]
        ctrl = ", ".join(f"{c['tokens_saved']:.0%} / {100 * c['em_lost']:+.1f}" for c in tg["controller"]["prices"])
        lines.append(f"| {task} ({len(t['seeds'])}) | {_em(by['full'])} | {_em(by['plain'])} | {_em(b1)} "
                     f"({b1['label']}) | {_em(b3)} ({b3['label']}) | {_pct(b1['recovery'])} | {ctrl} |")
    lines += ["", f"![EM against training tokens]({plot_path})", "", README_END]
    return "\n".join(lines)


def write_docs(summary: dict, results_path: str, plot_dir: str, readme_path: str | None = None) -> None:
    """The flagship section at the top of `results_path`, the plot beside it, and (if given) the
    headline block of the README, which must already hold the markers."""
    plot_name = "flagship_em_vs_tokens.png"
    plot(summary, os.path.join(plot_dir, plot_name))
    text = open(results_path).read() if os.path.isfile(results_path) else "# Results\n"
    write_atomic(results_path, _replace_block(text, section(summary, plot_name), BEGIN, END, r"^# .*$"))
    if readme_path:
        text = open(readme_path).read()
        if README_BEGIN not in text:
            raise SystemExit(f"{readme_path} has no {README_BEGIN} marker for the headline")
        rel = os.path.relpath(os.path.join(plot_dir, plot_name), os.path.dirname(os.path.abspath(readme_path)))
        write_atomic(readme_path, _replace_block(text, readme_block(summary, rel), README_BEGIN, README_END, ""))
