"""Fair tuning (issue 19): tune the plain recipe, re-set each budget where it converges, then tune
recoup's anytime recipe with the same sweep and the same number of trials.

    python -m experiments.fair_tuning --task addition          # every stage; a rerun continues
    python -m experiments.fair_tuning --task multihop --stage ladder0

Stages, per task, in runs/tuning/TASK (each reuses what is finished):
  plain0    `recoup sweep` of the plain recipe (uniform data, AdamW, cosine planned for the budget,
            final checkpoint) at today's budget B0, objective: final validation EM
  ladder0   its winner at budgets B0 * 1.25^k on LADDER0_SEEDS: the new budget B is the plateau, the
            smallest budget from which every 25% more tokens adds < 0.5 validation points (mean of the seeds)
  plain     the plain recipe swept again at B (TRIALS trials), and its plateau checked around B
  anytime   recoup's anytime recipe (constant learning rate, any optimizer, averages kept) swept at B
            with the same sampler, pruner and number of trials; objective: the mean over the stops
            0.38..1.0 of the best single model there (checkpoint or EMA), validation EM
  confirm   the top CONFIRM of each sweep retrained on CONFIRM_SEEDS; the best mean objective wins;
            the plain winner's plateau checked again around B
  cooldown  the anytime winner's cooldown before a known stop: its share of the stop's tokens and
            its shape (linear or 1-sqrt), by the mean validation EM at 0.62·B on CONFIRM_SEEDS
  ablate    each lever the anytime winner uses, turned off on CONFIRM_SEEDS: does it pay?

Every sweep trains on seed SWEEP_SEED, the confirmations and ladders on other seeds, none of them
the flagship's 0..4; every choice is made on the validation split. The state of each task is kept
in runs/tuning/TASK/tuned.json; `--export` copies the winners of every tuned task into
experiments/tuned.json, which the flagship (`experiments.early_stop_recovery`) reads.

    python -m experiments.fair_tuning --export
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import time

import numpy as np

from experiments.common import TASKS, task_config
from framework.checkpoints.integrity import write_atomic
from framework.config import DEFAULT_STOPS, RunConfig
from harness.studies import ensure_branch, ensure_trained, labelled, spawn_pool

TRIALS = 16  # per sweep; the plain and the anytime sweeps at B get the same number
SWEEP_SEED, LADDER_SEEDS, CONFIRM_SEEDS = 100, (101, 102, 103), (101, 102, 103)
LADDER0_SEEDS = (101, 102)  # the first, wide ladder only locates the plateau; the one around B has 3 seeds
CONFIRM = 2  # top trials of each sweep retrained on CONFIRM_SEEDS
PLATEAU_STEP, PLATEAU_GAIN = 1.25, 0.005  # 25% more tokens, half a validation point
ANYTIME_STOPS = (0.38, 0.5, 0.62, 0.75, 0.88, 1.0)  # where the anytime objective looks
EMA_FRACTIONS = (0.0125, 0.025, 0.05, 0.1)  # the anytime recipe's EMAs, as shares of the budget

# Both arms search the same optimizer hyperparameters; the anytime arm adds its own levers.
COMMON_SPACE = {
    "optim.peak_lr": "log:3e-4:3e-2",
    "optim.warmup_frac": "choice:0.01,0.05,0.1,0.15,0.2",  # 0.15: the demo's, so the base is trial 0
    "batch_size": "choice:8,16,32,64,128",
    "optim.b1": "choice:0.9,0.95",
    "optim.b2": "choice:0.95,0.98,0.99,0.995",
    "optim.weight_decay": "choice:0.0,0.1",
}
PLAIN_SPACE = {**COMMON_SPACE, "optim.end_lr_frac": "choice:0.0,0.1"}
ANYTIME_SPACE = {
    **COMMON_SPACE,
    "optim.optimizer": "choice:adamw,schedule-free,muon",
    "optim.b2_batch": "choice:null,128",
    "optim.grokfast_lambda": "choice:0.0,0.5,2.0",
    "batch_warmup": "choice:0.0,0.1,0.25",
}


COOLDOWN_FRACTIONS, COOLDOWN_SHAPES, COOLDOWN_STOP = (0.1, 0.2, 0.3), ("linear", "1-sqrt"), 0.62
LEVERS_OFF = {"optim.optimizer": "adamw", "optim.grokfast_lambda": 0.0, "batch_warmup": 0.0, "optim.b2_batch": None}
EXPORT_FILE = os.path.join(os.path.dirname(__file__), "tuned.json")
RESULTS_FILE = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir, "docs", "results.md"))


def plain_config(task: str, budget: int, data_dir: str, out_dir: str = "unused") -> RunConfig:
    """The plain recipe at `budget`: the flagship's task config, nothing kept but the stopping points.
    `data_dir`: where the byo task's data file is (written there if missing)."""
    base = task_config(task, out_dir, data_dir)
    return dataclasses.replace(base, out_dir=out_dir, budget_tokens=budget, stops=DEFAULT_STOPS, every_tokens=None,
                               ema_half_lives=(), swa_start=None, seed=SWEEP_SEED)


def anytime_config(task: str, budget: int, data_dir: str, out_dir: str = "unused") -> RunConfig:
    """The anytime recipe's frame: a constant learning rate after warmup, EMAs at shares of the budget."""
    base = plain_config(task, budget, data_dir, out_dir)
    return dataclasses.replace(base, stops=ANYTIME_STOPS, ema_half_lives=tuple(int(f * budget) for f in EMA_FRACTIONS),
                               optim=dataclasses.replace(base.optim, schedule="constant"))


def recipe(task: str, kind: str, budget: int, params: dict, data_dir: str) -> RunConfig:
    """A tuned recipe ("plain" or "anytime") of `task` at `budget`: its frame with the tuned `params`."""
    from framework.sweeps.space import apply

    frame = {"plain": plain_config, "anytime": anytime_config}[kind]
    return apply(frame(task, budget, data_dir), params)


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


def _run_sweep(base: RunConfig, space: dict, out: str, objective: str, worker: int, log=print) -> dict:
    """One worker of a stage's sweep; workers share the study, each with its own sampler seed."""
    from framework.sweeps.sweep import run_sweep

    if worker:
        time.sleep(WORKER_DELAY_S)  # the first worker has started the base config (trial 0) by then
    return run_sweep(base, space, out, trials=TRIALS, objective=objective, sampler="tpe", pruner="sha",
                     seeds=(SWEEP_SEED,), min_resource=0.38, sampler_seed=worker, log=log)


def sweep(task_dir: str, name: str, base: RunConfig, space: dict, objective: str, log) -> dict:
    t = time.perf_counter()
    out = os.path.join(task_dir, name)
    with spawn_pool(JOBS[0] - 1) as pool:  # the other workers in processes of their own, this one here
        others = [pool.submit(labelled, f"{name} worker {k}", _run_sweep, base, space, out, objective, k, log=print)
                  for k in range(1, JOBS[0])]
        summary = _run_sweep(base, space, out, objective, 0, log)  # it waits for the others' trials
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


def ladder(task_dir: str, name: str, winner: RunConfig, budgets: list[int], seeds, log) -> dict:
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
    return {"rows": rows, "plateau": plateau(rows), "tokens": tokens}


def plateau(rows: list[dict]) -> int | None:
    """The smallest budget from which every further 25% of tokens adds < PLATEAU_GAIN (None: not in the ladder)."""
    found = None
    for lo, hi in reversed(list(zip(rows, rows[1:], strict=False))):
        if hi["mean"] - lo["mean"] >= PLATEAU_GAIN:
            break
        found = lo["budget"]
    return found


def ladder_budgets(center: int, below: int, above: int) -> list[int]:
    return [int(round(center * PLATEAU_STEP ** k, -3)) for k in range(-below, above + 1)]


def confirm(task_dir: str, name: str, summary: dict, make, objective: str, log) -> dict:
    """The top CONFIRM trials of a sweep on CONFIRM_SEEDS: their mean objective; the best first."""
    from framework.sweeps.report import objective_value, read_evals
    from framework.sweeps.space import apply

    done = [t for t in summary["trial_list"] if t["state"] == "COMPLETE" and t["objective"] is not None]
    top = sorted(done, key=lambda t: -t["objective"])[:CONFIRM]
    cfgs = {(t["number"], seed): dataclasses.replace(
                apply(make(), t["params"]), seed=seed,
                out_dir=os.path.join(task_dir, name, f"trial{t['number']}-s{seed}"))
            for t in top for seed in CONFIRM_SEEDS}
    train_all(list(cfgs.values()), log)
    rows, tokens = [], 0
    for t in top:
        values = []
        for seed in CONFIRM_SEEDS:
            cfg = cfgs[t["number"], seed]
            evals = read_evals(cfg.out_dir)
            values.append(objective_value(evals, objective))
            tokens += max(e["tokens"] for e in evals)
        rows.append({"number": t["number"], "params": t["params"], "sweep_objective": t["objective"],
                     "values": values, "mean": float(np.mean(values))})
        log(f"  {name}: trial {t['number']} {t['params']}: {np.mean(values):.3f} on seeds {CONFIRM_SEEDS}")
    rows.sort(key=lambda r: -r["mean"])
    return {"rows": rows, "winner": rows[0], "tokens": tokens}


def run_task(task: str, stages: list[str], out: str = "runs/tuning", log=print) -> dict:
    task_dir = os.path.join(out, task)
    os.makedirs(task_dir, exist_ok=True)
    state_path = os.path.join(task_dir, "tuned.json")
    state = json.load(open(state_path)) if os.path.isfile(state_path) else {"task": task}

    def save():
        write_atomic(state_path, json.dumps(state, indent=2))

    b0 = task_config(task, "unused", task_dir).budget_tokens
    state["b0"] = b0
    if "plain0" in stages:
        state["plain0"] = sweep(task_dir, "plain0", plain_config(task, b0, task_dir), PLAIN_SPACE, "final", log)
        save()
    if "ladder0" in stages:
        from framework.sweeps.space import apply

        winner = apply(plain_config(task, b0, task_dir), state["plain0"]["best"]["params"])
        state["ladder0"] = ladder(task_dir, "ladder0", winner, ladder_budgets(b0, 8, 1), LADDER0_SEEDS, log)
        state["budget"] = state["ladder0"]["plateau"] or b0
        save()
    b = state.get("budget")
    if "plain" in stages:  # at today's budget (the plateau is there already), the first sweep is this one
        state["plain"] = state["plain0"] if b == b0 else sweep(task_dir, "plain", plain_config(task, b, task_dir),
                                                                PLAIN_SPACE, "final", log)
        save()
    if "anytime" in stages:
        state["anytime"] = sweep(task_dir, "anytime", anytime_config(task, b, task_dir), ANYTIME_SPACE, "anytime",
                                 log)
        save()
    if "confirm" in stages:
        from framework.sweeps.space import apply

        state["confirm_plain"] = confirm(task_dir, "confirm-plain", state["plain"],
                                         lambda: plain_config(task, b, task_dir), "final", log)
        state["confirm_anytime"] = confirm(task_dir, "confirm-anytime", state["anytime"],
                                           lambda: anytime_config(task, b, task_dir), "anytime", log)
        winner = apply(plain_config(task, b, task_dir), state["confirm_plain"]["winner"]["params"])
        state["ladder"] = ladder(task_dir, "ladder", winner, ladder_budgets(b, 2, 2), LADDER_SEEDS, log)
        save()
    if "cooldown" in stages:
        state["cooldown"] = tune_cooldown(task, task_dir, b, state["confirm_anytime"]["winner"]["params"], log)
        save()
    if "ablate" in stages:
        state["ablate"] = ablate(task, task_dir, b, state["confirm_anytime"]["winner"], log)
        save()
    return state


def ablate(task: str, task_dir: str, budget: int, winner: dict, log) -> dict:
    """Each lever of LEVERS_OFF that the anytime winner uses, turned off, on CONFIRM_SEEDS: the mean
    anytime objective (validation) against the winner's own on the same seeds."""
    from framework.sweeps.report import objective_value, read_evals

    levers = [(field, off) for field, off in LEVERS_OFF.items() if winner["params"].get(field, off) != off]
    cfgs = {(field, seed): dataclasses.replace(
                recipe(task, "anytime", budget, {**winner["params"], field: off}, task_dir), seed=seed,
                out_dir=os.path.join(task_dir, "ablate", f"{field}-off-s{seed}"))
            for field, off in levers for seed in CONFIRM_SEEDS}
    train_all(list(cfgs.values()), log)
    rows, tokens = [], 0
    for field, off in levers:
        values = []
        for seed in CONFIRM_SEEDS:
            cfg = cfgs[field, seed]
            evals = read_evals(cfg.out_dir)
            values.append(objective_value(evals, "anytime"))
            tokens += max(e["tokens"] for e in evals)
        diffs = [w - v for w, v in zip(winner["values"], values, strict=True)]
        rows.append({"lever": field, "on": winner["params"][field], "off": off, "values_off": values,
                     "gain": float(np.mean(diffs)), "gain_per_seed": diffs})
        log(f"  ablate {field}: {winner['params'][field]} -> {off}: the winner gains {np.mean(diffs):+.3f}")
    return {"rows": rows, "tokens": tokens}


def tune_cooldown(task: str, task_dir: str, budget: int, params: dict, log) -> dict:
    """The anytime winner's cooldown before the stop at COOLDOWN_STOP·B: each share of that stop's tokens
    and shape, branched from the run so that it ends at the stop, on CONFIRM_SEEDS (validation EM)."""
    from framework.checkpoints.store import list_checkpoints
    from framework.training.cooldown import cooldown_config

    starts = {c: round(COOLDOWN_STOP * (1 - c), 4) for c in COOLDOWN_FRACTIONS}
    stops = tuple(sorted({*starts.values(), COOLDOWN_STOP, 1.0}))
    trunks = [dataclasses.replace(recipe(task, "anytime", budget, params, task_dir), seed=seed, stops=stops,
                                  train_until=COOLDOWN_STOP,
                                  out_dir=os.path.join(task_dir, "cooldown", f"anytime-s{seed}"))
              for seed in CONFIRM_SEEDS]
    train_all(trunks, log)
    branches = {}
    for cfg in trunks:
        ckpts = list_checkpoints(cfg.out_dir)
        for c, shape in [(c, s) for c in COOLDOWN_FRACTIONS for s in COOLDOWN_SHAPES]:
            src = next(x for x in ckpts if any(abs(f - starts[c]) < 1e-9 for f in x.get("fractions", [x["fraction"]])))
            branches[cfg.out_dir, c, shape] = src, cooldown_config(
                cfg.out_dir, str(starts[c]), str(round(COOLDOWN_STOP * budget) - src["tokens"]),
                f"{cfg.out_dir}-cool{c}-{shape}", shape=shape, step=src["step"])
    train_all([b for _, b in branches.values()], log, branch=True)
    rows, tokens = {}, 0
    for cfg in trunks:
        tokens += list_checkpoints(cfg.out_dir)[-1]["tokens"]
        for c, shape in [(c, s) for c in COOLDOWN_FRACTIONS for s in COOLDOWN_SHAPES]:
            src, branch = branches[cfg.out_dir, c, shape]
            end = list_checkpoints(branch.out_dir)[-1]
            tokens += end["tokens"] - src["tokens"]
            rows.setdefault(f"{c}/{shape}", []).append(end["val_em"])
    table = [{"fraction": float(k.split("/")[0]), "shape": k.split("/")[1], "val_em": v, "mean": float(np.mean(v))}
             for k, v in rows.items()]
    best = max(table, key=lambda r: r["mean"])  # the first of equals: the shortest, linear
    for r in table:
        log(f"  cooldown {r['fraction']} {r['shape']}: val EM {r['mean']:.3f} at {COOLDOWN_STOP} B")
    return {"rows": table, "fraction": best["fraction"], "shape": best["shape"], "tokens": tokens}


def export(out: str = "runs/tuning", path: str = EXPORT_FILE, results_path: str | None = None) -> dict:
    """The winners of every fully tuned task (budget, both recipes, the cooldown, what tuning cost) into
    `path`, and (if given) their report into the "Fair tuning" section of `results_path`."""
    exported = {}
    for task in TASKS:
        state_path = os.path.join(out, task, "tuned.json")
        if not os.path.isfile(state_path):
            continue
        with open(state_path) as f:
            s = json.load(f)
        if "cooldown" not in s:
            print(f"{task}: not tuned to the end yet (no cooldown stage); left out")
            continue
        sweeps = {k: {"trials": s[k]["trials"], "tokens": s[k]["total_tokens"], "wall_s": s[k]["wall_s"],
                      "best_sweep_objective": s[k]["best"]["objective"],
                      "base_objective": (s[k].get("base") or {}).get("objective")}
                  for k in ("plain0", "plain", "anytime") if k in s and not (k == "plain" and s["budget"] == s["b0"])}
        exported[task] = {
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
            exported[task]["tokens"]["ablate"] = s["ablate"]["tokens"]
    write_atomic(path, json.dumps(exported, indent=1, sort_keys=True) + "\n")
    if results_path:
        from experiments.tuning_report import write_section

        write_section(exported, results_path)
    return exported


STAGES = ("plain0", "ladder0", "plain", "anytime", "confirm", "cooldown", "ablate")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", help="addition|multihop|byo")
    p.add_argument("--export", action="store_true", help=f"copy every tuned task's winners into {EXPORT_FILE}")
    p.add_argument("--stage", default="all", help=f"{'|'.join(STAGES)}|all, or a comma-separated list")
    p.add_argument("--out", default="runs/tuning")
    p.add_argument("--jobs", type=int, default=1,
                   help="processes side by side: sweep workers sharing each study, runs of the other stages")
    args = p.parse_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"--jobs {args.jobs}: give 1 or more")
    JOBS[0] = args.jobs
    if args.export:
        tasks = export(args.out, results_path=RESULTS_FILE)
        print(f"wrote {EXPORT_FILE} and the Fair tuning section of {RESULTS_FILE}: {', '.join(tasks) or 'no task'}")
        return
    stages = list(STAGES) if args.stage == "all" else args.stage.split(",")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or args.task not in TASKS:
        raise SystemExit(f"unknown stage(s) {unknown} or task {args.task!r}; stages: {', '.join(STAGES)}")
    t0 = time.perf_counter()
    run_task(args.task, stages, args.out, log=lambda line: print(f"[{args.task}] {line}", flush=True))
    print(f"[{args.task}] done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
