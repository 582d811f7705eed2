"""Everything that changes over a run, in one value: `TrainState`, saved and restored whole.

Resuming, rolling back after a non-finite loss, branching a cooldown and starting from another
run's weights (`init_from`) all go through `restore`: they differ only in which checkpoint they
read and what they keep of it afterwards.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from framework.checkpoints import store as checkpoints
from framework.training.averages import RunningAverage

Params = Any  # a pytree of arrays


@dataclasses.dataclass
class Progress:
    """Host-side counters, saved as JSON in every checkpoint."""

    step: int = 0
    tokens: int = 0  # counted training tokens (framework.data.encoding.counted_tokens)
    answer_tokens: int = 0
    next_stop: int = 0  # index of the first stopping point not yet taken
    wall_s: float = 0.0  # training wall time, summed over resumes
    rng: list[int] = dataclasses.field(default_factory=list)  # jax.random.key_data of the run key
    stopped: str | None = None  # why a stopping rule ended the run; a stopped run is finished
    pending: list = dataclasses.field(default_factory=list)  # [(indices, losses)] a sampler has yet to observe
    rules: Any = None  # the stopping rules' state (JSON), framework.stopping.rules
    lr_scale: float = 1.0  # times the schedule: lowered by each rollback after a non-finite loss
    rollbacks: int = 0  # rollbacks so far (nonfinite="rollback")
    skipped: int = 0  # updates dropped for a non-finite loss or gradient


@dataclasses.dataclass
class TrainState:
    params: Params  # the weights being trained (schedule-free: its training sequence, not the evaluated one)
    opt_state: Any
    averages: dict[str, RunningAverage]  # the weight averages kept (framework.training.averages), by name
    sampler: Any  # where the data stands: the sampler's state, or a text stream's (framework.data.encoding.Batches)
    progress: Progress  # counters, the RNG, the stopping rules' state
    # (indices, per-example losses) of steps the sampler has not observed yet: device arrays while
    # training, JSON in `progress.pending` once saved.
    pending: list = dataclasses.field(default_factory=list)
    key: Any = None  # the run's RNG key (every step folds in its number), from `progress.rng`

    def __post_init__(self):
        if self.key is None:
            self.key = jax.random.wrap_key_data(jnp.asarray(self.progress.rng, jnp.uint32))


def save(mgr, state: TrainState, weights: Params, metadata: dict, separate: bool, **keep) -> None:
    """Checkpoint `state` at its step. `weights`: what is evaluated and served as `params` (the
    training weights, an optimizer's evaluation point, or a restored best); with `separate` the
    training weights are saved beside them as `train_params`. `keep`: `retention` and `protect`
    (framework.checkpoints.store.save), which checkpoints stay once it is sealed."""
    state.progress.pending = [(np.asarray(i).tolist(), np.asarray(x).tolist()) for i, x in state.pending]
    progress = dataclasses.asdict(state.progress) | {"wall_s": metadata["wall_s"]}
    checkpoints.save(mgr, state.progress.step, params=weights, opt_state=state.opt_state,
                     sampler_state=state.sampler, progress=progress, metadata=metadata,
                     averages=_as_dicts(state.averages), train_params=state.params if separate else None, **keep)


def restore(mgr, step: int, like: TrainState, separate: bool, weights_only: bool = False) -> TrainState:
    """The state saved at checkpoint `step`, read into `like`'s structure and shardings (its averages
    only when `like` keeps any). `separate`: the training weights are the `train_params` item
    (schedule-free), not the evaluated `params`. `weights_only`: `like` with the checkpoint's
    evaluated weights and nothing else (a new run starting from another run's model)."""
    if weights_only:
        return dataclasses.replace(like, params=checkpoints.restore(mgr, step, params=like.params).params)
    extra = {"averages": _as_dicts(like.averages)} if like.averages else {}
    weights = {"train_params": like.params} if separate else {"params": like.params}
    r = checkpoints.restore(mgr, step, opt_state=like.opt_state, sampler=like.sampler, progress=None, **weights,
                            **extra)
    averages = {name: RunningAverage(**a) for name, a in r.averages.items()} if like.averages else like.averages
    progress = Progress(**r.progress)
    return TrainState(r.train_params if separate else r.params, r.opt_state, averages, r.sampler, progress,
                      pending_of(progress))


def restore_from(run_dir: str, step: int | None, like: TrainState, separate: bool,
                 weights_only: bool = False) -> TrainState:
    """`restore` from another run's checkpoint `step` (its newest when None), opened read-only."""
    mgr = checkpoints.open_manager(run_dir)
    try:
        return restore(mgr, mgr.latest_step() if step is None else step, like, separate, weights_only)
    finally:
        mgr.close()


def pending_of(progress: Progress) -> list[tuple[np.ndarray, Any]]:
    """(indices, per-example losses) of steps the sampler has not observed yet, as saved in `progress`."""
    return [(np.asarray(i), np.asarray(x, np.float32)) for i, x in progress.pending]


def _as_dicts(averages: dict[str, RunningAverage]) -> dict[str, dict]:
    """Orbax stores plain dicts: `{name: {"total": tree, "weight": scalar}}`."""
    return {name: a._asdict() for name, a in averages.items()}
