"""A run killed with SIGKILL mid-training: the checkpoints it completed stay intact and resume finishes it."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from framework import checkpoints
from framework.runs import open_run
from framework.train import train
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _kwargs():
    return dict(budget_tokens=400_000, every_tokens=10_000, stops=(1.0,), log_every=50)


def test_sigkill_never_corrupts_checkpoints_and_resume_finishes(tmp_path):
    out = tmp_path / "killed"
    code = (
        "from tests.conftest import tiny_config; from framework.train import train; "
        f"train(tiny_config({str(out)!r}, **{_kwargs()!r}), show_progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    ckpt_dir = checkpoints.checkpoint_dir(str(out))
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            done = [d for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
            if len(done) >= 4:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        else:
            raise AssertionError("the run never wrote 4 checkpoints")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    listed = checkpoints.list_checkpoints(str(out))
    assert len(listed) >= 4
    run = open_run(str(out))
    for c in listed:  # every listed checkpoint restores completely
        params = run.params(c["step"])
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))

    stops = train(tiny_config(str(out), **_kwargs()), resume=True, show_progress=False)
    assert stops[-1]["fraction"] == 1.0 and stops[-1]["tokens"] <= 400_000
    steps = [c["step"] for c in stops]
    assert steps == sorted(set(steps))  # no step saved twice, none half-written
