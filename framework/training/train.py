"""The trainer: one loop from a run's plain objects (`Parts`) to a run directory of checkpoints.

    from framework.runner.build import train     # RunConfig -> Parts -> this loop
    train(cfg)

Everything that changes over training is one `TrainState` (params, optimizer state, averages, sampler
state, counters, RNG, stopping-rule state), saved whole at every stopping point, so `resume=True`
continues bit for bit where the run left off. The loop evaluates, asks the stopping rule and saves
when a batch would cross a stopping point's token threshold (`Session.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from framework.checkpoints import store as checkpoints
from framework.checkpoints.integrity import write_atomic
from framework.config import BATCH_WARMUP_SPLITS, RunConfig
from framework.data import identity
from framework.data.encoding import answer_tokens, counted_tokens, rows_of
from framework.errors import ConfigError, RecoupError
from framework.evaluation import evaluate
from framework.models import protocol
from framework.run_dirs import CONFIG_FILE, MODEL_DIR, load_run_config, run_model
from framework.stopping.points import StopPoint, StopTraining
from framework.stopping.rules import Observation
from framework.training import averages as running
from framework.training import event_files, sharding
from framework.training.metrics_log import Window, open_metrics, truncate_metrics
from framework.training.parts import Parts
from framework.training.progress import progress
from framework.training.state import Progress, TrainState, pending_of, restore, restore_from, save
from framework.training.step import make_train_step


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
# The RunConfig fields a resumed run may change: where it is written and how it is run or logged,
# never what it computes. Every other field, a new one included, must match the run's saved config.
RESUME_MAY_DIFFER = ("out_dir", "preset", "eval_batch_size", "log_every", "tensorboard", "mesh_shape", "nonfinite",
                     "rollback_lr_factor", "max_rollbacks", "keep_latest", "keep_best")


class NonFiniteLoss(Exception):
    """Some steps had a non-finite loss or gradient (their updates were dropped)."""

    def __init__(self, steps: list[int]):
        super().__init__(f"non-finite loss or gradient at step(s) {', '.join(map(str, steps))} (those updates "
                         "were dropped: the weights are the last finite ones)")


def train(cfg: RunConfig, parts: Parts, *, resume: bool = False, hooks: Sequence[Hook] = (),
          show_progress: bool = True, allow_changed_data: bool = False) -> list[dict[str, Any]]:
    """Train `parts` (built from `cfg` by framework.runner.build), checkpointing at every stopping
    point; returns the checkpoints' metadata.

    Args:
      cfg: the run: its directory, budget, batch size, model, seed and mesh.
      parts: the data, sampler, schedule, optimizer, stopping points, averages and rules it trains with.
      resume: continue from the newest checkpoint in `cfg.out_dir`.
      hooks: called with an `Event` after every step and every evaluation; one may raise
        `StopTraining` to end the run (a `stopped` checkpoint records why).
      show_progress: a tqdm bar in tokens, with tokens/s and ETA.
      allow_changed_data: resume, or branch from, a run whose data has changed since (framework.data.identity).
    """
    mesh = _check_input(cfg, parts, resume)  # everything that can be wrong, before the run directory is touched
    changes = _check_data(cfg, parts, resume, allow_changed_data)
    tokenizer = parts.tokenizer
    _prepare_run_dir(cfg, resume, write=sharding.is_primary(), data_identity=parts.data_identity, changes=changes,
                     tokenizer=tokenizer)
    sharding.barrier("run directory ready")
    model = protocol.build(run_model(cfg, cfg.out_dir), cfg.seed, tokenizer.vocab_size)
    graphdef, params = nnx.split(model, nnx.Param)
    params = sharding.place(params, mesh)  # everything on the device below is laid out on the mesh
    optimizer, key, rule = parts.optimizer(cfg.batch_size), jax.random.key(cfg.seed), parts.stop_rule
    state = TrainState(params, sharding.place(optimizer.init(params), mesh),
                       {r.name: sharding.place(running.init(params), mesh) for r in parts.average_rules},
                       parts.batches.init(), Progress(rng=np.asarray(jax.random.key_data(key)).tolist(),
                                                      rules=rule.init() if rule else None), key=key)
    steps: dict[int, Callable] = {}  # rows per step -> its jitted update (Adam's b2 may depend on the rows)

    def train_step(rows: int):
        if rows not in steps:
            steps[rows] = make_train_step(graphdef, parts.optimizer(rows), parts.schedule, cfg.model.dropout > 0)
        return steps[rows]

    run = Session(cfg, parts, graphdef, optimizer, mesh, hooks)
    state = run.start(state, resume)
    if state.progress.stopped:
        run.mgr.close()
        return checkpoints.list_checkpoints(cfg.out_dir)
    points, prog = parts.points, state.progress
    observe = parts.sampler.observe if parts.sampler is not None else None  # a loss-driven sampler's
    try:
        run.open_log(state, show_progress)  # metrics.jsonl and an event file: a full disk may fail here already
        while True:  # one pass, or more when a rollback re-enters the loop from an earlier checkpoint
            try:
                while prog.next_stop < len(points):
                    if observe is not None and len(state.pending) == 2:  # step t - 2's losses: done by now
                        done_idx, done_losses = state.pending.pop(0)
                        state.sampler = observe(state.sampler, done_idx, np.asarray(done_losses))
                    data_t0 = time.perf_counter()
                    batch, idx, next_sampler_state = parts.batches.draw(state.sampler, prog.tokens)
                    n_tokens = counted_tokens(batch, tokenizer.pad)
                    run.window.data_s += time.perf_counter() - data_t0
                    # Take every stopping point this batch would cross *before* running it.
                    crossed = []
                    while prog.next_stop < len(points) and prog.tokens + n_tokens > points[prog.next_stop].tokens:
                        crossed.append(points[prog.next_stop])
                        prog.next_stop += 1
                    if crossed:
                        run.checkpoint(state, crossed, "stop" if any(p.kind == "stop" for p in crossed) else "periodic")
                    if prog.next_stop == len(points):
                        break
                    state.sampler, example_losses = next_sampler_state, []
                    # Usually one step; during a batch-size warmup, several over consecutive rows of the batch.
                    for rows in np.split(np.arange(len(batch.inputs)), parts.steps_per_batch(prog.tokens)):
                        part = batch if len(rows) == len(batch.inputs) else rows_of(batch, rows)
                        n = n_tokens if part is batch else counted_tokens(part, tokenizer.pad)
                        state.params, state.opt_state, m = train_step(len(rows))(
                            state.params, state.opt_state, sharding.put_batch(part, mesh), np.float32(prog.tokens),
                            state.key, np.int32(prog.step), np.float32(prog.lr_scale))
                        prog.step += 1
                        prog.tokens += n
                        if state.averages:
                            state.averages = run.update_averages(state.averages, run.evaluated(state),
                                                                 np.float32(n), np.float32(prog.tokens))
                        prog.answer_tokens += answer_tokens(part)
                        example_losses.append(sharding.gather_rows(m["example_loss"]))
                        run.stepped(state, m, n, None if idx is None else idx[rows])
                    if observe is not None:
                        state.pending.append((idx, example_losses[0] if len(example_losses) == 1
                                              else jnp.concatenate(example_losses)))
                break
            except NonFiniteLoss as bad:
                if not (prog.rollbacks < parts.nonfinite.max_rollbacks and run.mgr.latest_step() is not None):
                    raise StopTraining(str(bad)) from None
                state = run.roll_back(state, bad)
                prog = state.progress
    except StopTraining as stop:
        run.stopped(state, stop)
    except OSError as e:  # metrics.jsonl or an event file could not be written: the disk is full or gone
        raise checkpoints.SaveFailed(cfg.out_dir, e) from None
    finally:
        run.close(failing=sys.exc_info()[0] is not None)
    return checkpoints.list_checkpoints(cfg.out_dir)


def _check_input(cfg: RunConfig, parts: Parts, resume: bool):
    """The mesh the run trains on, once the config, the mesh and the budget are known to fit."""
    cfg.validate()
    mesh = sharding.make_mesh(cfg.mesh_shape)
    sharding.check_batch(mesh, cfg.batch_size)
    if cfg.batch_warmup > 0:  # its first steps take batch_size / 8 rows, which must split over the mesh too
        sharding.check_batch(mesh, cfg.batch_size // BATCH_WARMUP_SPLITS[0])
    if not resume:
        first = counted_tokens(parts.batches.draw(parts.batches.init(), 0)[0], parts.tokenizer.pad)
        if first > cfg.budget_tokens:
            raise ConfigError("budget_tokens", f"{cfg.budget_tokens:,} is less than one batch "
                              f"({first:,} tokens at batch_size {cfg.batch_size}): nothing would train")
    return mesh


def _check_data(cfg: RunConfig, parts: Parts, resume: bool, allow: bool) -> list[str]:
    """A resumed run, or a branch, must read the data its source was trained on (the sampler's state
    holds row indices into it); what changed, when `allow` lets it go on."""
    if parts.data_identity is None:
        return []
    changes = []
    if resume and os.path.isfile(os.path.join(cfg.out_dir, CONFIG_FILE)):
        changes += identity.check(cfg.out_dir, parts.data_identity, allow)
    if parts.branch_from is not None:
        changes += identity.check(parts.branch_from[0], parts.data_identity, allow, "branch_from")
    return changes


def _prepare_run_dir(cfg: RunConfig, resume: bool, write: bool = True, data_identity: dict | None = None,
                     changes: Sequence[str] = (), tokenizer=None) -> None:
    """Check (every process) and create (the primary, `write`) the run directory, with its data record
    and a copy of a Hugging Face `tokenizer` (what eval, export and serve read the run's text with)."""
    if resume:
        saved = load_run_config(cfg.out_dir)  # raises, listing what is there, if it is not a run
        for field in dataclasses.fields(RunConfig):
            if field.name not in RESUME_MAY_DIFFER and getattr(saved, field.name) != getattr(cfg, field.name):
                raise ConfigError(field.name, f"differs from the run being resumed in {cfg.out_dir} "
                                  f"({getattr(saved, field.name)!r} there); resume with the same config")
        if write and changes:  # allowed: the record says from when on the data differed
            rec = identity.read(cfg.out_dir) or {}
            identity.write(cfg.out_dir, {**rec, "changed_on_resume": [*rec.get("changed_on_resume", []), *changes]})
        elif write and data_identity is not None and identity.read(cfg.out_dir) is None:
            identity.write(cfg.out_dir, data_identity)  # a run from before records were kept
        return
    ckpt_dir = checkpoints.checkpoint_dir(cfg.out_dir)
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise ConfigError("out", f"{cfg.out_dir} already holds checkpoints; pass --resume to "
                          "continue it, or choose another --out")
    if not write:
        return
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
        if data_identity is not None:  # before config.json: a run directory with a config has its record
            extra = {"changed_from_source": list(changes)} if changes else {}
            identity.write(cfg.out_dir, {**data_identity, **extra})
        if tokenizer is not None and tokenizer.identity["kind"] != "byte":  # before config.json too
            tokenizer.write_hf(os.path.join(cfg.out_dir, identity.TOKENIZER_DIR))
        if cfg.model.hf_config is not None:  # the architecture too: the run opens without the checkpoint
            os.makedirs(os.path.join(cfg.out_dir, MODEL_DIR), exist_ok=True)
            shutil.copyfile(os.path.join(cfg.model.hf_config, "config.json"),
                            os.path.join(cfg.out_dir, MODEL_DIR, "config.json"))
        write_atomic(os.path.join(cfg.out_dir, CONFIG_FILE), cfg.dumps())  # a kill here leaves no half config
        open(os.path.join(cfg.out_dir, checkpoints.METRICS_FILE), "w").close()
    except OSError as e:
        raise ConfigError("out", f"cannot write the run directory {cfg.out_dir}: {e.strerror or e}") from None


class Session:
    """What one call of `train` holds besides the TrainState: the checkpoint manager, the metrics
    log and its TensorBoard events, the progress bar and the evaluation and checkpointing done at
    stopping points."""

    def __init__(self, cfg: RunConfig, parts: Parts, graphdef, optimizer, mesh, hooks: Sequence[Hook]):
        self.cfg, self.parts, self.graphdef, self.mesh, self.hooks = cfg, parts, graphdef, mesh, hooks
        # The weights evaluated, averaged and saved as `params`; schedule-free trains elsewhere (`train_params`).
        self.separate = optimizer.eval_params is not None
        self._eval_params = jax.jit(optimizer.eval_params) if self.separate else None
        self.update_averages = running.make_update(parts.average_rules)
        self.metrics_path = os.path.join(cfg.out_dir, checkpoints.METRICS_FILE)
        self.mgr = self.log = self.bar = self.board = None
        self.window = Window()
        self.last_line: dict[str, Any] = {}  # the latest train log line: the gradient norm a rule may watch
        self.fired: dict[str, Any] = {}  # the evaluation at which a stopping rule fired
        if mesh.size > 1 and sharding.is_primary():
            print(f"training on {mesh.size} {mesh.devices.flat[0].platform} devices in {jax.process_count()} "
                  f"process(es): mesh data {mesh.shape['data']} x fsdp {mesh.shape['fsdp']}", flush=True)

    def evaluated(self, state: TrainState):
        return self._eval_params(state.opt_state, state.params) if self.separate else state.params

    def start(self, state: TrainState, resume: bool) -> TrainState:
        """The state training starts from: a fresh one (with `init_from`'s weights), a branch's
        source checkpoint, or the newest checkpoint of the run being resumed."""
        cfg = self.cfg
        if resume and sharding.is_primary():
            for note in checkpoints.set_aside_corrupt(cfg.out_dir):
                print(f"{note}; resuming from the newest intact checkpoint instead", flush=True)
        sharding.barrier("corrupt checkpoints set aside")
        self.mgr = checkpoints.open_manager(cfg.out_dir, writer=True)
        if resume and self.mgr.latest_step() is not None:
            state = restore(self.mgr, self.mgr.latest_step(), state, self.separate)
            _truncate_logs(cfg.out_dir, state.progress)
            if sharding.is_primary():  # what a kill before the last pruning, or a new --keep-latest, left over
                checkpoints.prune(self.mgr, **self.keeping(state.progress))
            if state.progress.stopped:
                print(f"{cfg.out_dir} was stopped at step {state.progress.step} ({state.progress.stopped}); "
                      "nothing to resume")
            else:
                print(f"resuming {cfg.out_dir} from step {state.progress.step} ({state.progress.tokens:,} tokens)")
            return state
        if resume:
            _truncate_logs(cfg.out_dir, state.progress)  # a crash before the first checkpoint: start over
        if self.parts.init_from is not None:  # a resumed run's weights come from its own checkpoint
            state = restore_from(*self.parts.init_from, state, self.separate, weights_only=True)
        if self.parts.init_params is not None:
            state = dataclasses.replace(state, params=sharding.place(self.parts.init_params(), self.mesh))
            print(f"starting from the weights of {cfg.init_from}", flush=True)
        if self.parts.branch_from is not None:  # the source's whole state: weights, optimizer, data, counters
            branch = restore_from(*self.parts.branch_from, dataclasses.replace(state, averages={}), self.separate)
            p = branch.progress
            prog = dataclasses.replace(state.progress, step=p.step, tokens=p.tokens, answer_tokens=p.answer_tokens,
                                       rng=p.rng, pending=p.pending)
            prog.next_stop = sum(q.tokens <= prog.tokens for q in self.parts.points)  # stops behind the branch
            state = dataclasses.replace(branch, averages=state.averages, progress=prog, pending=pending_of(prog),
                                        key=None)  # None: the key is the source's, from `prog.rng`
            print(f"branching from {cfg.branch_from}: step {prog.step}, {prog.tokens:,} tokens")
        return state

    def open_log(self, state: TrainState, show_progress: bool) -> None:
        cfg = self.cfg
        self.open_files(state)
        self.bar = progress(self.parts.points[-1].tokens, state.progress.tokens,
                            os.path.basename(os.path.normpath(cfg.out_dir)), show_progress and sharding.is_primary())
        self.started = time.perf_counter()
        self.window.reset()

    def open_files(self, state: TrainState) -> None:
        """metrics.jsonl, and this session's event file (the primary process's, unless turned off)."""
        self.log = open_metrics(self.metrics_path)
        if self.cfg.tensorboard and sharding.is_primary():
            self.board = event_files.EventLog(self.cfg.out_dir, state.progress.tokens)

    def close_files(self) -> None:
        try:
            if self.log is not None:
                self.log.close()
        finally:
            if self.board is not None:
                self.board.close()

    def emit(self, event: Event) -> None:
        for hook in self.hooks:
            hook(event)

    def stepped(self, state: TrainState, m, n_tokens: int, examples: np.ndarray | None) -> None:
        """After each update (of the training `examples`, None for packed text): the progress bar, the log
        window, the hooks."""
        prog, sampler = state.progress, self.parts.sampler
        self.bar.update(n_tokens)
        self.window.add(m, n_tokens, None if examples is None else self.parts.train_split.difficulty[examples],
                        sampler.info(state.sampler, prog.tokens) if sampler is not None and sampler.info else {})
        if prog.step % self.cfg.log_every == 0:
            self.log_train_line(state)
        self.emit(Event("step", prog.step, prog.tokens, {}))

    def log_train_line(self, state: TrainState) -> None:
        line = self.window.flush(state.progress)
        self.last_line.update(line)
        self.log.write(json.dumps({"event": "train", **line}) + "\n")
        if self.board is not None:
            self.board.scalars(line["tokens"], event_files.train_scalars(line))
        if line["loss"] is not None:
            self.bar.set_postfix(loss=f"{line['loss']:.4f}", lr=f"{line['lr']:.2e}", refresh=False)
        if "nonfinite_steps" in line:
            state.progress.skipped += len(line["nonfinite_steps"])
            if not self.parts.nonfinite.skip:
                raise NonFiniteLoss(line["nonfinite_steps"])
            self.bar.write(f"  non-finite loss at step(s) {line['nonfinite_steps']}: update(s) skipped")

    def checkpoint(self, state: TrainState, crossed: list[StopPoint], kind: str, reason: str | None = None,
                   restored: int | None = None, weights=None) -> None:
        """Evaluate, let the stopping rule and the hooks see it (either may stop the run here), then
        save. `weights`: what to evaluate and save as `params` instead of the state's (a restored best)."""
        cfg, prog, rule = self.cfg, state.progress, self.parts.stop_rule
        if self.window.losses:  # close the log window here, so a resumed run logs the same lines
            self.log_train_line(state)
        weights = self.evaluated(state) if weights is None else weights
        meta, tf = self._evaluate(state, crossed, kind, weights)
        if reason:
            meta["reason"] = prog.stopped = reason
            if restored is not None:
                meta["restored_best_step"] = restored
            if self.fired:  # what the rule saw when it fired (the saved weights may be the restored best)
                meta["fired_evaluation"] = dict(self.fired)
        else:  # rules and hooks run before the save: one that fires here gets one `stopped` checkpoint
            if rule is not None:
                correct = None if tf["correct"] is None else tuple(int(c) for c in tf["correct"])
                obs = Observation(prog.step, prog.tokens, prog.tokens / cfg.budget_tokens, tf["strict_em"],
                                  tf["loss"], self.last_line.get("grad_norm"), correct,
                                  max(meta.get("average_val_em", {}).values(), default=None))
                prog.rules, decision = rule.update(prog.rules, obs)
                meta["stopping"] = rule.report(prog.rules)
                if decision.stop:
                    self.fired.update(val_em=tf["strict_em"], val_loss=tf["loss"], **_packed(tf["correct"]),
                                      average_val_em=meta.get("average_val_em", {}))
                    raise StopTraining(decision.reason)
            self.emit(Event("eval", prog.step, prog.tokens, meta))
        # The log reaches the disk before the checkpoint can: once step S is saved, every line up to
        # S is there, so a kill at any moment leaves nothing for a resumed run to miss or repeat.
        self.log.write(json.dumps({"event": "eval", **meta, **_packed(tf["correct"])}) + "\n")
        self.log.flush()
        if self.board is not None:
            self.board.scalars(meta["tokens"], event_files.eval_scalars(meta))
        save_t0 = time.perf_counter()
        save(self.mgr, state, weights, meta, self.separate, **self.keeping(prog))
        save_s = round(time.perf_counter() - save_t0, 4)  # the blocking part: the write goes on beside training
        self.log.write(json.dumps({"event": "save", "step": prog.step, "tokens": prog.tokens, "save_s": save_s}) + "\n")
        em = "" if meta["val_em"] is None else f"val EM {meta['val_em']:.3f}, "  # None: a text run
        self.bar.write(f"  {kind} {meta['fraction']:.2f}: step {prog.step}, {prog.tokens:,} tokens, "
                       f"{em}val loss {meta['val_loss']:.4f}")
        self.window.t0 = time.perf_counter()  # evaluation is not training time: keep it out of tokens/s

    def keeping(self, prog: Progress) -> dict[str, Any]:
        """What stays on disk after a save: the run's retention, and the rule's best (restore-best reads it)."""
        best = self.parts.stop_rule.best_step(prog.rules) if self.parts.stop_rule is not None else None
        return {"retention": self.parts.retention, "protect": frozenset({best} - {None})}

    def _evaluate(self, state: TrainState, crossed: list[StopPoint], kind: str, weights):
        """The checkpoint's metadata and the teacher-forced validation scores of `weights`."""
        cfg, prog = self.cfg, state.progress
        tf = self.score(weights)
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
            "wall_s": round(prog.wall_s + time.perf_counter() - self.started, 3),
            "answer_tokens": prog.answer_tokens,
            "kind": kind,
            "averages": list(state.averages),
        }
        if state.averages:  # how good each weight average is now: for stopping rules and for reading the run
            scores = {name: self.score(running.value(a, like=weights))
                      for name, a in state.averages.items() if float(a.weight) > 0}
            if tf["strict_em"] is None:  # a text run: loss only
                meta["average_val_loss"] = {name: sc["loss"] for name, sc in scores.items()}
            else:
                meta["average_val_em"] = {name: sc["strict_em"] for name, sc in scores.items()}
        return meta, tf

    def score(self, weights) -> dict[str, Any]:
        # Every process scores its own full replica (the same figures): evaluation stays single-device code.
        return evaluate.validation(self.graphdef, sharding.host_local(weights), self.parts.val_split,
                                   self.cfg.eval_batch_size)

    def roll_back(self, state: TrainState, bad: NonFiniteLoss) -> TrainState:
        """Back to the newest checkpoint after a non-finite loss, with a lower learning rate."""
        checkpoints.seal_finished(self.mgr)
        policy, prog = self.parts.nonfinite, state.progress
        scale, rollbacks = prog.lr_scale * policy.lr_factor, prog.rollbacks + 1
        state = restore(self.mgr, self.mgr.latest_step(), state, self.separate)
        state.progress.lr_scale, state.progress.rollbacks = scale, rollbacks
        self.close_files()
        _truncate_logs(self.cfg.out_dir, state.progress)
        self.open_files(state)
        self.window.reset()
        self.bar.write(f"  {bad}; rolled back to step {state.progress.step} ({state.progress.tokens:,} tokens), "
                       f"learning rate x{scale:g} (rollback {rollbacks} of {policy.max_rollbacks})")
        return state

    def stopped(self, state: TrainState, stop: StopTraining) -> None:
        """A rule or a hook ended the run: one `stopped` checkpoint, holding the best evaluation's
        weights when the rule keeps them (restore-best)."""
        rule, prog = self.parts.stop_rule, state.progress
        self.bar.write(f"stopped at step {prog.step}: {stop}")
        best = rule.best_step(prog.rules) if rule is not None else None
        restored = best if best is not None and best != prog.step else None
        best_weights = None
        if restored is not None:
            checkpoints.seal_finished(self.mgr)
            best_weights = checkpoints.restore(self.mgr, best, params=state.params).params
            self.bar.write(f"  restoring the best evaluation's weights (step {best}) into the stopped checkpoint")
        self.checkpoint(state, [], "stopped", reason=str(stop) or "a stopping rule fired", restored=restored,
                        weights=best_weights)

    def close(self, failing: bool) -> None:
        """Wait for the last save, seal it, close the files. When the run is already failing, a second
        error here (the same full disk, reported again) must not hide the first."""
        if self.bar is not None:
            self.bar.close()
        try:
            try:
                checkpoints.seal_finished(self.mgr)
            finally:
                try:
                    self.close_files()
                finally:
                    self.mgr.close()
        except (OSError, ValueError, RecoupError) as e:  # seal_finished raises SaveFailed itself
            if not failing:
                raise e if isinstance(e, RecoupError) else checkpoints.SaveFailed(self.cfg.out_dir, e) from None


def _packed(correct) -> dict[str, Any]:
    """Per-example validation correctness as hex bits: what `recoup tune-stopping` replays paired tests on
    (nothing for a text run)."""
    return {} if correct is None else {"val_n": len(correct),
                                       "val_correct": np.packbits(np.asarray(correct, bool)).tobytes().hex()}


def _truncate_logs(run_dir: str, prog: Progress) -> None:
    """Drop the metrics lines and TensorBoard events written after the checkpoint we resume from (`prog`
    is its progress): they will be redone. Only the primary process owns the files."""
    truncate_metrics(os.path.join(run_dir, checkpoints.METRICS_FILE), prog.step)
    if sharding.is_primary():  # even when this session writes no events: the earlier ones must not mislead
        event_files.truncate(run_dir, prog.tokens)
