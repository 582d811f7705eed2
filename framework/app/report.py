"""The trade-off report: EM against training tokens for everything a set of runs can ship.

    recoup report runs/seed0 runs/seed1 runs/seed2 [runs/seed0-cooldown0.62+0.05 ...] --out runs/report

For every run and each of its configured stopping fractions f, four kinds of model are scored on
the **test** split (strict EM from one teacher-forced pass; equal to decoded strict EM):

- single: the latest checkpoint within f of the budget (plain early stopping);
- average: the best weight average within f (latest-k, EMA, SWA, soup; cost 1), chosen on validation;
- output: the best log-prob ensemble of up to `max_cost` checkpoints within f, chosen on validation;
- cascade: the best cascade within f (a 1x model that escalates its unsure queries to a log-prob
  ensemble) whose mean cost on validation is at most `max_cost`, which may then be fractional;
- cooldown: runs branched with `recoup cooldown` are points of their own, at the tokens they used.

Points of the same kind and fraction are averaged over seeds (mean and sample sd); the Pareto
front is drawn over the means (no other point has more EM for fewer tokens). `report.md` adds a
"what to ship" table: for each price (EM points per million tokens) the point with the best
J = 100 * EM - price * tokens / 1e6.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import NamedTuple

import numpy as np

from framework.config import SHAPE_FIELDS
from framework.errors import ConfigError
from framework.run_dirs import load_run_config

KINDS = ("single", "average", "output", "cascade", "cooldown")
STYLE = {"single": ("tab:gray", "o"), "average": ("tab:blue", "s"), "output": ("tab:orange", "^"),
         "cascade": ("tab:red", "v"), "cooldown": ("tab:green", "D")}


class Point(NamedTuple):
    run: str
    kind: str  # KINDS
    fraction: float  # the stopping fraction it belongs to (of the source run's budget)
    tokens: int  # training tokens it cost (all runs it draws on)
    em: float  # test strict EM
    inference_cost: float  # forward passes per query (a cascade's: its mean on validation)
    what: str  # e.g. "ema[ema-20000@159]"


def collect(run_dirs: list[str], max_cost: float = 3, log=print, allow_changed_data: bool = False,
            store=None) -> list[Point]:
    """The test EM of what each run could ship at each stop. `store`: an ensembles.members.ParamStore
    to read the runs through (its data_changes() then say what differed, when allowed)."""
    # jax: only after the inputs are checked
    from ensembles.cascade import evaluate_cascade
    from ensembles.members import Candidate, ParamStore, run_members, strict_em
    from ensembles.select import select

    points, store = [], store or ParamStore(allow_changed_data=allow_changed_data)
    for run in run_dirs:
        cfg = load_run_config(run)
        if cfg.branch_from:  # a cooldown: its last checkpoint, at the tokens it really used
            m = run_members(run)[-1]
            src_dir, src_step = cfg.branch_from.split("/checkpoints/")
            f = next(x.fraction for x in run_members(src_dir) if x.step == int(src_step))  # where it branched
            c = Candidate("cooldown", (m,), (1.0,), "weights")
            points.append(Point(run, "cooldown", f, m.tokens, strict_em(store, c, "test"), 1, c.describe()))
            continue
        for f in sorted(set(cfg.stops) | {1.0}):
            budget = int(f * cfg.budget_tokens)
            under = run_members(run, budget)
            if not under:
                continue
            log(f"  {run}: stop {f:g}")
            single = Candidate("single", (under[-1],), (1.0,), "weights")
            choices = [("single", single)]
            choices.append(("average", select([run], budget, 1, "auto", store=store, log=lambda _: None).best))
            if max_cost >= 2 and len(under) > 1:
                choices.append(("output", select([run], budget, int(max_cost), "logits", store=store,
                                                 log=lambda _: None).best))
            if max_cost > 1 and len(under) > 1:
                choices.append(("cascade", select([run], budget, max_cost, "cascade", store=store,
                                                  log=lambda _: None).best))
            for kind, c in choices:
                if c.method == "cascade":  # no single distribution to teacher-force: its decoded strict EM
                    em = evaluate_cascade(store, c, "test")["strict_em"]
                else:
                    em = strict_em(store, c, "test")
                points.append(Point(run, kind, f, c.training_tokens, em, c.inference_cost, c.describe()))
    return points


def aggregate(points: list[Point]) -> list[dict]:
    """Mean and sd over runs (seeds) per (kind, fraction)."""
    groups: dict[tuple, list[Point]] = defaultdict(list)
    for p in points:
        groups[(p.kind, round(p.fraction, 4))].append(p)
    rows = []
    for (kind, f), ps in sorted(groups.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1])):
        ems = np.array([p.em for p in ps])
        rows.append({"kind": kind, "fraction": f, "n": len(ps), "tokens": float(np.mean([p.tokens for p in ps])),
                     "em": float(ems.mean()), "em_sd": float(ems.std(ddof=1)) if len(ps) > 1 else 0.0,
                     "inference_cost": max(p.inference_cost for p in ps), "what": [p.what for p in ps]})
    return rows


def pareto(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both tokens (fewer or equal) and EM (higher), by increasing tokens."""
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: (r["tokens"], -r["em"])):
        if r["em"] > best:
            front.append(r)
            best = r["em"]
    return front


def what_to_ship(rows: list[dict], prices, max_cost: float) -> list[dict]:
    out = []
    for price in prices:
        ok = [r for r in rows if r["inference_cost"] <= max_cost]
        best = max(ok, key=lambda r: 100 * r["em"] - price * r["tokens"] / 1e6)
        out.append({"price": price, "max_cost": max_cost, **best,
                    "j": 100 * best["em"] - price * best["tokens"] / 1e6})
    return out


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for kind in KINDS:
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        color, marker = STYLE[kind]
        label = {"single": "single checkpoint", "average": "weight average (1x)",
                 "output": f"output ensemble ({max(r['inference_cost'] for r in rs):g}x)",
                 "cascade": f"cascade (mean cost <= {max(r['inference_cost'] for r in rs):.2f}x)",
                 "cooldown": "cooldown (tokens counted)"}[kind]
        ax.errorbar([r["tokens"] / 1e6 for r in rs], [r["em"] for r in rs], yerr=[r["em_sd"] for r in rs],
                    color=color, marker=marker, linestyle="-" if kind != "cooldown" else "none", capsize=3,
                    label=label, alpha=0.9)
    front = pareto(rows)
    ax.step([r["tokens"] / 1e6 for r in front], [r["em"] for r in front], where="post", color="black",
            linewidth=1.2, linestyle="--", label="Pareto front (means)")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("test exact match (strict)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(run_dirs: list[str], out_dir: str, prices=(0.5, 2.0, 10.0), max_cost: float = 3,
                 log=print, allow_changed_data: bool = False) -> dict:
    cfgs = [load_run_config(d) for d in run_dirs]  # every input is a run directory, before any work
    for d, cfg in zip(run_dirs[1:], cfgs[1:], strict=True):  # seeds of one task: one data, one model
        if cfg.data != cfgs[0].data:
            raise ConfigError("run_dirs", f"{d} was trained on other data than {run_dirs[0]} ({cfg.data} vs "
                                          f"{cfgs[0].data}); a report averages runs of one task and data")
        if any(getattr(cfg.model, f) != getattr(cfgs[0].model, f) for f in SHAPE_FIELDS):
            raise ConfigError("run_dirs", f"{d} trains another model than {run_dirs[0]}; a report compares runs "
                                          "of one model")
    if os.path.isfile(out_dir):
        raise ConfigError("out", f"{out_dir} is a file; give a directory for the report")
    from ensembles.members import ParamStore

    store = ParamStore(allow_changed_data=allow_changed_data)
    points = collect(run_dirs, max_cost, log, store=store)
    changed = store.data_changes()
    if not points:
        raise ConfigError("run_dirs", f"no checkpoints to report in {', '.join(run_dirs)}")
    rows = aggregate(points)
    os.makedirs(out_dir, exist_ok=True)
    plot(rows, os.path.join(out_dir, "em_vs_tokens.png"),
         f"EM against training tokens ({len([d for d in run_dirs if not load_run_config(d).branch_from])} run(s))")
    ship = [s for cost in sorted({1, max_cost}) for s in what_to_ship(rows, prices, cost)]
    front = {(r["kind"], r["fraction"]) for r in pareto(rows)}
    lines = ["# Trade-off report", "", f"Runs: {', '.join(run_dirs)}", "",
             "Test strict EM (teacher-forced) by what is shipped and where the run stopped; mean ± sd over runs. "
             "Weight averages and output ensembles were chosen on the validation split. * = on the Pareto front.",
             ""]
    if changed:  # --allow-changed-data went on: the figures are not on the splits the runs held out
        lines += ["**The data changed since these runs were trained** (`--allow-changed-data`): test EM below is "
                  "measured on the splits of today's data, not exactly the ones the runs held out.", "",
                  *[f"- {c}" for c in changed], ""]
    lines += ["![EM against training tokens](em_vs_tokens.png)", "",
             "| kind | stop | tokens | test EM | inference cost | runs |", "|---|---|---|---|---|---|"]
    for r in rows:
        star = " *" if (r["kind"], r["fraction"]) in front else ""
        lines.append(f"| {r['kind']}{star} | {r['fraction']:g} | {r['tokens']:,.0f} | "
                     f"{r['em']:.3f} ± {r['em_sd']:.3f} | {r['inference_cost']:.3g}x | {r['n']} |")
    lines += ["", "## What to ship", "",
              "J = 100 × EM − price × tokens / 1e6 (price in EM points per million tokens).", "",
              "| price | max inference cost | ship | stop | tokens | test EM | J |", "|---|---|---|---|---|---|---|"]
    for s in ship:
        lines.append(f"| {s['price']:g} | {s['max_cost']:g}x | {s['kind']} | {s['fraction']:g} | {s['tokens']:,.0f} | "
                     f"{s['em']:.3f} | {s['j']:.1f} |")
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    result = {"points": [p._asdict() for p in points], "rows": rows, "what_to_ship": ship,
              **({"data_changed": changed} if changed else {})}
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result
