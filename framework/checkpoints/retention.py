"""Which checkpoints a run keeps: a pure function of the checkpoints' metadata.

    kept(checkpoints, Retention(latest=2, best=1))   # -> the steps to keep; delete the others

A run keeps every checkpoint unless `Retention.latest` is set (`RunConfig.keep_latest`). With it, a
run keeps

- every stopping point (kind "stop") and a `stopped` checkpoint: what `ensemble build --budget F`,
  `recoup cooldown --from F` and the report read by fraction;
- the newest `latest` checkpoints: what latest-k weight averages (LAWA) take, and the newest of all,
  where `--resume` and a rollback start;
- the `best` checkpoints of highest validation EM (ties: the earlier, as restore-best picks);
- the best weights a `stopped` checkpoint restored (`restored_best_step`: the controller cools down
  from there), and whatever the trainer protects (the stopping rule's current best, which
  restore-best would read when the rule fires).

Everything else (periodic checkpoints that are none of those) is deleted after each save
(`framework.checkpoints.store.prune`). The result does not depend on when pruning ran: a step
dropped once would be dropped again from any later list (its rank only falls as checkpoints are
added), so a run killed between a save and its pruning, and resumed, ends with the same
checkpoints as one never killed (tested).

Why not Orbax's preservation policies (`CheckpointManagerOptions(preservation_policy=
AnyPreservationPolicy([LatestN(k), BestN(...), CustomSteps(...)]))`): they rank by the `metrics`
passed to `save`, which would add an item to every step directory, and they cannot see which steps
are stopping points (those are set in tokens, not steps, so `CustomSteps` cannot name them in
advance). On a local disk Orbax deletes a step with `rmtree` in place, so a kill mid-deletion
leaves a half-deleted step under its own name, listed as a checkpoint and failing its seal; and
Orbax knows nothing of the seals in `RUN/integrity/`. Its older `best_fn` with `max_to_keep` keeps
only the best N, so it deletes the newest checkpoint, the one a resume needs, whenever that is not
among them. Deleting the steps ourselves costs a few lines and lets the order of operations make a
kill at any moment safe (`store.prune`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple


class Retention(NamedTuple):
    """Which checkpoints a run keeps (RunConfig.keep_latest, keep_best)."""

    latest: int | None = None  # the newest this many; None: keep every checkpoint (nothing is deleted)
    best: int = 1  # and this many of highest validation EM


KEEP_ALL = Retention()
PERIODIC = "periodic"  # the only kind of checkpoint retention may delete (framework.training.train)


def kept(checkpoints: Sequence[Mapping[str, Any]], retention: Retention, protect: Iterable[int] = ()) -> set[int]:
    """The steps to keep among `checkpoints` (metadata as `list_checkpoints` gives it, any order).

    Args:
      checkpoints: each with "step", and "kind", "val_em" (None for a text run: "val_loss" ranks them),
        "restored_best_step" where saved.
      retention: how many of the newest and of the best to keep.
      protect: steps kept whatever the rest says (the stopping rule's current best).

    Returns:
      The steps kept. A checkpoint without a "kind" (an older recoup's, or metadata that could not
      be read) is kept: only a checkpoint known to be periodic is ever deleted.

    >>> ckpts = [{"step": s, "kind": k, "val_em": em} for s, k, em in
    ...          [(1, "periodic", 0.5), (2, "stop", 0.1), (3, "periodic", 0.2), (4, "periodic", 0.3)]]
    >>> sorted(kept(ckpts, Retention(latest=1, best=1)))
    [1, 2, 4]
    """
    steps = sorted(c["step"] for c in checkpoints)
    if retention.latest is None:
        return set(steps)
    keep = set(steps[-retention.latest:]) | set(protect)
    keep |= {c["step"] for c in checkpoints if c.get("kind") != PERIODIC}
    keep |= {c["restored_best_step"] for c in checkpoints if c.get("restored_best_step") is not None}
    ranked = sorted(checkpoints, key=lambda c: (-_score(c), c["step"]))
    return keep | {c["step"] for c in ranked[:retention.best]}


def _score(c: Mapping[str, Any]) -> float:
    """Validation EM; for a run that has none (a text run: `val_em` None), minus the validation loss."""
    em, loss = c.get("val_em"), c.get("val_loss")
    if em is None and "val_em" in c and isinstance(loss, int | float) and math.isfinite(loss):
        return -float(loss)
    return float(em) if isinstance(em, int | float) and math.isfinite(em) else -math.inf
