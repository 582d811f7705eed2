"""Shared fixtures: a tiny config, and one tiny run trained once per test session."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import itertools
import os

import datasets
import jax
import pytest

from framework.config import PRESETS, DataConfig, OptimConfig, RunConfig
from framework.data.registry import SPLITS

# The tests compile hundreds of small programs and run each for a moment: on the CPU, most of that compile time
# is LLVM optimizing the code XLA emits. At --xla_backend_optimization_level=0 a train step compiles in about
# 40% of the time and runs a little slower. Only where jax has no accelerator plugin (a GPU machine compiles
# for its GPU as usual); set before jax starts its backend (at collection), and inherited by the child
# processes tests start. To test the code users run (O3, XLA's default), put --xla_backend_optimization_level=3
# in XLA_FLAGS: it comes after this one and wins.
if not importlib.metadata.entry_points(group="jax_plugins"):
    os.environ["XLA_FLAGS"] = " ".join(["--xla_backend_optimization_level=0", os.environ.get("XLA_FLAGS", "")]).strip()

# Tests compare with float64 references at float32 tolerances. On a GPU, float32 matmuls default to
# TF32 (~2e-4 relative error, seen on an H100): ask for full float32 there; on the CPU this changes nothing.
jax.config.update("jax_default_matmul_precision", "highest")


def tiny_config(out_dir, **overrides) -> RunConfig:
    """A run that trains in seconds: tiny model, 3-digit addition, small batches."""
    base = RunConfig(
        out_dir=str(out_dir),
        budget_tokens=24_000,
        data=DataConfig(task="addition", max_digits=3, n_examples=3_000, val_size=100, test_size=100),
        model=PRESETS["tiny"],
        preset="tiny",
        optim=OptimConfig(schedule="cosine", peak_lr=3e-3),
        batch_size=32,
        stops=(0.5, 1.0),
        eval_batch_size=64,
        log_every=5,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A finished tiny run (checkpoints at 0.5 and 1.0) shared by read-only tests."""
    from framework.runner.build import train

    cfg = tiny_config(tmp_path_factory.mktemp("runs") / "tiny")
    stops = train(cfg, show_progress=False)
    return cfg, stops


@pytest.fixture(scope="session")
def built_cascade(trained_run, tmp_path_factory):
    """`recoup ensemble build --method cascade --max-cost 1.5` on `trained_run` (checkpoints at 0.5, 1.0):
    (config, ensemble directory, the manifest it printed). Read-only: copy it to change it."""
    import contextlib
    import io
    import json

    from framework.app.cli import main

    cfg, _ = trained_run
    out = str(tmp_path_factory.mktemp("cascade") / "c")
    printed, progress = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(progress):
        assert main(["ensemble", "build", cfg.out_dir, "--budget", "1.0", "--method", "cascade",
                     "--max-cost", "1.5", "--out", out, "--json"]) == 0
    return cfg, out, json.loads(printed.getvalue())


class Crash(Exception):
    """Stands in for a kill: raised from a hook, it ends `train` without any clean-up of ours."""


def crash_then_resume(cfg: RunConfig, after_fraction: float = 0.6) -> list[dict]:
    """Train `cfg`, crash once past `after_fraction` of the budget, resume; the checkpoints
    that existed at the crash are returned."""
    from framework.checkpoints import store as checkpoints
    from framework.runner.build import train

    def crash(event):
        if event.kind == "step" and event.tokens > after_fraction * cfg.budget_tokens:
            raise Crash()

    with pytest.raises(Crash):
        train(cfg, hooks=[crash], show_progress=False)
    before = checkpoints.list_checkpoints(cfg.out_dir)
    train(cfg, resume=True, show_progress=False)
    return before


def assert_resumes_bit_for_bit(straight_dir: str, broken: RunConfig) -> list[dict]:
    """Crash and resume `broken` (crash_then_resume), then assert it ends with the weights and the logged
    lines of the uninterrupted run in `straight_dir`; its train lines are returned."""
    import jax
    import numpy as np

    from framework.training.runs import open_run

    crash_then_resume(broken)
    a, b = open_run(straight_dir).params(), open_run(broken.out_dir).params()
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
    resumed = logged_lines(broken.out_dir)
    assert logged_lines(straight_dir) == resumed
    return [x for x in resumed if x["event"] == "train"]


def logged_lines(run_dir: str) -> list[dict]:
    """metrics.jsonl without the wall-clock fields and lines, which differ between any two runs."""
    from harness.faults import metrics_lines

    return metrics_lines(run_dir)


def event_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """The run's TensorBoard scalars as TensorBoard reads them: tag -> [(tokens, value)], every point kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from framework.training import event_files

    acc = EventAccumulator(event_files.events_dir(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def metrics_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """What `event_scalars` must be: metrics.jsonl's values at their tokens, as float32 (TensorBoard's scalar)."""
    import numpy as np

    from framework.checkpoints.integrity import read_metrics
    from framework.checkpoints.store import METRICS_FILE
    from framework.training import event_files

    out: dict[str, list[tuple[int, float]]] = {}
    for _, line in read_metrics(os.path.join(run_dir, METRICS_FILE), "metrics"):
        scalars = {"train": event_files.train_scalars, "eval": event_files.eval_scalars}.get(line["event"])
        for tag, v in (scalars(line) if scalars else {}).items():
            if v is not None:
                out.setdefault(tag, []).append((line["tokens"], float(np.float32(v))))
    return out


def fuzz(examples: int):
    """hypothesis settings: `examples` per property, or $RECOUP_FUZZ_EXAMPLES of them (make chaos)."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=int(os.environ.get("RECOUP_FUZZ_EXAMPLES", examples)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """The fuzzing tests' (tests/test_fuzz_*.py) scratch directory, an empty run directory
    (config.json, no checkpoints) and a datasets cache of their own."""
    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(tiny_config(run).dumps())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "hf-cache"))
        yield {"root": root, "run": str(run), "n": itertools.count()}


def prompts_of(splits: datasets.DatasetDict) -> dict[str, set[str]]:
    return {name: set(splits[name]["prompt"]) for name in SPLITS}


def assert_disjoint(splits: datasets.DatasetDict) -> None:
    p = prompts_of(splits)
    assert not p["train"] & p["validation"]
    assert not p["train"] & p["test"]
    assert not p["validation"] & p["test"]
