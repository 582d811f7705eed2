import jax
import numpy as np
import pytest

from framework.training import schedules

B = 1_000


def numpy_cosine(t, peak=1.0, warmup=50, end=0.0):
    if t < warmup:
        return peak * t / warmup
    p = min((t - warmup) / (B - warmup), 1.0)
    return end * peak + (peak - end * peak) * 0.5 * (1 + np.cos(np.pi * p))


def numpy_wsd(t, peak=1.0, warmup=50, decay_start=800):
    if t < warmup:
        return peak * t / warmup
    if t < decay_start:
        return peak
    return peak * max(0.0, 1 - (t - decay_start) / (B - decay_start))


def numpy_wsd_sqrt(t, peak=1.0, warmup=50, decay_start=800):
    """WSD with the 1-sqrt cooldown of Hägele et al. 2024: peak * (1 - sqrt(progress through the decay))."""
    if t < decay_start:
        return numpy_wsd(t, peak, warmup, decay_start)
    return peak * (1 - np.sqrt(min((t - decay_start) / (B - decay_start), 1.0)))


@pytest.mark.parametrize("t", [0, 10, 50, 51, 300, 799, 800, 900, 999, 1000, 1500])
@pytest.mark.parametrize(
    "make, ref",
    [
        (lambda: schedules.warmup_cosine(B, 1.0, 0.05), numpy_cosine),
        (lambda: schedules.warmup_cosine(B, 1.0, 0.05, end_frac=0.1), lambda t: numpy_cosine(t, end=0.1)),
        (lambda: schedules.warmup_stable_decay(B, 1.0, 0.05, 0.2), numpy_wsd),
        (lambda: schedules.warmup_constant(B, 1.0, 0.05), lambda t: min(t / 50, 1.0)),
        (lambda: schedules.warmup_stable_decay(B, 1.0, 0.05, 0.2, "1-sqrt"), lambda t: numpy_wsd_sqrt(t)),
        (lambda: schedules.cooldown(B, 1.0, 800, "1-sqrt"), lambda t: numpy_wsd_sqrt(max(t, 50))),
        (lambda: schedules.cooldown(B, 1.0, 800), lambda t: numpy_wsd(max(t, 50))),
    ],
)
def test_schedule_values_under_jit(make, ref, t):
    fn = jax.jit(make())
    assert float(fn(np.float32(t))) == pytest.approx(ref(t), abs=1e-5)


def test_unknown_decay_shape_lists_the_known_ones():
    with pytest.raises(ValueError, match="linear, 1-sqrt"):
        schedules.decay(1.0, 10, "cosine")
