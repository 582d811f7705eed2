"""Data parallelism and FSDP on fake CPU devices, and checkpoints moved between device counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from jax.sharding import PartitionSpec

from framework.config import RunConfig
from framework.errors import ConfigError
from framework.training import event_files, sharding
from tests.conftest import event_scalars, metrics_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# float32 sums in another order (per-device partial gradients) through Adam for 25 steps; measured:
# 2.4e-7 (4-way data), 3.9e-7 (2x2 FSDP), 1.2e-7 (resumed 1 -> 4), against weights of magnitude ~1
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "tests.mesh_worker", str(tmp_path_factory.mktemp("mesh"))],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow  # in make chaos (pytest -m slow): keeps make test under CI's 10 minutes
def test_four_devices_train_what_one_device_trains(four_devices):
    assert four_devices["devices"] == 4
    diff = four_devices["diff"]
    assert diff["one"] == 0.0
    for name in ("data4", "fsdp2x2", "llama-fsdp2x2"):  # the Llama family too (harness.bench_llama:tiny_llama)
        assert diff[name] <= TOLERANCE, (name, diff)
    assert four_devices["ema_diff"] <= TOLERANCE
    assert four_devices["scale"] > 0.05  # the parameters are not all tiny: the tolerance means something


@pytest.mark.slow  # in make chaos (pytest -m slow): keeps make test under CI's 10 minutes
def test_a_run_moves_between_device_counts(four_devices):
    assert "SingleDeviceSharding" in four_devices["sharding"]  # 4 -> 1: read back on one device
    assert four_devices["diff"]["moved"] <= TOLERANCE  # 1 -> 4: resumed on four devices, same result


def test_fsdp_splits_the_largest_dimension_it_divides():
    assert sharding.spec((64, 256), 4) == PartitionSpec(None, "fsdp")
    assert sharding.spec((6, 10), 4) == PartitionSpec()  # nothing divides: replicated
    assert sharding.spec((), 2) == PartitionSpec() and sharding.spec((64, 256), 1) == PartitionSpec()


def test_bad_meshes_are_clear_errors_before_compiling():
    with pytest.raises(ConfigError, match="mesh_shape"):
        RunConfig(out_dir="x", budget_tokens=10, mesh_shape=(0, 1)).validate()
    with pytest.raises(ConfigError, match="needs 8 devices"):
        sharding.make_mesh((4, 2))
    mesh = sharding.make_mesh((-1, 1))
    sharding.check_batch(mesh, 32)


def test_recoup_train_refuses_a_mesh_this_machine_cannot_hold(tmp_path, capsys):
    from framework.app.cli import main

    args = ["train", "--task", "addition", "--preset", "tiny", "--budget-tokens", "20k", "--out", str(tmp_path / "r")]
    assert main([*args, "--mesh", "8,1"]) == 2
    assert "mesh_shape" in capsys.readouterr().err and not os.path.exists(tmp_path / "r")
    assert main([*args, "--mesh", "two"]) == 2
    assert "DATA,FSDP" in capsys.readouterr().err


@pytest.mark.slow  # in make chaos (pytest -m slow): keeps make test under CI's 10 minutes
def test_two_processes_train_what_one_process_trains(tmp_path):
    """`recoup train` in two processes on localhost (jax.distributed, one CPU device each, gloo)
    ends with the parameters one process ends with; only process 0 writes the run's files."""
    import socket

    from framework.app.cli import main
    from framework.training.runs import open_run

    flags = ["train", "--task", "addition", "--preset", "tiny", "--max-digits", "3", "--n-examples", "3000",
             "--val-size", "100", "--test-size", "100", "--batch-size", "32", "--budget-tokens", "24k",
             "--stops", "0.5", "--no-progress"]
    assert main([*flags, "--out", str(tmp_path / "one"), "--mesh", "1,1"]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-m", "framework.app.cli", *flags, "--out", str(tmp_path / "two"),
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    assert "training on 2 cpu devices in 2 process(es)" in outs[0] and "training on" not in outs[1]
    one, two = open_run(str(tmp_path / "one")), open_run(str(tmp_path / "two"))
    assert two.cfg.mesh_shape == (-1, 1)
    import jax
    import numpy as np

    a, b = one.params(), two.params()
    diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    assert diff <= TOLERANCE, diff
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x)["step"] for x in lines if '"event": "train"' in x]
    assert steps == sorted(set(steps)) and len(steps) > 2  # written once, by process 0
    assert len(event_files.event_files(str(tmp_path / "two"))) == 1  # and its TensorBoard events too
    assert event_scalars(str(tmp_path / "two")) == metrics_scalars(str(tmp_path / "two"))
