"""Running many runs for a study: training that reuses a finished run and resumes an unfinished one,
and (task, seed) pairs in processes of their own, each printing under its own label."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import multiprocessing
import os
import sys
import time
from typing import Any

from framework.config import RunConfig
from framework.run_dirs import load_run_config

# XLA's compiled programs, kept on disk for every run of a study (jax's persistent compilation cache).
# A study's runs compile the same steps again and again (a flagship seed trains ~20 runs of a few
# configs); read back, a program is the one compiled before, so results are bit for bit the same
# (a cooldown branch: identical losses and EM with and without). Measured: 16 -> 13 s a cooldown.
COMPILE_CACHE_OPTIONS = {"jax_persistent_cache_min_compile_time_secs": 0,
                         "jax_persistent_cache_min_entry_size_bytes": 0}


def share_compilations(out: str) -> str:
    """Keep compiled programs in OUT/.jax-cache for this process and the workers it spawns; returns the path."""
    path = os.path.join(os.path.abspath(out), ".jax-cache")
    os.makedirs(path, exist_ok=True)
    options = {"jax_compilation_cache_dir": path, **COMPILE_CACHE_OPTIONS}
    for name, value in options.items():
        os.environ[name.upper()] = str(value)  # what a spawned worker's jax reads when it is imported
    if "jax" in sys.modules:  # this process's jax, imported already: before its first compilation, this takes
        import jax

        for name, value in options.items():
            jax.config.update(name, value)
    return path


def same_run(saved: RunConfig, cfg: RunConfig) -> bool:
    """A saved run serves `cfg` if it is the same run that trained at least as far."""
    strip = dict(out_dir="", train_until=1.0)
    return (dataclasses.replace(saved, **strip) == dataclasses.replace(cfg, **strip)
            and saved.train_until >= cfg.train_until)


def ensure_trained(cfg: RunConfig, log=print) -> float:
    """Train `cfg` unless its directory already holds that run, finished; resume an unfinished one.
    Returns the seconds spent training here (0 when reused)."""
    from framework.checkpoints.store import list_checkpoints
    from framework.runner.build import train

    if os.path.isfile(os.path.join(cfg.out_dir, "config.json")):
        saved = load_run_config(cfg.out_dir)
        if not same_run(saved, cfg):
            raise SystemExit(f"{cfg.out_dir} holds a different run; move it away or choose another --out")
        if any(c["fraction"] >= cfg.train_until - 1e-9 for c in list_checkpoints(cfg.out_dir)):
            return 0.0
        cfg = dataclasses.replace(cfg, train_until=saved.train_until)  # resume exactly the saved run
    t = time.perf_counter()
    log(f"  training {cfg.out_dir} (to {cfg.train_until:.0%} of {cfg.budget_tokens:,} tokens)")
    train(cfg, resume=os.path.isdir(cfg.out_dir), show_progress=False)
    return time.perf_counter() - t


def ensure_branch(cfg: RunConfig, log=print) -> float:
    """Train a cooldown branch (`framework.training.cooldown.cooldown_config`) unless it is there, finished."""
    from framework.checkpoints.store import list_checkpoints
    from framework.runner.build import train

    if os.path.isfile(os.path.join(cfg.out_dir, "config.json")) and any(
            c["fraction"] >= 1.0 for c in list_checkpoints(cfg.out_dir)):
        return 0.0
    t = time.perf_counter()
    log(f"  cooldown {cfg.out_dir}")
    train(cfg, resume=os.path.isdir(cfg.out_dir), show_progress=False)
    return time.perf_counter() - t


class PrefixedLines(io.TextIOBase):
    """A text stream that writes each whole line to `out` after `prefix`: two workers share one
    terminal, and the trainer's own progress lines must say whose they are too."""

    def __init__(self, prefix: str, out):
        self._prefix, self._out, self._partial = prefix, out, ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._out.write(f"{self._prefix}{line.strip()}\n")
        self._out.flush()
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self.write("\n")
        self._out.flush()


def labelled(label: str, work, *args, **kwargs) -> Any:
    """`work(*args, **kwargs)` with every line it prints prefixed by `[label] `."""
    stream = PrefixedLines(f"[{label}] ", sys.stdout)
    with contextlib.redirect_stdout(stream):  # the worker process is reused: restore it after
        try:
            return work(*args, **kwargs)
        finally:
            stream.flush()


def in_worker(work, task: str, seed: int, *args) -> Any:
    """`work(task, seed, *args)` with every line it prints prefixed by its task and seed."""
    return labelled(f"{task} seed {seed}", work, task, seed, *args)


def spawn_pool(workers: int, tasks_per_process: int | None = None) -> concurrent.futures.ProcessPoolExecutor:
    """`workers` processes, each a fresh interpreter: jax must not be forked. `tasks_per_process`: how many
    tasks a process runs before a fresh one replaces it (None: no limit)."""
    ctx = multiprocessing.get_context("spawn")
    return concurrent.futures.ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx,
                                                  max_tasks_per_child=tasks_per_process)


def run_pairs(pairs, work, jobs: int, t0: float) -> list[Any]:
    """`work(task, seed)` for each pair, each in a process of its own, `jobs` at a time; results in
    the order of `pairs`. `work` must pickle: a module-level function or a partial of one.

    On 2 cores two processes side by side did 1.23-1.27x the work of one (XLA's own threads leave
    the cores idle part of the time), and gave bitwise the same rows as one after another. A process
    runs one pair and exits: one that ran pair after pair (2026-12-06, addition then byo) held 8.6 GB
    when the kernel killed it for memory on the 24 GB machine (compiled decodes and caches pile up)."""
    with spawn_pool(jobs, tasks_per_process=1) as pool:
        futures = {pool.submit(work, task, seed): (task, seed) for task, seed in pairs}
        for done in concurrent.futures.as_completed(futures):
            task, seed = futures[done]
            done.result()  # a failed seed stops the sweep here, with its traceback
            print(f"{task} seed {seed} done ({time.perf_counter() - t0:.0f} s so far)", flush=True)
        return [f.result() for f in futures]
