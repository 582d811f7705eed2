"""What a sweep's trials say: objectives, tokens to reach EM levels, savings, and the files written.

Pure functions over `eval` records, the lines each run writes to `metrics.jsonl` (tokens, fraction,
kind, val_em and, when the run keeps EMAs, average_val_em), then the writers of
`results.json`, `summary.md` and `em_vs_tokens.png`. No jax, no optuna: a sweep's files can be
rebuilt, and these functions tested, from the records alone.
"""

from __future__ import annotations

import json
import os
from typing import Any

from framework.checkpoints.integrity import read_metrics, write_atomic
from framework.sweeps.space import Param, decode, describe

DEFAULT_LEVELS = (0.5, 0.9, 0.95, 0.99)
METRICS_FILE = "metrics.jsonl"  # framework.checkpoints.store.METRICS_FILE (that module imports jax)
KEPT = ("tokens", "fraction", "kind", "step", "val_em", "average_val_em", "reason")  # what a trial stores per eval

Evals = list[dict[str, Any]]  # one run's eval records, in order


# == scoring one run ============================================================================


def read_evals(run_dir: str) -> Evals:
    """The `eval` lines of a run's metrics.jsonl, trimmed to KEPT (a torn last line is skipped:
    a kill while writing it; the run redoes that evaluation when it resumes)."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return []
    return [{k: record[k] for k in KEPT if k in record} for _, record in read_metrics(path, "run_dir")
            if record.get("event") == "eval"]


def best_single(e: dict) -> float:
    """The best one model at this checkpoint: its own weights or any weight average the run keeps."""
    return max([e["val_em"], *e.get("average_val_em", {}).values()])


def metric(objective: str):
    """What "validation EM" means under `objective`: the checkpoint's own (final) or its best
    single model, EMAs included (anytime)."""
    return (lambda e: e["val_em"]) if objective == "final" else best_single


def intermediate(stops: Evals, objective: str) -> float:
    """The value reported to the pruner after the stopping points `stops` (in order, >= 1):
    final, the val EM at the latest; anytime, the mean best single EM over them so far."""
    if objective == "final":
        return stops[-1]["val_em"]
    return sum(best_single(e) for e in stops) / len(stops)


def objective_value(evals: Evals, objective: str) -> float:
    """final: val EM of the last checkpoint. anytime: mean over the stopping points reached of the
    best single-model val EM there (the EMAs included). A run that was stopped early (pruned, or by
    a stopping rule) ends in a `stopped` checkpoint, saved in place of the stop it was taking: it
    counts as that stop, so a pruned trial's value is the one the pruner last saw."""
    if objective == "final":
        return evals[-1]["val_em"]
    return intermediate([e for e in evals if e.get("kind") in ("stop", "stopped")] or evals[-1:], objective)


def tokens_to_levels(evals: Evals, levels, objective: str) -> dict[str, int | None]:
    """{level: tokens of the first checkpoint whose EM (see `metric`) is >= level, or None}."""
    em = metric(objective)
    ordered = sorted(evals, key=lambda e: e["tokens"])
    return {str(level): next((e["tokens"] for e in ordered if em(e) >= level), None) for level in levels}


def levels_over_seeds(per_seed: list[Evals], levels, objective: str) -> dict[str, int | None]:
    """A level counts as reached when every seed reached it: the largest of the seeds' tokens."""
    reached = [tokens_to_levels(evals, levels, objective) for evals in per_seed]
    return {str(level): None if not reached or any(r[str(level)] is None for r in reached)
            else max(r[str(level)] for r in reached) for level in levels}


def savings(winner: dict[str, int | None], base: dict[str, int | None], total_tokens: int) -> dict[str, Any]:
    """What the winner saves per run against the base, at the highest level both reach, and after how
    many runs the sweep's tokens are paid back (None when it saves nothing)."""
    common = [lv for lv in sorted(winner, key=float) if winner[lv] is not None and base.get(lv) is not None]
    if not common:
        return {"level": None, "winner_tokens": None, "base_tokens": None, "tokens_saved_per_run": None,
                "break_even_runs": None}
    level = common[-1]
    saved = base[level] - winner[level]
    return {"level": float(level), "winner_tokens": winner[level], "base_tokens": base[level],
            "tokens_saved_per_run": saved, "break_even_runs": round(total_tokens / saved, 2) if saved > 0 else None}


# == the sweep's files ==========================================================================


def summarize(records: list[dict], base: dict | None, reference_tokens: int, levels, objective: str) -> dict:
    """The sweep summary from trial records (see `framework.sweeps.sweep._record`) and the base's record."""
    complete = [r for r in records if r["state"] == "COMPLETE"]
    # On a tie the base config wins (nothing beat it), then the earliest trial.
    best = max(complete, key=lambda r: (r["objective"], r["base"], -r["number"]), default=None)
    total = sum(r["tokens_trained"] for r in records) + reference_tokens
    states = {s: sum(r["state"] == s for r in records) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    return {
        "objective": objective,
        "levels": list(levels),
        "trials": states,
        "total_tokens": total,
        "reference_tokens": reference_tokens,
        "best": None if best is None else {k: best[k] for k in ("number", "params", "objective", "run_dirs",
                                                                "tokens_to_level", "base")},
        "base": None if base is None else {k: base.get(k) for k in ("number", "objective", "run_dirs",
                                                                    "tokens_to_level")},
        "winner_saves": None if best is None or base is None
        else savings(best["tokens_to_level"], base["tokens_to_level"], total),
    }


def trial_record(t, params: list[Param], levels, objective: str) -> dict:
    """One optuna trial (a FrozenTrial) as the sweep reports it; its curves come from its user attrs."""
    a = t.user_attrs
    evals = a.get("evals", [])
    return {"number": t.number, "state": t.state.name,
            "params": {p.field: decode(p, t.params[p.field]) for p in params if p.field in t.params},
            "objective": t.value, "tokens_trained": a.get("tokens", 0), "run_dirs": a.get("run_dirs", []),
            "tokens_to_level": levels_over_seeds(evals, levels, objective), "pruned_at": a.get("pruned_at"),
            # read back: finished without training a token (the point was tried before)
            "reused": t.state.name in ("COMPLETE", "PRUNED") and a.get("tokens") == 0,
            "base": a.get("base", False), "error": a.get("error"), "evals": evals}


def summary_lines(s: dict) -> list[str]:
    """What a finished sweep prints: trials and tokens, the best, and what it saves per run."""
    t = s["trials"]
    lines = [f"sweep: {t['COMPLETE']} complete, {t['PRUNED']} pruned, {t['FAIL']} failed; {s['total_tokens']:,} "
             "tokens trained in all" + (f" (the base reference run: {s['reference_tokens']:,})"
                                        if s["reference_tokens"] else "")]
    if s["best"]:
        lines.append(f"best: trial {s['best']['number']} [{describe(s['best']['params'])}], {s['objective']} EM "
                     f"{s['best']['objective']:.4f}" + (" (the base config: no trial beat it)" if s["best"]["base"]
                                                        else ""))
    w = s["winner_saves"]
    if s["best"] and not s["best"]["base"]:  # a winner other than the base: what it saves per run
        if w and w["level"] is not None:
            lines.append(f"to reach EM {w['level']}: the winner needs {w['winner_tokens']:,} tokens, the base "
                         f"{w['base_tokens']:,}" + (f": it saves {w['tokens_saved_per_run']:,} per run, and the "
                                                    f"sweep pays for itself after {w['break_even_runs']:,} runs"
                                                    if w["break_even_runs"] else ": no saving"))
        else:
            lines.append(f"no EM level in {s['levels']} is reached by both the winner and the base: no saving to "
                         "report")
    return lines + [f"wrote {s['out_dir']}/results.json, summary.md and em_vs_tokens.png"]


def write_outputs(out_dir: str, records: list[dict], summary: dict, base: dict | None) -> None:
    """results.json, summary.md and em_vs_tokens.png, each replaced atomically."""
    write_atomic(os.path.join(out_dir, "results.json"),
                 json.dumps({"summary": summary, "base": base, "trials": records}, indent=1))
    write_atomic(os.path.join(out_dir, "summary.md"), summary_markdown(records, summary))
    plot(records, base, summary, os.path.join(out_dir, "em_vs_tokens.png"))


def summary_markdown(records: list[dict], summary: dict) -> str:
    levels = summary["levels"]
    rows = sorted([r for r in records if r["state"] in ("COMPLETE", "PRUNED")],
                  key=lambda r: (r["state"] != "COMPLETE", -(r["objective"] or 0.0), r["number"]))
    lines = [f"# Sweep: {summary['objective']} validation EM, {sum(summary['trials'].values())} trials",
             "",
             f"Tokens trained by the sweep: {summary['total_tokens']:,}"
             + (f" (the base reference run: {summary['reference_tokens']:,})" if summary["reference_tokens"] else ""),
             ""]
    if summary["best"]:
        lines += [f"Best: trial {summary['best']['number']} ({describe(summary['best']['params'])}), "
                  f"{summary['objective']} EM {summary['best']['objective']:.4f}.", ""]
    w = summary["winner_saves"]
    if w and w["level"] is not None:
        pays = (f"the sweep pays for itself after {w['break_even_runs']:,} runs" if w["break_even_runs"]
                else "it saves nothing there")
        lines += [f"To reach EM {w['level']}: the winner needs {w['winner_tokens']:,} tokens, the base "
                  f"{w['base_tokens']:,}; {pays}.", ""]
    lines += ["| trial | state | objective | tokens trained | " + " | ".join(f"tokens to {lv}" for lv in levels)
              + " | params |",
              "|---|---|---|---|" + "---|" * len(levels) + "---|"]
    for r in rows:
        reach = " | ".join("-" if r["tokens_to_level"].get(str(lv)) is None else f"{r['tokens_to_level'][str(lv)]:,}"
                           for lv in levels)
        value = "-" if r["objective"] is None else f"{r['objective']:.4f}"
        lines.append(f"| {r['number']} | {r['state'].lower()} | {value} | {r['tokens_trained']:,} | {reach} | "
                     f"{describe(r['params'])}{' (the base config)' if r['base'] else ''} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], base: dict | None, summary: dict, path: str) -> None:
    """Validation EM against tokens: every trial thin grey (a pruned one ends in an x), the base
    dashed, the winner bold."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    em = metric(summary["objective"])
    best = summary["best"]["number"] if summary["best"] else None
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for r in records:
        for evals in r["evals"]:
            xs, ys = [e["tokens"] / 1e6 for e in evals], [em(e) for e in evals]
            ax.plot(xs, ys, color="0.6", linewidth=0.8, alpha=0.8)
            if r["state"] == "PRUNED" and xs:
                ax.plot(xs[-1:], ys[-1:], marker="x", color="0.4", markersize=5)
    for rec, style in ((next((r for r in records if r["number"] == best), None),  # the base on top: it may win
                        {"color": "tab:red", "linewidth": 2.4, "label": "winner"}),
                       (base, {"color": "tab:blue", "linestyle": "--", "linewidth": 1.6, "label": "base config"})):
        for i, evals in enumerate(rec["evals"] if rec else []):
            ax.plot([e["tokens"] / 1e6 for e in evals], [em(e) for e in evals],
                    **(style if i == 0 else {k: v for k, v in style.items() if k != "label"}))
    ax.plot([], [], color="0.6", linewidth=0.8, label="other trials (x: pruned)")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("validation EM" + (" (best single model)" if summary["objective"] == "anytime" else ""))
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"sweep: {sum(summary['trials'].values())} trials, {summary['total_tokens'] / 1e6:.2f}M tokens")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
