"""Choosing a weight average from parameter trees you hold: the checkpoints of your own training
loop, each with the training tokens it cost, scored by a function of yours (validation EM, accuracy,
minus a loss: higher is better). recoup's run directories are one source of such trees
(`ensembles.select` reads them); nothing here needs one, nor recoup's model.

    snapshots = [Snapshot(params, tokens) for each checkpoint your loop kept]
    choice = select(snapshots, score=validation_accuracy, budget_tokens=60_000)
    choice.params   # one model (a weight average costs one forward pass), choice.method, choice.score

Candidates, all under the token budget: each snapshot alone ("single"), the uniform average of the
k latest ("latest-k", LAWA), and a greedy soup (Wortsman et al. 2022: from the best snapshot down,
keep each one whose addition does not lower the score). The best score wins; ties go to fewer
training tokens, then fewer members. Score on a validation split, never on the test split you
report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from ensembles.averaging import average
from framework.errors import ConfigError

Params = Any  # a pytree of arrays
T = TypeVar("T")
METHODS = ("single", "latest-k", "soup")


@dataclasses.dataclass(frozen=True, eq=False)  # compared by identity: parameter trees have no ==
class Snapshot:
    params: Params  # the weights
    tokens: int  # training tokens spent to reach them (counted as you count them)
    label: str = ""  # for messages, e.g. "step 1200"


class Choice(NamedTuple):
    method: str  # "single", "latest-k" or "soup"
    members: tuple[Snapshot, ...]  # averaged uniformly
    params: Params  # their average: the weights to ship
    score: float

    @property
    def tokens(self) -> int:
        """Training tokens the choice needed: its latest member's (the snapshots are one run)."""
        return max(m.tokens for m in self.members)


def greedy_soup(ranked: Sequence[T], score: Callable[[tuple[T, ...]], float]) -> tuple[tuple[T, ...], float]:
    """Wortsman et al.'s greedy soup over any members, best first: keep each member whose addition to
    the soup does not lower `score` (the score of the members' uniform average)."""
    soup = (ranked[0],)
    best = score(soup)
    for m in ranked[1:]:
        s = score((*soup, m))
        if s >= best:
            soup, best = (*soup, m), s
    return soup, best


def select(snapshots: Sequence[Snapshot], score: Callable[[Params], float], budget_tokens: int | None = None,
           methods: Sequence[str] = METHODS, log: Callable[[str], None] | None = None) -> Choice:
    """The best uniform weight average of `snapshots` under `budget_tokens` (None: all of them).

    Args:
      snapshots: checkpoints of one training run, each with the tokens it cost.
      score: params -> a number, higher is better (e.g. validation accuracy).
      budget_tokens: only snapshots with tokens <= this are used.
      methods: candidate families, a subset of METHODS.
      log: receives one line per candidate scored.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError("methods", f"unknown methods {unknown}" if unknown else "give at least one", METHODS)
    if any(not isinstance(s, Snapshot) for s in snapshots):
        raise ConfigError("snapshots", "give Snapshot(params, tokens) values")
    under = sorted((s for s in snapshots if budget_tokens is None or s.tokens <= budget_tokens),
                   key=lambda s: s.tokens)
    if not under:
        raise ConfigError("budget_tokens", f"no snapshot has at most {budget_tokens:,} tokens",
                          sorted(s.tokens for s in snapshots) or ["no snapshots"])
    averages: dict[tuple[int, ...], tuple[Params, float]] = {}  # members -> (their average, its score)
    choices: dict[tuple[str, tuple[int, ...]], Choice] = {}

    def scored_as(method: str, members: tuple[Snapshot, ...]) -> float:
        key = tuple(sorted(id(m) for m in members))
        if key not in averages:
            params = members[0].params if len(members) == 1 else average(m.params for m in members)
            averages[key] = params, float(score(params))
            if log:
                labels = ", ".join(m.label or f"{m.tokens:,} tokens" for m in members)
                log(f"  {method}[{labels}]: {averages[key][1]:.4f}")
        choices.setdefault((method, key), Choice(method, members, *averages[key]))
        return averages[key][1]

    singles = {id(s): scored_as("single", (s,)) for s in under} if "single" in methods or "soup" in methods else {}
    if "latest-k" in methods:
        for k in range(2, len(under) + 1):
            scored_as("latest-k", tuple(under[-k:]))
    if "soup" in methods:
        ranked = sorted(under, key=lambda s: -singles[id(s)])
        greedy_soup(ranked, lambda members: scored_as("soup", members))
    allowed = [c for c in choices.values() if c.method in methods]
    return min(allowed, key=lambda c: (-c.score, c.tokens, len(c.members)))
