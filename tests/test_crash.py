"""SIGKILL at random moments, several times in one run: every finished checkpoint stays intact and
sealed, nothing half-written is left, and the resumed run ends bit-for-bit where an uninterrupted
one does, with the same metrics lines. `make chaos` runs the same with 10 kills on a longer run."""

import dataclasses
import os
import subprocess

import pytest

from framework.checkpoints import store as checkpoints
from framework.run_dirs import load_run_config
from framework.runner.build import train
from harness import faults
from tests.conftest import event_scalars, metrics_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("crash") / "straight")
    subprocess.run(faults.train_argv(out, budget="100k"), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return out


@pytest.mark.slow  # in make chaos (pytest -m slow): keeps make test under CI's 10 minutes
def test_repeated_sigkills_resume_to_the_uninterrupted_result(straight, tmp_path):
    killed = str(tmp_path / "killed")
    report = faults.kill_and_resume(killed, kills=2, seed=1, budget="100k", log=lambda _: None)
    assert report["kills"] >= 1
    result = faults.check_against_straight(killed, straight)
    assert result["bitwise_equal_params"]
    assert result["metrics_equal"] and result["duplicate_lines"] == 0
    assert result["checkpoints_equal"] and result["checkpoints"] == 10
    assert result["all_sealed_and_intact"] and result["half_written_left"] == []
    assert event_scalars(killed) == metrics_scalars(killed)  # one TensorBoard curve through the kills


def test_a_torn_last_metrics_line_is_dropped_on_resume(trained_run, tmp_path):
    """A kill in the middle of writing a line leaves half of it: resume drops it and redoes the line.
    Any finished run shows it: a copy of the session's tiny run, not the 100k-token `straight` (trained
    in a child process for the slow test alone)."""
    run = str(tmp_path / "torn")
    subprocess.run(["cp", "-r", trained_run[0].out_dir, run], check=True)
    last = checkpoints.list_checkpoints(run)[-1]["step"]
    metrics = os.path.join(run, checkpoints.METRICS_FILE)
    before = faults.metrics_lines(run)
    with open(metrics, "a") as f:
        f.write('{"event": "train", "step": 99')  # cut short
    train(dataclasses.replace(load_run_config(run), out_dir=run), resume=True, show_progress=False)
    assert faults.metrics_lines(run) == before and checkpoints.list_checkpoints(run)[-1]["step"] == last
