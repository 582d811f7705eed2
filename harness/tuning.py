"""The machinery of fair tuning (experiments.fair_tuning): sweeps, budget ladders and their plateau,
confirmations on other seeds, the cooldown's share and shape, lever ablations, and the export that
the flagship reads. What is tuned, over which spaces and seeds, is a `Tuning` the recipe file gives.

A task's state is kept in OUT/TASK/tuned.json; every stage reuses the runs it finds finished.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from framework.checkpoints.integrity import write_atomic
from framework.config import RunConfig
from harness.report import plateau
from harness.studies import ensure_branch, ensure_trained, labelled, spawn_pool

STAGES = ("plain0", "ladder0", "plain", "anytime", "confirm", "cooldown", "ablate")
Frame = Callable[[str, int, str], RunConfig]  # (task, budget, data_dir) -> a recipe's config before tuning


@dataclasses.dataclass(frozen=True)
class Tuning:
    """What a fair-tuning study tunes, and how hard: both arms get the same sampler, pruner and trials."""
    plain: Frame  # the plain recipe's frame
    anytime: Frame  # the anytime recipe's frame
    b0: Callable[[str, str], int]  # (task, data_dir) -> today's budget
    plain_space: Mapping[str, str]
    anytime_space: Mapping[str, str]
    trials: int = 16
    sweep_seed: int = 100
    ladder0_seeds: tuple[int, ...] = (101, 102)
    ladder_seeds: tuple[int, ...] = (101, 102, 103)
    confirm_seeds: tuple[int, ...] = (101, 102, 103)
    confirm: int = 2  # top trials of each sweep retrained on confirm_seeds
    plateau_step: float = 1.25  # the ladder's step: 25% more tokens...
    plateau_gain: float = 0.005  # ...that add less than this validation EM: the plateau
    cooldown_fractions: tuple[float, ...] = (0.1, 0.2, 0.3)
    cooldown_shapes: tuple[str, ...] = ("linear", "1-sqrt")
    cooldown_stop: float = 0.62
    levers_off: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # anytime lever -> its "off" value

    def recipe(self, task: str, kind: str, budget: int, params: dict, data_dir: str) -> RunConfig:
        """A tuned recipe ("plain" or "anytime") of `task` at `budget`: its frame with `params`."""
        from framework.sweeps.space import apply

        return apply({"plain": self.plain, "anytime": self.anytime}[kind](task, budget, data_dir), params)


# == running several at a time =================================================================

JOBS = [1]  # processes side by side (--jobs); on 2 cores two did ~1.25x the work of one
WORKER_DELAY_S = 30


def _train(cfg: RunConfig, branch: bool, log=print) -> None:
    (ensure_branch if branch else ensure_trained)(cfg, log)


def train_all(cfgs: list[RunConfig], log, branch: bool = False) -> None:
    """Train every run of `cfgs` that is not done (cooldown branches with `branch`), JOBS at a time."""
    if JOBS[0] == 1:
        for cfg in cfgs:
            _train(cfg, branch, log)
        return
    with spawn_pool(JOBS[0]) as pool:
        futures = [pool.submit(labelled, os.path.basename(cfg.out_dir), _train, cfg, branch, log=print)
                   for cfg in cfgs]
        for f in concurrent.futures.as_completed(futures):
            f.result()  # a failed run stops the stage here, with its traceback


# == stages ======================================================================================


def _run_sweep(tn: Tuning, base: RunConfig, space: dict, out: str, objective: str, worker: int, log=print) -> dict:
    """One worker of a stage's sweep; workers share the study, each with its own sampler seed."""
    from framework.sweeps.sweep import run_sweep

    if worker:
        time.sleep(WORKER_DELAY_S)  # the first worker has started the base config (trial 0) by then
    return run_sweep(base, dict(space), out, trials=tn.trials, objective=objective, sampler="tpe", pruner="sha",
                     seeds=(tn.sweep_seed,), min_resource=0.38, sampler_seed=worker, log=log)


def sweep(tn: Tuning, task_dir: str, name: str, base: RunConfig, space: Mapping, objective: str, log) -> dict:
    t = time.perf_counter()
    out = os.path.join(task_dir, name)
    with spawn_pool(JOBS[0] - 1) as pool:  # the other workers in processes of their own, this one here
        others = [pool.submit(labelled, f"{name} worker {k}", _run_sweep, tn, base, space, out, objective, k,
                              log=print) for k in range(1, JOBS[0])]
        summary = _run_sweep(tn, base, space, out, objective, 0, log)  # it waits for the others' trials
        for f in others:
            f.result()
    with open(os.path.join(out, "results.json")) as f:
        trials = [{k: t[k] for k in ("number", "state", "params", "objective", "tokens_trained")}
                  for t in json.load(f)["trials"]]
    return {**summary, "trial_list": trials, "wall_s": round(time.perf_counter() - t, 1)}


def final_val_em(cfg: RunConfig, log) -> tuple[float, int]:
    """Validation EM of `cfg`'s last checkpoint (training it unless it is done), and its tokens."""
    from framework.checkpoints.store import list_checkpoints

    ensure_trained(cfg, log)
    last = list_checkpoints(cfg.out_dir)[-1]
    return last["val_em"], last["tokens"]


def ladder(tn: Tuning, task_dir: str, name: str, winner: RunConfig, budgets: list[int], seeds, log) -> dict:
    """The winner's final validation EM at each budget, over `seeds`, and the plateau."""
    cfgs = {(b, seed): dataclasses.replace(winner, budget_tokens=b, seed=seed, stops=(1.0,), every_tokens=None,
                                           out_dir=os.path.join(task_dir, name, f"b{b}-s{seed}"))
            for b in budgets for seed in seeds}
    train_all(list(cfgs.values()), log)
    rows, tokens = [], 0
    for b in budgets:
        ems = []
        for seed in seeds:
            em, used = final_val_em(cfgs[b, seed], log)
            ems.append(em)
            tokens += used
        rows.append({"budget": b, "val_em": ems, "mean": float(np.mean(ems))})
        log(f"  {name}: budget {b:,}: val EM {np.mean(ems):.3f} ({', '.join(f'{e:.3f}' for e in ems)})")
    return {"rows": rows, "plateau": plateau(rows, tn.plateau_gain), "tokens": tokens}


def ladder_budgets(center: int, below: int, above: int, step: float = 1.25) -> list[int]:
    return [int(round(center * step ** k, -3)) for k in range(-below, above + 1)]


def _seed_objectives(cfgs: dict, key, seeds, objective: str) -> tuple[list[float], int]:
    """The objective of the runs cfgs[key, seed] over `seeds`, and the tokens they trained."""
    from framework.sweeps.report import objective_value, read_evals

    values, tokens = [], 0
    for seed in seeds:
        evals = read_evals(cfgs[key, seed].out_dir)
        values.append(objective_value(evals, objective))
        tokens += max(e["tokens"] for e in evals)
    return values, tokens


def confirm(tn: Tuning, task_dir: str, name: str, summary: dict, make, objective: str, log) -> dict:
    """The top `tn.confirm` trials of a sweep on `tn.confirm_seeds`: their mean objective; the best first."""
    from framework.sweeps.space import apply

    done = [t for t in summary["trial_list"] if t["state"] == "COMPLETE" and t["objective"] is not None]
    top = sorted(done, key=lambda t: -t["objective"])[:tn.confirm]
    cfgs = {(t["number"], seed): dataclasses.replace(
                apply(make(), t["params"]), seed=seed,
                out_dir=os.path.join(task_dir, name, f"trial{t['number']}-s{seed}"))
            for t in top for seed in tn.confirm_seeds}
    train_all(list(cfgs.values()), log)
    rows, tokens = [], 0
    for t in top:
        values, used = _seed_objectives(cfgs, t["number"], tn.confirm_seeds, objective)
        tokens += used
        rows.append({"number": t["number"], "params": t["params"], "sweep_objective": t["objective"],
                     "values": values, "mean": float(np.mean(values))})
        log(f"  {name}: trial {t['number']} {t['params']}: {np.mean(values):.3f} on seeds {tn.confirm_seeds}")
    rows.sort(key=lambda r: -r["mean"])
    return {"rows": rows, "winner": rows[0], "tokens": tokens}


def ablate(tn: Tuning, task: str, task_dir: str, budget: int, winner: dict, log) -> dict:
    """Each lever of `tn.levers_off` that the anytime winner uses, turned off, on the confirmation
    seeds: the mean anytime objective (validation) against the winner's own on the same seeds."""
    levers = [(field, off) for field, off in tn.levers_off.items() if winner["params"].get(field, off) != off]
    cfgs = {(field, seed): dataclasses.replace(
                tn.recipe(task, "anytime", budget, {**winner["params"], field: off}, task_dir), seed=seed,
                out_dir=os.path.join(task_dir, "ablate", f"{field}-off-s{seed}"))
            for field, off in levers for seed in tn.confirm_seeds}
    train_all(list(cfgs.values()), log)
    rows, tokens = [], 0
    for field, off in levers:
        values, used = _seed_objectives(cfgs, field, tn.confirm_seeds, "anytime")
        tokens += used
        diffs = [w - v for w, v in zip(winner["values"], values, strict=True)]
        rows.append({"lever": field, "on": winner["params"][field], "off": off, "values_off": values,
                     "gain": float(np.mean(diffs)), "gain_per_seed": diffs})
        log(f"  ablate {field}: {winner['params'][field]} -> {off}: the winner gains {np.mean(diffs):+.3f}")
    return {"rows": rows, "tokens": tokens}


def _takes(ckpt: dict, fraction: float) -> bool:
    """Whether `ckpt` was taken at stopping fraction `fraction` (a batch may cross two stops at once:
    the checkpoint then lists both in `fractions`)."""
    return any(abs(f - fraction) < 1e-9 for f in ckpt.get("fractions", [ckpt["fraction"]]))


def tune_cooldown(tn: Tuning, task: str, task_dir: str, budget: int, params: dict, log) -> dict:
    """The anytime winner's cooldown before the stop at `tn.cooldown_stop`·B: each share of that stop's
    tokens and shape, branched from the run so that it ends at the stop, on the confirmation seeds
    (validation EM)."""
    from framework.checkpoints.store import list_checkpoints
    from framework.training.cooldown import cooldown_config

    stop = tn.cooldown_stop
    starts = {c: round(stop * (1 - c), 4) for c in tn.cooldown_fractions}
    stops = tuple(sorted({*starts.values(), stop, 1.0}))
    trunks = [dataclasses.replace(tn.recipe(task, "anytime", budget, params, task_dir), seed=seed, stops=stops,
                                  train_until=stop, out_dir=os.path.join(task_dir, "cooldown", f"anytime-s{seed}"))
              for seed in tn.confirm_seeds]
    train_all(trunks, log)
    choices = [(c, s) for c in tn.cooldown_fractions for s in tn.cooldown_shapes]
    branches = {}
    for cfg in trunks:
        ckpts = list_checkpoints(cfg.out_dir)
        for c, shape in choices:
            src = next(x for x in ckpts if _takes(x, starts[c]))
            branches[cfg.out_dir, c, shape] = src, cooldown_config(
                cfg.out_dir, str(starts[c]), str(round(stop * budget) - src["tokens"]),
                f"{cfg.out_dir}-cool{c}-{shape}", shape=shape, step=src["step"])
    train_all([b for _, b in branches.values()], log, branch=True)
    rows, tokens = {}, 0
    for cfg in trunks:
        tokens += list_checkpoints(cfg.out_dir)[-1]["tokens"]
        for c, shape in choices:
            src, branch = branches[cfg.out_dir, c, shape]
            end = list_checkpoints(branch.out_dir)[-1]
            tokens += end["tokens"] - src["tokens"]
            rows.setdefault(f"{c}/{shape}", []).append(end["val_em"])
    table = [{"fraction": float(k.split("/")[0]), "shape": k.split("/")[1], "val_em": v, "mean": float(np.mean(v))}
             for k, v in rows.items()]
    best = max(table, key=lambda r: r["mean"])  # the first of equals: the shortest, linear
    for r in table:
        log(f"  cooldown {r['fraction']} {r['shape']}: val EM {r['mean']:.3f} at {stop} B")
    return {"rows": table, "fraction": best["fraction"], "shape": best["shape"], "tokens": tokens}


def run_task(tn: Tuning, task: str, stages: list[str], out: str = "runs/tuning", log=print) -> dict:
    """Run `stages` of `task`'s tuning, in order, keeping the state in OUT/TASK/tuned.json."""
    task_dir = os.path.join(out, task)
    os.makedirs(task_dir, exist_ok=True)
    state_path = os.path.join(task_dir, "tuned.json")
    state = json.load(open(state_path)) if os.path.isfile(state_path) else {"task": task}

    def save():
        write_atomic(state_path, json.dumps(state, indent=2))

    b0 = tn.b0(task, task_dir)
    state["b0"] = b0
    plain = lambda budget: tn.plain(task, budget, task_dir)  # noqa: E731
    if "plain0" in stages:
        state["plain0"] = sweep(tn, task_dir, "plain0", plain(b0), tn.plain_space, "final", log)
        save()
    if "ladder0" in stages:
        winner = tn.recipe(task, "plain", b0, state["plain0"]["best"]["params"], task_dir)
        budgets = ladder_budgets(b0, 8, 1, tn.plateau_step)
        state["ladder0"] = ladder(tn, task_dir, "ladder0", winner, budgets, tn.ladder0_seeds, log)
        state["budget"] = state["ladder0"]["plateau"] or b0
        save()
    b = state.get("budget")
    if "plain" in stages:  # at today's budget (the plateau is there already), the first sweep is this one
        state["plain"] = state["plain0"] if b == b0 else sweep(tn, task_dir, "plain", plain(b), tn.plain_space,
                                                                "final", log)
        save()
    if "anytime" in stages:
        state["anytime"] = sweep(tn, task_dir, "anytime", tn.anytime(task, b, task_dir), tn.anytime_space, "anytime",
                                 log)
        save()
    if "confirm" in stages:
        state["confirm_plain"] = confirm(tn, task_dir, "confirm-plain", state["plain"], lambda: plain(b), "final", log)
        state["confirm_anytime"] = confirm(tn, task_dir, "confirm-anytime", state["anytime"],
                                           lambda: tn.anytime(task, b, task_dir), "anytime", log)
        winner = tn.recipe(task, "plain", b, state["confirm_plain"]["winner"]["params"], task_dir)
        budgets = ladder_budgets(b, 2, 2, tn.plateau_step)
        state["ladder"] = ladder(tn, task_dir, "ladder", winner, budgets, tn.ladder_seeds, log)
        save()
    if "cooldown" in stages:
        state["cooldown"] = tune_cooldown(tn, task, task_dir, b, state["confirm_anytime"]["winner"]["params"], log)
        save()
    if "ablate" in stages:
        state["ablate"] = ablate(tn, task, task_dir, b, state["confirm_anytime"]["winner"], log)
        save()
    return state


# == export ======================================================================================


def exported_task(s: dict) -> dict:
    """What the flagship and the report need of one fully tuned task's state."""
    sweeps = {k: {"trials": s[k]["trials"], "tokens": s[k]["total_tokens"], "wall_s": s[k]["wall_s"],
                  "best_sweep_objective": s[k]["best"]["objective"],
                  "base_objective": (s[k].get("base") or {}).get("objective")}
              for k in ("plain0", "plain", "anytime") if k in s and not (k == "plain" and s["budget"] == s["b0"])}
    out = {
        "b0": s["b0"], "budget": s["budget"],
        "plain": s["confirm_plain"]["winner"]["params"], "anytime": s["confirm_anytime"]["winner"]["params"],
        "cooldown": {"fraction": s["cooldown"]["fraction"], "shape": s["cooldown"]["shape"]},
        "validation": {"plain": s["confirm_plain"]["winner"]["mean"],
                       "anytime": s["confirm_anytime"]["winner"]["mean"], "ladder0": s["ladder0"]["rows"],
                       "ladder": s["ladder"]["rows"], "cooldown": s["cooldown"]["rows"]},
        "tokens": {**{k: v["tokens"] for k, v in sweeps.items()}, "ladder0": s["ladder0"]["tokens"],
                   "ladder": s["ladder"]["tokens"], "confirm_plain": s["confirm_plain"]["tokens"],
                   "confirm_anytime": s["confirm_anytime"]["tokens"], "cooldown": s["cooldown"]["tokens"]},
        "sweeps": sweeps,
        "ablate": s.get("ablate", {}).get("rows"),
    }
    if "ablate" in s:
        out["tokens"]["ablate"] = s["ablate"]["tokens"]
    return out


def export(tasks, out: str, path: str, results_path: str | None = None, log=print) -> dict:
    """The winners of every fully tuned task of `tasks` found in `out` (budget, both recipes, the
    cooldown, what tuning cost) into `path`, merged: a task not tuned in `out` keeps its entry
    there (tasks may be tuned in different directories). With `results_path`, the "Fair tuning"
    section of that file is rewritten from the result."""
    exported = {}
    if os.path.isfile(path):
        with open(path) as f:
            exported = json.load(f)
    for task in tasks:
        state_path = os.path.join(out, task, "tuned.json")
        if not os.path.isfile(state_path):
            continue
        with open(state_path) as f:
            s = json.load(f)
        if "cooldown" not in s:
            log(f"{task}: not tuned to the end yet (no cooldown stage); left as it was")
            continue
        exported[task] = exported_task(s)
    write_atomic(path, json.dumps(exported, indent=1, sort_keys=True) + "\n")
    if results_path:
        from harness.tuning_report import write_section

        write_section(exported, results_path)
    return exported
