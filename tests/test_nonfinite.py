"""A non-finite loss: its update is dropped, then the run stops, skips on, or rolls back."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from framework.checkpoints import store as checkpoints
from framework.runner import build as train_mod
from framework.training import sharding
from framework.training.runs import open_run
from tests.conftest import event_scalars, metrics_scalars, tiny_config


def _poison(monkeypatch, at_steps: set[int]):
    """The batch of each of these steps (1-based) reaches the device with a NaN loss mask: a NaN loss."""
    real, calls = sharding.put_batch, []

    def put_batch(batch, mesh):
        calls.append(1)
        return real(batch._replace(loss_mask=batch.loss_mask * np.nan) if len(calls) in at_steps else batch, mesh)

    monkeypatch.setattr(sharding, "put_batch", put_batch)


def _finite(run_dir):
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(open_run(run_dir).params()))


def _train_lines(run_dir):
    with open(f"{run_dir}/metrics.jsonl") as f:
        return [json.loads(x) for x in f if '"train"' in x]


def test_stop_ends_the_run_with_the_last_finite_weights(tmp_path, monkeypatch):
    _poison(monkeypatch, {11})
    cfg = tiny_config(tmp_path / "stop", nonfinite="stop")
    stops = train_mod.train(cfg, show_progress=False)
    assert stops[-1]["kind"] == "stopped" and "non-finite loss or gradient at step(s) 11" in stops[-1]["reason"]
    assert stops[-1]["fraction"] < 1.0 and _finite(cfg.out_dir)
    assert any(line.get("nonfinite_steps") == [11] for line in _train_lines(cfg.out_dir))


def test_skip_drops_the_update_and_goes_on(tmp_path, monkeypatch):
    _poison(monkeypatch, {11, 29})
    cfg = tiny_config(tmp_path / "skip", nonfinite="skip")
    stops = train_mod.train(cfg, show_progress=False)
    assert stops[-1]["fraction"] == 1.0 and _finite(cfg.out_dir)
    bad = [s for line in _train_lines(cfg.out_dir) for s in line.get("nonfinite_steps", [])]
    assert bad == [11, 29]
    mgr = checkpoints.open_manager(cfg.out_dir)
    progress = checkpoints.restore(mgr, mgr.latest_step(), progress=None).progress
    mgr.close()
    assert progress["skipped"] == 2


def test_rollback_reloads_the_newest_checkpoint_with_a_lower_learning_rate(tmp_path, monkeypatch, trained_run):
    _poison(monkeypatch, {40})  # after the 0.5 checkpoint (step ~32 of ~63)
    cfg = tiny_config(tmp_path / "rb", nonfinite="rollback", rollback_lr_factor=0.25)
    stops = train_mod.train(cfg, show_progress=False)
    assert stops[-1]["fraction"] == 1.0 and stops[-1]["kind"] != "stopped" and _finite(cfg.out_dir)
    mgr = checkpoints.open_manager(cfg.out_dir)
    progress = checkpoints.restore(mgr, mgr.latest_step(), progress=None).progress
    mgr.close()
    assert progress["rollbacks"] == 1 and progress["lr_scale"] == 0.25
    steps = [line["step"] for line in _train_lines(cfg.out_dir)]
    assert steps == sorted(set(steps)), steps  # the rolled-back window's lines were dropped, not duplicated
    assert event_scalars(cfg.out_dir) == metrics_scalars(cfg.out_dir)  # and its TensorBoard events
    # The same run without the NaN (tiny_config as it is, trained before the poison): the same steps and
    # tokens, the schedule's learning rate.
    ref, _ = trained_run
    lr = {line["step"]: line["lr"] for line in _train_lines(cfg.out_dir)}
    lr_ref = {line["step"]: line["lr"] for line in _train_lines(ref.out_dir)}
    after = [s for s in lr if s > 40 and lr_ref[s] > 0]
    assert after and all(lr[s] == pytest.approx(0.25 * lr_ref[s]) for s in after)
    assert all(lr[s] == lr_ref[s] for s in lr if s < 32)  # before the checkpoint it rolled back to


def test_rollback_gives_up_after_max_rollbacks(tmp_path, monkeypatch):
    _poison(monkeypatch, set(range(40, 400)))  # every batch from step 40 on (rollbacks replay steps)
    cfg = tiny_config(tmp_path / "rb2", nonfinite="rollback", max_rollbacks=2)
    stops = train_mod.train(cfg, show_progress=False)
    assert stops[-1]["kind"] == "stopped" and "non-finite" in stops[-1]["reason"] and _finite(cfg.out_dir)


@pytest.mark.parametrize("field,value", [("nonfinite", "explode"), ("rollback_lr_factor", 1.5),
                                         ("max_rollbacks", 0)])
def test_bad_nonfinite_settings_name_the_field(tmp_path, field, value):
    from framework.errors import ConfigError

    with pytest.raises(ConfigError, match=field):
        tiny_config(tmp_path / "x", **{field: value}).validate()
