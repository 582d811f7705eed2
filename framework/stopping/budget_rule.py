"""The budget rule: stop when the next tokens are predicted to buy less EM than they cost.

The validation EMs so far are fitted with a learning curve by weighted least squares (each point
weighted by its binomial standard error), t in millions of counted tokens:

    power     EM(t) = a - b * t^(-c)                   a saturating power law (a <= 1, b >= 0, c > 0)
    logistic  EM(t) = a / (1 + exp(-k * (ln t - m)))   a logistic in log-tokens (a <= 1, k > 0)

The power law is the classic saturating curve; the logistic also fits the long flat start of a
skill that emerges suddenly (8-digit addition sits at EM 0 for the first 40% of the budget, where
a power law fit is nonsense and would stop the run at once). The marginal gain of going on is
the curve's slope in EM per million tokens; with `price` in EM points per million tokens the rule
stops when the gain, pushed up by `z` standard errors (delta method), is still below the price:
`100 * value * (slope + z * se) < price`. It never stops before the EM has risen to `min_em` (on a
flat start at 0 every curve fits and none predicts anything), nor while the fitted slope is still
growing (before a logistic's inflection, low gain means "not yet", not "no more"), and an
uncertain fit stops late. What it fits is the better of the single model and the best weight average kept so far
(`Observation.average_em`): what could be shipped. Every evaluation logs the fit, the gain, its
standard error and the EM predicted at the planned budget.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from framework.stopping.rules import (
    GO_ON,
    Decision,
    Observation,
    StopRule,
    _check_choice,
    _check_fraction,
    _check_int,
    _check_number,
)


class Curve(NamedTuple):
    f: Callable  # (t, *params) -> EM
    p0: Callable  # (t, y) -> initial params
    lower: tuple
    upper: tuple


def _power(t, a, b, c):
    return a - b * np.power(t, -c)


def _logistic(t, a, k, m):
    return a / (1 + np.exp(-k * (np.log(t) - m)))


def _power_start(t, y):
    return min(1.0, y.max() + 0.05), max(1e-3, (y.max() - y.min()) * t.min() ** 0.5), 0.5


CURVES = {
    "power": Curve(_power, _power_start, (0.0, 0.0, 1e-3), (1.0, np.inf, 10.0)),
    "logistic": Curve(_logistic, lambda t, y: (min(1.0, max(y.max(), 0.05) + 0.05), 4.0, float(np.log(np.median(t)))),
                      (0.0, 1e-3, -20.0), (1.0, 100.0, 20.0)),
}


class CurveFit(NamedTuple):
    curve: str
    params: tuple[float, ...]
    cov: np.ndarray  # covariance of the params

    def em(self, t_millions):
        return CURVES[self.curve].f(np.asarray(t_millions, float), *self.params)

    def slope(self, t_millions: float, params=None) -> float:
        """EM per million tokens at t (central difference in log t: exact enough, any curve)."""
        p = self.params if params is None else params
        h = 1e-4
        f = CURVES[self.curve].f
        return float((f(t_millions * (1 + h), *p) - f(t_millions * (1 - h), *p)) / (2 * h * t_millions))

    def slope_se(self, t_millions: float) -> float:
        """Standard error of the slope by the delta method (inf if the fit has no covariance)."""
        if not np.all(np.isfinite(self.cov)):
            return math.inf
        grad = []
        for i, p in enumerate(self.params):
            step = 1e-6 * max(abs(p), 1.0)
            up, down = list(self.params), list(self.params)
            up[i], down[i] = p + step, p - step
            grad.append((self.slope(t_millions, up) - self.slope(t_millions, down)) / (2 * step))
        g = np.array(grad)
        return float(math.sqrt(max(g @ self.cov @ g, 0.0)))


def fit_curve(tokens, ems, n_val: int = 500, curve: str = "logistic") -> CurveFit | None:
    """Weighted least-squares fit of a CURVES curve; None if it does not converge."""
    from scipy.optimize import curve_fit

    t = np.asarray(tokens, float) / 1e6
    y = np.asarray(ems, float)
    sigma = np.sqrt(np.clip(y * (1 - y), 1.0 / n_val, None) / n_val)  # binomial SE, floored away from 0
    c = CURVES[curve]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, cov = curve_fit(c.f, t, y, p0=c.p0(t, y), sigma=sigma, bounds=(c.lower, c.upper), maxfev=10000)
    except (RuntimeError, ValueError):
        return None
    return CurveFit(curve, tuple(map(float, params)), cov if np.all(np.isfinite(cov)) else np.full(cov.shape, np.inf))


def budget_rule(price: float, value: float = 1.0, curve: str = "logistic", z: float = 2.0, min_points: int = 4,
                start: float = 0.2, min_em: float = 0.2, n_val: int = 500) -> StopRule:
    """Stop when `100 * value * (dEM/dt + z * se)` (EM points per million tokens) falls below `price`.

    Args:
      price: what a million training tokens costs, in EM points (e.g. 2.0: stop once another
        million tokens is predicted to add less than 2 points).
      value: how much an EM point is worth relative to that price (a multiplier on the gain).
      curve: "logistic" (default) or "power", see the module docstring.
      z: standard errors added to the gain before comparing: the more, the later an uncertain
        fit stops (0: trust the point estimate).
      min_points: evaluations needed before fitting (a 3-parameter curve on fewer is noise).
      start: never stop before this fraction of the budget.
      min_em: fit only once the best EM so far has reached this.
      n_val: validation examples behind each EM (for the weights of the fit).
    """
    _check_number("price", price, 0.0)
    _check_number("value", value, 0.0)
    _check_choice("stop_rules.curve", curve, tuple(CURVES))
    _check_number("z", z, 0.0)
    _check_int("min_points", min_points, 3)
    _check_fraction("start", start)
    _check_fraction("min_em", min_em)
    _check_int("n_val", n_val, 1)

    def init():
        return {"tokens": [], "ems": [], "fit": None}

    def update(s, obs: Observation):
        em = obs.val_em if obs.average_em is None else max(obs.val_em, obs.average_em)
        s = {"tokens": [*s["tokens"], obs.tokens], "ems": [*s["ems"], em], "fit": None}
        if len(s["tokens"]) < min_points or obs.tokens <= 0 or max(s["ems"]) < min_em:
            return s, GO_ON
        fit = fit_curve(s["tokens"], s["ems"], n_val, curve)
        if fit is None:
            return s, GO_ON
        t = obs.tokens / 1e6
        planned = obs.tokens / obs.fraction / 1e6 if obs.fraction > 0 else t
        gain, se = 100 * value * fit.slope(t), 100 * value * fit.slope_se(t)
        s["fit"] = {"curve": curve, "params": list(fit.params), "gain_points_per_m": gain, "gain_se": se,
                    "em_at_budget": float(fit.em(planned))}
        past_peak = fit.slope(t * 1.05) < fit.slope(t)  # the gains are shrinking from here on
        if obs.fraction >= start and past_peak and gain + z * se < price:
            return s, Decision(True, f"budget: the fitted {curve} curve gains {gain:.2f} ± {se:.2f} EM points per "
                                     f"million tokens < price {price}; it predicts EM {s['fit']['em_at_budget']:.3f} "
                                     "at the planned budget")
        return s, GO_ON

    return StopRule("budget", init, update, report=lambda s: {"budget_fit": s["fit"]} if s["fit"] else {})
