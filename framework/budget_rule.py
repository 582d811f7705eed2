"""The budget rule: stop when the next tokens are predicted to buy less EM than they cost.

The validation EMs so far are fitted with a saturating learning curve

    EM(t) = a - b * t^(-c)        (t in millions of counted tokens; a <= 1, b >= 0, c > 0)

by weighted least squares (each point weighted by its binomial standard error, so noisy EMs near
0.5 count less than confident ones near 0 or 1). The marginal gain of going on is the curve's
slope, `dEM/dt = b * c * t^(-c-1)` EM per million tokens. With `price` in EM points per million
tokens, the rule stops when `100 * slope * value < price`. What it fits is the better of the single
model and the best weight average kept so far (`Observation.average_em`): what could be shipped.
Every evaluation logs the fit, the standard error of the slope and the EM predicted at the
planned budget.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

from framework.stopping_rules import GO_ON, Decision, Observation, StopRule, _check_fraction, _check_int, _check_number


class CurveFit(NamedTuple):
    a: float
    b: float
    c: float
    cov: np.ndarray  # 3x3 covariance of (a, b, c)

    def em(self, t_millions):
        return self.a - self.b * np.power(t_millions, -self.c)

    def slope(self, t_millions: float) -> float:
        """EM per million tokens at t."""
        return self.b * self.c * t_millions ** (-self.c - 1)

    def slope_se(self, t_millions: float) -> float:
        """Standard error of the slope by the delta method."""
        t = t_millions
        grad = np.array([0.0, self.c * t ** (-self.c - 1), self.b * t ** (-self.c - 1) * (1 - self.c * math.log(t))])
        if not np.all(np.isfinite(self.cov)):
            return math.inf  # the fit could not estimate its own uncertainty
        return float(math.sqrt(max(grad @ self.cov @ grad, 0.0)))


def fit_curve(tokens, ems, n_val: int = 500) -> CurveFit | None:
    """Weighted least-squares fit of EM(t) = a - b t^-c; None if it does not converge."""
    from scipy.optimize import curve_fit

    t = np.asarray(tokens, float) / 1e6
    y = np.asarray(ems, float)
    sigma = np.sqrt(np.clip(y * (1 - y), 0.25 / n_val, None) / n_val)  # binomial SE, floored away from 0

    def f(t, a, b, c):
        return a - b * np.power(t, -c)

    p0 = (min(1.0, y.max() + 0.05), max(1e-3, (y.max() - y.min()) * t.min() ** 0.5), 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, cov = curve_fit(f, t, y, p0=p0, sigma=sigma, bounds=([0.0, 0.0, 1e-3], [1.0, np.inf, 10.0]),
                                    maxfev=5000)
    except (RuntimeError, ValueError):
        return None
    if not np.all(np.isfinite(cov)):
        cov = np.full((3, 3), np.inf)
    return CurveFit(*map(float, params), cov)


def budget_rule(price: float, value: float = 1.0, min_points: int = 4, start: float = 0.2,
                n_val: int = 500) -> StopRule:
    """Stop when `100 * value * dEM/dt` (EM points per million tokens) falls below `price`.

    Args:
      price: what a million training tokens costs, in EM points (e.g. 2.0: stop once another
        million tokens is predicted to add less than 2 points).
      value: how much an EM point is worth relative to that price (a multiplier on the gain).
      min_points: evaluations needed before fitting (a 3-parameter curve on fewer is noise).
      start: never stop before this fraction of the budget.
      n_val: validation examples behind each EM (for the weights of the fit).
    """
    _check_number("price", price, 0.0)
    _check_number("value", value, 0.0)
    _check_int("min_points", min_points, 3)
    _check_fraction("start", start)

    def init():
        return {"tokens": [], "ems": [], "fit": None}

    def update(s, obs: Observation):
        em = obs.val_em if obs.average_em is None else max(obs.val_em, obs.average_em)
        s = {"tokens": [*s["tokens"], obs.tokens], "ems": [*s["ems"], em], "fit": None}
        if len(s["tokens"]) < min_points or obs.tokens <= 0:
            return s, GO_ON
        fit = fit_curve(s["tokens"], s["ems"], n_val)
        if fit is None:
            return s, GO_ON
        t = obs.tokens / 1e6
        planned = obs.tokens / obs.fraction / 1e6 if obs.fraction > 0 else t
        gain = 100 * value * fit.slope(t)
        s["fit"] = {"a": fit.a, "b": fit.b, "c": fit.c, "gain_points_per_m": gain,
                    "gain_se": 100 * value * fit.slope_se(t), "em_at_budget": float(fit.em(planned))}
        if obs.fraction >= start and gain < price:
            return s, Decision(True, f"budget: the fitted curve gains {gain:.2f} EM points per million tokens "
                                     f"(± {s['fit']['gain_se']:.2f}) < price {price}; it predicts EM "
                                     f"{s['fit']['em_at_budget']:.3f} at the planned budget")
        return s, GO_ON

    return StopRule("budget", init, update, report=lambda s: {"budget_fit": s["fit"]} if s["fit"] else {})
