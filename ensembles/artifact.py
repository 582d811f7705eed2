"""An ensemble as a directory: `manifest.json`, plus `params/` (Orbax) for a weight average.

    recoup ensemble build runs/demo --budget 0.62 --max-cost 1 --out runs/demo-ens
    recoup ensemble eval runs/demo-ens --split test --json

The manifest records the members (run, step, tokens, weight, average), the method and how it
combines, the budgets, validation EM (what selection saw), test EM, recovery and the recoup
version. Output ensembles keep no weights of their own: they point at their members' checkpoints.
A cascade (ensembles/cascade.py) has `combine: "cascade"`, members tagged with their `part`
("first": the 1x model, saved under params/ as a weight average is; "fallback": the ensemble),
and a `cascade` section: signal, tau, k, and the escalation rate and mean cost on validation; its
`test` section adds the test split's escalation rate and mean cost.

Recovery, for a stop at fraction f of run R's budget:
    recovery = (EM_ensemble(f) - EM_R(f)) / (EM_R(1.0) - EM_R(f))
with EM_R(f) the test EM of R's latest checkpoint within the budget and EM_R(1.0) that of its
full-budget checkpoint; None when R has no full-budget checkpoint or there is no gap to recover.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

import orbax.checkpoint as ocp

from ensembles.cascade import SIGNALS, Cascade, cascade_cost, evaluate_cascade
from ensembles.members import COMBINERS, Candidate, Member, ParamStore, run_members, weights_model
from ensembles.select import SELECTION_SPLIT, select
from framework import __version__
from framework.checkpoints import integrity
from framework.checkpoints.integrity import write_atomic
from framework.data.tasks import SPLITS
from framework.errors import ConfigError
from framework.evaluation import evaluate

MANIFEST = "manifest.json"
PARAMS_SEAL = "params.seal.json"  # sha256 of every file under params/, see framework.checkpoints.integrity
FORMAT = "recoup-ensemble/1"


# == evaluation ===============================================================================


def evaluate_candidate(store: ParamStore, c: Candidate, split: str = "test", model: tuple | None = None
                       ) -> dict[str, Any]:
    """Greedy-decoded EM, strict EM, F1 and EM per difficulty (as `recoup eval`), plus teacher-forced
    strict EM (a vote's is its decoded strict EM). `model`: the combiner's prepared pieces, when the
    caller already has them (a saved average); built from the members otherwise."""
    run = store.run(c.members[0].run)
    data, combiner, bs = run.split(split), COMBINERS[c.combine], run.cfg.eval_batch_size
    model = combiner.prepare(store, c) if model is None else model
    scores = evaluate.score(combiner.decode(model, data, bs), data)
    if combiner.teacher_forced is None:
        return {**scores, "teacher_forced_strict_em": scores["strict_em"], "loss": None}
    tf = combiner.teacher_forced(model, data, bs)
    return {**scores, "teacher_forced_strict_em": tf["strict_em"], "loss": tf["loss"]}


def recovery(em_ensemble: float, em_at_budget: float, em_full: float | None) -> float | None:
    """Share of the full-budget gap won back; None without a full-budget EM or without a gap."""
    if em_full is None or em_full - em_at_budget <= 0:
        return None
    return (em_ensemble - em_at_budget) / (em_full - em_at_budget)


def recovery_interval(em_ensemble: float, em_at_budget: float, em_full: float | None, n: int) -> dict | None:
    """Recovery with its 95% half-width, and whether the gap itself is within noise: each EM is a
    share of `n` test prompts (binomial standard error); the ratio's error by the delta method. The
    three models answer the same prompts, so leaving out their covariance makes the interval wider,
    not narrower. None without a full-budget EM."""
    if em_full is None or n <= 0:
        return None
    var = [p * (1 - p) / n for p in (em_ensemble, em_at_budget, em_full)]
    gap, won = em_full - em_at_budget, em_ensemble - em_at_budget
    gap_hw = 1.96 * (var[2] + var[1]) ** 0.5
    out = {"gap": gap, "gap_half_width": gap_hw, "within_noise": gap <= gap_hw, "recovery": None,
           "half_width": None}
    if gap > 0:
        r = won / gap
        out["recovery"] = r
        out["half_width"] = 1.96 * ((var[0] + var[1]) + r * r * (var[2] + var[1])) ** 0.5 / gap
    return out


def describe_recovery(ci: dict | None) -> str:
    """One line: "35.0% ± 12.1% (95%)", or why there is no recovery to speak of."""
    if ci is None:
        return "n/a (no full-budget checkpoint)"
    gap = f"gap {ci['gap']:.3f} ± {ci['gap_half_width']:.3f}"
    if ci["within_noise"]:
        return f"within noise: the full-budget model is not measurably better than the early-stopped one ({gap})"
    return f"{ci['recovery']:.1%} ± {ci['half_width']:.1%} (95%; {gap})"


def baselines(store: ParamStore, run_dir: str, budget_tokens: int, split: str = "test") -> dict[str, Any]:
    """The plain early-stopped model (latest checkpoint within budget) and the full-budget one."""
    under = run_members(run_dir, budget_tokens)
    full = [m for m in run_members(run_dir) if m.fraction == 1.0]
    out: dict[str, Any] = {}
    for key, m in (("single_at_budget", under[-1] if under else None), ("single_full", full[-1] if full else None)):
        if m is not None:
            r = evaluate_candidate(store, Candidate("single", (m,), (1.0,), "weights"), split)
            out[key] = {"step": m.step, "tokens": m.tokens, "fraction": m.fraction, "em": r["em"],
                        "strict_em": r["strict_em"]}
    return out


# == build ====================================================================================


def build(run_dirs: list[str], budget_tokens: int, max_cost: float, out_dir: str, method: str = "auto",
          log=print, allow_changed_data: bool = False) -> dict[str, Any]:
    """Select on validation, write the ensemble, then score it and the baselines on test."""
    if os.path.exists(os.path.join(out_dir, MANIFEST)):
        raise ConfigError("out", f"{out_dir} already holds an ensemble; choose another --out")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ConfigError("out", f"{out_dir} is not empty; choose a new directory for the ensemble")
    t0 = time.perf_counter()
    store = ParamStore(allow_changed_data=allow_changed_data)
    log(f"scoring candidates on the {SELECTION_SPLIT} split (budget {budget_tokens:,} tokens, max cost {max_cost})")
    sel = select(run_dirs, budget_tokens, max_cost, method, store=store, log=log)
    best = sel.best
    log(f"chosen: {best.describe()} (val EM {sel.val_em:.3f}); decoding the test split")
    if isinstance(best, Cascade):  # its first model is built once: scored, then saved
        model = weights_model(store, best.first)
        test = evaluate_cascade(store, best, "test", model)
    else:
        model = COMBINERS[best.combine].prepare(store, best)  # built once: scored, then saved if an average
        test = evaluate_candidate(store, best, "test", model)
    base = baselines(store, run_dirs[0], budget_tokens)
    at, full = base.get("single_at_budget"), base.get("single_full")
    rec = recovery(test["em"], at["em"], full["em"] if full else None) if at else None
    rec_ci = recovery_interval(test["em"], at["em"], full["em"] if full else None, test["n"]) if at else None
    first = store.run(run_dirs[0])
    manifest = {
        "format": FORMAT,
        "recoup_version": __version__,
        "method": best.method,
        "combine": best.combine,
        "members": (_members(best.first, "first") + _members(best.fallback, "fallback")
                    if isinstance(best, Cascade) else _members(best)),
        "budgets": {"tokens": budget_tokens, "fraction": budget_tokens / first.cfg.budget_tokens,
                    "max_cost": max_cost},
        "training_tokens": best.training_tokens,
        "inference_cost": best.inference_cost,
        "validation": {"strict_em": sel.val_em, **(_cascade_validation(best) if isinstance(best, Cascade) else {})},
        **({"cascade": _cascade_rule(best)} if isinstance(best, Cascade) else {}),
        "test": test,
        "baselines": base,
        "recovery": rec,
        "recovery_interval": rec_ci,
        "model": dataclasses.asdict(first.cfg.model),
        "candidates": [{"method": c.method, "members": [m.label for m in c.members], "run": c.members[0].run,
                        "inference_cost": c.inference_cost, "training_tokens": c.training_tokens, "val_em": s,
                        **({"signal": c.signal, "tau": _tau_json(c.tau), "escalation_rate": c.escalation_rate}
                           if isinstance(c, Cascade) else {})}
                       for c, s in sel.scored],
        "build_s": None,
        **({"data_changed": changed} if (changed := store.data_changes()) else {}),
    }
    os.makedirs(out_dir, exist_ok=True)
    if best.one_model or isinstance(best, Cascade):
        _, params = model
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(os.path.abspath(os.path.join(out_dir, "params")), params)
        ckptr.wait_until_finished()
        integrity.seal(os.path.join(out_dir, "params"), os.path.join(out_dir, PARAMS_SEAL))
    manifest["build_s"] = round(time.perf_counter() - t0, 1)
    _write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest


def _members(c: Candidate, part: str | None = None) -> list[dict[str, Any]]:
    """The manifest's entries for a candidate's members (weights normalized), tagged with a cascade's part."""
    return [{**dataclasses.asdict(m), "run": os.path.abspath(m.run), "weight": w / sum(c.weights),
             **({"part": part} if part else {})} for m, w in zip(c.members, c.weights, strict=True)]


def _cascade_rule(c: Cascade) -> dict[str, Any]:
    """A cascade's manifest section: the rule chosen on validation, what it costs there, and its parts."""
    return {"signal": c.signal, "tau": _tau_json(c.tau), "k": c.k, "escalation_rate": c.escalation_rate,
            "mean_cost": c.inference_cost, "first": {"method": c.first.method, "combine": c.first.combine},
            "fallback": {"method": c.fallback.method, "combine": c.fallback.combine}}


def _cascade_validation(c: Cascade) -> dict[str, Any]:
    """What a cascade did on validation besides its strict EM: escalation, mean cost, each part alone."""
    first_em, fallback_em = c.part_val_em or (None, None)
    return {"escalation_rate": c.escalation_rate, "mean_cost": c.inference_cost, "first_strict_em": first_em,
            "fallback_strict_em": fallback_em}


def _tau_json(tau: float) -> float | str:
    """A threshold as strict JSON: -inf (never escalate) and +inf (always) as the strings "-inf" and "inf"."""
    return tau if math.isfinite(tau) else str(tau)


def _write_json(path: str, obj) -> None:
    """Write then rename, so a crash never leaves a half-written manifest."""
    write_atomic(path, json.dumps(obj, indent=2, default=_json_default))


def _json_default(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


# == load and evaluate ========================================================================


def load_manifest(ens_dir: str) -> dict[str, Any]:
    path = os.path.join(ens_dir, MANIFEST)
    if not os.path.isfile(path):
        found = ", ".join(sorted(os.listdir(ens_dir))[:20]) if os.path.isdir(ens_dir) else "no such directory"
        raise ConfigError("ensemble", f"{ens_dir} has no {MANIFEST}, so it is not a recoup ensemble (found: {found})")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError("ensemble", f"{path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError("ensemble", f"{path} is not a {FORMAT} manifest")
    if manifest.get("combine") not in (*COMBINERS, "cascade") or not manifest.get("members"):
        raise ConfigError("ensemble", f"{path}: combine must be one of {', '.join(COMBINERS)}, cascade with members")
    if not isinstance(manifest["members"], list):
        raise ConfigError("ensemble", f"{path}: members must be a list")
    for i, m in enumerate(manifest["members"]):  # each field read later, checked here: nothing odd reaches a path
        ok = (isinstance(m, dict) and isinstance(m.get("run"), str) and m["run"]
              and all(isinstance(m.get(k), int) and not isinstance(m.get(k), bool) for k in ("step", "tokens"))
              and all(_is_number(m.get(k)) for k in ("fraction", "weight"))
              and (m.get("average") is None or isinstance(m["average"], str)))
        if not ok:
            raise ConfigError("ensemble", f"{path}: member {i} must hold run (a path), step and tokens (integers), "
                                          f"fraction and weight (numbers) and average (a name or null); it holds {m!r}")
    if manifest["combine"] == "cascade":
        _check_cascade(path, manifest)
    return manifest


def _check_cascade(path: str, manifest: dict[str, Any]) -> None:
    """A cascade's rule and parts, checked before anything is read from them."""
    rule = manifest.get("cascade")
    if not isinstance(rule, dict) or rule.get("signal") not in SIGNALS:
        raise ConfigError("ensemble", f"{path}: a cascade needs a cascade section whose signal is one of "
                                      f"{', '.join(SIGNALS)}")
    tau = rule.get("tau")
    if not (_is_number(tau) or tau in ("inf", "-inf")) or not _is_number(rule.get("escalation_rate")):
        raise ConfigError("ensemble", f"{path}: cascade.tau must be a number, \"inf\" or \"-inf\" and "
                                      f"cascade.escalation_rate a number; they are {tau!r}, "
                                      f"{rule.get('escalation_rate')!r}")
    parts = [m.get("part") for m in manifest["members"]]
    if set(parts) != {"first", "fallback"} or not all(isinstance(rule.get(p), dict)
                                                      and isinstance(rule[p].get("method"), str)
                                                      for p in ("first", "fallback")):
        raise ConfigError("ensemble", f"{path}: a cascade's members are each part \"first\" or \"fallback\", "
                                      f"both present, and cascade.first/fallback name their method; parts are {parts}")


def set_cascade_rule(ens_dir: str, signal: str, tau: float, escalation_rate: float, why: dict[str, Any]) -> dict:
    """Write a cascade's new rule into its manifest atomically (what `recoup ensemble reselect` does when
    feedback shows a better one); the rule it replaces goes to `cascade.history` with `why`. The
    escalation rate and mean cost become those measured where the rule was chosen (`chosen_on`); the
    `validation` and `test` sections keep the build's figures, for the build's rule."""
    manifest = load_manifest(ens_dir)
    if manifest["combine"] != "cascade" or signal not in SIGNALS:
        raise ConfigError("ensemble", f"{ens_dir} is not a cascade, or {signal!r} is not one of {', '.join(SIGNALS)}")
    rule = manifest["cascade"]
    old = {key: rule.get(key) for key in ("signal", "tau", "escalation_rate", "mean_cost", "chosen_on")}
    cost = cascade_cost(int(rule["k"]), escalation_rate)
    rule.update(signal=signal, tau=_tau_json(tau), escalation_rate=escalation_rate, mean_cost=cost,
                chosen_on=why.get("chosen_on", "feedback"))
    rule["history"] = [*rule.get("history", []), {**old, "replaced_at": time.time(), "why": why}]
    manifest["inference_cost"] = cost
    _write_json(os.path.join(ens_dir, MANIFEST), manifest)
    return manifest


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def saved_average(ens_dir: str, run) -> Any:
    """The parameters a weight-average ensemble saved at build time, on one device (`run`: a member's run);
    checked against their seal first (ensembles built before seals existed have none)."""
    integrity.verify(os.path.join(ens_dir, "params"), os.path.join(ens_dir, PARAMS_SEAL))
    return ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(ens_dir, "params")), run.abstract_params)


def candidate_of(manifest: dict[str, Any]) -> Candidate:
    """The candidate a manifest describes; a cascade is two candidates and a rule (`cascade_of`)."""
    if manifest["combine"] == "cascade":
        raise ConfigError("ensemble", "this ensemble is a cascade (a 1x model with an ensemble behind it), not one "
                                      "model or output ensemble: only `recoup ensemble eval` reads cascades so far")
    return _candidate(manifest["method"], manifest["members"], manifest["combine"])


def _candidate(method: str, entries: list[dict[str, Any]], combine: str) -> Candidate:
    fields = {f.name for f in dataclasses.fields(Member)}
    members = tuple(Member(**{k: v for k, v in m.items() if k in fields}) for m in entries)
    weights = tuple(float(m["weight"]) for m in entries)
    return Candidate(method, members, weights, combine)


def cascade_of(manifest: dict[str, Any]) -> Cascade:
    """The cascade a manifest (`load_manifest`, combine "cascade") describes."""
    rule = manifest["cascade"]
    part = {p: [m for m in manifest["members"] if m["part"] == p] for p in ("first", "fallback")}
    return Cascade(_candidate(rule["first"]["method"], part["first"], "weights"),
                   _candidate(rule["fallback"]["method"], part["fallback"], "logits"),
                   rule["signal"], float(rule["tau"]), float(rule["escalation_rate"]))


def evaluate_ensemble(ens_dir: str, split: str = "test", allow_changed_data: bool = False) -> dict[str, Any]:
    """The same fields as `recoup eval`'s JSON, for an ensemble directory."""
    if split not in SPLITS:
        raise ConfigError("split", f"unknown split {split!r}", SPLITS)
    manifest = load_manifest(ens_dir)
    store = ParamStore(allow_changed_data=allow_changed_data)
    if manifest["combine"] == "cascade":  # its first model is the saved average
        cascade = cascade_of(manifest)
        run = store.run(cascade.first.members[0].run)
        result = evaluate_cascade(store, cascade, split, (run.graphdef, saved_average(ens_dir, run)))
    else:
        c, model = candidate_of(manifest), None
        if c.one_model:  # the saved average, not a recomputation from the members
            run = store.run(c.members[0].run)
            model = run.graphdef, saved_average(ens_dir, run)
        result = evaluate_candidate(store, c, split, model)
    return {"run_dir": ens_dir, "step": None, "tokens": manifest["training_tokens"],
            "fraction": manifest["budgets"]["fraction"], "split": split, **result,
            "method": manifest["method"], "inference_cost": manifest["inference_cost"],
            **({"data_changed": changed} if (changed := store.data_changes()) else {})}
