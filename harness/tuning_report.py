"""The "Fair tuning" section of docs/results.md, written from experiments/tuned.json (issue 19).

    python -m experiments.fair_tuning --export     # writes tuned.json and this section

Per tuned task: the budget ladder that re-set B, what each sweep cost and found, the tuned configs,
the confirmation on other seeds, the cooldown, and the ablation of the anytime recipe's levers.
Everything here is validation EM on seeds that the flagship (test split, seeds 0..4) does not use.
"""

from __future__ import annotations

import os
import re

from framework.checkpoints.integrity import write_atomic

BEGIN, END = "<!-- fair-tuning:begin (written by experiments.fair_tuning --export) -->", "<!-- fair-tuning:end -->"
SWEEP_NAMES = {"plain0": "plain recipe at today's budget B0", "plain": "plain recipe at the new budget B",
               "anytime": "anytime recipe at B (objective: mean best 1x model over the stops 0.38..1.0)"}


# the order the stages run in (tuned.json keeps its keys sorted)
STAGE_ORDER = ("plain0", "plain", "anytime", "ladder0", "ladder", "confirm_plain", "confirm_anytime", "cooldown",
               "ablate")


def _order(name: str, order) -> tuple[int, str]:
    return (list(order).index(name) if name in order else len(order), name)


def _k(tokens: float) -> str:
    return f"{tokens / 1e6:,.2f}M" if tokens >= 1e6 else f"{tokens / 1e3:,.0f}k"


def _params(p: dict) -> str:
    return ", ".join(f"`{k.removeprefix('optim.')}={v:.3g}`" if isinstance(v, float) else
                     f"`{k.removeprefix('optim.')}={v}`" for k, v in sorted(p.items()))


def _no_plateau(rows: list[dict], t: dict) -> list[str]:
    """A sentence when the ladder found no plateau, so B stayed B0 (the rule named no budget)."""
    from harness.report import plateau

    if plateau(rows) is not None:
        return []
    return [f"No plateau on this ladder: the last step still adds {100 * (rows[-1]['mean'] - rows[-2]['mean']):+.1f} "
            f"points, so B stays today's budget B0 = {_k(t['b0'])} (a longer ladder would have to find it).", ""]


def _ladder(rows: list[dict], budget: int, b0: int) -> list[str]:
    lines = ["| budget | val EM (mean) | per seed | gain from the budget below |", "|---|---|---|---|"]
    prev = None
    for r in rows:
        gain = "" if prev is None else f"{100 * (r['mean'] - prev):+.1f} pts"
        mark = " **(B)**" if r["budget"] == budget else (" (B0)" if r["budget"] == b0 else "")
        lines.append(f"| {_k(r['budget'])}{mark} | {r['mean']:.3f} | {', '.join(f'{e:.3f}' for e in r['val_em'])} "
                     f"| {gain} |")
        prev = r["mean"]
    return lines


def task_section(task: str, t: dict) -> list[str]:
    v, tok = t["validation"], t["tokens"]
    total = sum(tok.values())
    lines = [f"### {task}: B0 = {_k(t['b0'])} → B = {_k(t['budget'])} tokens", "",
             f"Tuning trained {_k(total)} tokens in all ({total / t['budget']:.0f}x the new budget B).", "",
             "**Budget ladder** (the plain winner of the first sweep; final validation EM, mean of the seeds; "
             "B is the smallest budget from which every 25% more tokens adds < 0.5 points):", "",
             *_ladder(v["ladder0"], t["budget"], t["b0"]), "", *_no_plateau(v["ladder0"], t),
             "**Confirmation ladder** (the final plain winner, around B, on seeds 101-103):", "",
             *_ladder(v["ladder"], t["budget"], t["b0"])]
    lines += ["", "**Sweeps** (`recoup sweep`, TPE, successive halving at the stops; the same trials for both "
              "recipes at B):", "", "| sweep | trials (complete / pruned / failed) | tokens trained | wall time "
              "| base config (val) | best trial (val) |", "|---|---|---|---|---|---|"]
    for name, s in sorted(t["sweeps"].items(), key=lambda kv: _order(kv[0], SWEEP_NAMES)):
        n = s["trials"]
        base = "–" if s.get("base_objective") is None else f"{s['base_objective']:.3f}"
        lines.append(f"| {SWEEP_NAMES.get(name, name)} | {n['COMPLETE']} / {n['PRUNED']} / {n['FAIL']} "
                     f"| {_k(s['tokens'])} | {s['wall_s'] / 60:.0f} min | {base} | {s['best_sweep_objective']:.3f} |")
    lines += ["", "**Tuned configs** (the better of each sweep's top two, retrained on seeds 101-103):", "",
              f"- plain (cosine planned for the budget, final checkpoint): {_params(t['plain'])}; "
              f"validation EM at B {v['plain']:.3f} (seeds 101-103)",
              f"- anytime (constant learning rate, EMAs at 1.25/2.5/5/10% of B): {_params(t['anytime'])}; "
              f"anytime objective {v['anytime']:.3f} (seeds 101-103)",
              f"- cooldown before a known stop: the last {t['cooldown']['fraction']:.0%} of the stop's tokens, "
              f"`{t['cooldown']['shape']}`", "",
              "**Cooldown before the stop at 0.62·B** (validation EM, seeds 101-103):", "",
              "| share of the stop's tokens | shape | val EM (mean) | per seed |", "|---|---|---|---|"]
    for r in v["cooldown"]:
        lines.append(f"| {r['fraction']:.0%} | {r['shape']} | {r['mean']:.3f} | "
                     f"{', '.join(f'{e:.3f}' for e in r['val_em'])} |")
    if t.get("ablate"):
        lines += ["", "**Ablation**: each lever the anytime winner uses, turned off (anytime objective, "
                  "seeds 101-103; positive: the lever pays):", "",
                  "| lever | on | off | winner's gain (mean) | per seed |", "|---|---|---|---|---|"]
        for r in t["ablate"]:
            lines.append(f"| `{r['lever']}` | {r['on']} | {r['off']} | {100 * r['gain']:+.1f} pts | "
                         f"{', '.join(f'{100 * g:+.1f}' for g in r['gain_per_seed'])} |")
    elif "ablate" in t and t["ablate"] is None:
        lines += ["", "**Ablation**: not run for this task (`python -m experiments.fair_tuning --task TASK --stage "
                  "ablate` runs it; the reading below says why not)."]
    elif "ablate" in t:
        lines += ["", "**Ablation**: the anytime winner uses none of the levers (plain AdamW, no Grokfast, no "
                  "batch warmup, b2 as given): nothing to turn off."]
    stages = sorted(tok.items(), key=lambda kv: _order(kv[0], STAGE_ORDER))
    lines += ["", "Tokens per stage: " + ", ".join(f"{k} {_k(x)}" for k, x in stages) + "."]
    return lines


def section(tuned: dict) -> str:
    lines = [BEGIN, "## Fair tuning: the baseline tuned, the budgets re-set (issue 19)", "",
             "Written by `python -m experiments.fair_tuning --export` from the tuning runs "
             "(`python -m experiments.fair_tuning --task TASK --jobs 2`). Every sweep trains on seed 100, the "
             "ladders and confirmations on seeds 101-103; every choice is made on the validation split.", ""]
    for task, t in tuned.items():
        lines += task_section(task, t) + [""]
    lines.append(END)
    return "\n".join(lines)


def write_section(tuned: dict, results_path: str) -> None:
    """Swap the marked section of `results_path`, or put it after the flagship's (or the title)."""
    from harness.flagship_report import END as FLAGSHIP_END
    from harness.flagship_report import replace_block

    text = open(results_path).read() if os.path.isfile(results_path) else "# Results\n"
    after = re.escape(FLAGSHIP_END) if FLAGSHIP_END in text else r"^# .*$"
    write_atomic(results_path, replace_block(text, section(tuned), BEGIN, END, after))
