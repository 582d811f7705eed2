"""Faults on purpose: a tiny training run killed and resumed at random moments, checkpoint files
damaged in every way, a disk that fills up; and what a run must look like afterwards (its weights
and metrics.jsonl equal to an uninterrupted run's, nothing half-written left).

Used by tests/test_crash.py and tests/test_integrity.py (small) and `make chaos` (experiments/chaos.py, long).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np

from framework.checkpoints import store as checkpoints
from framework.training.train import CLOCK_EVENTS, WALL_CLOCK_FIELDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny run that checkpoints often (so kills land in saves too), with dropout (so the RNG matters).
TINY = ("--task addition --max-digits 3 --n-examples 3000 --val-size 100 --test-size 100 --preset tiny "
        "--dropout 0.1 --schedule cosine --lr 3e-3 --batch-size 32 --stops 0.5,1.0 --no-progress").split()


def train_argv(out_dir: str, budget: str = "400k", every: str = "10k", resume: bool = False,
               extra: Sequence[str] = ()) -> list[str]:
    argv = [sys.executable, "-m", "framework.app.cli", "train", *TINY, "--budget-tokens", budget,
            "--every-tokens", every, "--out", out_dir, *extra]
    return argv + ["--resume"] if resume else argv


def metrics_lines(run_dir: str) -> list[dict]:
    """metrics.jsonl without what the clock decides (timings, save lines): equal across any two runs."""
    with open(os.path.join(run_dir, checkpoints.METRICS_FILE)) as f:
        records = [json.loads(ln) for ln in f if ln.strip()]
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in records
            if r.get("event") not in CLOCK_EVENTS]


def final_params(run_dir: str):
    from framework.training.runs import open_run

    return open_run(run_dir).params()


def same_params(a_dir: str, b_dir: str) -> bool:
    a, b = final_params(a_dir), final_params(b_dir)
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


def leftovers(run_dir: str) -> list[str]:
    """Anything in the checkpoint directory that is not a finished step: a half-written save."""
    d = checkpoints.checkpoint_dir(run_dir)
    return sorted(n for n in os.listdir(d) if not n.isdigit()) if os.path.isdir(d) else []


def deleting(run_dir: str) -> list[str]:
    """Checkpoints a kill left half-deleted (checkpoints.prune): in RUN/deleting/, for the next writer to finish."""
    d = os.path.join(run_dir, checkpoints.DELETING)
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def _count_lines(path: str) -> int:
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def kill_and_resume(out_dir: str, kills: int, seed: int, budget: str = "400k", every: str = "10k",
                    log=print, extra: Sequence[str] = ()) -> dict:
    """Train to the end, SIGKILLed `kills` times at random moments and resumed after each.

    A kill comes either a random 0-6 s after launch (often during start-up or a resume) or once
    1-8 more metrics lines have appeared, plus a random 0-0.3 s (mid-training, mid-save)."""
    rng = random.Random(seed)
    metrics = os.path.join(out_dir, checkpoints.METRICS_FILE)
    killed_at = []
    for i in range(kills + 1):
        resume = os.path.isfile(os.path.join(out_dir, "config.json"))
        proc = subprocess.Popen(train_argv(out_dir, budget, every, resume, extra), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if i == kills:  # the last launch runs to the end
            _, err = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"the final resume failed:\n{err.decode()[-3000:]}")
            break
        start_lines, t0 = _count_lines(metrics), time.time()
        if rng.random() < 0.3:
            deadline, wait_lines = t0 + rng.uniform(0, 6), None
        else:
            deadline, wait_lines = t0 + 300, start_lines + rng.randint(1, 8)
        while time.time() < deadline and proc.poll() is None:
            if wait_lines is not None and _count_lines(metrics) >= wait_lines:
                time.sleep(rng.uniform(0, 0.3))
                break
            time.sleep(0.02)
        if proc.poll() is not None:  # it finished (or failed) before the kill came: report, go on
            if proc.returncode != 0:
                raise RuntimeError(f"launch {i} failed:\n{proc.stderr.read().decode()[-3000:]}")
            log(f"  launch {i}: finished before its kill")
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = checkpoints.finished_steps(out_dir)
        killed_at.append({"after_s": round(time.time() - t0, 2), "checkpoints": len(done),
                          "metrics_lines": _count_lines(metrics), "half_written": leftovers(out_dir),
                          "half_deleted": deleting(out_dir)})
        log(f"  kill {len(killed_at)}: {killed_at[-1]}")
    return {"kills": len(killed_at), "killed_at": killed_at}


def check_against_straight(killed_dir: str, straight_dir: str) -> dict:
    steps = [c["step"] for c in checkpoints.list_checkpoints(killed_dir)]
    lines = metrics_lines(killed_dir)
    keys = [(r["event"], r["step"]) for r in lines]
    sealed = [checkpoints.verify_step(killed_dir, s) for s in steps]
    return {
        "bitwise_equal_params": same_params(killed_dir, straight_dir),
        "metrics_equal": lines == metrics_lines(straight_dir),
        "duplicate_lines": len(keys) - len(set(keys)),
        "checkpoints_equal": steps == [c["step"] for c in checkpoints.list_checkpoints(straight_dir)],
        "checkpoints": len(steps),
        "all_sealed_and_intact": all(sealed),
        "half_written_left": leftovers(killed_dir),
        "half_deleted_left": deleting(killed_dir),
        "seals_without_a_step": sorted(set(_sealed_steps(killed_dir)) - set(steps)),
    }


def _sealed_steps(run_dir: str) -> list[int]:
    d = os.path.join(run_dir, "integrity")
    return [int(n.removesuffix(".json")) for n in os.listdir(d) if n.removesuffix(".json").isdigit()]


# -- damaging a checkpoint's files ----------------------------------------------------------


def truncate_half(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def flip_one_bit(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))  # one bit


def append_bytes(path: str) -> None:
    with open(path, "ab") as f:
        f.write(b"\0" * 16)


DAMAGE = {"truncated to half": truncate_half, "one bit flipped": flip_one_bit, "16 bytes appended": append_bytes,
          "deleted": os.remove}


def damage_targets(step_dir: str) -> dict[str, str]:
    """One file to damage per part of a checkpoint: the largest of each item, and the step's metadata."""
    out = {"_CHECKPOINT_METADATA": os.path.join(step_dir, "_CHECKPOINT_METADATA")}
    for item in sorted(os.listdir(step_dir)):
        files = [os.path.join(h, n) for h, _, names in os.walk(os.path.join(step_dir, item)) for n in names]
        if os.path.isdir(os.path.join(step_dir, item)) and files:
            out[item] = max(files, key=os.path.getsize)
    return out


# Python run before a training entry point: from the second save on, every write past 50 kB fails
# with EFBIG, as on a full disk (ENOSPC). The first save is waited for and sealed before the limit is
# set, so it is whole whatever the machine's speed. tests/test_integrity.py and `make chaos` use it.
FILL_DISK = """
import resource, signal, sys
import framework.training.train as t
_save, calls = t.checkpoints.save, []
def save(mgr, *args, **kwargs):
    if calls:
        t.checkpoints.seal_finished(mgr)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, resource.RLIM_INFINITY))
    calls.append(1)
    return _save(mgr, *args, **kwargs)
t.checkpoints.save = save
"""
