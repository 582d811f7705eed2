"""Stopping points: where a run evaluates and checkpoints, in counted training tokens.

A stopping point at fraction f of budget B is taken at the last step whose tokens fit under f*B:
before running a batch that would cross the threshold, the trainer evaluates and checkpoints. So a
checkpoint labelled f never used more than f*B tokens, and selecting checkpoints "within a token
budget" (the ensembles issue) needs no rounding.

Stopping *rules* (the controller issue) end a run early by raising `StopTraining` from a hook; the
trainer catches it in one place and saves a `stopped` checkpoint with the reason.
"""

from __future__ import annotations

from typing import NamedTuple


class StopPoint(NamedTuple):
    tokens: int  # threshold in counted tokens
    fraction: float  # tokens / budget
    kind: str  # "stop" (a configured fraction) or "periodic"


class StopTraining(Exception):  # noqa: N818  (the MaxText name; it is a signal, not an error)
    """Raised by a hook to end the run now; the message is recorded as the reason."""


def stop_points(budget: int, fractions, every_tokens: int | None = None, until: float = 1.0) -> list[StopPoint]:
    """All stopping points of a run, sorted by tokens; `until` (1.0: the budget) is always the last.

    >>> [p.tokens for p in stop_points(1000, (0.5,), every_tokens=400)]
    [400, 500, 800, 1000]
    >>> [(p.tokens, p.kind) for p in stop_points(1000, (0.5, 0.75), every_tokens=400, until=0.62)]
    [(400, 'periodic'), (500, 'stop'), (620, 'stop')]
    """
    end = round(until * budget)
    points = {round(f * budget): StopPoint(round(f * budget), float(f), "stop") for f in fractions}
    points[end] = StopPoint(end, float(until), "stop")
    if every_tokens:
        for t in range(every_tokens, end, every_tokens):
            points.setdefault(t, StopPoint(t, t / budget, "periodic"))
    return [points[t] for t in sorted(points) if t <= end]
