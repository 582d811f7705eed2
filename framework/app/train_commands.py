"""`recoup train`, `recoup runs show`, `recoup eval` and `recoup cooldown`: the commands about one run.

`recoup train` checks the config, the `--init-from` source and the data before it imports the
trainer (and with it jax), so bad input fails in a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from curricula.registry import CURRICULA, PACINGS, SCORERS
from framework.app.python_files import call_function_of
from framework.config import (
    DEFAULT_STOPS,
    PRESETS,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    load_run_config,
    parse_share_or_tokens,
    parse_stops,
    parse_tokens,
    preset,
)
from framework.data.registry import HOP_ANSWERS, OPERAND_FORMATS, SPLITS, TASKS
from framework.errors import ConfigError
from framework.runner.check import check
from framework.training.registry import DECAY_SHAPES, OPTIMIZERS, SCHEDULES

# -- recoup train --------------------------------------------------------------------------------

# flag -> (config section, field, parser). Defaults are None so we can tell "given" from "omitted":
# omitted flags fall back to --config, to the run being resumed, or to the dataclass default.
_TRAIN_FLAGS = {
    "task": ("data", "task", str),
    "data": ("data", "data_path", str),
    "prompt_col": ("data", "prompt_col", str),
    "answer_col": ("data", "answer_col", str),
    "difficulty_col": ("data", "difficulty_col", str),
    "max_digits": ("data", "max_digits", int),
    "operand_format": ("data", "operand_format", str),
    "max_hops": ("data", "max_hops", int),
    "kb_entities": ("data", "kb_entities", int),
    "kb_relations": ("data", "kb_relations", int),
    "hop_answer": ("data", "hop_answer", str),
    "n_examples": ("data", "n_examples", int),
    "val_size": ("data", "val_size", int),
    "test_size": ("data", "test_size", int),
    "data_seed": ("data", "seed", int),
    "max_seq_len": ("data", "max_seq_len", int),
    "dropout": ("model", "dropout", float),
    "dtype": ("model", "dtype", str),
    "schedule": ("optim", "schedule", str),
    "lr": ("optim", "peak_lr", float),
    "warmup": ("optim", "warmup_frac", float),
    "decay": ("optim", "decay_frac", float),
    "decay_shape": ("optim", "decay_shape", str),
    "optimizer": ("optim", "optimizer", str),
    "b1": ("optim", "b1", float),
    "b2": ("optim", "b2", float),
    "b2_batch": ("optim", "b2_batch", int),
    "grokfast_lambda": ("optim", "grokfast_lambda", float),
    "grokfast_alpha": ("optim", "grokfast_alpha", float),
    "weight_decay": ("optim", "weight_decay", float),
    "clip": ("optim", "clip_norm", float),
    "budget_tokens": ("run", "budget_tokens", lambda s: parse_tokens(s, "budget_tokens")),
    "stops": ("run", "stops", parse_stops),
    "every_tokens": ("run", "every_tokens", lambda s: parse_tokens(s, "every_tokens")),
    "train_until": ("run", "train_until", float),
    "batch_size": ("run", "batch_size", int),
    "batch_warmup": ("run", "batch_warmup", float),
    "mesh": ("run", "mesh_shape", lambda s: _mesh(s)),
    "nonfinite": ("run", "nonfinite", str),
    "rollback_lr_factor": ("run", "rollback_lr_factor", float),
    "max_rollbacks": ("run", "max_rollbacks", int),
    "seed": ("run", "seed", int),
    "out": ("run", "out_dir", str),
    "init_from": ("run", "init_from", str),
    "curriculum": ("run", "curriculum", str),
    "curriculum_arg": ("run", "curriculum_args", lambda pairs: _kv(pairs, "curriculum_args")),
    "pacing": ("run", "pacing", str),
    "pacing_arg": ("run", "pacing_args", lambda pairs: _kv(pairs, "pacing_args")),
    "scorer": ("run", "scorer", str),
    "scorer_arg": ("run", "scorer_args", lambda pairs: _kv(pairs, "scorer_args")),
    "scorer_percentile": ("run", "scorer_percentile", bool),
    "ema_half_life": ("run", "ema_half_lives",
                      lambda s: tuple(parse_tokens(t, "ema_half_lives") for t in s.split(",") if t.strip())),
    "swa_start": ("run", "swa_start", float),
    "stop_rule": ("run", "stop_rules", lambda specs: tuple(_stop_rule(s) for s in specs)),
    "stop_combine": ("run", "stop_combine", str),
}


def int_list(text: str, field: str, what: str = "comma-separated integers, e.g. 1,8,32") -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(field, f"{text!r} must be {what}") from None


def _mesh(text: str) -> tuple[int, int]:
    what = "DATA,FSDP device counts, e.g. -1,1 or 2,4"
    counts = int_list(text, "mesh_shape", what)
    if len(counts) != 2:
        raise ConfigError("mesh_shape", f"{text!r} must be {what}")
    return counts


def _stop_rule(spec: str) -> dict:
    """'patience:patience=3,min_delta=0.01' -> {"rule": "patience", "patience": 3, "min_delta": 0.01}."""
    name, _, args = spec.partition(":")
    return {"rule": name, **_kv([a for a in args.split(",") if a], "stop_rules")}


def _kv(pairs: list[str], field: str) -> dict:
    """--x-arg k=v ... -> {k: v}, values read as JSON when they parse ('0.2' -> 0.2)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(field, f"{pair!r} is not key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# Defaults shown in --help come from the dataclasses, so they cannot drift from what is used.
_D, _O, _R = DataConfig(), OptimConfig(), RunConfig(out_dir="", budget_tokens=1)


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model, checkpointing at token-budget stopping points")
    p.add_argument("--config", help="experiment config: a .py file or module with get_config()")
    p.add_argument("--recipe", help="start from a tuned recipe: plain (cosine planned for the budget, the final "
                                    "checkpoint) | anytime (recoup's, for runs that may stop anywhere: constant "
                                    "learning rate, EMAs); flags beside it override (framework.training.recipes)")
    g = p.add_argument_group("data (one of --task / --data)")
    g.add_argument("--task", help=f"built-in task: {'|'.join(TASKS)}")
    g.add_argument("--data", help="a local .jsonl/.csv/.parquet file or a save_to_disk directory")
    g.add_argument("--prompt-col", help="prompt column of --data (default: prompt)")
    g.add_argument("--answer-col", help="answer column of --data (default: answer)")
    g.add_argument("--difficulty-col", help="optional difficulty column of --data")
    g.add_argument("--max-digits", help=f"addition: operands of 1..N digits (default {_D.max_digits})")
    g.add_argument("--operand-format", help=f"addition: {'|'.join(OPERAND_FORMATS)} (default {_D.operand_format})")
    g.add_argument("--max-hops", help=f"multihop: questions of 1..H hops (default {_D.max_hops})")
    g.add_argument("--kb-entities", help=f"multihop: names in the knowledge base (default {_D.kb_entities})")
    g.add_argument("--kb-relations", help=f"multihop: relations, 1..12 (default {_D.kb_relations})")
    g.add_argument("--hop-answer", help=f"multihop: {'|'.join(HOP_ANSWERS)}, answer every hop or only the last "
                                        f"(default {_D.hop_answer})")
    g.add_argument("--n-examples", help=f"examples generated for a built-in task (default {_D.n_examples})")
    g.add_argument("--val-size", help=f"validation prompts (default {_D.val_size})")
    g.add_argument("--test-size", help=f"test prompts (default {_D.test_size})")
    g.add_argument("--data-seed", help=f"seed of the data generator and split (default {_D.seed})")
    g.add_argument("--max-seq-len",
                   help=f"longest example in tokens, BOS and EOS included (default {_D.max_seq_len})")
    g = p.add_argument_group("model")
    g.add_argument("--preset", help=f"model size: {'|'.join(PRESETS)} (default {_R.preset})")
    g.add_argument("--dropout", help="residual dropout (default: the preset's)")
    g.add_argument("--dtype", help="compute dtype: float32 or bfloat16 (parameters stay float32; default: preset)")
    g = p.add_argument_group("optimizer")
    g.add_argument("--schedule",
                   help=f"learning-rate schedule over the budget: {'|'.join(SCHEDULES)} (default {_O.schedule})")
    g.add_argument("--lr", help=f"peak learning rate (default {_O.peak_lr})")
    g.add_argument("--warmup", help=f"warmup as a fraction of the budget (default {_O.warmup_frac})")
    g.add_argument("--decay", help=f"wsd: decay phase as a fraction of the budget (default {_O.decay_frac})")
    g.add_argument("--decay-shape", help=f"wsd and cooldowns: {'|'.join(DECAY_SHAPES)} (default {_O.decay_shape})")
    g.add_argument("--optimizer", help=f"{'|'.join(OPTIMIZERS)} (default {_O.optimizer}; schedule-free wants "
                                       "--schedule constant and evaluates its averaged weights)")
    g.add_argument("--b1", help=f"Adam's b1; schedule-free's interpolation; Muon's momentum (default {_O.b1})")
    g.add_argument("--b2", help=f"Adam's b2 (default {_O.b2})")
    g.add_argument("--b2-batch", metavar="BATCH", help="b2 was chosen for this batch size: use b2**(batch_size/BATCH), "
                                                       "keeping its half-life in tokens (default: b2 as given)")
    g.add_argument("--grokfast-lambda", help="Grokfast: add lambda x an EMA of the gradients to each (default 0: off)")
    g.add_argument("--grokfast-alpha", help=f"Grokfast: that EMA's decay per step (default {_O.grokfast_alpha})")
    g.add_argument("--weight-decay", help=f"AdamW weight decay (default {_O.weight_decay})")
    g.add_argument("--clip", help=f"global gradient-norm clip (default {_O.clip_norm})")
    g = p.add_argument_group("run")
    g.add_argument("--budget-tokens", help="planned budget in counted tokens: 2000000, 2M, 500k")
    g.add_argument("--stops", help=f"stopping fractions (default {','.join(map(str, DEFAULT_STOPS))})")
    g.add_argument("--every-tokens", help="also checkpoint every N tokens")
    g.add_argument("--train-until", help="end training at this budget fraction, e.g. 0.62: the schedule still "
                                         "plans for --budget-tokens (default 1.0)")
    g.add_argument("--batch-size", help=f"sequences per step (default {_R.batch_size})")
    g.add_argument("--batch-warmup", metavar="FRACTION",
                   help="grow the batch from batch_size/8 to batch_size over this share of the budget (default 0: off)")
    g.add_argument("--mesh", metavar="DATA,FSDP",
                   help="devices of the training mesh: data-parallel x FSDP (default -1,1: data parallel over "
                        "every device; 2,4: 2 replicas of parameters split 4 ways)")
    g.add_argument("--seed", help=f"training seed (default {_R.seed})")
    g.add_argument("--out", help="run directory")
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    g.add_argument("--init-from", help="start from RUN_DIR or RUN_DIR/checkpoints/STEP weights")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--nonfinite", help="on a non-finite loss (its update is always dropped): stop|skip|rollback "
                                       f"(default {_R.nonfinite})")
    g.add_argument("--rollback-lr-factor", help=f"rollback: learning rate multiplier (default {_R.rollback_lr_factor})")
    g.add_argument("--max-rollbacks", help=f"rollback: at most this many, then stop (default {_R.max_rollbacks})")
    g = p.add_argument_group("several processes (jax.distributed; or RECOUP_COORDINATOR, RECOUP_NUM_PROCESSES, "
                             "RECOUP_PROCESS_ID)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, the same for every process")
    g.add_argument("--num-processes", type=int, help="how many processes train together")
    g.add_argument("--process-id", type=int, help="this process's index, 0..N-1 (0 writes the run files)")
    g.add_argument("--ema-half-life", metavar="TOKENS[,TOKENS]",
                   help="keep an EMA of the weights with this half-life in tokens (e.g. 50k), in every checkpoint")
    g.add_argument("--swa-start", metavar="FRACTION",
                   help="keep a running mean of the weights from this budget fraction on, saved in every checkpoint")
    g.add_argument("--stop-rule", action="append", metavar="RULE[:K=V,...]",
                   help="stop early: patience|moving-average|grad-norm|paired-test|budget with arguments, e.g. "
                        "patience:patience=3,min_delta=0.01 or budget:price=2 (repeatable; see --stop-combine)")
    g.add_argument("--stop-combine", help="with several --stop-rule: stop when any fires (default) or all do")
    g.add_argument("--cooldown-on-stop", metavar="TOKENS",
                   help="when a stopping rule fires, cool down for this many more tokens (a share of the budget, "
                        "0.1, or a count) and ship the best on validation of the cooled-down weights and the run's "
                        "averages at the stop (the controller; tokens counted)")
    g = p.add_argument_group("curriculum (see curricula/ and the README)")
    g.add_argument("--curriculum", help=f"{'|'.join(CURRICULA)}|module:attr (default {_R.curriculum})")
    g.add_argument("--curriculum-arg", action="append", metavar="K=V", help="a curriculum argument (repeatable)")
    g.add_argument("--pacing", help=f"{'|'.join(PACINGS)}|module:attr (default {_R.pacing})")
    g.add_argument("--pacing-arg", action="append", metavar="K=V", help="a pacing argument (repeatable)")
    g.add_argument("--scorer", help=f"rescore the train split's difficulty: {'|'.join(SCORERS)}|module:attr")
    g.add_argument("--scorer-arg", action="append", metavar="K=V", help="a scorer argument (repeatable)")
    g.add_argument("--scorer-percentile", action="store_const", const=True,
                   help="store scores as percentiles in (0, 1]")
    p.set_defaults(func=_cmd_train)


def load_config_file(spec: str) -> RunConfig:
    """`get_config()` of a Python file path or an importable module name.

    An error raised by the file's own code keeps its traceback (it points into the user's file);
    a file that is not Python at all, or a get_config() that returns no RunConfig, is a ConfigError.
    """
    cfg = call_function_of(spec, "config", "get_config", " (e.g. experiments.demo)")
    if not isinstance(cfg, RunConfig):
        raise ConfigError("config", f"get_config() in {spec} returned {type(cfg).__name__}, not a RunConfig")
    for name, cls in (("data", DataConfig), ("model", ModelConfig), ("optim", OptimConfig)):  # before asdict
        if not isinstance(getattr(cfg, name), cls):
            raise ConfigError(name, f"get_config() in {spec} gave {getattr(cfg, name)!r}, not a {cls.__name__}")
    return cfg


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Merge, in increasing priority: defaults, --config or the resumed run, explicit flags."""
    given = {k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k) is not None}
    if args.resume and not args.out:
        raise ConfigError("out", "--resume needs --out RUN_DIR")
    base: RunConfig | None = None
    if args.config is not None:
        base = load_config_file(args.config)
    if args.resume:
        base = load_run_config(args.out)  # lists what is there if it is not a run directory
    sections = {
        "data": dataclasses.asdict(base.data) if base else {},
        "model": dataclasses.asdict(base.model if base else PRESETS["small"]),
        "optim": dataclasses.asdict(base.optim) if base else {},
        "run": {k: v for k, v in (base.to_dict() if base else {}).items()
                if k not in ("data", "model", "optim")},
    }
    if args.preset is not None:
        sections["model"] = dataclasses.asdict(preset(args.preset))
        sections["run"]["preset"] = args.preset
    if "data" in given:  # a file replaces the default built-in task
        sections["data"]["task"] = None
    if args.recipe is not None:  # over --config and a resumed run's settings, under every flag given
        _apply_recipe(sections, args.recipe, given)
    for flag, value in given.items():
        section, field, parse = _TRAIN_FLAGS[flag]
        try:
            sections[section][field] = parse(value)
        except ConfigError:
            raise
        except ValueError:
            raise ConfigError(flag.replace("_", "-"), f"cannot parse {value!r}") from None
    if "budget_tokens" not in sections["run"]:
        raise ConfigError("budget-tokens", "required (for example --budget-tokens 2M)")
    if "out_dir" not in sections["run"]:
        raise ConfigError("out", "required: the run directory to write")
    cfg = RunConfig(
        data=DataConfig(**sections["data"]),
        model=ModelConfig(**sections["model"]),
        optim=OptimConfig(**sections["optim"]),
        **sections["run"],
    )
    cfg.validate()
    return cfg


def _apply_recipe(sections: dict, name: str, given: dict) -> None:
    """Set the fields of recipe `name` (framework.training.recipes) in `sections`; it needs the budget first."""
    from framework.training.recipes import settings

    budget = sections["run"].get("budget_tokens")
    if "budget_tokens" in given:
        budget = parse_tokens(given["budget_tokens"], "budget_tokens")
    if budget is None:
        raise ConfigError("budget-tokens", "required with --recipe (its averages are shares of the budget)")
    for field, value in settings(name, budget).items():
        section, _, key = field.rpartition(".")
        sections[section or "run"][key] = value


def _cmd_train(args) -> int:
    cfg = config_from_args(args)
    if args.cooldown_on_stop is not None:  # checked before anything trains
        if not cfg.stop_rules:
            raise ConfigError("cooldown-on-stop", "needs a --stop-rule to fire (e.g. budget:price=8)")
        if parse_share_or_tokens(args.cooldown_on_stop, cfg.budget_tokens, "cooldown-on-stop") <= 0:
            raise ConfigError("cooldown-on-stop", f"{args.cooldown_on_stop!r} gives no tokens: give a share of the "
                                                  "budget (0.1) or a count (40k)")
    check(cfg)  # the stopping rules, the run directory, init_from: what validate() leaves to the build
    from framework.data.encoding import prepare  # datasets, not jax: a bad file or column fails here

    splits = prepare(cfg.data)
    from framework.training import sharding  # before any other JAX work: joins the other processes, if any

    sharding.initialize(args.coordinator, args.num_processes, args.process_id)
    from curricula.build import sampler_factory  # imports jax, and the user's module if named

    sampler_fn = sampler_factory(cfg.curriculum, cfg.curriculum_args, cfg.pacing, cfg.pacing_args,
                                 cfg.budget_tokens)
    from framework.runner.build import train

    stops = train(cfg, resume=args.resume, show_progress=not args.no_progress, splits=splits,
                  sampler_fn=sampler_fn)
    print(_format_stops(stops))
    if args.cooldown_on_stop is not None:
        _cool_down_if_stopped(cfg.out_dir, args.cooldown_on_stop)
    return 0


def _cool_down_if_stopped(run_dir: str, extra: str) -> None:
    """--cooldown-on-stop: a stopping rule ended the run, so cool it down and say what ships."""
    from framework.runner import controller

    stopped = controller.stopping_checkpoint(run_dir)
    if stopped is None:
        print("no stopping rule fired: nothing to cool down")
        return
    shipped = controller.cool_down_and_ship(run_dir, controller.branch_point(run_dir, stopped)["step"], extra)
    what = "its cooled-down weights" if shipped["average"] is None and shipped["run_dir"] != run_dir else (
        f"{shipped['average'] or 'the weights'} at step {shipped['step']} of {shipped['run_dir']}")
    print(f"ships {what}: validation EM {shipped['val_em']:.4f} after {shipped['tokens']:,} training tokens "
          f"(stopped at {shipped['stopped_at']:,}); {shipped['cooldown_dir']}/{controller.SHIPPED_FILE}")


# -- recoup runs show / recoup eval --------------------------------------------------------------


def _cmd_runs_show(args) -> int:
    from framework.checkpoints.store import list_checkpoints

    stops = list_checkpoints(args.run_dir)
    print(json.dumps(stops, indent=2) if args.json else _format_stops(stops))
    return 0


def _format_stops(stops: list[dict]) -> str:
    if not stops:
        return "no checkpoints yet"
    lines = [f"{'step':>6} {'kind':>8} {'fraction':>8} {'tokens':>12} {'val EM':>7} {'val loss':>9} {'wall s':>7}"]
    for c in stops:
        lines.append(
            f"{c['step']:>6} {c.get('kind', ''):>8} {c['fraction']:>8.3f} {c['tokens']:>12,} "
            f"{c['val_em']:>7.3f} {c['val_loss']:>9.4f} {c.get('wall_s', 0):>7.1f}"
        )
    return "\n".join(lines)


def _cmd_eval(args) -> int:
    if args.split not in SPLITS:  # before jax, and before the data is rebuilt
        raise ConfigError("split", f"unknown split {args.split!r}", SPLITS)
    from framework.checkpoints.store import resolve_step
    from framework.training.runs import evaluate_checkpoint, open_run

    run = open_run(args.run_dir)
    step = resolve_step(args.run_dir, args.step)
    result = evaluate_checkpoint(run, step, args.split)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.run_dir} step {step} ({result['tokens']:,} tokens), {args.split} split, n={result['n']}")
        print(f"  EM {result['em']:.4f}  strict EM {result['strict_em']:.4f}  F1 {result['f1']:.4f}  "
              f"(teacher-forced strict EM {result['teacher_forced_strict_em']:.4f})")
        print("  EM by difficulty: " + ", ".join(f"{k}: {v:.3f}" for k, v in result["em_by_difficulty"].items()))
    return 0


# -- recoup cooldown ------------------------------------------------------------------------------


def _cmd_cooldown(args) -> int:
    from framework.training.cooldown import cooldown_config

    cfg = cooldown_config(args.run_dir, args.from_, args.tokens, args.out, args.shape)
    # The run's saved config is data, but an import path in it is code this command would run.
    imports = {f: v for f, v in (("curriculum", cfg.curriculum), ("pacing", cfg.pacing), ("scorer", cfg.scorer))
               if v and ":" in v}
    if imports and not args.trust_imports:
        raise ConfigError("trust_imports", f"{args.run_dir}/config.json names code to import "
                          f"({', '.join(f'{f}={v}' for f, v in imports.items())}); pass --trust-imports "
                          "if you trust that run directory")
    from framework.runner.build import train

    print(f"cooldown of {args.run_dir} from {cfg.optim.decay_start:,} tokens: learning rate "
          f"{cfg.optim.peak_lr:.2e} -> 0 ({cfg.optim.decay_shape}) over "
          f"{cfg.budget_tokens - cfg.optim.decay_start:,} tokens, into {cfg.out_dir}")
    print(_format_stops(train(cfg, show_progress=not args.no_progress)))
    return 0


def _add_cooldown_parser(sub) -> None:
    c = sub.add_parser("cooldown", help="branch from a stopping checkpoint and decay the learning rate to 0")
    c.add_argument("run_dir")
    c.add_argument("--from", dest="from_", required=True, help="the stopping fraction to branch from, e.g. 0.62")
    c.add_argument("--tokens", required=True,
                   help="extra tokens: a fraction of the run's budget (0.05) or a count (40k); they count")
    c.add_argument("--out", help="new run directory (default RUN_DIR-cooldownF+T)")
    c.add_argument("--shape", help=f"the decay: {'|'.join(DECAY_SHAPES)} (default: the run's decay_shape, linear "
                                   "unless it was set)")
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--trust-imports", action="store_true",
                   help="allow the run's config to name a module:attr curriculum, pacing or scorer (runs its code)")
    c.set_defaults(func=_cmd_cooldown)


# -- recoup tune-stopping -------------------------------------------------------------------------


def add_parsers(sub) -> None:
    _add_train_parser(sub)
    runs = sub.add_parser("runs", help="inspect run directories")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="COMMAND")
    show = runs_sub.add_parser("show", help="list a run's stopping points with their metadata")
    show.add_argument("run_dir")
    show.add_argument("--json", action="store_true", help="a JSON list of objects")
    show.set_defaults(func=_cmd_runs_show)

    ev = sub.add_parser("eval", help="greedy-decode a checkpoint on a split and score it")
    ev.add_argument("run_dir")
    ev.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    ev.add_argument("--split", default="test", help="train|validation|test (default test)")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_cmd_eval)
    _add_cooldown_parser(sub)
