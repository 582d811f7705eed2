"""Weight averages: streaming means of checkpoints, and the EMA / SWA kept during training."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensembles import averaging
from framework.errors import ConfigError
from framework.training import averages


def _tree(seed: int, scale: float = 1.0):
    r = np.random.default_rng(seed)
    return {"w": jnp.asarray(scale * r.normal(size=(3, 4)), jnp.float32),
            "blocks": [{"b": jnp.asarray(r.normal(size=(4,)), jnp.float32)}]}


def _close(a, b, tol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol), a, b)


def test_average_of_identical_trees_is_the_tree():
    t = _tree(0)
    _close(averaging.average([t, t, t]), t)


def test_average_is_order_invariant_and_equals_the_in_memory_mean():
    trees = [_tree(i) for i in range(4)]
    in_memory = jax.tree.map(lambda *xs: np.mean(np.stack(xs), 0), *trees)
    for order in itertools.permutations(range(4)):
        _close(averaging.average(trees[i] for i in order), in_memory, 1e-5)  # a generator: streamed


def test_weighted_average_matches_numpy_and_normalizes_weights():
    trees, w = [_tree(i) for i in range(3)], [1.0, 2.0, 5.0]
    expected = jax.tree.map(lambda *xs: np.average(np.stack(xs), 0, weights=w), *trees)
    _close(averaging.average(trees, w), expected, 1e-5)
    _close(averaging.average(trees, [0.0, 0.0, 3.0]), trees[2])


def test_average_keeps_the_dtype_of_the_members():
    t = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _tree(0))
    out = averaging.average([t, t])
    assert jax.tree.leaves(out)[0].dtype == jnp.bfloat16


@pytest.mark.parametrize("trees, weights, match", [
    ([], None, "nothing to average"),
    ([_tree(0), _tree(1)], [1.0], "1 weights for at least 2 members"),
    ([_tree(0), _tree(1)], [1.0, 1.0, 1.0], "3 weights for 2 members"),
    ([_tree(0), _tree(1)], [1.0, -1.0], "must be finite and >= 0"),
    ([_tree(0), _tree(1)], [0.0, 0.0], "sum to zero"),
])
def test_bad_weights_and_empty_lists_are_clear_errors(trees, weights, match):
    with pytest.raises(ConfigError, match=match):
        averaging.average(trees, weights)


def test_mismatched_shapes_name_the_leaf():
    other = _tree(1)
    other["w"] = jnp.zeros((3, 5))
    with pytest.raises(ConfigError, match=r"member 1 has \['w'\] of shape \(3, 5\), the first member \(3, 4\)"):
        averaging.average([_tree(0), other])
    with pytest.raises(ConfigError, match="different parameter structure"):
        averaging.average([_tree(0), {"w": jnp.zeros((3, 4))}])


def test_ema_is_bias_corrected_and_its_half_life_is_in_tokens():
    rule = averages.ema(100)
    a, b = _tree(0), _tree(1)
    state = rule.update(averages.init(a), a, 37, 37)
    _close(averages.value(state), a)  # one update of a constant: exactly a, not pulled to zero
    # After b was seen for exactly one half-life (in two steps of 50 tokens), a and b weigh the same.
    state = rule.update(state, b, 50, 87)
    state = jax.jit(rule.update)(state, b, 50, 137)
    w_a = 0.5 * (1 - 2 ** (-37 / 100))
    w_b = 1 - 0.5
    expected = jax.tree.map(lambda x, y: (w_a * x + w_b * y) / (w_a + w_b), a, b)
    _close(averages.value(state), expected, 1e-5)


def test_swa_averages_only_from_its_start_weighted_by_tokens():
    rule = averages.swa(100)
    trees = [_tree(i) for i in range(3)]
    state = averages.init(trees[0])
    for t, n, seen in [(trees[0], 60, 60), (trees[1], 60, 120), (trees[2], 20, 140)]:
        state = rule.update(state, t, n, seen)
    expected = jax.tree.map(lambda x, y: (60 * x + 20 * y) / 80, trees[1], trees[2])
    _close(averages.value(state), expected, 1e-5)


def test_make_update_updates_every_rule_in_one_call():
    rules = [averages.ema(10), averages.swa(0)]
    t = _tree(3)
    states = {r.name: averages.init(t) for r in rules}
    states = averages.make_update(rules)(states, t, jnp.float32(5), jnp.float32(5))
    assert sorted(states) == ["ema-10", "swa-0"]
    for s in states.values():
        _close(averages.value(s), t)


def test_ema_rejects_a_non_positive_half_life():
    with pytest.raises(ConfigError, match="ema_half_lives"):
        averages.ema(0)


# == kept during training =====================================================================


def _run_with_averages(out_dir, **kw):
    from tests.conftest import tiny_config

    return tiny_config(out_dir, ema_half_lives=(1, 6_000), swa_start=0.25, every_tokens=5_000, **kw)


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory):
    """`_run_with_averages` trained without a break (read-only): its first checkpoint, the periodic one
    at 5k tokens, comes before the SWA starts at 6k."""
    from framework.runner.build import train

    cfg = _run_with_averages(tmp_path_factory.mktemp("averages") / "straight")
    train(cfg, show_progress=False)
    return cfg


def test_training_keeps_ema_and_swa_in_every_checkpoint_and_resumes_them_exactly(averaged_run, tmp_path):
    from framework.checkpoints import store as checkpoints
    from framework.training.runs import open_run
    from tests.conftest import crash_then_resume

    straight = averaged_run
    broken = _run_with_averages(tmp_path / "broken")
    crash_then_resume(broken)
    stops = checkpoints.list_checkpoints(straight.out_dir)
    assert all(c["averages"] == ["ema-1", "ema-6000", "swa-6000"] for c in stops)
    a, b = open_run(straight.out_dir), open_run(broken.out_dir)
    final = stops[-1]["step"]
    for name in ("ema-6000", "swa-6000"):
        same = jax.tree.map(np.array_equal, a.params(final, name), b.params(final, name))
        assert all(jax.tree.leaves(same)), name
    # A one-token half-life forgets everything but the last step: it is the final weights.
    _close(a.params(final, "ema-1"), a.params(final), 1e-6)
    # The slow EMA and SWA are real averages: they differ from the final weights.
    diff = jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a.params(final, "ema-6000"), a.params(final))
    assert max(jax.tree.leaves(diff)) > 1e-4


def test_reading_an_average_that_was_not_kept_or_not_started_is_a_clear_error(averaged_run, trained_run):
    from framework.checkpoints import store as checkpoints
    from framework.training.runs import open_run

    cfg, stops = trained_run
    with pytest.raises(ConfigError, match="keeps no average 'ema-5'.*--ema-half-life"):
        open_run(cfg.out_dir).params(stops[-1]["step"], "ema-5")
    late = averaged_run
    first = checkpoints.list_checkpoints(late.out_dir)[0]
    assert first["tokens"] < 6_000
    with pytest.raises(ConfigError, match="swa-6000 had not started"):
        open_run(late.out_dir).params(first["step"], "swa-6000")
