"""The trainer: one readable loop from a RunConfig to a run directory of stopping-point checkpoints.

    recoup train --task addition --preset small --budget-tokens 2.5M --out runs/add

Sections: run directory · data · model and optimizer · update step · checkpoints and evals · loop.
Everything that changes over training (params, optimizer state, sampler state, counters, RNG) is
explicit and saved at every stopping point, so `resume=True` continues bit-for-bit where the run
left off. The learning rate is a function of counted tokens computed inside the one jitted step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from curricula.registry import rescore, sampler_factory
from framework.checkpoints import store as checkpoints
from framework.checkpoints.integrity import write_atomic
from framework.config import (
    BATCH_WARMUP_SPLITS,
    CONFIG_FILE,
    OptimConfig,
    RunConfig,
    load_run_config,
    resolve_init_from,
)
from framework.data.encoding import (
    Batch,
    EncodedSplit,
    Sampler,
    answer_tokens,
    counted_tokens,
    make_batch,
    prepare,
)
from framework.errors import ConfigError
from framework.evaluation import evaluate
from framework.models.transformer import build_model, forward
from framework.stopping.points import StopPoint, StopTraining, stop_points
from framework.stopping.registry import build as build_stop_rule
from framework.stopping.rules import Observation
from framework.training import averages as running
from framework.training import optimizers, schedules, sharding
from framework.training.runs import open_run


class Event(NamedTuple):
    """What hooks see: `kind` is "step" (after every update) or "eval" (at a stopping point)."""

    kind: str
    step: int
    tokens: int
    info: dict[str, Any]


Hook = Callable[[Event], None]  # may raise StopTraining to end the run

# metrics.jsonl fields measured by the clock: the only ones a resumed run may log differently.
WALL_CLOCK_FIELDS = ("tokens_per_s", "data_time_frac", "wall_s", "save_s")
# Lines that record only the clock (how long each save blocked training). A kill can fall between
# a checkpoint and its `save` line, so a resumed run may lack one: compare runs without them.
CLOCK_EVENTS = ("save",)


# == run directory =============================================================================


def _prepare_run_dir(cfg: RunConfig, resume: bool, write: bool = True) -> None:
    """Check (every process) and create (the primary, `write`) the run directory."""
    config_path = os.path.join(cfg.out_dir, CONFIG_FILE)
    if resume:
        saved = load_run_config(cfg.out_dir)  # raises, listing what is there, if it is not a run
        for field in ("data", "model", "optim", "budget_tokens", "batch_size", "batch_warmup", "stops",
                      "train_until", "seed",
                      "every_tokens", "init_from", "curriculum", "curriculum_args", "pacing", "pacing_args",
                      "scorer", "scorer_args", "scorer_percentile", "ema_half_lives", "swa_start",
                      "stop_rules", "stop_combine", "branch_from"):
            if getattr(saved, field) != getattr(cfg, field):
                raise ConfigError(field, f"differs from the run being resumed in {cfg.out_dir} "
                                  f"({getattr(saved, field)!r} there); resume with the same config")
        return
    if os.path.isdir(checkpoints.checkpoint_dir(cfg.out_dir)) and os.listdir(
        checkpoints.checkpoint_dir(cfg.out_dir)
    ):
        raise ConfigError("out", f"{cfg.out_dir} already holds checkpoints; pass --resume to "
                          "continue it, or choose another --out")
    if not write:
        return
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
        write_atomic(config_path, cfg.dumps())  # a kill here leaves no half config to resume from
        open(os.path.join(cfg.out_dir, checkpoints.METRICS_FILE), "w").close()
    except OSError as e:
        raise ConfigError("out", f"cannot write the run directory {cfg.out_dir}: {e.strerror or e}") from None


# == model and optimizer ======================================================================

SCHEDULE_BUILDERS: dict[str, Callable[[OptimConfig, int], schedules.Schedule]] = {
    "cosine": lambda o, b: schedules.warmup_cosine(b, o.peak_lr, o.warmup_frac, o.end_lr_frac),
    "wsd": lambda o, b: schedules.warmup_stable_decay(b, o.peak_lr, o.warmup_frac, o.decay_frac, o.decay_shape),
    "constant": lambda o, b: schedules.warmup_constant(b, o.peak_lr, o.warmup_frac),
    "cooldown": lambda o, b: schedules.cooldown(b, o.peak_lr, o.decay_start, o.decay_shape),
}


def steps_per_batch(cfg: RunConfig, tokens: int) -> int:
    """How many optimizer steps share the batch drawn at `tokens` (RunConfig.batch_warmup): 8, 4, 2
    in the thirds of the warmup, then 1."""
    if cfg.batch_warmup <= 0:
        return 1
    third = int(tokens // (cfg.batch_warmup * cfg.budget_tokens / 3))
    return BATCH_WARMUP_SPLITS[third] if third < len(BATCH_WARMUP_SPLITS) else 1


def average_rules(cfg: RunConfig) -> list[running.AverageRule]:
    """The weight averages `cfg` asks the run to keep: one EMA per half-life, then SWA if set."""
    rules = [running.ema(h) for h in cfg.ema_half_lives]
    if cfg.swa_start is not None:
        rules.append(running.swa(int(cfg.swa_start * cfg.budget_tokens)))
    return rules


def load_init_params(cfg: RunConfig):
    """Weights of `cfg.init_from`: RUN_DIR (its newest checkpoint) or RUN_DIR/checkpoints/STEP."""
    run_dir, step = resolve_init_from(cfg)
    return open_run(run_dir).params(step)


# == update step ==============================================================================


def make_train_step(graphdef, optimizer: optimizers.Optimizer, schedule, dropout: bool):
    """One jitted update, compiled once per batch shape. `tokens_seen` is a traced scalar, and so is
    the learning rate the optimizer is built with."""

    @jax.jit
    def train_step(params, opt_state, batch: Batch, tokens_seen, key, lr_scale=1.0):
        def loss_fn(p):
            logits = forward(nnx.merge(graphdef, p), batch.inputs, key if dropout else None)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch.targets) * batch.loss_mask
            per_example = ce.sum(1) / jnp.maximum(batch.loss_mask.sum(1), 1.0)  # for loss-driven samplers
            return ce.sum() / jnp.maximum(batch.loss_mask.sum(), 1.0), per_example

        (loss, per_example), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        lr = schedule(tokens_seen) * lr_scale
        updates, new_opt_state = optimizer.make(lr).update(grads, opt_state, params)
        grad_norm = optax.global_norm(grads)
        # A non-finite loss or gradient never reaches the weights: that step's update is dropped
        # here (no host sync); the loop applies the run's `nonfinite` policy when it reads the flag.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        params = jax.tree.map(lambda p, u: keep(p + u, p), params, updates)
        return params, jax.tree.map(keep, new_opt_state, opt_state), {
            "loss": loss, "lr": lr, "grad_norm": grad_norm, "nonfinite": ~finite,
            "example_loss": jax.lax.stop_gradient(per_example)}

    return train_step


# == the loop =================================================================================


class NonFiniteLoss(Exception):
    """Some steps had a non-finite loss or gradient (their updates were dropped)."""

    def __init__(self, steps: list[int]):
        super().__init__(f"non-finite loss or gradient at step(s) {', '.join(map(str, steps))} (those updates "
                         "were dropped: the weights are the last finite ones)")


def _can_roll_back(cfg: RunConfig, prog, mgr) -> bool:
    return cfg.nonfinite == "rollback" and prog.rollbacks < cfg.max_rollbacks and mgr.latest_step() is not None


@dataclasses.dataclass
class Progress:
    """Host-side counters, saved as JSON in every checkpoint."""

    step: int = 0
    tokens: int = 0  # counted training tokens (framework.data.encoding.counted_tokens)
    answer_tokens: int = 0
    next_stop: int = 0  # index of the first stopping point not yet taken
    wall_s: float = 0.0  # training wall time, summed over resumes
    rng: list[int] = dataclasses.field(default_factory=list)  # jax.random.key_data of the run key
    stopped: str | None = None  # why a stopping rule ended the run; a stopped run is finished
    pending: list = dataclasses.field(default_factory=list)  # [(indices, losses)] a sampler has yet to observe
    rules: Any = None  # the stopping rules' state (JSON), framework.stopping.rules
    lr_scale: float = 1.0  # times the schedule: lowered by each rollback after a non-finite loss
    rollbacks: int = 0  # rollbacks so far (nonfinite="rollback")
    skipped: int = 0  # updates dropped for a non-finite loss or gradient


def train(
    cfg: RunConfig,
    *,
    resume: bool = False,
    hooks: Sequence[Hook] = (),
    sampler_fn: Callable[[Any, int, int], Sampler] | None = None,
    show_progress: bool = True,
    splits: dict[str, EncodedSplit] | None = None,
) -> list[dict[str, Any]]:
    """Train `cfg`, checkpointing at every stopping point; returns the checkpoints' metadata.

    Args:
      cfg: the run; validated here before any data, model or compilation work.
      resume: continue from the newest checkpoint in `cfg.out_dir`.
      hooks: called with an `Event` after every step and every evaluation; one may raise
        `StopTraining` to end the run (a `stopped` checkpoint records why).
      sampler_fn: `(train_split, batch_size, seed) -> Sampler`; by default the one that
        `cfg.curriculum` and `cfg.pacing` name (uniform sampling unless configured).
      show_progress: a tqdm bar in tokens, with tokens/s and ETA.
      splits: `framework.data.encoding.prepare(cfg.data)`, if the caller already built it.
    """
    # Everything that can be wrong with the input is checked before the run directory is touched.
    cfg.validate()
    mesh = sharding.make_mesh(cfg.mesh_shape)
    sharding.check_batch(mesh, cfg.batch_size)
    if cfg.batch_warmup > 0:  # its first steps take batch_size / 8 rows, which must split over the mesh too
        sharding.check_batch(mesh, cfg.batch_size // BATCH_WARMUP_SPLITS[0])
    if cfg.init_from:
        resolve_init_from(cfg)
    if cfg.branch_from:
        resolve_init_from(cfg, "branch_from")
    sampler_fn = sampler_fn or sampler_factory(cfg.curriculum, cfg.curriculum_args, cfg.pacing,
                                               cfg.pacing_args, cfg.budget_tokens)
    splits = splits or prepare(cfg.data)
    train_split, val_split = splits["train"], splits["validation"]
    if cfg.scorer:  # what the curriculum sorts by; validation and test keep the data's difficulty
        train_split = rescore(train_split, cfg.scorer, cfg.scorer_args, cfg.scorer_percentile)
    sampler = sampler_fn(train_split, cfg.batch_size, cfg.seed)
    if not resume:
        first = counted_tokens(make_batch(train_split, sampler.next(sampler.init(), 0)[0]))
        if first > cfg.budget_tokens:
            raise ConfigError("budget_tokens", f"{cfg.budget_tokens:,} is less than one batch "
                              f"({first:,} tokens at batch_size {cfg.batch_size}): nothing would train")
    _prepare_run_dir(cfg, resume, write=sharding.is_primary())
    sharding.barrier("run directory ready")
    if mesh.size > 1 and sharding.is_primary():
        print(f"training on {mesh.size} {mesh.devices.flat[0].platform} devices in {jax.process_count()} "
              f"process(es): mesh data {mesh.shape['data']} x fsdp {mesh.shape['fsdp']}", flush=True)
    points = stop_points(cfg.budget_tokens, cfg.stops, cfg.every_tokens, cfg.train_until)

    model = build_model(cfg.model, cfg.seed)
    graphdef, params = nnx.split(model, nnx.Param)
    params = sharding.place(params, mesh)  # everything on the device below is laid out on the mesh
    optimizer = optimizers.build(cfg.optim, cfg.batch_size)
    schedule = SCHEDULE_BUILDERS[cfg.optim.schedule](cfg.optim, cfg.budget_tokens)
    steps: dict[int, Callable] = {}  # rows per step -> its jitted update (Adam's b2 may depend on the rows)

    def train_step(rows: int):
        if rows not in steps:
            steps[rows] = make_train_step(graphdef, optimizers.build(cfg.optim, rows), schedule, cfg.model.dropout > 0)
        return steps[rows]

    # The weights evaluated, averaged and saved as `params`; schedule-free trains elsewhere (`train_params`).
    separate = optimizer.eval_params is not None
    evaluated = jax.jit(optimizer.eval_params) if separate else lambda opt_state, params: params
    opt_state, sampler_state = sharding.place(optimizer.init(params), mesh), sampler.init()
    rules = average_rules(cfg)
    update_averages = running.make_update(rules)
    # shapes only: init_from does not change them
    averages = {r.name: sharding.place(running.init(params), mesh) for r in rules}
    key = jax.random.key(cfg.seed)
    rule = build_stop_rule(cfg.stop_rules, cfg.stop_combine)
    prog = Progress(rng=np.asarray(jax.random.key_data(key)).tolist(), rules=rule.init() if rule else None)

    if resume and sharding.is_primary():
        for note in checkpoints.set_aside_corrupt(cfg.out_dir):
            print(f"{note}; resuming from the newest intact checkpoint instead", flush=True)
    sharding.barrier("corrupt checkpoints set aside")
    mgr = checkpoints.open_manager(cfg.out_dir, writer=True)
    metrics_path = os.path.join(cfg.out_dir, checkpoints.METRICS_FILE)
    resuming = resume and mgr.latest_step() is not None
    if cfg.init_from and not resuming:  # a resumed run's weights come from its own checkpoint
        params = sharding.place(load_init_params(cfg), mesh)
    if cfg.branch_from and not resuming:  # the source's whole state: weights, optimizer, data, counters
        src_dir, src_step = resolve_init_from(cfg, "branch_from")
        src = checkpoints.open_manager(src_dir)
        src_step = src.latest_step() if src_step is None else src_step
        params, opt_state, sampler_state, _, p = _restore_state(src, src_step, params, opt_state, sampler_state, {},
                                                                separate)
        src.close()
        prog = dataclasses.replace(prog, step=p["step"], tokens=p["tokens"], answer_tokens=p["answer_tokens"],
                                   rng=p["rng"], pending=p["pending"])
        key = jax.random.wrap_key_data(jnp.asarray(prog.rng, jnp.uint32))
        prog.next_stop = sum(q.tokens <= prog.tokens for q in points)  # stops already behind the branch
        print(f"branching from {cfg.branch_from}: step {prog.step}, {prog.tokens:,} tokens")
    if resume and not resuming:
        _truncate_metrics(metrics_path, 0)  # a crash before the first checkpoint: start over
    if resuming:
        params, opt_state, sampler_state, averages, p = _restore_state(
            mgr, mgr.latest_step(), params, opt_state, sampler_state, averages, separate)
        prog = Progress(**p)
        key = jax.random.wrap_key_data(jnp.asarray(prog.rng, jnp.uint32))
        _truncate_metrics(metrics_path, prog.step)
        if prog.stopped:
            print(f"{cfg.out_dir} was stopped at step {prog.step} ({prog.stopped}); nothing to resume")
            mgr.close()
            return checkpoints.list_checkpoints(cfg.out_dir)
        print(f"resuming {cfg.out_dir} from step {prog.step} ({prog.tokens:,} tokens)")

    log = _open_metrics(metrics_path)
    bar = tqdm(total=points[-1].tokens, initial=prog.tokens, unit="tok", unit_scale=True,
               disable=not (show_progress and sharding.is_primary()),
               desc=os.path.basename(os.path.normpath(cfg.out_dir)),
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0)
    started, window = time.perf_counter(), _Window()
    last_line: dict[str, Any] = {}  # the latest train log line: the gradient norm a rule may watch
    fired: dict[str, Any] = {}  # the evaluation at which a stopping rule fired

    def emit(event: Event) -> None:
        for hook in hooks:
            hook(event)

    def log_train_line() -> None:
        line = window.flush(prog)
        last_line.update(line)
        log.write(json.dumps({"event": "train", **line}) + "\n")
        if line["loss"] is not None:
            bar.set_postfix(loss=f"{line['loss']:.4f}", lr=f"{line['lr']:.2e}", refresh=False)
        if "nonfinite_steps" in line:
            prog.skipped += len(line["nonfinite_steps"])
            if cfg.nonfinite != "skip":
                raise NonFiniteLoss(line["nonfinite_steps"])
            bar.write(f"  non-finite loss at step(s) {line['nonfinite_steps']}: update(s) skipped")

    def checkpoint(crossed: list[StopPoint], kind: str, reason: str | None = None, restored: int | None = None,
                   weights=None) -> None:
        """Evaluate, let hooks see it (a rule may stop the run here), then save. `weights`: what to
        evaluate and save as `params` instead of the training state's (a restored best)."""
        if window.losses:  # close the log window here, so a resumed run logs the same lines
            log_train_line()
        weights = evaluated(opt_state, params) if weights is None else weights
        # Every process scores its own full replica (the same figures): evaluation stays single-device code.
        tf = evaluate.teacher_forced(graphdef, sharding.host_local(weights), val_split, cfg.eval_batch_size)
        # Label with the largest configured stop crossed (not a periodic point crossed with it);
        # the tokens fit under every crossed threshold, all listed in `fractions`.
        configured = [p.fraction for p in crossed if p.kind == "stop"]
        meta = {
            "tokens": prog.tokens,
            "fraction": max(configured) if configured else crossed[-1].fraction if crossed
            else prog.tokens / cfg.budget_tokens,
            "fractions": [p.fraction for p in crossed],
            "step": prog.step,
            "val_em": tf["strict_em"],
            "val_loss": tf["loss"],
            "wall_s": round(prog.wall_s + time.perf_counter() - started, 3),
            "answer_tokens": prog.answer_tokens,
            "kind": kind,
            "averages": list(averages),
        }
        if averages:  # how good each weight average is now: for stopping rules and for reading the run
            meta["average_val_em"] = {
                name: evaluate.teacher_forced(graphdef, sharding.host_local(running.value(a, like=weights)),
                                              val_split, cfg.eval_batch_size)["strict_em"]
                for name, a in averages.items() if float(a.weight) > 0}
        if reason:
            meta["reason"] = prog.stopped = reason
            if restored is not None:
                meta["restored_best_step"] = restored
            if fired:  # what the rule saw when it fired (the saved weights may be the restored best)
                meta["fired_evaluation"] = dict(fired)
        else:  # rules and hooks run before the save: one that fires here gets one `stopped` checkpoint
            if rule is not None:
                obs = Observation(prog.step, prog.tokens, prog.tokens / cfg.budget_tokens, tf["strict_em"],
                                  tf["loss"], last_line.get("grad_norm"), tuple(int(c) for c in tf["correct"]),
                                  max(meta.get("average_val_em", {}).values(), default=None))
                prog.rules, decision = rule.update(prog.rules, obs)
                meta["stopping"] = rule.report(prog.rules)
                if decision.stop:
                    fired.update(val_em=tf["strict_em"], val_loss=tf["loss"], **_packed(tf["correct"]),
                                 average_val_em=meta.get("average_val_em", {}))
                    raise StopTraining(decision.reason)
            emit(Event("eval", prog.step, prog.tokens, meta))
        prog.pending = [(np.asarray(i).tolist(), np.asarray(x).tolist()) for i, x in pending]
        prog_json = dataclasses.asdict(prog) | {"wall_s": meta["wall_s"]}
        # The log reaches the disk before the checkpoint can: once step S is saved, every line up to
        # S is there, so a kill at any moment leaves nothing for a resumed run to miss or repeat.
        log.write(json.dumps({"event": "eval", **meta, **_packed(tf["correct"])}) + "\n")
        log.flush()
        save_t0 = time.perf_counter()
        checkpoints.save(mgr, prog.step, params=weights, opt_state=opt_state, sampler_state=sampler_state,
                         progress=prog_json, metadata=meta, averages=_as_dicts(averages),
                         train_params=params if separate else None)
        save_s = round(time.perf_counter() - save_t0, 4)  # the blocking part: the write goes on beside training
        log.write(json.dumps({"event": "save", "step": prog.step, "tokens": prog.tokens, "save_s": save_s}) + "\n")
        bar.write(f"  {kind} {meta['fraction']:.2f}: step {prog.step}, {prog.tokens:,} tokens, "
                  f"val EM {meta['val_em']:.3f}, val loss {meta['val_loss']:.4f}")
        window.t0 = time.perf_counter()  # evaluation is not training time: keep it out of tokens/s

    # (indices, per-example losses) of steps the sampler has not observed yet; saved at checkpoints.
    pending = _pending(prog)

    try:
        while True:  # one pass, or more when a rollback re-enters the loop from an earlier checkpoint
            try:
                while prog.next_stop < len(points):
                    if sampler.observe is not None and len(pending) == 2:  # step t - 2's losses: done by now
                        done_idx, done_losses = pending.pop(0)
                        sampler_state = sampler.observe(sampler_state, done_idx, np.asarray(done_losses))
                    data_t0 = time.perf_counter()
                    idx, next_sampler_state = sampler.next(sampler_state, prog.tokens)
                    batch = make_batch(train_split, idx)
                    n_tokens = counted_tokens(batch)
                    window.data_s += time.perf_counter() - data_t0
                    # Take every stopping point this batch would cross *before* running it.
                    crossed = []
                    while prog.next_stop < len(points) and prog.tokens + n_tokens > points[prog.next_stop].tokens:
                        crossed.append(points[prog.next_stop])
                        prog.next_stop += 1
                    if crossed:
                        checkpoint(crossed, "stop" if any(p.kind == "stop" for p in crossed) else "periodic")
                    if prog.next_stop == len(points):
                        break
                    sampler_state, example_losses = next_sampler_state, []
                    # Usually one step; during a batch-size warmup, several over consecutive rows of the batch.
                    for rows in np.split(np.asarray(idx), steps_per_batch(cfg, prog.tokens)):
                        part = batch if len(rows) == len(idx) else make_batch(train_split, rows)
                        n = n_tokens if part is batch else counted_tokens(part)
                        step_key = jax.random.fold_in(key, prog.step)
                        params, opt_state, m = train_step(len(rows))(
                            params, opt_state, sharding.put_batch(part, mesh), np.float32(prog.tokens), step_key,
                            np.float32(prog.lr_scale))
                        prog.step += 1
                        prog.tokens += n
                        if averages:
                            averages = update_averages(averages, evaluated(opt_state, params), np.float32(n),
                                                       np.float32(prog.tokens))
                        prog.answer_tokens += answer_tokens(part)
                        example_losses.append(sharding.gather_rows(m["example_loss"]))
                        bar.update(n)
                        window.add(m, n, train_split.difficulty[rows],
                                   sampler.info(sampler_state, prog.tokens) if sampler.info else {})
                        if prog.step % cfg.log_every == 0:
                            log_train_line()
                        emit(Event("step", prog.step, prog.tokens, {}))
                    if sampler.observe is not None:
                        pending.append((idx, example_losses[0] if len(example_losses) == 1
                                        else jnp.concatenate(example_losses)))
                break
            except NonFiniteLoss as bad:
                if not _can_roll_back(cfg, prog, mgr):
                    raise StopTraining(str(bad)) from None
                checkpoints.seal_finished(mgr)
                scale, rollbacks = prog.lr_scale * cfg.rollback_lr_factor, prog.rollbacks + 1
                params, opt_state, sampler_state, averages, p = _restore_state(
                    mgr, mgr.latest_step(), params, opt_state, sampler_state, averages, separate)
                prog = Progress(**{**p, "lr_scale": scale, "rollbacks": rollbacks})
                key = jax.random.wrap_key_data(jnp.asarray(prog.rng, jnp.uint32))
                pending = _pending(prog)
                log.close()
                _truncate_metrics(metrics_path, prog.step)
                log = _open_metrics(metrics_path)
                window.reset()
                bar.write(f"  {bad}; rolled back to step {prog.step} ({prog.tokens:,} tokens), learning rate "
                          f"x{scale:g} (rollback {rollbacks} of {cfg.max_rollbacks})")
    except StopTraining as stop:
        bar.write(f"stopped at step {prog.step}: {stop}")
        best = rule.best_step(prog.rules) if rule is not None else None
        if best is not None and best != prog.step:  # restore-best, whichever rule (or hook) stopped the run
            checkpoints.seal_finished(mgr)
            best_weights = checkpoints.restore(mgr, best, params=params).params
            bar.write(f"  restoring the best evaluation's weights (step {best}) into the stopped checkpoint")
        restored = best if best is not None and best != prog.step else None
        checkpoint([], "stopped", reason=str(stop) or "a stopping rule fired", restored=restored,
                   weights=best_weights if restored is not None else None)
    except OSError as e:  # the metrics file could not be written: the disk is full or gone
        raise checkpoints.SaveFailed(cfg.out_dir, e) from None
    finally:
        bar.close()
        _close(mgr, log, cfg.out_dir, failing=sys.exc_info()[0] is not None)
    return checkpoints.list_checkpoints(cfg.out_dir)


def _close(mgr, log, out_dir: str, failing: bool) -> None:
    """Wait for the last save, seal it, close the files. When the run is already failing, a second
    error here (the same full disk, reported again) must not hide the first."""
    try:
        try:
            checkpoints.seal_finished(mgr)
        finally:
            try:
                log.close()
            finally:
                mgr.close()
    except (OSError, ValueError) as e:  # ConfigError (SaveFailed) is a ValueError too
        if not failing:
            raise e if isinstance(e, ConfigError) else checkpoints.SaveFailed(out_dir, e) from None


def _restore_state(mgr, step: int, params, opt_state, sampler_state, averages: dict, separate: bool):
    """(training params, opt_state, sampler_state, averages, progress dict) of checkpoint `step`,
    restored into the given targets; the averages only when there are any to restore. `separate`:
    the training weights are the `train_params` item (schedule-free), not the evaluated `params`."""
    extra = {"averages": _as_dicts(averages)} if averages else {}
    weights = {"train_params": params} if separate else {"params": params}
    r = checkpoints.restore(mgr, step, opt_state=opt_state, sampler=sampler_state, progress=None, **weights,
                            **extra)
    if averages:
        averages = {name: running.RunningAverage(**a) for name, a in r.averages.items()}
    return r.train_params if separate else r.params, r.opt_state, r.sampler, averages, r.progress


def _packed(correct) -> dict[str, Any]:
    """Per-example validation correctness as hex bits: what `recoup tune-stopping` replays paired tests on."""
    return {"val_n": len(correct), "val_correct": np.packbits(np.asarray(correct, bool)).tobytes().hex()}


def _as_dicts(averages: dict[str, running.RunningAverage]) -> dict[str, dict]:
    """Orbax stores plain dicts: `{name: {"total": tree, "weight": scalar}}`."""
    return {name: a._asdict() for name, a in averages.items()}


class _Window:
    """Metrics of the steps since the last log line (device values read once per line)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.losses, self.last, self.tokens, self.difficulty, self.sampler_info = [], None, 0, [], {}
        self.nonfinite = []  # per step: whether its update was dropped
        self.data_s = 0.0  # host time choosing and building batches (the step waits on it at most)
        self.t0 = time.perf_counter()

    def add(self, m, n_tokens: int, difficulty: np.ndarray, sampler_info: dict[str, float]) -> None:
        self.losses.append(m["loss"])
        self.nonfinite.append(m["nonfinite"])
        self.last, self.tokens = m, self.tokens + n_tokens
        self.difficulty.append(difficulty)
        self.sampler_info = sampler_info  # the latest: e.g. the curriculum's pacing fraction

    def flush(self, prog: Progress) -> dict[str, Any]:
        d = np.concatenate(self.difficulty)
        losses = np.asarray(jax.device_get(self.losses))  # waits for this window's steps: read the clock after
        bad = np.asarray(jax.device_get(self.nonfinite), bool)
        elapsed = time.perf_counter() - self.t0
        line = {
            "step": prog.step,
            "tokens": prog.tokens,
            "answer_tokens": prog.answer_tokens,
            "loss": float(np.mean(losses[~bad])) if (~bad).any() else None,
            "lr": float(self.last["lr"]),
            "grad_norm": float(self.last["grad_norm"]),
            "tokens_per_s": round(self.tokens / elapsed, 1),
            "data_time_frac": round(self.data_s / elapsed, 4),  # share of wall time spent on data
            "difficulty_mean": float(d.mean()),
            "difficulty_max": float(d.max()),
            **{k: float(v) for k, v in self.sampler_info.items()},
        }
        if bad.any():  # which steps of the window (1-based step numbers) dropped their update
            line["nonfinite_steps"] = [int(prog.step - len(bad) + 1 + i) for i in np.flatnonzero(bad)]
        self.reset()
        return line


def _pending(prog: Progress) -> list[tuple[np.ndarray, Any]]:
    """(indices, per-example losses) of steps the sampler has not observed yet, as saved in `prog`."""
    return [(np.asarray(i), np.asarray(x, np.float32)) for i, x in prog.pending]


def _open_metrics(path: str):
    """metrics.jsonl for appending; the other processes of a multi-process run write nowhere."""
    return open(path if sharding.is_primary() else os.devnull, "a")


def _truncate_metrics(path: str, step: int) -> None:
    """Drop metrics lines written after the checkpoint we resume from (they will be redone).
    Only the primary process owns the file."""
    if not sharding.is_primary() or not os.path.isfile(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    keep = []
    for i, ln in enumerate(lines):
        try:
            record = json.loads(ln)
        except ValueError:
            if i == len(lines) - 1:  # a kill in the middle of writing the last line: it will be redone
                break
            raise ConfigError("resume", f"{path} line {i + 1} is not JSON; the metrics file was "
                                        "edited or damaged, not cut short by a crash") from None
        if record.get("step", 0) <= step:
            keep.append(ln if ln.endswith("\n") else ln + "\n")
    write_atomic(path, "".join(keep))  # a kill while truncating must not lose the lines kept
