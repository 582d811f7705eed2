"""metrics.jsonl: the window of steps each train line sums up, the file, and its truncation on resume.

A train line every `log_every` steps (RunConfig.log_every) reads the window's device values once; the
trainer (framework.training.train) writes it, and an `eval` and a `save` line at every stopping point.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np

from framework.checkpoints.integrity import read_metrics, write_atomic
from framework.training import sharding
from framework.training.state import Progress


class Window:
    """Metrics of the steps since the last log line (device values read once per line)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.losses, self.last, self.tokens, self.difficulty, self.sampler_info = [], None, 0, [], {}
        self.nonfinite = []  # per step: whether its update was dropped
        self.data_s = 0.0  # host time choosing and building batches (the step waits on it at most)
        self.t0 = time.perf_counter()

    def add(self, m, n_tokens: int, difficulty: np.ndarray | None, sampler_info: dict[str, float]) -> None:
        """One step's metrics; `difficulty`: of the examples it trained on (None: packed text, no examples)."""
        self.losses.append(m["loss"])
        self.nonfinite.append(m["nonfinite"])
        self.last, self.tokens = m, self.tokens + n_tokens
        if difficulty is not None:
            self.difficulty.append(difficulty)
        self.sampler_info = sampler_info  # the latest: e.g. the curriculum's pacing fraction

    def flush(self, prog: Progress) -> dict[str, Any]:
        d = np.concatenate(self.difficulty) if self.difficulty else None
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
            **({"difficulty_mean": float(d.mean()), "difficulty_max": float(d.max())} if d is not None else {}),
            **{k: float(v) for k, v in self.sampler_info.items()},
        }
        if bad.any():  # which steps of the window (1-based step numbers) dropped their update
            line["nonfinite_steps"] = [int(prog.step - len(bad) + 1 + i) for i in np.flatnonzero(bad)]
        self.reset()
        return line


def open_metrics(path: str):
    """metrics.jsonl for appending; the other processes of a multi-process run write nowhere."""
    return open(path if sharding.is_primary() else os.devnull, "a")


def truncate_metrics(path: str, step: int) -> None:
    """Drop metrics lines written after the checkpoint we resume from (they will be redone).
    Only the primary process owns the file."""
    if not sharding.is_primary() or not os.path.isfile(path):
        return
    keep = [ln if ln.endswith("\n") else ln + "\n" for ln, record in read_metrics(path, "resume")
            if record.get("step", 0) <= step]
    write_atomic(path, "".join(keep))  # a kill while truncating must not lose the lines kept
