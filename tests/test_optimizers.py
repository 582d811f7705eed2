"""The optimizer levers (framework.training.optimizers): each against a reference, and each resumed bit for bit."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from framework.checkpoints import store as checkpoints
from framework.config import PRESETS, OptimConfig
from framework.evaluation import evaluate
from framework.models.transformer import build_model
from framework.runner.build import steps_per_batch, train
from framework.training import optimizers
from framework.training.runs import open_run
from tests.conftest import assert_resumes_bit_for_bit, tiny_config


def sgd_momentum(learning_rate):
    """A user's own optimizer (--optimizer tests.test_optimizers:sgd_momentum), as optax writes them."""
    return optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(learning_rate, momentum=0.9))


def not_an_optimizer(learning_rate):
    return {"lr": learning_rate}


def _params():
    return nnx.split(build_model(PRESETS["tiny"], 0), nnx.Param)[1]


def _grads(params, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def _run_steps(opt, params, n=5, lr=1e-2):
    """`n` updates of `opt` at `lr` on fixed random gradients, as the train step applies them."""
    state = opt.init(params)
    for i in range(n):
        updates, state = opt.make(jnp.float32(lr)).update(_grads(params, i), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _close(a, b, **tol):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.allclose(x, y, **tol), a, b)))


def test_adamw_is_optax_adamw():
    o = OptimConfig(clip_norm=1e9, weight_decay=0.1)
    ours, _ = _run_steps(optimizers.build(o, 32), _params())
    mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)  # noqa: E731
    ref = optax.adamw(1e-2, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=mask)
    theirs, _ = _run_steps(optimizers.Optimizer(lambda lr: ref, None), _params())
    assert _close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_schedule_free_is_optax_schedule_free_adamw_and_evaluates_its_average():
    o = OptimConfig(optimizer="schedule-free", b1=0.9, clip_norm=1e9, weight_decay=0.0)
    opt = optimizers.build(o, 32)
    ours, state = _run_steps(opt, _params())
    ref = optax.contrib.schedule_free_adamw(1e-2, b1=0.9, b2=o.b2, weight_decay=0.0)
    theirs, ref_state = _run_steps(optimizers.Optimizer(lambda lr: ref, None), _params())
    assert _close(ours, theirs, rtol=1e-5, atol=1e-7)
    x = opt.eval_params(state, ours)
    assert _close(x, optax.contrib.schedule_free_eval_params(ref_state, theirs), rtol=1e-5, atol=1e-7)
    assert not _close(x, ours)  # the evaluated weights are not the ones the gradient was taken at


def test_muon_orthogonalizes_the_block_matrices_and_adams_the_rest():
    params = _params()
    o = OptimConfig(optimizer="muon", clip_norm=1e9, weight_decay=0.0)
    opt = optimizers.build(o, 32)
    g = _grads(params, 0)
    updates, _ = opt.make(jnp.float32(1.0)).update(g, opt.init(params), params)
    adam, _ = optax.scale_by_adam(b1=o.b1, b2=o.b2).update(g, optax.scale_by_adam(b1=o.b1, b2=o.b2).init(params))
    flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(updates)[0]}
    flat_adam = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(adam)[0]}
    for path, u in flat.items():
        if u.ndim == 2 and "embed" not in path:
            # Newton-Schulz leaves the singular values near 1, times 0.2 * sqrt(max dim) for Adam's RMS.
            s = np.linalg.svd(-np.asarray(u) / (0.2 * math.sqrt(max(u.shape))), compute_uv=False)
            assert 0.5 < s.min() and s.max() < 1.3, (path, s.min(), s.max())
        else:  # the embedding (also the tied output head) and the norms take Adam's update
            np.testing.assert_allclose(-np.asarray(u), np.asarray(flat_adam[path]), rtol=1e-6)


def test_grokfast_adds_lambda_times_the_gradient_ema():
    gf = optimizers.grokfast(alpha=0.9, lamb=2.0)
    g = [np.array([1.0, -2.0]), np.array([3.0, 0.5]), np.array([-1.0, 1.0])]
    state, ema = gf.init(jnp.zeros(2)), np.zeros(2)
    for x in g:
        out, state = jax.jit(gf.update)(jnp.asarray(x), state)
        ema = 0.9 * ema + 0.1 * x
        np.testing.assert_allclose(out, x + 2.0 * ema, rtol=1e-6)


@pytest.mark.parametrize("batch", [8, 32, 128, 512])
def test_b2_keeps_its_half_life_in_tokens(batch):
    o = OptimConfig(b2=0.98, b2_batch=128)
    b2 = optimizers.effective_b2(o, batch)
    half_life_rows = batch * math.log(0.5) / math.log(b2)  # steps to halve, times rows per step
    assert half_life_rows == pytest.approx(128 * math.log(0.5) / math.log(0.98))
    assert optimizers.effective_b2(OptimConfig(b2=0.98), batch) == 0.98  # not asked for: b2 as given


def test_batch_warmup_splits_batches_in_thirds():
    cfg = tiny_config("x", budget_tokens=90_000, batch_warmup=0.3)  # warmup over 27k tokens, thirds of 9k
    assert [steps_per_batch(cfg, t) for t in (0, 8_999, 9_000, 17_999, 18_000, 26_999, 27_000, 80_000)] == \
        [8, 8, 4, 4, 2, 2, 1, 1]
    assert steps_per_batch(tiny_config("x"), 0) == 1


def test_batch_warmup_takes_more_steps_over_the_same_batches(trained_run, tmp_path):
    plain = trained_run[1]  # tiny_config as it is
    warm = train(tiny_config(tmp_path / "warm", batch_warmup=0.5), show_progress=False)
    # the same batches, so the same tokens at every stop; more, smaller steps
    assert [c["tokens"] for c in warm] == [c["tokens"] for c in plain]
    assert warm[-1]["step"] > plain[-1]["step"]


LEVERS = {
    # schedule-free evaluates elsewhere than it trains; grokfast, b2 rescaling, an EMA and a batch warmup ride
    # along (the crash, past 0.6 of the budget, falls inside the warmup's last third)
    "schedule-free": dict(optim=OptimConfig(schedule="constant", optimizer="schedule-free", grokfast_lambda=1.0,
                                            b2_batch=128), batch_warmup=0.9, ema_half_lives=(3_000,)),
    "muon, 1-sqrt wsd": dict(optim=OptimConfig(schedule="wsd", optimizer="muon", decay_shape="1-sqrt")),
    "a user's optax optimizer": dict(optim=OptimConfig(optimizer="tests.test_optimizers:sgd_momentum")),
}


@pytest.fixture(scope="module")
def straight(request, tmp_path_factory):
    """The uninterrupted run of the lever `request.param` (read-only)."""
    cfg = tiny_config(tmp_path_factory.mktemp("straight") / "run", budget_tokens=12_000, every_tokens=3_000,
                      log_every=3, **LEVERS[request.param])
    train(cfg, show_progress=False)
    return cfg


@pytest.mark.parametrize("straight", list(LEVERS), indirect=True)
def test_a_lever_resumes_bit_for_bit(straight, tmp_path):
    assert_resumes_bit_for_bit(straight.out_dir, dataclasses.replace(straight, out_dir=str(tmp_path / "broken")))


@pytest.mark.parametrize("straight", ["schedule-free"], indirect=True)  # the lever test's run: one training fewer
def test_schedule_free_checkpoints_hold_the_evaluated_weights(straight):
    cfg = straight
    last = checkpoints.list_checkpoints(cfg.out_dir)[-1]
    run = open_run(cfg.out_dir)
    opt = optimizers.build(cfg.optim, cfg.batch_size)
    abstract = run.abstract_params
    mgr = checkpoints.open_manager(cfg.out_dir)
    r = checkpoints.restore(mgr, last["step"], params=abstract, train_params=abstract,
                            opt_state=jax.eval_shape(opt.init, abstract))
    mgr.close()
    x = jax.jit(opt.eval_params)(r.opt_state, r.train_params)  # jitted, as the trainer computes it
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, run.params(), x)))  # what every reader loads
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, r.params, r.train_params)))
    val = evaluate.teacher_forced(run.graphdef, run.params(), run.split("validation"), cfg.eval_batch_size)
    assert val["strict_em"] == last["val_em"] and val["loss"] == pytest.approx(last["val_loss"], rel=1e-6)


def test_a_cooldown_keeps_or_sets_the_decay_shape(trained_run, tmp_path):
    from framework.training.cooldown import cooldown_config

    cfg, _ = trained_run
    assert cooldown_config(cfg.out_dir, "0.5", "0.1", str(tmp_path / "a")).optim.decay_shape == "linear"
    shaped = cooldown_config(cfg.out_dir, "0.5", "0.1", str(tmp_path / "b"), shape="1-sqrt")
    assert shaped.optim.decay_shape == "1-sqrt" and shaped.optim.schedule == "cooldown"
    assert dataclasses.replace(shaped.optim, decay_shape="linear") == cooldown_config(
        cfg.out_dir, "0.5", "0.1", str(tmp_path / "c")).optim


def test_a_users_optimizer_is_clip_then_its_own_transformation():
    params = _params()
    mine, _ = _run_steps(optimizers.build(OptimConfig(optimizer="tests.test_optimizers:sgd_momentum", clip_norm=0.5),
                                          32), params)
    ref = optimizers.Optimizer(lambda lr: optax.chain(optax.clip_by_global_norm(0.5), sgd_momentum(lr)), None)
    expected, _ = _run_steps(ref, params)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, mine, expected)))


def test_a_users_optimizer_that_is_not_one_fails_before_anything_is_built(tmp_path, capsys):
    from framework.app.cli import main

    argv = ["train", "--preset", "tiny", "--budget-tokens", "4k", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main([*argv, "--optimizer", "tests.test_optimizers:not_an_optimizer"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.optimizer" in err[0] and "not an optax.GradientTransformation" in err[0]
    assert main([*argv, "--optimizer", "tests.test_optimizers:nothing_here"]) == 2
    assert "has no attribute 'nothing_here'" in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoints").exists()

