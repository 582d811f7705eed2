"""Pacing functions: table-driven against numpy formulas, under jax.jit."""

import jax
import numpy as np
import pytest

from curricula import pacing
from framework.errors import ConfigError

T = 1_000.0


def np_root(t, start=0.1, p=2.0):
    return min(1.0, (min(t / T, 1.0) * (1 - start**p) + start**p) ** (1 / p))


CASES = [
    ("constant", lambda: pacing.constant(0.3), lambda t: 0.3),
    ("constant-all", lambda: pacing.constant(), lambda t: 1.0),
    ("linear", lambda: pacing.linear(T, start=0.2), lambda t: min(1.0, 0.2 + 0.8 * t / T)),
    ("root2", lambda: pacing.root(T, start=0.1), np_root),
    ("root3", lambda: pacing.root(T, start=0.05, p=3), lambda t: np_root(t, 0.05, 3)),
    ("geometric", lambda: pacing.geometric(T, start=0.1), lambda t: min(1.0, 0.1 * 10 ** min(t / T, 1.0))),
    ("steps", lambda: pacing.steps([250, 500], [0.2, 0.6, 1.0]),
     lambda t: 0.2 if t < 250 else 0.6 if t < 500 else 1.0),
    ("join", lambda: pacing.join([pacing.linear(500, start=0.5), pacing.constant(0.4)], [500]),
     lambda t: 0.5 + 0.5 * t / 500 if t < 500 else 0.4),
    ("bind", lambda: pacing.bind(lambda t, b: t / b, int(T)), lambda t: max(min(t / T, 1.0), 1e-6)),
]


@pytest.mark.parametrize("t", [0.0, 1.0, 100.0, 249.0, 250.0, 499.0, 500.0, 750.0, 1_000.0, 5_000.0])
@pytest.mark.parametrize("name, make, ref", CASES, ids=[c[0] for c in CASES])
def test_pacing_matches_its_formula_under_jit(name, make, ref, t):
    fn = jax.jit(make())
    got = float(fn(np.float32(t)))
    assert got == pytest.approx(ref(t), rel=1e-5, abs=1e-6)
    assert 0.0 < got <= 1.0


@pytest.mark.parametrize("name, make, ref", CASES[:6], ids=[c[0] for c in CASES[:6]])
def test_pacing_is_monotone_non_decreasing_for_ramps(name, make, ref):
    ts = np.linspace(0, 2 * T, 101, dtype=np.float32)
    values = np.asarray(jax.vmap(make())(ts))
    assert (np.diff(values) >= -1e-7).all()


def test_root_is_fast_early_and_geometric_slow_early():
    quarter = np.float32(T / 4)
    lin = float(pacing.linear(T, 0.1)(quarter))
    assert float(pacing.root(T, 0.1)(quarter)) > lin > float(pacing.geometric(T, 0.1)(quarter))


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: pacing.linear(T, start=0.0), "pacing.start"),
        (lambda: pacing.linear(T, start=1.5), "pacing.start"),
        (lambda: pacing.linear(0, start=0.5), "pacing.ramp_tokens"),
        (lambda: pacing.root(T, p=0), "pacing.p"),
        (lambda: pacing.steps([100], [0.5]), "pacing.fractions"),
        (lambda: pacing.steps([200, 100], [0.2, 0.5, 1.0]), "pacing.boundaries"),
        (lambda: pacing.join([pacing.constant()], [10]), "pacing.boundaries"),
    ],
)
def test_bad_pacing_arguments_name_the_field(make, field):
    with pytest.raises(ConfigError) as err:
        make()
    assert err.value.field == field


def test_docstring_examples_hold():
    import doctest

    assert doctest.testmod(pacing).failed == 0
