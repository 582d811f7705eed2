"""`recoup train`, `recoup runs show`, `recoup eval` and `recoup cooldown`: the commands about one run.

`recoup train` checks the config, the `--init-from` source and the data before it imports the
trainer (and with it jax), so bad input fails in a second.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys

from framework.app.flags import add_train_flags, train_flags
from framework.app.python_files import call_function_of
from framework.config import (
    PRESET_RUN,
    PRESETS,
    SHAPE_FIELDS,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    hf_source,
    preset,
)
from framework.data.registry import SPLITS
from framework.errors import ConfigError
from framework.parsing import parse_share_or_tokens, parse_tokens
from framework.run_dirs import load_run_config
from framework.runner.check import check
from framework.training.registry import DECAY_SHAPES

# -- recoup train --------------------------------------------------------------------------------

# flag -> what it sets, generated from the config dataclasses (framework.app.flags). Flags default
# to None so we can tell "given" from "omitted": omitted flags fall back to --config, to the run
# being resumed, or to the dataclass default.
TRAIN_FLAGS = train_flags()
TRUST_HELP = ("import the code a run's config.json names (a module:attr model, optimizer, curriculum, pacing or "
              "scorer): only for run directories you trust")


def code_named(cfg: RunConfig, fields=("model", "optimizer", "curriculum", "pacing", "scorer")) -> dict[str, str]:
    """The import paths among `fields` of a saved config: code that reading the run would run."""
    named = {"model": cfg.model.factory, "optimizer": cfg.optim.optimizer, "curriculum": cfg.curriculum,
             "pacing": cfg.pacing, "scorer": cfg.scorer}
    return {f: named[f] for f in fields if named[f] and ":" in named[f]}


def require_trust(run_dirs, trusted: bool, fields=("model",)) -> None:
    """A run's config.json is data: a command refuses to import the code it names unless trusted."""
    if trusted:
        return
    for run_dir in dict.fromkeys(run_dirs):
        try:
            cfg = load_run_config(run_dir)
        except ConfigError:  # not a readable run: nothing will be imported from it, and the command says why
            continue
        if named := code_named(cfg, fields):
            raise ConfigError("trust_imports", f"{run_dir}/config.json names code to import "
                              f"({', '.join(f'{f}={v}' for f, v in named.items())}); pass --trust-imports "
                              "if you trust that run directory")


def trained_runs(paths) -> list[str]:
    """The run directories behind `paths`: a run itself, or an ensemble's member runs (a manifest
    that cannot be read adds none: the command that reads it says why)."""
    from ensembles import artifact

    runs = []
    for path in paths:
        if os.path.isfile(os.path.join(path, artifact.MANIFEST)):
            with contextlib.suppress(ConfigError):
                runs += [m["run"] for m in artifact.load_manifest(path)["members"]]
        else:
            runs.append(path)
    return runs


def note_changed_data(changes: list[str] | None) -> None:
    """--allow-changed-data went on: say so beside the figures."""
    if changes:
        print("NOTE: the data changed since training: " + "; ".join(changes), file=sys.stderr)


ALLOW_HELP = ("go on when the run's data file or splits differ from what it recorded when it trained "
              "(RUN/data.json); the output says what changed")


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model, checkpointing at token-budget stopping points")
    p.add_argument("--config", help="experiment config: a .py file or module with get_config()")
    p.add_argument("--recipe", help="start from a tuned recipe: plain (cosine planned for the budget, the final "
                                    "checkpoint) | anytime (recoup's, for runs that may stop anywhere: constant "
                                    "learning rate, EMAs); flags beside it override (framework.training.recipes)")
    groups = {"model (each flag overrides the preset's)": p.add_argument_group("model (each flag overrides the "
                                                                              "preset's)")}
    groups["model (each flag overrides the preset's)"].add_argument(
        "--preset", help=f"model size: {'|'.join(PRESETS)} (default {RunConfig.preset}); long-1k, long-2k and "
                         "long-4k also set --max-seq-len, --batch-size and --eval-batch-size to fit the length "
                         "(framework.config.PRESET_RUN; a flag given wins)")
    add_train_flags(p, TRAIN_FLAGS, groups)
    g = groups["run"]
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    g.add_argument("--allow-changed-data", action="store_true", help=ALLOW_HELP)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = groups["stopping rules"]
    g.add_argument("--cooldown-on-stop", metavar="TOKENS",
                   help="when a stopping rule fires, cool down for this many more tokens (a share of the budget, "
                        "0.1, or a count) and ship the best on validation of the cooled-down weights and the run's "
                        "averages at the stop (the controller; tokens counted)")
    g = p.add_argument_group("several processes (jax.distributed; or RECOUP_COORDINATOR, RECOUP_NUM_PROCESSES, "
                             "RECOUP_PROCESS_ID)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, the same for every process")
    g.add_argument("--num-processes", type=int, help="how many processes train together")
    g.add_argument("--process-id", type=int, help="this process's index, 0..N-1 (0 writes the run files)")
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
    given = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
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
        for field, value in PRESET_RUN.get(args.preset, {}).items():  # a long preset's lengths (flags win: below)
            section, _, key = field.rpartition(".")
            sections[section or "run"][key] = value
    if "data" in given or "text" in given:  # a file or a corpus replaces the default built-in task
        sections["data"]["task"] = None
    if args.recipe is not None:  # over --config and a resumed run's settings, under every flag given
        _apply_recipe(sections, args.recipe, given)
    for flag, value in given.items():
        f = TRAIN_FLAGS[flag]
        try:
            sections[f.section][f.field] = f.parse(value)
        except ConfigError:
            raise
        except ValueError:
            raise ConfigError(flag.replace("_", "-"), f"cannot parse {value!r}") from None
    if any(TRAIN_FLAGS[f].section == "model" and TRAIN_FLAGS[f].field in SHAPE_FIELDS for f in given):
        sections["run"]["preset"] = None  # a shape of the user's own: no preset names it any more
    source = hf_source(sections["run"].get("init_from"))
    if source is not None:  # hf:DIR: its architecture, and its tokenizer unless another is given
        sections["model"]["hf_config"] = source
        sections["run"]["preset"] = None
        if "tokenizer" not in given:
            sections["data"]["tokenizer"] = source
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
        if cfg.data.text is not None:
            raise ConfigError("cooldown-on-stop", "ships the best by validation EM, which a text run (--text) "
                                                  "does not have")
        parse_share_or_tokens(args.cooldown_on_stop, cfg.budget_tokens, "cooldown-on-stop", minimum=cfg.batch_size)
    check(cfg)  # the stopping rules, the run directory, init_from: what validate() leaves to the build
    from framework.data import text  # datasets, not jax: a bad file or column fails here
    from framework.data.encoding import prepare
    from framework.data.identity import data_of

    data = data_of(cfg)
    splits = prepare(data) if data.text is None else text.prepare(data)
    from framework.training import sharding  # before any other JAX work: joins the other processes, if any

    sharding.initialize(args.coordinator, args.num_processes, args.process_id)
    from curricula.build import sampler_factory  # imports jax, and the user's module if named

    sampler_fn = None if data.pack or data.text else sampler_factory(cfg.curriculum, cfg.curriculum_args, cfg.pacing,
                                                                     cfg.pacing_args, cfg.budget_tokens)
    from framework.runner.build import train

    stops = train(cfg, resume=args.resume, show_progress=not args.no_progress, splits=splits,
                  sampler_fn=sampler_fn, allow_changed_data=args.allow_changed_data)
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
    from framework.checkpoints.store import DELETING, disk_use, list_checkpoints

    stops = list_checkpoints(args.run_dir)
    total, by_step = disk_use(args.run_dir)
    stops = [{**c, "bytes": by_step[c["step"]]} for c in stops if c["step"] in by_step]  # gone since: deleted
    if args.json:
        print(json.dumps(stops, indent=2))
    else:
        print(_format_stops(stops))
        print(f"disk: {human_bytes(total)} in {args.run_dir}, {human_bytes(sum(by_step.values()))} of it in "
              f"{len(by_step)} checkpoint(s)")
        if os.path.isdir(os.path.join(args.run_dir, DELETING)):  # a kill mid-deletion (store.prune)
            print(f"{args.run_dir}/{DELETING}/ holds checkpoints a kill left half-deleted: --resume removes them")
    return 0


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB': sizes in powers of 1024, as `du -h` counts them."""
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _format_stops(stops: list[dict]) -> str:
    if not stops:
        return "no checkpoints yet"
    size = any("bytes" in c for c in stops)  # `runs show` measures the disk; `train` lists what it saved
    lines = [f"{'step':>6} {'kind':>8} {'fraction':>8} {'tokens':>12} {'val EM':>7} {'val loss':>9} {'wall s':>7}"
             + (f" {'size':>10}" if size else "")]
    for c in stops:
        em = "-" if c["val_em"] is None else f"{c['val_em']:.3f}"  # None: a text run, which validates by loss
        lines.append(
            f"{c['step']:>6} {c.get('kind', ''):>8} {c['fraction']:>8.3f} {c['tokens']:>12,} "
            f"{em:>7} {c['val_loss']:>9.4f} {c.get('wall_s', 0):>7.1f}"
            + (f" {human_bytes(c['bytes']):>10}" if size else "")
        )
    return "\n".join(lines)


def _cmd_eval(args) -> int:
    if args.split not in SPLITS:  # before jax, and before the data is rebuilt
        raise ConfigError("split", f"unknown split {args.split!r}", SPLITS)
    from framework.checkpoints.store import resolve_step
    from framework.training.runs import evaluate_checkpoint, open_run

    require_trust([args.run_dir], args.trust_imports)
    run = open_run(args.run_dir, allow_changed_data=args.allow_changed_data)
    step = resolve_step(args.run_dir, args.step)
    result = evaluate_checkpoint(run, step, args.split)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.run_dir} step {step} ({result['tokens']:,} tokens), {args.split} split, n={result['n']}")
        print(f"  EM {result['em']:.4f}  strict EM {result['strict_em']:.4f}  F1 {result['f1']:.4f}  "
              f"(teacher-forced strict EM {result['teacher_forced_strict_em']:.4f})")
        print("  EM by difficulty: " + ", ".join(f"{k}: {v:.3f}" for k, v in result["em_by_difficulty"].items()))
    note_changed_data(run.data_changes)  # --allow-changed-data: the figures above are not on the held-out split
    return 0


# -- recoup cooldown ------------------------------------------------------------------------------


def _cmd_cooldown(args) -> int:
    from framework.training.cooldown import cooldown_config

    cfg = cooldown_config(args.run_dir, args.from_, args.tokens, args.out, args.shape)
    # The run's saved config is data, but an import path in it is code this command would run.
    require_trust([args.run_dir], args.trust_imports, ("model", "optimizer", "curriculum", "pacing", "scorer"))
    from framework.runner.build import train

    print(f"cooldown of {args.run_dir} from {cfg.branch_from} ({cfg.optim.decay_start:,} tokens): learning rate "
          f"{cfg.optim.peak_lr:.2e} -> 0 ({cfg.optim.decay_shape}) over "
          f"{cfg.budget_tokens - cfg.optim.decay_start:,} tokens, into {cfg.out_dir}")
    print(_format_stops(train(cfg, show_progress=not args.no_progress, allow_changed_data=args.allow_changed_data)))
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
    c.add_argument("--allow-changed-data", action="store_true", help=ALLOW_HELP)
    c.add_argument("--trust-imports", action="store_true", help=TRUST_HELP)
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
    ev.add_argument("--allow-changed-data", action="store_true", help=ALLOW_HELP)
    ev.add_argument("--trust-imports", action="store_true", help=TRUST_HELP)
    ev.set_defaults(func=_cmd_eval)
    _add_cooldown_parser(sub)
