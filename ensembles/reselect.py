"""Re-choosing a cascade's rule (signal, tau) from feedback on its served answers.

`recoup serve --feedback-db` records, for every answer a cascade serves, the 1x model's answer and
its confidence under every signal, and which path answered; `POST /v1/feedback` adds a verdict on
the served answer (`correct`) or the right answer (`reference`). A row is **usable** when both
parts' correctness on it is known, since a rule sends each row to one part or the other:

- a reference gives each part's correctness wherever that part's answer is known (strict EM: the
  text equal to the reference and ended with EOS, as offline). The 1x model's answer is always
  recorded; the ensemble's is recorded when the row was escalated, and otherwise decoded
  afterwards from the recorded prompt (`recoup ensemble reselect` does, greedy rows only);
- a verdict is about the answer that was served: on a 1x answer it gives the 1x model's
  correctness, on an escalated answer the ensemble's, and it says nothing of the other part's
  answer unless that answer is the same (same text, both ended or neither), which then gets the
  same verdict. So a verdict on an escalated answer never tells whether the 1x model was right
  when the two answers differ, and such a row is not usable.

The decision. Usable rows are put in time order and split alternately into two halves. The first
half chooses (signal, tau) as the build did on validation (`cascade.choose`: the best strict EM
whose mean cost 1 + k * escalation rate fits the manifest's cap, ties to the cheaper); the second
half compares that rule with the current one on the same rows (paired). Of the rows where the two
rules' answers differ in correctness, b favour the new rule and c the old; conditional on
m = b + c, b ~ Binomial(m, p), and the gain in EM is m(2p - 1)/n. Its one-sided 95% lower bound
uses the Clopper-Pearson lower bound on p (an exact sign test: McNemar's). The rule switches only
when that bound is above 0 and the new rule's mean cost on the second half fits the cap; with fewer
than MIN_ROWS usable rows nothing is decided. A cheaper rule that is merely no worse is not a
reason to switch. Choosing on one half and testing on the other keeps the bound honest: testing
the winner of a search on the rows that chose it would favour it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ensembles.cascade import SIGNALS, cascade_cost, choose, escalated, fits
from framework.evaluation import metrics

MIN_ROWS = 200  # usable rows, both halves together: 100 to choose, 100 to confirm
ALPHA = 0.05  # the one-sided level of the bound on the EM gain


class Answer(NamedTuple):
    text: str
    ended: bool  # ended with EOS


class Row(NamedTuple):
    """One served answer with its feedback, as reselection reads it."""

    signals: dict[str, float]  # the 1x model's confidence in its answer, under every signal
    first: Answer  # the 1x model's answer (recorded whichever path answered)
    ensemble: Answer | None  # the ensemble's, where known: served (escalated) or decoded afterwards
    path: str  # "single" or "ensemble": which of the two was served
    correct: bool | None  # the verdict on the served answer ...
    reference: str | None  # ... or the right answer


class Rule(NamedTuple):
    signal: str
    tau: float  # escalate iff the signal < tau


def correctness(row: Row) -> tuple[bool | None, bool | None]:
    """(1x model right?, ensemble right?) on this row, None where the feedback does not tell."""
    if row.reference is not None:
        def right(a: Answer | None) -> bool | None:
            return None if a is None else a.ended and metrics.strict_exact_match(a.text, row.reference)
        return right(row.first), right(row.ensemble)
    served, other = (row.first, row.ensemble) if row.path == "single" else (row.ensemble, row.first)
    carried = row.correct if other is not None and other == served else None
    return (row.correct, carried) if row.path == "single" else (carried, row.correct)


def outcome(rule: Rule, signals: dict[str, np.ndarray], first_ok: np.ndarray, ensemble_ok: np.ndarray,
            k: int) -> tuple[np.ndarray, float]:
    """Each row's correctness under `rule` ([n] bool) and the rule's mean cost on the rows."""
    up = escalated(signals[rule.signal], rule.tau)
    return np.where(up, ensemble_ok, first_ok), cascade_cost(k, float(up.mean()))


def gain_bound(new_ok: np.ndarray, old_ok: np.ndarray, alpha: float = ALPHA) -> tuple[float, float, int, int]:
    """The paired EM gain of `new_ok` over `old_ok` ([n] bool, the same rows), its one-sided (1 - alpha)
    lower bound (exact, conditional on the discordant rows), and the discordant counts b (new right,
    old wrong) and c.

    >>> gain_bound(np.array([True] * 10 + [False] * 90), np.zeros(100, bool))[1] > 0
    True
    """
    from scipy.stats import beta

    b, c = int((new_ok & ~old_ok).sum()), int((old_ok & ~new_ok).sum())
    n, m = len(new_ok), b + c
    if m == 0:
        return 0.0, 0.0, 0, 0
    p_lo = float(beta.ppf(alpha, b, m - b + 1)) if b > 0 else 0.0
    return (b - c) / n, m * (2 * p_lo - 1) / n, b, c


def reselect(rows: Sequence[Row], current: Rule, k: int, max_cost: float, min_rows: int = MIN_ROWS,
             alpha: float = ALPHA) -> dict[str, Any]:
    """Whether feedback says another rule is better than `current`, and which (see the module's docstring).

    Args:
      rows: feedback rows, oldest first.
      current: the rule in force; k: the ensemble's members; max_cost: the cap on the mean cost.

    Returns:
      A report: `rows` (counts: feedback, usable, and why the rest are not), `current` and `chosen`
      (signal, tau, strict EM and mean cost on all usable rows), `confirm` (the paired comparison on
      the second half), `switch` (bool: then `chosen` is the rule to write) and `reason` (one line).
    """
    known = [correctness(r) for r in rows]
    usable = [r for r, (f, e) in zip(rows, known, strict=True) if f is not None and e is not None]
    counts = {"feedback": len(rows), "usable": len(usable),
              "first_only": sum(f is not None and e is None for f, e in known),
              "ensemble_only": sum(f is None and e is not None for f, e in known)}
    report: dict[str, Any] = {"rows": counts, "min_rows": min_rows, "alpha": alpha, "k": k, "max_cost": max_cost,
                              "current": _rule_json(current), "chosen": None, "confirm": None, "switch": False}
    if len(usable) < min_rows:
        report["reason"] = (f"{len(usable)} usable rows, fewer than the {min_rows} needed (half to choose a rule, "
                            "half to test it); the rule stays")
        return report
    signals = {name: np.array([r.signals[name] for r in usable], np.float64) for name in SIGNALS}
    first_ok = np.array([correctness(r)[0] for r in usable], bool)
    ensemble_ok = np.array([correctness(r)[1] for r in usable], bool)
    pick, test = np.arange(len(usable)) % 2 == 0, np.arange(len(usable)) % 2 == 1
    name, t = choose({s: v[pick] for s, v in signals.items()}, first_ok[pick], ensemble_ok[pick], k, max_cost)
    chosen = Rule(name, t.tau)
    for key, rule in (("current", current), ("chosen", chosen)):
        ok, cost = outcome(rule, signals, first_ok, ensemble_ok, k)
        report[key] = {**_rule_json(rule), "strict_em": float(ok.mean()), "mean_cost": cost,
                       "escalation_rate": float(escalated(signals[rule.signal], rule.tau).mean())}
    half = {s: v[test] for s, v in signals.items()}
    old_ok, old_cost = outcome(current, half, first_ok[test], ensemble_ok[test], k)
    new_ok, new_cost = outcome(chosen, half, first_ok[test], ensemble_ok[test], k)
    gain, lower, b, c = gain_bound(new_ok, old_ok, alpha)
    report["confirm"] = {"n": int(test.sum()), "current_strict_em": float(old_ok.mean()),
                         "chosen_strict_em": float(new_ok.mean()), "current_mean_cost": old_cost,
                         "chosen_mean_cost": new_cost, "gain": gain, "gain_lower_bound": lower,
                         "new_better": b, "new_worse": c}
    if chosen == current:
        report["reason"] = "the feedback chooses the rule in force"
    elif lower <= 0:
        report["reason"] = (f"not better with {1 - alpha:.0%} confidence: EM gain {gain:+.3f}, lower bound "
                            f"{lower:+.3f} on {int(test.sum())} held-out rows; the rule stays")
    elif not fits(new_cost, max_cost):
        report["reason"] = f"its mean cost on the held-out rows, {new_cost:.3f}, is over the cap {max_cost}"
    else:
        report["switch"] = True
        report["reason"] = (f"better with {1 - alpha:.0%} confidence: EM gain {gain:+.3f} (lower bound {lower:+.3f}) "
                            f"on {int(test.sum())} held-out rows, mean cost {new_cost:.3f} <= {max_cost}")
    return report


def _rule_json(rule: Rule) -> dict[str, Any]:
    return {"signal": rule.signal, "tau": rule.tau if math.isfinite(rule.tau) else str(rule.tau)}
