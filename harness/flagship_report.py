"""Tables, targets and the plot of the flagship (`experiments.early_stop_recovery`, harness.flagship).

`summarize` turns the per-seed rows into means with 95% t-intervals and paired differences, and
judges the targets of issue 19; `write_docs` writes them into a marked section of docs/results.md
(and the README's headline), so those numbers always come from the last full run, never a hand copy.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from typing import Any

import numpy as np

from framework.checkpoints.integrity import write_atomic
from harness.report import ci95_half_width as _ci

HEADLINE_STOPS = (0.62, 0.5)  # the stops at which recoup's 1x model must reach the plain recipe's full EM
ORACLE_SLACK = 0.01  # the anytime run may trail the oracle planned for a stop by at most 1 point
CONTROLLER_SAVES, CONTROLLER_LOSES = 0.30, 0.01
BEGIN, END = "<!-- flagship:begin (written by experiments.early_stop_recovery) -->", "<!-- flagship:end -->"
README_BEGIN = "<!-- headline:begin (written by experiments.early_stop_recovery) -->"
README_END = "<!-- headline:end -->"


def label(variant: str) -> str:
    kind, _, f = variant.rpartition("-") if variant[-1].isdigit() else (variant, "", "")
    return {
        "full": "plain recipe (tuned), full budget B",
        "plain": f"plain recipe (tuned, planned for B) stopped at {f}",
        "oracle": f"oracle: plain recipe planned for {f}·B",
        "anytime": f"recoup anytime recipe at {f} (best 1x on validation)",
        "anytime-ckpt": f"anytime recipe, checkpoint at {f}",
        "cooldown": f"anytime recipe, cooldown ending at {f}",
        "controller": f"controller, price {f} EM points per B",
    }[kind]


def stop_of(variant: str) -> float | None:
    tail = variant.rpartition("-")[2]
    return float(tail) if variant[-1].isdigit() and not variant.startswith("controller") else None


def aggregate(seed_results: list[dict]) -> list[dict]:
    """One row per variant: means over seeds, the test EM's 95% t half-width, and the paired
    difference from the same seed's full-budget plain recipe."""
    by_variant: dict[str, list[tuple[int, dict, dict]]] = defaultdict(list)  # (seed, row, that seed's rows)
    for s in seed_results:
        ref = {r["variant"]: r for r in s["rows"]}
        for r in s["rows"]:
            by_variant[r["variant"]].append((s["seed"], r, ref))
    out = []
    for v, entries in by_variant.items():
        rows = [r for _, r, _ in entries]
        test = [r["test_em"] for r in rows]
        deltas = [r["test_em"] - ref["full"]["test_em"] for _, r, ref in entries]
        out.append({
            "variant": v, "label": label(v), "n": len(rows), "seeds": [seed for seed, _, _ in entries],
            "test_em": float(np.mean(test)), "test_em_ci95": _ci(test), "test_em_per_seed": test,
            "val_em": float(np.mean([r["val_em"] for r in rows])),
            "fraction": float(np.mean([r["fraction"] for r in rows])),
            "tokens": float(np.mean([r["tokens"] for r in rows])), "flops": float(np.mean([r["flops"] for r in rows])),
            "delta_vs_full": float(np.mean(deltas)), "delta_vs_full_ci95": _ci(deltas),
            "what": [r["what"] for r in rows],
            **({"stopped_at": float(np.mean([r["stopped_at"] for r in rows]))} if "stopped_at" in rows[0] else {}),
        })
    return out


def _paired(seed_results: list[dict], a: str, b: str) -> dict[str, Any] | None:
    """Variant a minus variant b on the seeds that have both: mean and 95% half-width."""
    diffs = []
    for s in seed_results:
        by = {r["variant"]: r for r in s["rows"]}
        if a in by and b in by:
            diffs.append(by[a]["test_em"] - by[b]["test_em"])
    return {"mean": float(np.mean(diffs)), "ci95": _ci(diffs), "n": len(diffs)} if diffs else None


def tokens_to_today(seed_results: list[dict]) -> dict[str, Any]:
    """Per seed, the first anytime checkpoint whose best 1x model (chosen on validation) reaches
    today's plain full-budget test EM, as a share of today's budget B0."""
    b0, target = seed_results[0]["today"]
    shares = [next((c["tokens"] / b0 for c in s["curve"] if c["test_em"] >= target), None) for s in seed_results]
    reached = [x for x in shares if x is not None]
    return {"b0": b0, "target_em": target, "per_seed": shares, "reached": len(reached), "n": len(shares),
            "mean_share": float(np.mean(reached)) if reached else None, "max_share": max(reached, default=None)}


def targets(seed_results: list[dict], rows: list[dict]) -> dict[str, Any]:
    """Issue 19's targets, on test means over seeds; every model in them was chosen on validation."""
    by = {r["variant"]: r for r in rows}
    out: dict[str, Any] = {"full_test_em": by["full"]["test_em"]}
    out["headline"] = []
    for f in HEADLINE_STOPS:
        d = _paired(seed_results, f"anytime-{f}", "full")
        if d is not None:
            out["headline"].append({"stop": f, "test_em": by[f"anytime-{f}"]["test_em"], "delta": d,
                                    "plain_at_stop": by.get(f"plain-{f}", {}).get("test_em"),
                                    "met": d["mean"] >= 0.0})
    out["oracle"] = []
    for f in sorted({stop_of(v) for v in by if v.startswith("oracle-")} | {1.0}):
        oracle = "full" if f == 1.0 else f"oracle-{f}"
        d = _paired(seed_results, f"anytime-{f}", oracle)
        if d is not None:
            out["oracle"].append({"stop": f, "anytime": by[f"anytime-{f}"]["test_em"], "oracle": by[oracle]["test_em"],
                                  "delta": d, "met": d["mean"] >= -ORACLE_SLACK})
    ctrl = []
    for r in rows:
        if r["variant"].startswith("controller-"):
            saved, lost = 1 - r["fraction"], by["full"]["test_em"] - r["test_em"]
            ctrl.append({"variant": r["variant"], "tokens_saved": saved, "em_lost": lost,
                         "met": saved >= CONTROLLER_SAVES and lost <= CONTROLLER_LOSES})
    out["controller"] = {"prices": ctrl, "met": any(c["met"] for c in ctrl)}
    out["today"] = tokens_to_today(seed_results)
    return out


def summarize(seed_results: list[dict], plan, command: str, wall_s: float) -> dict[str, Any]:
    tasks = {}
    for task in dict.fromkeys(s["task"] for s in seed_results):
        runs = [s for s in seed_results if s["task"] == task]
        rows = aggregate(runs)
        tasks[task] = {"budget_tokens": runs[0]["budget_tokens"], "tuned": runs[0]["tuned"],
                       "seeds": [s["seed"] for s in runs], "oracle_seeds": sorted(set(plan.oracle_seeds_of(task))
                                                                                 & {s["seed"] for s in runs}),
                       "seconds": round(sum(s["seconds"] for s in runs), 1),
                       "train_seconds": round(sum(s["train_seconds"] for s in runs), 1),
                       "rows": rows, "targets": targets(runs, rows)}
    return {"command": command, "wall_s": round(wall_s, 1), "tasks": tasks, "per_seed": seed_results}


# == text =====================================================================================


def _em(r: dict) -> str:
    return f"{r['test_em']:.3f} ± {r['test_em_ci95']:.3f}"


def _d(d: dict) -> str:
    return f"{d['mean']:+.3f} ± {d['ci95']:.3f}"


def yes(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def targets_text(t: dict) -> str:
    lines = []
    for h in t["headline"]:
        lines.append(f"- 1x at {h['stop']}·B ≥ the plain recipe at B: {yes(h['met'])}. recoup's anytime recipe "
                     f"{h['test_em']:.3f} against {t['full_test_em']:.3f} (paired Δ {_d(h['delta'])}); the plain "
                     f"recipe stopped there: {h['plain_at_stop']:.3f}.")
    ok = all(o["met"] for o in t["oracle"])
    per = "; ".join(f"{o['stop']}: {o['anytime']:.3f} vs {o['oracle']:.3f} (Δ {_d(o['delta'])})" for o in t["oracle"])
    lines.append(f"- anytime ≥ the oracle planned for each stop, within {100 * ORACLE_SLACK:.0f} point: {yes(ok)}. "
                 f"{per}.")
    ctrl = "; ".join(f"price {c['variant'].split('-')[1]}: saves {c['tokens_saved']:.0%} of the tokens, loses "
                     f"{100 * c['em_lost']:+.1f} EM points" for c in t["controller"]["prices"])
    lines.append(f"- the controller saves ≥ {CONTROLLER_SAVES:.0%} of the tokens for ≤ {100 * CONTROLLER_LOSES:.0f} "
                 f"point lost at some price: {yes(t['controller']['met'])}. {ctrl}.")
    td = t["today"]
    share = "never" if td["mean_share"] is None else f"{td['mean_share']:.0%} of it on average (at most " \
                                                     f"{td['max_share']:.0%})"
    lines.append(f"- tokens the anytime recipe needs to reach today's plain full-budget test EM ({td['target_em']:.3f} "
                 f"at B0 = {td['b0']:,}): {share}; reached on {td['reached']} of {td['n']} seeds.")
    return "\n".join(lines)


def task_table(rows: list[dict]) -> str:
    lines = ["| variant | test EM (95% CI) | Δ vs full, paired (95% CI) | tokens (of B) | training FLOPs |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {_em(r)} | {r['delta_vs_full']:+.3f} ± {r['delta_vs_full_ci95']:.3f} | "
                     f"{r['fraction']:.2f} | {r['flops']:.2e} |")
    return "\n".join(lines)


def curve_table(rows: list[dict]) -> str:
    """Every stop: the plain recipe stopped there, the oracle planned for it, and recoup's anytime pieces."""
    by = {r["variant"]: r for r in rows}
    stops = sorted({s for r in rows if (s := stop_of(r["variant"])) is not None})
    kinds = (("plain", "plain recipe planned for B"), ("oracle", "oracle planned for the stop"),
             ("anytime", "recoup: best 1x on validation"), ("anytime-ckpt", "anytime checkpoint"),
             ("cooldown", "anytime + cooldown ending there"))
    lines = ["| stop | " + " | ".join(f"{s:g}" for s in stops) + " |", "|---|" + "---|" * len(stops)]
    for kind, name in kinds:
        cells = []
        for s in stops:
            v = "full" if kind in ("plain", "oracle") and s == 1.0 else f"{kind}-{s}"
            cells.append(_em(by[v]) if v in by else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(rows: list[dict], seeds: list[int]) -> str:
    lines = ["| variant | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for r in rows:
        em = dict(zip(r["seeds"], r["test_em_per_seed"], strict=True))
        lines.append(f"| {r['variant']} | " + " | ".join(f"{em[s]:.3f}" if s in em else "–" for s in seeds) + " |")
    return "\n".join(lines)


def headline(summary: dict) -> str:
    lines = []
    for task, t in summary["tasks"].items():
        lines += [f"\n{task}: {len(t['seeds'])} seeds, budget B = {t['budget_tokens']:,} tokens (the tuned plain "
                  "recipe's plateau); test strict EM, mean ± 95% t half-width", ""]
        w = max(len(r["label"]) for r in t["rows"])
        lines.append(f"{'variant':<{w}}  {'test EM':>15}  {'vs full':>7}  {'tokens':>6}")
        for r in t["rows"]:
            lines.append(f"{r['label']:<{w}}  {_em(r):>15}  {r['delta_vs_full']:+7.3f}  {r['fraction']:>6.2f}")
        lines += ["", targets_text(t["targets"])]
    return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
    """Per task: test EM against tokens (share of B): the plain recipe stopped at each stop, the
    oracles planned for each stop, recoup's anytime recipe (best 1x on validation) and the controller."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = summary["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.6 * len(tasks), 4.4), dpi=110, squeeze=False)
    series = (("plain", "plain recipe planned for B, stopped", "tab:gray", "o", "-"),
              ("oracle", "plain recipe planned for the stop (oracle)", "tab:blue", "s", "none"),
              ("anytime", "recoup anytime recipe (best 1x)", "tab:red", "D", "-"))
    for ax, (task, t) in zip(axes[0], tasks.items(), strict=True):
        by = {r["variant"]: r for r in t["rows"]}
        stops = sorted({s for r in t["rows"] if (s := stop_of(r["variant"])) is not None})
        for kind, name, color, marker, style in series:
            names = ["full" if kind != "anytime" and s == 1.0 else f"{kind}-{s}" for s in stops]
            pts = [by[v] for v in names if v in by]
            ax.errorbar([r["fraction"] for r in pts], [r["test_em"] for r in pts],
                        yerr=[r["test_em_ci95"] for r in pts], color=color, marker=marker, linestyle=style,
                        markersize=4, linewidth=1.2, capsize=2, label=name)
        ctrl = [r for r in t["rows"] if r["variant"].startswith("controller-")]
        ax.plot([r["fraction"] for r in ctrl], [r["test_em"] for r in ctrl], "kX", markersize=7, label="controller")
        ax.axhline(by["full"]["test_em"], color="black", linewidth=0.8, linestyle=":")
        ax.axvline(0.62, color="red", linewidth=0.8, alpha=0.4)
        ax.set_ylim(max(0.0, min(r["test_em"] for r in t["rows"]) - 0.05), 1.01)
        ax.set_title(f"{task} ({len(t['seeds'])} seeds, B = {t['budget_tokens'] / 1e6:g}M tokens)")
        ax.set_xlabel("training tokens (share of B)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test exact match (mean, 95% CI)")
    axes[0][0].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def section(summary: dict, plot_name: str) -> str:
    per_task = ", ".join(f"{task} {t['seconds'] / 60:.0f} min" for task, t in summary["tasks"].items())
    lines = [BEGIN, "## The flagship: a fairly tuned baseline, stopped early, against recoup's anytime recipe", "",
             "```bash", summary["command"], "```", "",
             f"Wall-clock time on this 2-core machine, summed over the seeds (training and scoring; with `--jobs 2` "
             f"two seeds run at once, so the sums exceed the run's own time): {per_task}. Both recipes and each "
             "budget B come from `experiments.fair_tuning` (experiments/tuned.json): B is where the tuned plain "
             "recipe converges. Every figure is test-split strict EM, mean ± 95% t half-width over seeds; Δ is the "
             "paired difference from the same seed's tuned plain recipe at B. Tokens are the training tokens a "
             "variant used, as a share of B (cooldowns count theirs). recoup's model at a stop, the cooldown, the "
             "EMAs and the controller's stop were chosen on validation only.", "",
             f"![EM against training tokens]({plot_name})", ""]
    for task, t in summary["tasks"].items():
        tu = t["tuned"]
        lines += [f"### {task} ({len(t['seeds'])} seeds: {', '.join(map(str, t['seeds']))}; oracles on seeds "
                  f"{', '.join(map(str, t['oracle_seeds']))}; B = {t['budget_tokens']:,} tokens, was {tu['b0']:,})",
                  "", targets_text(t["targets"]), "", task_table(t["rows"]), "",
                  "Along the budget (test EM, mean ± 95% half-width):", "", curve_table(t["rows"]), "",
                  "Per seed (test EM):", "", per_seed_table(t["rows"], t["seeds"]), ""]
    lines.append(END)
    return "\n".join(lines)


def replace_block(text: str, block: str, begin: str, end: str, after: str) -> str:
    """Swap the marked block; insert it after the first line matching `after` when it is absent."""
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    m = re.search(after, text, re.M)
    at = m.end() if m else 0
    return text[:at] + "\n\n" + block + "\n" + text[at:]


def readme_block(summary: dict, plot_path: str) -> str:
    """The README's headline: per task, the tuned plain recipe against recoup's anytime recipe."""
    lines = [README_BEGIN, "", "| task (seeds) | B (was) | plain at B | plain stopped at 0.62·B | recoup 1x at 0.62·B "
             "(Δ, paired) | recoup 1x at 0.5·B (Δ, paired) | controller: tokens saved, EM lost |",
             "|---|---|---|---|---|---|---|"]
    for task, t in summary["tasks"].items():
        by, tg = {r["variant"]: r for r in t["rows"]}, t["targets"]
        cells = {h["stop"]: f"{_em(by['anytime-' + str(h['stop'])])} ({_d(h['delta'])})" for h in tg["headline"]}
        ctrl = ", ".join(f"{c['tokens_saved']:.0%} / {100 * c['em_lost']:+.1f}" for c in tg["controller"]["prices"])
        budgets = f"{t['budget_tokens'] / 1e3:,.0f}k ({t['tuned']['b0'] / 1e3:,.0f}k)"
        lines.append(f"| {task} ({len(t['seeds'])}) | {budgets} "
                     f"| {_em(by['full'])} | {_em(by['plain-0.62']) if 'plain-0.62' in by else '–'} | "
                     f"{cells.get(0.62, '–')} | {cells.get(0.5, '–')} | {ctrl} |")
    lines += ["", f"![EM against training tokens]({plot_path})", "", README_END]
    return "\n".join(lines)


def write_docs(summary: dict, results_path: str, plot_dir: str, readme_path: str | None = None) -> None:
    """The flagship section at the top of `results_path`, the plot beside it, and (if given) the
    headline block of the README, which must already hold the markers."""
    plot_name = "flagship_em_vs_tokens.png"
    plot(summary, os.path.join(plot_dir, plot_name))
    text = open(results_path).read() if os.path.isfile(results_path) else "# Results\n"
    write_atomic(results_path, replace_block(text, section(summary, plot_name), BEGIN, END, r"^# .*$"))
    if readme_path:
        text = open(readme_path).read()
        if README_BEGIN not in text:
            raise SystemExit(f"{readme_path} has no {README_BEGIN} marker for the headline")
        rel = os.path.relpath(os.path.join(plot_dir, plot_name), os.path.dirname(os.path.abspath(readme_path)))
        write_atomic(readme_path, replace_block(text, readme_block(summary, rel), README_BEGIN, README_END, ""))
