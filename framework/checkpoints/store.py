"""Stopping-point checkpoints with Orbax: one step directory per stopping point.

Each checkpoint holds the items `params`, `opt_state`, `sampler` (the data position), `progress`
(JSON: step, tokens, RNG, which stopping points are done) and, when the run keeps any, `averages`
(the EMA / SWA running averages of the weights, `{name: {"total": tree, "weight": scalar}}`), and
`train_params` when the optimizer trains at other weights than the ones it evaluates (schedule-free:
`params` is then its averaged, evaluated point, which every reader uses), plus
custom metadata `tokens, fraction, step, val_em, val_loss, wall_s, kind, averages` that
`recoup runs show` lists.

Saving is asynchronous. Orbax writes into a temporary directory and renames it only when the
write is complete, so a crash mid-save leaves the earlier checkpoints intact and no half-written
step is ever listed; the writer removes such leftovers when it next opens the run. Every finished
step is then sealed with the sha256 of its files (`RUN/integrity/STEP.json`, see
`framework.checkpoints.integrity`) and checked against it whenever it is read. On one process the wait and
the hashing run on a background thread (hashing a 106M-parameter checkpoint took ~1 s of every
save on an H100 machine); the next save, a restore and `seal_finished` join it first. A kill
before the seal is written leaves a finished, unsealed step, which a resumed run seals.

A run with a retention policy (`framework.checkpoints.retention`, `RunConfig.keep_latest`) deletes the
checkpoints it no longer keeps once each save is sealed (`prune`): in an order that leaves the run
readable and resumable wherever a kill falls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import threading
import weakref
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from framework.checkpoints import integrity
from framework.checkpoints.integrity import CorruptCheckpoint
from framework.checkpoints.retention import KEEP_ALL, Retention, kept
from framework.errors import ConfigError, RecoupError
from framework.run_dirs import require_run_dir

ITEMS = ("params", "opt_state", "sampler", "progress", "averages", "train_params")
METRICS_FILE = "metrics.jsonl"
DELETING = "deleting"  # RUN/deleting/STEP: a checkpoint on its way out (`prune`), no longer listed


class SaveFailed(RecoupError):
    """A save could not be written (disk full, directory gone or read-only). The finished
    checkpoints are untouched: Orbax only renames a step into place once it is complete."""

    def __init__(self, run_dir: str, cause: BaseException):
        # Orbax's writer tasks that failed the same way are reported by asyncio again when they are
        # collected ("Task exception was never retrieved"), after this error: it says all of it.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        intact = finished_steps(run_dir)
        super().__init__("out", f"could not write to {run_dir}: {_reason(cause)}. The checkpoints saved "
                                f"before it are intact (steps {intact or 'none'}); free space or fix the "
                                "directory, then continue with --resume")


def _reason(e: BaseException) -> str:
    """The operating system's words for a write failure, found anywhere in the exception's chain."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return f"{seen.strerror}" + (f" ({seen.filename})" if seen.filename else "")
        seen = seen.__cause__ or seen.__context__
    text = str(e)
    code, path = re.search(r"os_error_code='(\d+)'", text), re.search(r'Failed writing: "([^"]+)"', text)
    if code:  # tensorstore's words: OUT_OF_RANGE: ... Failed writing: "PATH": ... [os_error_code='27']
        return os.strerror(int(code.group(1))) + (f" ({path.group(1)})" if path else "")
    return text.splitlines()[0] if text else type(e).__name__


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(os.path.abspath(run_dir), "checkpoints")


def step_dir(run_dir: str, step: int) -> str:
    return os.path.join(checkpoint_dir(run_dir), str(step))


def seal_path(run_dir: str, step: int) -> str:
    return os.path.join(os.path.abspath(run_dir), "integrity", f"{step}.json")


def open_manager(run_dir: str, writer: bool = False) -> ocp.CheckpointManager:
    """The run's checkpoints. Only the training process is a `writer`: it removes the temporary
    directories a killed save left behind (a reader doing so could delete a live run's save), and
    finishes a deletion a kill interrupted (`prune`)."""
    if writer and jax.process_index() == 0:
        _finish_deleting(run_dir)
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, cleanup_tmp_directories=writer)
    # Naming each item's handler lets Orbax read any item's metadata without warning about the rest.
    handlers = {name: ocp.JsonCheckpointHandler() if name == "progress" else ocp.StandardCheckpointHandler()
                for name in ITEMS}
    return ocp.CheckpointManager(checkpoint_dir(run_dir), options=options, item_handlers=handlers)


def _run_dir_of(mgr: ocp.CheckpointManager) -> str:
    return os.path.dirname(os.path.abspath(str(mgr.directory)))


def finished_steps(run_dir: str) -> list[int]:
    """Steps Orbax has finalized (renamed from their temporary names), oldest first."""
    d = checkpoint_dir(run_dir)
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


# manager -> its sealing thread and that thread's errors. Weak keys: a manager closed without a join takes
# its entry with it, so a later manager can never inherit it (as one reusing its id() could).
_sealing: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# manager -> (Retention, protected steps) of its latest save: what pruning after its seal keeps.
_retention: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# manager -> {step: custom metadata} of the steps it saved or pruning read: Orbax's `metadata(step)`
# reads every item's array metadata too (~0.1 s a step on a loaded 2-core machine), once per step is enough.
_metadata: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _seal_in_background(mgr: ocp.CheckpointManager) -> None:
    errors: list[BaseException] = []

    def work():
        try:
            _seal_now(mgr)
        except BaseException as e:  # handed to whoever joins: a failed write must not pass unseen
            errors.append(e)

    thread = threading.Thread(target=work, name="recoup-seal", daemon=True)
    _sealing[mgr] = (thread, errors)
    thread.start()


def seal_finished(mgr: ocp.CheckpointManager) -> None:
    """Wait for the save in flight (and its background sealing), then seal every finished step
    that has no seal yet. Raises SaveFailed if the save (or a seal) could not be written."""
    thread, errors = _sealing.pop(mgr, (None, []))
    if thread is not None:
        thread.join()
    if errors:
        raise errors[0]
    _seal_now(mgr)


def _seal_now(mgr: ocp.CheckpointManager) -> None:
    run_dir = _run_dir_of(mgr)
    try:
        mgr.wait_until_finished()
        if jax.process_index() != 0:  # one writer per run directory
            return
        for step in finished_steps(run_dir):
            if not os.path.isfile(seal_path(run_dir, step)):
                integrity.seal(step_dir(run_dir, step), seal_path(run_dir, step))
        if mgr in _retention:  # only once every step is sealed: no step is deleted before its successor is safe
            prune(mgr, *_retention[mgr])
    except (OSError, ValueError) as e:  # tensorstore reports a failed write as a ValueError
        raise SaveFailed(run_dir, e) from None


def verify_step(run_dir: str, step: int, items=None) -> bool:
    """Check checkpoint `step` (only `items`, when given) against its seal; False if it has none.
    Raises CorruptCheckpoint naming the file at fault."""
    return integrity.verify(step_dir(run_dir, step), seal_path(run_dir, step), items)


def set_aside_corrupt(run_dir: str) -> list[str]:
    """Before resuming: move corrupt checkpoints, newest first, to `RUN/corrupt/` until an intact
    one is found (the new newest), so training re-creates them. Returns what was done, to print."""
    notes = []
    for step in reversed(finished_steps(run_dir)):
        try:
            if not verify_step(run_dir, step):
                integrity.seal(step_dir(run_dir, step), seal_path(run_dir, step))  # finalized, never sealed
            return notes
        except CorruptCheckpoint as bad:
            dest = os.path.join(os.path.abspath(run_dir), "corrupt", f"{step}")
            while os.path.exists(dest):
                dest += "+"
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.move(step_dir(run_dir, step), dest)
            os.replace(seal_path(run_dir, step), dest + ".seal.json")
            notes.append(f"{bad}; moved it to {dest}")
    return notes


def prune(mgr: ocp.CheckpointManager, retention: Retention, protect: frozenset[int] = frozenset()) -> list[int]:
    """Delete the finished checkpoints of `mgr`'s run that `retention` does not keep; returns their steps.
    Only the writer calls it, with no save in flight (after `seal_finished`, or from the sealing thread)."""
    if retention.latest is None:
        return []
    run_dir, known = _run_dir_of(mgr), _metadata.setdefault(mgr, {})
    steps = finished_steps(run_dir)
    for step in steps:
        if step not in known:
            try:
                known[step] = {**custom_metadata(mgr, run_dir, step), "step": step}
            except (OSError, ValueError):  # unreadable metadata: no "kind", so it is kept
                known[step] = {"step": step}
    listed = [known[s] for s in steps]
    doomed = sorted({c["step"] for c in listed} - kept(listed, retention, protect))
    for step in doomed:
        _delete_step(run_dir, step)
        del known[step]
    if doomed:
        mgr.reload()  # the manager's list of steps, read again from the disk
    return doomed


def _delete_step(run_dir: str, step: int) -> None:
    """Delete checkpoint `step` and its seal so that a kill at any point leaves the run readable:
    1. rename `checkpoints/STEP` to `RUN/deleting/STEP` (atomic: no reader lists the step after it,
       and every reader and a resume see whole steps only, each with its seal);
    2. remove its seal (a seal with no step behind it is never read; `_finish_deleting` removes any
       that a kill left, before a step of that number could be saved again);
    3. remove the files. A kill during 2 or 3 leaves `RUN/deleting/STEP`, finished by the next writer."""
    trash = os.path.join(os.path.abspath(run_dir), DELETING, str(step))
    if os.path.exists(trash):  # a deletion of an earlier step of that number that failed: it goes first
        shutil.rmtree(trash)
    os.makedirs(os.path.dirname(trash), exist_ok=True)
    os.rename(step_dir(run_dir, step), trash)
    _forget(run_dir, step)
    shutil.rmtree(trash)
    with contextlib.suppress(OSError):  # RUN/deleting itself, once empty
        os.rmdir(os.path.dirname(trash))


def _forget(run_dir: str, step: int) -> None:
    """Remove the seal of a deleted step, and what this process remembers of it."""
    _checked.pop((os.path.abspath(run_dir), step), None)
    with contextlib.suppress(FileNotFoundError):
        os.remove(seal_path(run_dir, step))


def _finish_deleting(run_dir: str) -> None:
    """Complete the deletions a kill interrupted (`_delete_step`'s steps 2 and 3)."""
    trash = os.path.join(os.path.abspath(run_dir), DELETING)
    for name in sorted(os.listdir(trash)) if os.path.isdir(trash) else []:
        if name.isdigit():
            _forget(run_dir, int(name))
        shutil.rmtree(os.path.join(trash, name), ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(trash)


def disk_use(run_dir: str) -> tuple[int, dict[int, int]]:
    """Bytes of the files under the run directory, and of each finished checkpoint by step."""
    steps = {step: _bytes_under(step_dir(run_dir, step)) for step in finished_steps(run_dir)}
    return _bytes_under(run_dir), steps


def _bytes_under(root: str) -> int:
    total = 0
    for here, _, names in os.walk(root):
        for n in names:
            with contextlib.suppress(FileNotFoundError):  # a file removed while we count (a live run's save)
                total += os.lstat(os.path.join(here, n)).st_size
    return total


def save(
    mgr: ocp.CheckpointManager,
    step: int,
    *,
    params,
    opt_state,
    sampler_state,
    progress: dict[str, Any],
    metadata: dict[str, Any],
    averages: dict[str, Any] | None = None,
    train_params=None,
    retention: Retention = KEEP_ALL,
    protect: frozenset[int] = frozenset(),
) -> None:
    """Start an asynchronous save, sealed in the background; `seal_finished(mgr)` before reading it
    back. The save before it is sealed first (it has by now unless saves come faster than they write).
    Once sealed, the checkpoints `retention` no longer keeps are deleted (`protect`: steps kept anyway)."""
    seal_finished(mgr)
    _retention[mgr] = (retention, frozenset(protect))
    items = {
        "params": ocp.args.StandardSave(params),
        "opt_state": ocp.args.StandardSave(opt_state),
        "sampler": ocp.args.StandardSave(_as_arrays(sampler_state)),
        "progress": ocp.args.JsonSave(progress),
    }
    if averages:
        items["averages"] = ocp.args.StandardSave(averages)
    if train_params is not None:  # the optimizer trains at other weights than `params` (schedule-free)
        items["train_params"] = ocp.args.StandardSave(train_params)
    try:
        mgr.save(step, args=ocp.args.Composite(**items), custom_metadata=metadata)
    except (OSError, ValueError) as e:
        raise SaveFailed(_run_dir_of(mgr), e) from None
    if retention.latest is not None:  # what pruning reads, without asking Orbax again
        _metadata.setdefault(mgr, {})[step] = {**metadata, "step": step}
    if jax.process_count() == 1:  # several processes wait on each other (a barrier): keep that in step
        _seal_in_background(mgr)


def restore(mgr: ocp.CheckpointManager, step: int, **targets) -> Any:
    """Restore the named items into abstract targets, e.g. `restore(mgr, 7, params=abstract)`.

    `progress` needs no target; pass `progress=None`. The items read are checked against the
    step's seal first: a corrupt checkpoint is a CorruptCheckpoint naming the file, not garbage.
    """
    if mgr in _sealing:  # this manager's own save may still be writing
        seal_finished(mgr)
    verify_step(_run_dir_of(mgr), step, targets)
    if "sampler" in targets:
        targets["sampler"] = _as_arrays(targets["sampler"])
    args = {
        name: ocp.args.JsonRestore() if name == "progress" else ocp.args.StandardRestore(target)
        for name, target in targets.items()
    }
    return mgr.restore(step, args=ocp.args.Composite(**args))


def _as_arrays(tree):
    """Orbax stores arrays, not Python or numpy scalars: a sampler state may hold either."""
    return jax.tree.map(np.asarray, tree)


# -- reading a run directory (CLI, eval, init_from) ------------------------------------------


# step directory -> (its metadata file's inode, times and size; its custom metadata). Orbax's
# `mgr.metadata(step)` reads the tree metadata of every item to hand back a few keys; scoring a
# flagship seed listed checkpoints ~100 times and spent 290 of its 400 s there. A finished step is
# never rewritten in place (a new save of that step is a new directory, so a new file), and the
# file's stamp is checked on every read.
_custom: dict[str, tuple[tuple[int, ...], dict[str, Any]]] = {}


def custom_metadata(mgr: ocp.CheckpointManager, run_dir: str, step: int) -> dict[str, Any]:
    """The metadata saved with checkpoint `step` (kind, tokens, averages, ...), read once per file."""
    path = os.path.join(os.path.abspath(step_dir(run_dir, step)), "_CHECKPOINT_METADATA")
    try:
        st = os.stat(path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
    except OSError:  # no file (yet): let Orbax say what is wrong
        return dict(mgr.metadata(step).custom_metadata or {})
    hit = _custom.get(path)
    if hit is None or hit[0] != stamp:
        hit = _custom[path] = (stamp, dict(mgr.metadata(step).custom_metadata or {}))
    return dict(hit[1])



def list_checkpoints(run_dir: str, intact_only: bool = False) -> list[dict[str, Any]]:
    """Metadata of every complete checkpoint of a run, oldest first. `intact_only` leaves out the
    checkpoints whose weights fail their seal, saying which on stderr (once per checkpoint)."""
    require_run_dir(run_dir)
    if not os.path.isdir(checkpoint_dir(run_dir)):
        return []
    mgr = open_manager(run_dir)
    try:
        listed = []
        for s in mgr.all_steps():
            try:
                listed.append({"step": s, **custom_metadata(mgr, run_dir, s)})
            except (OSError, ValueError) as e:  # its metadata file cut short or garbled
                if not os.path.isdir(step_dir(run_dir, s)):  # or the step deleted since it was listed (`prune`)
                    continue
                bad = CorruptCheckpoint(step_dir(run_dir, s), "_CHECKPOINT_METADATA", f"is unreadable ({e})")
                if not intact_only:
                    raise bad from None
                _say_skipped(bad)
    finally:
        mgr.close()
    return [c for c in listed if _intact_weights(run_dir, c["step"])] if intact_only else listed


_checked: dict[tuple[str, int], bool] = {}  # hashing is slow on big runs; selection lists members many times


def _intact_weights(run_dir: str, step: int) -> bool:
    key = (os.path.abspath(run_dir), step)
    if key not in _checked:
        try:
            verify_step(run_dir, step, ("params", "averages"))
            _checked[key] = True
        except CorruptCheckpoint as bad:
            _say_skipped(bad)
            _checked[key] = False
    return _checked[key]


def _say_skipped(bad: CorruptCheckpoint) -> None:
    print(f"skipping a checkpoint: {bad}", file=sys.stderr, flush=True)


def resolve_step(run_dir: str, step: int | None) -> int:
    """`step`, or the newest checkpoint when None; a missing one lists the steps that exist."""
    steps = [c["step"] for c in list_checkpoints(run_dir)]
    if not steps:
        raise ConfigError("step", f"{run_dir} has no checkpoints yet")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ConfigError("step", f"no checkpoint at step {step} in {run_dir}", steps)
    return step
