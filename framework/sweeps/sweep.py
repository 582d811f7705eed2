"""`recoup sweep`: a hyperparameter search over RunConfig fields, scored on validation EM, on Optuna.

    recoup sweep --config experiments/demo.py --param optim.peak_lr=log:1e-4:1e-2 \
        --param batch_size=choice:32,64,128 --trials 24 --out runs/sweep/add [--budget-tokens 300k]

Each trial trains `apply(base, point)` (framework.sweeps.space) in `SWEEP/trials/<hash of its config>`,
so a point tried twice costs nothing the second time and an unfinished one resumes. The score is
validation EM: of the last checkpoint (`final`, the plain recipe) or the mean over the stopping
points of the best single model there, EMAs included (`anytime`). Pruning is successive halving
(ASHA) whose rungs are the stopping points: each one reports to Optuna at its planned tokens, so
trials of any batch size are compared at the same point. The base config is always measured (trial
0 when its values lie in the space, or its own point of a grid; else a reference run) and never
pruned: it is the yardstick for "what the winner saves per run".

The study lives in SQLite (`SWEEP/optuna.db`), so a rerun continues it: `--trials N` is the number
of finished (complete + pruned) trials wanted. With `--storage URL` (any RDB URL) several machines
share one study; each writes run directories under its own SWEEP directory (or one on a shared
filesystem), and every trial's curve is kept in the study, so any worker writes the full results.
Workers count each other's running trials, so together they run `--trials` trials, and each waits
for the others before writing the summary; give each its own `--sampler-seed`, or two of them
draw the same first points.
Every token trained is counted per trial (pruned and failed ones included, reused ones as zero),
and the total is reported beside the tokens the winner saves per run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import socket
from collections.abc import Callable
from typing import Any, NamedTuple

from framework.checkpoints.integrity import write_atomic
from framework.config import RunConfig
from framework.errors import ConfigError
from framework.runner.check import check_names
from framework.sweeps.report import (
    DEFAULT_LEVELS,
    intermediate,
    levels_over_seeds,
    objective_value,
    read_evals,
    summarize,
    summary_lines,
    trial_record,
    write_outputs,
)
from framework.sweeps.space import (
    Param,
    Space,
    apply,
    base_point,
    check_options,
    decode,
    describe,
    grid,
    parse_space,
    suggest,
)
from framework.sweeps.workers import claimed, fail_dead_trials, newest_checkpoint, wait_for_others

PRUNED = "pruned by the sweep"  # the reason in a pruned run's `stopped` checkpoint
MAX_INVALID = 10  # sampled points in a row that fail validation before the sweep gives up


class _Sweep(NamedTuple):
    """What every trial needs: the checked inputs and the data splits built so far."""

    base: RunConfig
    params: list[Param]
    base_point: dict | None  # the base config's values in the sampler's encoding; None: outside the space
    out_dir: str
    objective: str
    seeds: tuple[int, ...]
    levels: tuple[float, ...]
    splits: dict  # json of a DataConfig -> its prepared splits, shared by trials with the same data
    log: Callable[[str], None]
    storage: str  # the study's RDB URL, as printed and saved (any password hidden)


# == trials and their run directories ==========================================================


def trial_dir(out_dir: str, cfg: RunConfig) -> str:
    """SWEEP/trials/<12 hex of the sha256 of the config without out_dir>: one directory per config."""
    key = json.dumps({k: v for k, v in cfg.to_dict().items() if k != "out_dir"}, sort_keys=True)
    return os.path.join(out_dir, "trials", hashlib.sha256(key.encode()).hexdigest()[:12])


def _configs(sw: _Sweep, point: dict) -> list[RunConfig]:
    """One RunConfig per training seed, each with its own run directory."""
    cfgs = []
    for seed in sw.seeds:
        cfg = dataclasses.replace(apply(sw.base, point), seed=seed, out_dir="")
        cfgs.append(dataclasses.replace(cfg, out_dir=trial_dir(sw.out_dir, cfg)))
    return cfgs


# == the study ==================================================================================


def _open_study(sw: _Sweep, url: str, name: str, sampler, pruner, trials: int, eta: int,
                min_resource: float | None, sampler_seed: int, startup_trials: int | None):
    """Create or continue the study `name` in `url`, maximizing, with the named sampler and pruner.

    Successive halving's first rung is the first stopping point (or `min_resource` of the budget) in
    planned tokens, the step every report uses; rung k is at min_resource * eta**k tokens, so with
    stops that grow by eta (0.25, 0.5, 1.0 for eta 2) every rung is a stopping point.
    """
    import optuna

    if isinstance(sampler, str):
        sampler = {
            "tpe": lambda: optuna.samplers.TPESampler(
                n_startup_trials=startup_trials if startup_trials is not None else max(5, trials // 4),
                seed=sampler_seed),
            "grid": lambda: optuna.samplers.GridSampler(grid(sw.params), seed=sampler_seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=sampler_seed),
        }[sampler]()
    if isinstance(pruner, str):
        first = min_resource if min_resource is not None else min(sw.base.stops)
        pruner = optuna.pruners.NopPruner() if pruner == "none" else optuna.pruners.SuccessiveHalvingPruner(
            min_resource=max(1, round(first * sw.base.budget_tokens)), reduction_factor=eta)
    return optuna.create_study(storage=url, study_name=name, direction="maximize", sampler=sampler, pruner=pruner,
                               load_if_exists=True)


def _check_same_sweep(study, record: dict, out_dir: str) -> None:
    """The study remembers the base config, space, objective and seeds it was started with (in the
    study, so workers on other machines are checked too); a rerun that differs would mix results."""
    saved = study.user_attrs.get("sweep")
    if saved is None:
        study.set_user_attr("sweep", record)
        saved = record
    diff = _first_difference(saved, record)
    if diff:
        raise ConfigError(diff[0], f"differs from the sweep in {out_dir} ({diff[1]!r} in the study, {diff[2]!r} now); "
                                   "rerun with the same base config and space, or choose another --out or --study")
    write_atomic(os.path.join(out_dir, "sweep.json"), json.dumps(saved, indent=1, sort_keys=True))


def _first_difference(a, b, prefix: str = ""):
    """(dotted key, a's value, b's value) of the first difference between two JSON objects."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            found = _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
            if found:
                return found
        return None
    return None if a == b else (prefix.rstrip("."), a, b)


# == one run, one trial =========================================================================


def _reporter(trial, cfg: RunConfig, objective: str, may_prune: bool):
    """`see(eval record) -> prune?`: reports each stopping point to Optuna at its planned tokens (the
    rungs of successive halving land on stopping points whatever the batch size)."""
    stops = []

    def see(e: dict) -> bool:
        # A `stopped` record (read back from a run that ended early) stands for the stop it replaced.
        if trial is None or e.get("kind") not in ("stop", "stopped"):
            return False
        stops.append(e)
        trial.report(intermediate(stops, objective), round(e["fraction"] * cfg.budget_tokens))
        last = e["fraction"] >= cfg.train_until
        return trial.should_prune() and may_prune and not last  # should_prune records the rung either way

    return see


def _train_one(sw: _Sweep, cfg: RunConfig, trial, report: bool, may_prune: bool,
               seen: dict | None = None) -> tuple[int, list[dict], bool]:
    """Train (or resume, or read back) one run of `trial` (None: the reference run): (tokens trained
    here, its eval records, pruned?). With `report`, its stopping points go to the pruner. `seen`
    gets {run_dir: tokens} after every step, so a run that raises still counts what it trained."""
    from framework.checkpoints import store as checkpoints
    from framework.runner.build import train
    from framework.stopping.points import StopTraining

    newest = newest_checkpoint(cfg.out_dir)
    start = newest["tokens"]
    # Lines past the newest checkpoint (a kill during its save) are redone by the resumed run.
    evals = [e for e in read_evals(cfg.out_dir) if e["step"] <= newest["step"]]
    finished = bool(evals) and (evals[-1].get("kind") == "stopped" or evals[-1]["fraction"] >= cfg.train_until)
    if trial is not None:
        trial.set_user_attr("start_tokens", {**trial.user_attrs.get("start_tokens", {}), cfg.out_dir: start})
    see = _reporter(trial if report else None, cfg, sw.objective, may_prune)
    for e in evals:  # what is already there (a repeated point, a resumed run): the pruner sees it too
        if see(e) and not finished:
            return 0, evals, True
    if finished:
        return 0, evals, evals[-1].get("reason", "").startswith(PRUNED)

    def hook(event) -> None:
        if seen is not None:
            seen[cfg.out_dir] = event.tokens
        if event.kind == "eval" and see(event.info):
            raise StopTraining(f"{PRUNED} at {event.tokens:,} tokens")

    ckpt_dir = checkpoints.checkpoint_dir(cfg.out_dir)
    train(cfg, resume=os.path.isdir(ckpt_dir) and bool(os.listdir(ckpt_dir)), hooks=[hook],
          show_progress=False, splits=_splits(sw, cfg))
    evals = read_evals(cfg.out_dir)
    return evals[-1]["tokens"] - start, evals, evals[-1].get("reason", "").startswith(PRUNED)


def _splits(sw: _Sweep, cfg: RunConfig) -> dict:
    """The data splits of `cfg.data`, built once per distinct DataConfig in the sweep."""
    from framework.data.encoding import prepare

    key = json.dumps(dataclasses.asdict(cfg.data), sort_keys=True)
    if key not in sw.splits:
        sw.splits[key] = prepare(cfg.data)
    return sw.splits[key]


def _objective(study, sw: _Sweep, trials: int):
    """The function `study.optimize` calls: train every seed of one point, return the mean objective.

    A pruned trial raises TrialPruned; a point that is no valid run (wsd with warmup + decay > 1,
    a batch larger than the budget) returns NaN, which Optuna records as FAIL, and the sweep goes on.
    Whatever happens, the tokens trained are recorded on the trial first.
    """
    import optuna
    from optuna.trial import TrialState


    invalid = [0]  # points in a row that were not valid runs

    def objective(trial) -> float:
        point = {p.field: decode(p, suggest(trial, p)) for p in sw.params}
        cfgs = _configs(sw, point)
        is_base = sw.base_point is not None and trial.params == sw.base_point
        for key, value in (("host", socket.gethostname()), ("pid", os.getpid()),
                           ("run_dirs", [c.out_dir for c in cfgs]), ("base", is_base)):
            trial.set_user_attr(key, value)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        label = f"trial {trial.number} ({done + 1}/{trials}) [{describe(point)}]"
        sw.log(f"{label}{' (the base config)' if is_base else ''}: training {cfgs[0].out_dir}"
               + (f" and {len(cfgs) - 1} more seed(s)" if len(cfgs) > 1 else ""))
        tokens, per_seed, pruned, seen = 0, [], False, {}
        try:
            for i, cfg in enumerate(cfgs):
                cfg.validate()
                check_names(cfg)  # a name the space chose
                # Pruning watches the first seed only; the base config is never pruned: it is the yardstick.
                trained, evals, pruned = _train_one(sw, cfg, trial, i == 0, not is_base, seen)
                tokens, per_seed = tokens + trained, per_seed + [evals]
                if pruned:
                    break
        except ConfigError as e:  # not a damaged file or a full disk (SaveFailed, CorruptCheckpoint): those propagate
            invalid[0] += 1
            trial.set_user_attr("error", str(e)[:500])
            sw.log(f"{label}: not a valid run ({e}); recorded as failed")
            if invalid[0] >= MAX_INVALID:
                raise ConfigError("space", f"{MAX_INVALID} sampled points in a row were not valid runs; narrow "
                                           f"the space (the last: {e})") from None
            return math.nan
        except KeyboardInterrupt:
            study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number})  # a rerun resumes it
            raise
        finally:
            if len(per_seed) < len(cfgs) and not pruned:  # a seed raised: count what it trained before that
                failing, starts = cfgs[len(per_seed)].out_dir, trial.user_attrs.get("start_tokens", {})
                tokens += seen.get(failing, starts.get(failing, 0)) - starts.get(failing, 0)
            trial.set_user_attr("tokens", tokens)
        invalid[0] = 0
        trial.set_user_attr("evals", per_seed)  # the curves: any worker can rebuild the results from the study
        value = sum(objective_value(e, sw.objective) for e in per_seed) / len(per_seed)  # pruned: the first seed
        end = per_seed[0][-1]["tokens"]
        sw.log(f"{label}: {'val' if sw.objective == 'final' else 'anytime'} EM {value:.3f} "
               + (f"(pruned at {end:,} tokens)" if pruned else f"at {end:,} tokens")
               + (", read back: already trained" if tokens == 0 else f", {tokens:,} tokens trained"))
        if pruned:
            trial.set_user_attr("pruned_at", end)
            raise optuna.TrialPruned(f"{PRUNED} at {end:,} tokens")
        return value

    return objective


def _reference(study, sw: _Sweep, why: str) -> dict:
    """Train the base config outside the study, as the yardstick; its record is kept in the study."""
    saved = study.user_attrs.get("reference")
    if saved is not None:
        return saved
    cfgs = _configs(sw, {})
    sw.log(f"{why}: training the base config as a reference run in {cfgs[0].out_dir}")
    tokens, per_seed = 0, []
    for cfg in cfgs:
        trained, evals, _ = _train_one(sw, cfg, None, report=False, may_prune=False)
        tokens, per_seed = tokens + trained, per_seed + [evals]
    ref = {"number": None, "tokens_trained": tokens, "run_dirs": [c.out_dir for c in cfgs], "evals": per_seed,
           "objective": sum(objective_value(e, sw.objective) for e in per_seed) / len(per_seed)}
    study.set_user_attr("reference", ref)
    return ref


# == records and outputs ========================================================================


def _write(study, sw: _Sweep) -> dict:
    """Rebuild results.json, summary.md and the plot from the study; returns the summary."""
    from optuna.trial import TrialState

    records = [trial_record(t, sw.params, sw.levels, sw.objective) for t in study.get_trials(deepcopy=False)
               if t.state != TrialState.WAITING]
    base = next((r for r in records if r["base"] and r["state"] == "COMPLETE"), None)
    ref = study.user_attrs.get("reference")
    base = base or (None if ref is None else {**ref, "tokens_to_level": levels_over_seeds(
        ref["evals"], sw.levels, sw.objective)})
    summary = summarize(records, base, ref["tokens_trained"] if ref else 0, sw.levels, sw.objective)
    summary |= {"study": study.study_name, "storage": sw.storage, "out_dir": sw.out_dir}
    write_outputs(sw.out_dir, records, summary, base)
    return summary


# == the sweep ==================================================================================


def run_sweep(base_cfg: RunConfig, space: Space, out_dir: str, *, trials: int | None, objective: str = "final",
              sampler="tpe", pruner="sha", seeds=(0,), levels=DEFAULT_LEVELS, storage: str | None = None,
              study: str = "sweep", eta: int = 3, min_resource: float | None = None, sampler_seed: int = 0,
              startup_trials: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Search `space` around `base_cfg` until the study holds `trials` finished trials; the summary.

    Args:
      base_cfg: the recipe every trial starts from (its out_dir is ignored).
      space: {dotted field: spec}, e.g. {"optim.peak_lr": "log:1e-4:1e-2"} (framework.sweeps.space).
      out_dir: the sweep directory: optuna.db, sweep.json, trials/, results.json, summary.md, em_vs_tokens.png.
      trials: finished (complete + pruned) trials wanted in the study; None with the grid sampler: the grid.
      objective: "final" (val EM of the last checkpoint) or "anytime" (mean best single-model EM over the stops).
      sampler, pruner: names (SAMPLERS, PRUNERS) or optuna sampler / pruner objects.
      seeds: training seeds per point; the objective is their mean; pruning watches the first seed only.
      levels: validation EM levels whose tokens-to-reach are reported per trial.
      storage: an optuna RDB URL (default sqlite in out_dir); study: its study name.

    Example:
      >>> run_sweep(get_config(), {"optim.peak_lr": "choice:1e-3,3e-3"}, "runs/sweep", trials=None,
      ...           sampler="grid")  # doctest: +SKIP
    """
    params = parse_space(space)
    levels, seeds = tuple(sorted(levels)), tuple(seeds)
    check_options(base_cfg, params, out_dir, objective, sampler, pruner, seeds, levels, eta, min_resource)
    if trials is None:
        if sampler != "grid":
            raise ConfigError("trials", "give the number of trials (only the grid sampler has a default: the grid)")
        trials = math.prod(len(p.choices) for p in params)
    if not (isinstance(trials, int) and trials >= 1):
        raise ConfigError("trials", f"{trials!r} must be a positive integer")
    if startup_trials is not None and not (isinstance(startup_trials, int) and startup_trials >= 0):
        raise ConfigError("startup-trials", f"{startup_trials!r} must be an integer >= 0")
    import optuna
    from optuna.trial import TrialState

    os.makedirs(out_dir, exist_ok=True)
    url = storage or f"sqlite:///{os.path.abspath(os.path.join(out_dir, 'optuna.db'))}"
    sw = _Sweep(base_cfg, params, base_point(base_cfg, params), out_dir, objective, seeds, levels, {}, log,
                re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours to print
    try:
        st = _open_study(sw, url, study, sampler, pruner, trials, eta, min_resource, sampler_seed, startup_trials)
        base_json = {k: v for k, v in base_cfg.to_dict().items() if k not in ("out_dir", "seed")}
        _check_same_sweep(st, {"base": json.loads(json.dumps(base_json)), "space": dict(sorted(space.items())),
                               "objective": objective, "seeds": list(seeds)}, out_dir)
        fail_dead_trials(st, log)
        if len(st.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))) < trials:
            _splits(sw, base_cfg)  # a missing data file or column fails here, once, not as a failed trial
        is_grid = isinstance(st.sampler, optuna.samplers.GridSampler)
        if sw.base_point is None:
            _reference(st, sw, "the base config lies outside the space")
        elif not is_grid and not any(t.params == sw.base_point and t.state != TrialState.FAIL
                                           for t in st.get_trials(deepcopy=False)):
            st.enqueue_trial(sw.base_point)  # trial 0: the base config itself (the grid holds it already)
        objective_fn = _objective(st, sw, trials)

        def after_trial(study, _):
            _write(study, sw)
            if claimed(study) >= trials:  # other workers' running trials will finish the count
                study.stop()

        while (n := claimed(st)) < trials:
            # Failed points do not count: optimize again until enough trials finished. The grid
            # sampler stops the study once every grid point was tried; then the loop asks again.
            st.optimize(objective_fn, n_trials=trials - n, callbacks=[after_trial])
            wait_for_others(st, log)  # a worker that died meanwhile leaves a trial to do here
        if is_grid and sw.base_point is not None and not any(
                t.params == sw.base_point and t.state == TrialState.COMPLETE for t in st.get_trials(deepcopy=False)):
            _reference(st, sw, f"the {trials} grid points tried left out the base config's")
        summary = _write(st, sw)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for line in summary_lines(summary):
        log(line)
    return summary
