"""`recoup`: train, inspect and evaluate runs.

    recoup train --task addition --preset small --budget-tokens 2M --out runs/add
    recoup runs show runs/add [--json]
    recoup eval runs/add [--step N] [--split test] [--json]
    recoup ensemble build runs/add [RUN_DIR...] --budget 0.62 --max-cost 1 --out runs/add-ens [--json]
    recoup ensemble eval runs/add-ens [--split test] [--json]
    recoup ensemble reselect runs/add-cascade --feedback feedback.db [--json]
    recoup cooldown runs/add --from 0.62 --tokens 0.05 [--shape 1-sqrt] [--out DIR]
    recoup tune-stopping runs/a runs/b --price 2 [--json]
    recoup report runs/a runs/b [runs/a-cooldown0.62+0.05] --out runs/report
    recoup sweep --config experiments/demo.py --param optim.peak_lr=log:1e-4:1e-2 --trials 24 --out runs/sweep

Bad input (a config field, a file, a column, a run directory, a step) is reported as one line
naming the field and the allowed values, exit status 2, before anything is compiled or written.
`recoup train` checks the config, the `--init-from` source and the data before it imports the
trainer (and with it jax).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys

from framework import __version__
from framework.app import export, train_commands
from framework.app.flags import int_list
from framework.app.python_files import call_function_of
from framework.app.train_commands import ALLOW_HELP, TRUST_HELP, note_changed_data, require_trust, trained_runs
from framework.errors import ConfigError, RecoupError
from framework.parsing import parse_tokens
from framework.run_dirs import load_run_config
from framework.sweeps.report import DEFAULT_LEVELS
from framework.sweeps.space import SAMPLERS, Space, parse_param_flags
from framework.sweeps.sweep import run_sweep


def _cmd_tune_stopping(args) -> int:
    from framework.data import identity
    from framework.stopping.tune import describe, tune

    changed = identity.check_file(args.run_dirs, args.allow_changed_data)
    result = tune(args.run_dirs, args.price) | ({"data_changed": changed} if changed else {})
    note_changed_data(changed)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "ranked"} | {"ranked": result["ranked"][:10]},
                         indent=2))
        return 0
    best = result["best"]
    print(f"price {args.price} EM points per million tokens, {len(args.run_dirs)} run(s), "
          f"{len(result['ranked'])} settings replayed")
    print(f"best: {describe(best['rules'])}")
    print(f"  saves {best['mean_tokens_saved_frac']:.1%} of the tokens on average "
          f"(mean {best['mean_tokens']:,.0f} tokens), loses {100 * best['mean_em_lost']:.2f} validation EM points; "
          f"mean J = {best['mean_j']:.2f}")
    print(f"{'mean J':>8} {'saved':>7} {'EM lost':>8}  rule")
    for r in result["ranked"][:8]:
        print(f"{r['mean_j']:>8.2f} {r['mean_tokens_saved_frac']:>7.1%} {100 * r['mean_em_lost']:>8.2f}  "
              f"{describe(r['rules'])}")
    return 0


def _add_tune_parser(sub) -> None:
    t = sub.add_parser("tune-stopping", help="replay stopping rules over finished runs and pick the best for a price")
    t.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    t.add_argument("--price", type=float, required=True, help="EM points one million training tokens is worth")
    t.add_argument("--json", action="store_true")
    t.add_argument("--allow-changed-data", action="store_true", help=ALLOW_HELP)
    t.set_defaults(func=_cmd_tune_stopping)


# -- recoup report --------------------------------------------------------------------------------


def _cmd_report(args) -> int:
    from framework.app.report import write_report

    prices = _prices(args.prices) if args.prices else [0.5, 2.0, 10.0]
    max_cost = _max_cost(args.max_cost, "auto")
    require_trust(args.run_dirs, args.trust_imports)
    result = write_report(args.run_dirs, args.out, prices, max_cost, allow_changed_data=args.allow_changed_data)
    print(f"wrote {args.out}/report.md and {args.out}/em_vs_tokens.png")
    note_changed_data(result.get("data_changed"))
    return 0


def _prices(text: str) -> list[float]:
    what = "comma-separated numbers >= 0, EM points per million tokens, e.g. 0.5,2,10"
    try:
        prices = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError("prices", f"{text!r} must be {what}") from None
    if not all(math.isfinite(p) and p >= 0 for p in prices):
        raise ConfigError("prices", f"{text!r} must be {what}")
    return prices


def _add_report_parser(sub) -> None:
    r = sub.add_parser("report", help="EM against tokens for every stop, average, ensemble and cooldown; Pareto front")
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--out", required=True, help="directory for report.md, report.json and em_vs_tokens.png")
    r.add_argument("--max-cost", default="3", metavar="C",
                   help="most forward passes per query: output ensembles of up to int(C) checkpoints, cascades "
                        "of mean cost <= C (fractional allowed, e.g. 1.3); 1: weight averages only (default 3)")
    r.add_argument("--prices", help="EM points per million tokens for 'what to ship' (default 0.5,2,10)")
    r.add_argument("--allow-changed-data", action="store_true", help=ALLOW_HELP)
    r.add_argument("--trust-imports", action="store_true", help=TRUST_HELP)
    r.set_defaults(func=_cmd_report)


# -- recoup ensemble build / eval ----------------------------------------------------------------

ENSEMBLE_METHODS = ("auto", "single", "average", "latest-k", "ema", "swa", "soup", "logits", "vote",
                    "cascade")  # ensembles.select


def _max_cost(text: str, method: str) -> int | float:
    """--max-cost: a number >= 1, whole (an int) unless the method may choose a cascade, whose cost is a mean."""
    try:
        cost = float(text)
    except ValueError:
        raise ConfigError("max-cost", f"{text!r} must be a number >= 1 (1: weight averages only)") from None
    if not math.isfinite(cost) or cost < 1:
        raise ConfigError("max-cost", f"{text} must be >= 1 (1: weight averages only)")
    if not cost.is_integer() and method not in ("auto", "cascade"):
        raise ConfigError("max-cost", f"{text} is fractional, and only a cascade's cost is a mean that falls between "
                                      f"whole numbers (--method cascade, or auto); --method {method} runs a whole "
                                      f"number of models: give an integer such as {math.floor(cost)}")
    if method == "cascade" and cost <= 1:
        raise ConfigError("max-cost", f"--method cascade needs --max-cost above 1 (escalated queries run an "
                                      f"ensemble too), got {text}")
    return int(cost) if cost.is_integer() else cost


def _cmd_ensemble_build(args) -> int:
    cfgs = [load_run_config(d) for d in args.run_dirs]  # each must be a run directory, before jax
    if args.method not in ENSEMBLE_METHODS:
        raise ConfigError("method", f"unknown method {args.method!r}", ENSEMBLE_METHODS)
    max_cost = _max_cost(args.max_cost, args.method)
    if os.path.isfile(args.out) or (os.path.isdir(args.out) and os.listdir(args.out)):
        raise ConfigError("out", f"{args.out} exists and is not empty; choose a new directory for the ensemble")
    require_trust(args.run_dirs, args.trust_imports)
    from ensembles.artifact import build
    from ensembles.select import parse_budget

    budget = parse_budget(args.budget, cfgs[0].budget_tokens)
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    manifest = build(args.run_dirs, budget, max_cost, args.out, args.method, log=log,
                     allow_changed_data=args.allow_changed_data)
    if args.json:
        print(json.dumps({k: v for k, v in manifest.items() if k != "candidates"}, indent=2))
        return 0
    base, test = manifest["baselines"], manifest["test"]
    print(f"\n{args.out}: {manifest['method']} of {len(manifest['members'])} member(s), cost "
          f"{manifest['inference_cost']:.3g}x, {manifest['training_tokens']:,} training tokens")
    print(f"  test EM {test['em']:.4f} (val strict EM {manifest['validation']['strict_em']:.4f})")
    if rule := manifest.get("cascade"):
        tau = f"{rule['tau']:.4g}" if isinstance(rule["tau"], float) else rule["tau"]  # or "inf", "-inf"
        print(f"  cascade: escalate when {rule['signal']} < {tau} to the {rule['k']}-member ensemble; "
              f"escalates {rule['escalation_rate']:.1%} of validation queries (mean cost {rule['mean_cost']:.3f}x) "
              f"and {test['escalation_rate']:.1%} of test queries (mean cost {test['mean_cost']:.3f}x)")
    for key, name in (("single_at_budget", "single model at the budget"), ("single_full", "full-budget model")):
        if key in base:
            print(f"  {name}: test EM {base[key]['em']:.4f} (step {base[key]['step']}, {base[key]['tokens']:,} tokens)")
    from ensembles.artifact import describe_recovery

    print("  recovery: " + describe_recovery(manifest.get("recovery_interval")))
    note_changed_data(manifest.get("data_changed"))
    return 0


def _cmd_ensemble_eval(args) -> int:
    from ensembles.artifact import evaluate_ensemble, load_manifest

    manifest = load_manifest(args.ens_dir)  # a clear error before jax work
    require_trust([m["run"] for m in manifest["members"]], args.trust_imports)
    result = evaluate_ensemble(args.ens_dir, args.split, allow_changed_data=args.allow_changed_data)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.ens_dir}: {result['method']}, cost {result['inference_cost']:.3g}x, {args.split} split, "
              f"n={result['n']}")
        if "escalation_rate" in result:
            print(f"  escalated {result['escalation_rate']:.1%} of the queries: mean cost {result['mean_cost']:.3f}x")
        print(f"  EM {result['em']:.4f}  strict EM {result['strict_em']:.4f}  F1 {result['f1']:.4f}  "
              f"(teacher-forced strict EM {result['teacher_forced_strict_em']:.4f})")
    note_changed_data(result.get("data_changed"))
    return 0


def _cmd_ensemble_reselect(args) -> int:
    from ensembles.artifact import load_manifest
    from framework.serving.feedback import reselect_cascade

    manifest = load_manifest(args.ens_dir)  # a clear error before jax work
    require_trust([m["run"] for m in manifest["members"]], args.trust_imports)
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    r = reselect_cascade(args.ens_dir, args.feedback, log=log)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    n, cur = r["rows"], r["current"]
    print(f"{args.ens_dir}: the cascade's rule from the feedback in {args.feedback} (k={r['k']}, cap {r['max_cost']})")
    print(f"  rows: {n['with_feedback']} with feedback; {n['sampled_or_stop_strings']} sampled or cut by stop strings "
          f"left out; {n['usable']} usable of {n['feedback']} (only the 1x model's correctness known: "
          f"{n['first_only']}, only the ensemble's: {n['ensemble_only']}); {n['ensemble_decoded']} ensemble answers "
          "decoded")
    def rule(x: dict) -> str:
        return f"{x['signal']} < {x['tau']:.4g}" if isinstance(x["tau"], float) else f"{x['signal']} < {x['tau']}"

    for key in ("current", "chosen"):
        if (x := r[key]) and "strict_em" in x:
            print(f"  {key:<8} {rule(x)}: strict EM {x['strict_em']:.3f}, mean cost {x['mean_cost']:.3f} "
                  "on the usable rows")
    if h := r["confirm"]:
        print(f"  held out ({h['n']} rows): strict EM {h['current_strict_em']:.3f} -> {h['chosen_strict_em']:.3f}, "
              f"gain {h['gain']:+.3f}, {1 - r['alpha']:.0%} lower bound {h['gain_lower_bound']:+.3f} "
              f"({h['new_better']} rows better, {h['new_worse']} worse)")
    verdict = f"switched: wrote the new rule into {args.ens_dir}/manifest.json" if r["written"] else \
        f"kept {rule(cur)}"
    print(f"  {verdict} ({r['reason']})")
    return 0


def _add_ensemble_parser(sub) -> None:
    ens = sub.add_parser("ensemble", help="combine checkpoints into an ensemble under token and cost budgets")
    ens_sub = ens.add_subparsers(dest="ensemble_command", metavar="COMMAND")
    b = ens_sub.add_parser("build", help="select an ensemble on the validation split and write it")
    b.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    b.add_argument("--budget", required=True,
                   help="training-token budget: a fraction of the planned budget (0.62) or tokens (500k)")
    b.add_argument("--max-cost", default="1",
                   help="inference cost cap: 1 = weight averages only, k = output ensembles of up to k members; "
                        "a cascade's mean cost may be capped by a fraction (1.3)")
    b.add_argument("--method", default="auto", help=f"{'|'.join(ENSEMBLE_METHODS)} (default auto: the best)")
    b.add_argument("--out", required=True, help="new directory for the ensemble")
    b.add_argument("--json", action="store_true", help="print the manifest as JSON (progress goes to stderr)")
    b.add_argument("--allow-changed-data", action="store_true", help=ALLOW_HELP)
    b.add_argument("--trust-imports", action="store_true", help=TRUST_HELP)
    b.set_defaults(func=_cmd_ensemble_build)
    e = ens_sub.add_parser("eval", help="greedy-decode an ensemble on a split and score it")
    e.add_argument("ens_dir")
    e.add_argument("--split", default="test", help="train|validation|test (default test)")
    e.add_argument("--json", action="store_true")
    e.add_argument("--allow-changed-data", action="store_true", help=ALLOW_HELP)
    e.add_argument("--trust-imports", action="store_true", help=TRUST_HELP)
    e.set_defaults(func=_cmd_ensemble_eval)
    r = ens_sub.add_parser("reselect", help="re-choose a cascade's signal and threshold from feedback on its "
                                            "served answers (recoup serve --feedback-db)")
    r.add_argument("ens_dir")
    r.add_argument("--feedback", required=True, help="the SQLite file a recoup serve --feedback-db wrote")
    r.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")
    r.add_argument("--trust-imports", action="store_true", help=TRUST_HELP)
    r.set_defaults(func=_cmd_ensemble_reselect)


def _cmd_serve(args) -> int:
    from framework.data import identity
    from framework.serving.generation import Buckets
    from framework.serving.server import serve

    if not 1 <= args.port <= 65535:
        raise ConfigError("port", f"{args.port} must be from 1 to 65535")
    if args.max_wait_ms < 0 or args.max_queue < 1:
        raise ConfigError("max_wait_ms" if args.max_wait_ms < 0 else "max_queue",
                          "--max-wait-ms must be >= 0 and --max-queue >= 1")
    buckets = Buckets(int_list(args.batch_buckets, "batch_buckets"), int_list(args.prompt_buckets, "prompt_buckets"),
                      int_list(args.new_token_buckets, "new_buckets")).validate()
    runs = trained_runs(args.paths)
    require_trust(runs, args.trust_imports)
    note_changed_data(identity.check_file(runs, args.allow_changed_data))
    serve(args.paths, args.host, args.port, args.api_key, buckets, args.max_wait_ms, args.max_queue, args.feedback_db)
    return 0


def _add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="serve ensembles and checkpoints over the OpenAI completions API")
    s.add_argument("paths", nargs="+", metavar="ENS_OR_RUN_DIR",
                   help="ensemble directories (recoup ensemble build) or run directories (latest checkpoint); "
                        "each is served under its directory name")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (default: $RECOUP_API_KEY, if set)")
    s.add_argument("--batch-buckets", default="1,8,32",
                   help="batch sizes compiled; the largest is the most rows per forward pass (default 1,8,32)")
    s.add_argument("--prompt-buckets", default="32,128",
                   help="prompt lengths compiled, BOS included; the largest is the longest prompt (default 32,128)")
    s.add_argument("--new-token-buckets", default="16,64",
                   help="new-token counts compiled; the largest caps max_tokens (default 16,64)")
    s.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its batch (default 5)")
    s.add_argument("--max-queue", type=int, default=4096, help="rows that may wait before requests get 429")
    s.add_argument("--feedback-db", help="an SQLite file (created if new) recording every completion served, and "
                                         "accepting POST /v1/feedback on them (recoup ensemble reselect reads it)")
    s.add_argument("--allow-changed-data", action="store_true", help=ALLOW_HELP)
    s.add_argument("--trust-imports", action="store_true", help=TRUST_HELP)
    s.set_defaults(func=_cmd_serve)


# -- recoup sweep ---============================================================================


def _add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="search hyperparameters (RunConfig fields) on validation EM, with pruning")
    p.add_argument("--config", required=True, help="the base recipe: a .py file or module with get_config()")
    p.add_argument("--space", help="a .py file or module whose get_space() returns {field: spec}")
    p.add_argument("--param", action="append", default=[], metavar="FIELD=SPEC",
                   help="e.g. optim.peak_lr=log:1e-4:1e-2, batch_size=choice:32,64 (kinds: choice, log, "
                        "uniform, int, logint); overrides --space")
    p.add_argument("--trials", type=int, help="finished trials wanted in the study (grid: default the grid size)")
    p.add_argument("--out", required=True, help="sweep directory (a rerun continues the study there)")
    p.add_argument("--budget-tokens", help="override the base config's budget, e.g. 300k")
    p.add_argument("--objective", default="final", help="final (val EM at the end) | anytime (mean best "
                                                        "single-model val EM over the stops)")
    p.add_argument("--sampler", default="tpe", help=f"{'|'.join(SAMPLERS)} (default tpe)")
    p.add_argument("--sampler-seed", type=int, default=0)
    p.add_argument("--startup-trials", type=int, help="TPE's random trials first (default max(5, trials // 4))")
    p.add_argument("--pruner", default="sha", help="sha (successive halving at the stopping points) | none")
    p.add_argument("--eta", type=int, default=3, help="successive halving keeps the best 1/eta per rung (default 3)")
    p.add_argument("--min-resource", type=float, help="first rung as a budget fraction (default: the first stop)")
    p.add_argument("--seeds", default="0", help="training seeds per point, e.g. 0,1: the objective is their "
                                                "mean; pruning watches the first seed only")
    p.add_argument("--levels", help=f"val EM levels to report tokens-to-reach for (default "
                                    f"{','.join(map(str, DEFAULT_LEVELS))})")
    p.add_argument("--storage", help="an optuna RDB URL shared by several machines (default sqlite:///OUT/optuna.db)")
    p.add_argument("--study", default="sweep", help="study name in the storage (default sweep)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (progress goes to stderr)")
    p.set_defaults(func=_cmd_sweep)


def _numbers(text: str, field: str, cast):
    try:
        return tuple(cast(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(field, f"{text!r} must be comma-separated numbers") from None


def load_space_file(spec: str) -> Space:
    """`get_space()` of a .py file or an importable module (the user names it, as with --config)."""
    space = call_function_of(spec, "space", "get_space")
    if not (isinstance(space, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in space.items())):
        raise ConfigError("space", f"get_space() in {spec} must return {{field: spec string}}, got {space!r}")
    return space


def _cmd_sweep(args) -> int:
    space = load_space_file(args.space) if args.space else {}
    space.update(parse_param_flags(args.param))
    base = train_commands.load_config_file(args.config)
    if args.budget_tokens is not None:
        base = dataclasses.replace(base, budget_tokens=parse_tokens(args.budget_tokens))

    def log(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    # With --json, stdout holds the summary alone: the trainer's own lines go to stderr too.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        summary = run_sweep(base, space, args.out, trials=args.trials, objective=args.objective, sampler=args.sampler,
                            pruner=args.pruner, seeds=_numbers(args.seeds, "seeds", int),
                            levels=_numbers(args.levels, "levels", float) if args.levels else DEFAULT_LEVELS,
                            storage=args.storage, study=args.study, eta=args.eta, min_resource=args.min_resource,
                            sampler_seed=args.sampler_seed, startup_trials=args.startup_trials, log=log)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recoup", description="Win back the EM lost to early stopping.")
    parser.add_argument("--version", action="version", version=f"recoup {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train_commands.add_parsers(sub)
    _add_ensemble_parser(sub)
    _add_tune_parser(sub)
    _add_report_parser(sub)
    _add_serve_parser(sub)
    _add_sweep_parser(sub)
    export.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except RecoupError as e:  # bad input, a damaged checkpoint, a failed save: one line each
        print(f"recoup: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recoup: interrupted; completed checkpoints are intact (resume with --resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
