"""Reading a finished (or running) run directory: its config, data, and checkpoints' weights.

Used by `recoup eval`, `recoup runs show` and the demo. The data splits are rebuilt from the
run's saved config (generation is deterministic), so evaluation sees exactly the held-out split
the run was trained beside.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from flax import nnx

from framework.checkpoints import store as checkpoints
from framework.config import DataConfig, RunConfig
from framework.data import identity
from framework.data.encoding import EncodedSplit, prepare
from framework.data.tasks import SPLITS
from framework.data.tokenizer import Tokenizer
from framework.data.tokenizer import load as load_tokenizer
from framework.errors import ConfigError
from framework.evaluation import evaluate
from framework.models import protocol
from framework.run_dirs import load_run_config, run_model
from framework.training import averages, sharding


@dataclasses.dataclass
class Run:
    run_dir: str
    cfg: RunConfig
    graphdef: Any
    abstract_params: Any
    tokenizer: Tokenizer  # what it trained with (its own copy of a Hugging Face tokenizer): serving needs no data
    _splits: dict[str, EncodedSplit] | None = None
    # data -> (its splits, identity.record of them); a ParamStore shares one build (and one file hash)
    prepare_data: Callable[[DataConfig], tuple[dict[str, EncodedSplit], dict]] = None
    allow_changed_data: bool = False  # read data that differs from what the run recorded, saying so
    data_changes: list[str] = dataclasses.field(default_factory=list)  # what differed, when allowed

    @property
    def splits(self) -> dict[str, EncodedSplit]:
        if self._splits is None:  # built lazily: `runs show` needs no data
            data = identity.resolved(self.cfg.data, [self.run_dir])
            splits, record = (self.prepare_data or prepare_with_record)(data)
            self.data_changes = identity.check(self.run_dir, record, self.allow_changed_data)
            self._splits = splits
        return self._splits

    def split(self, name: str) -> EncodedSplit:
        if name not in SPLITS:
            raise ConfigError("split", f"unknown split {name!r}", SPLITS)
        return self.splits[name]

    def params(self, step: int | None = None, average: str | None = None):
        """Parameters of checkpoint `step` (newest when None), or of the weight average named
        `average` (e.g. "ema-50000", see `RunConfig.ema_half_lives`) kept up to that step."""
        step = checkpoints.resolve_step(self.run_dir, step)
        mgr = checkpoints.open_manager(self.run_dir)
        try:
            if average is None:
                return checkpoints.restore(mgr, step, params=self.abstract_params).params
            kept = checkpoints.custom_metadata(mgr, self.run_dir, step).get("averages") or []
            if average not in kept:
                raise ConfigError("average", f"checkpoint {step} of {self.run_dir} keeps no average "
                                             f"{average!r}", kept or ["none: train with --ema-half-life / --swa-start"])
            target = {name: averages.init(self.abstract_params)._asdict() for name in kept}
            state = averages.RunningAverage(**checkpoints.restore(mgr, step, averages=target).averages[average])
            if not float(state.weight) > 0:
                raise ConfigError("average", f"{average} had not started by checkpoint {step} of {self.run_dir}")
            return averages.value(state, like=self.abstract_params)
        finally:
            mgr.close()


def prepare_with_record(data: DataConfig) -> tuple[dict[str, EncodedSplit], dict]:
    """`data`'s splits and what identifies them (framework.data.identity.record)."""
    splits = prepare(data)
    return splits, identity.record(data, splits)


def open_run(run_dir: str, prepare_data: Callable[[DataConfig], tuple[dict[str, EncodedSplit], dict]] | None = None,
             allow_changed_data: bool = False) -> Run:
    """The run in `run_dir`; its splits are built by `prepare_data` (default `prepare_with_record`)
    when first asked for (a caller reading many runs of one data set passes one that builds them,
    and hashes the file, once) and checked against the run's data record (`framework.data.identity`;
    `allow_changed_data` goes on, listing the changes)."""
    cfg = load_run_config(run_dir)
    tok = load_tokenizer(identity.resolved(cfg.data, [run_dir]).tokenizer)
    model = run_model(cfg, run_dir)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: protocol.build(model, 0, tok.vocab_size)), nnx.Param)
    # On one device, whatever mesh trained the run: Orbax reads each array into the target's sharding.
    return Run(run_dir, cfg, graphdef, sharding.on_one_device(abstract), tok, prepare_data=prepare_data,
               allow_changed_data=allow_changed_data)


def evaluate_checkpoint(run: Run, step: int | None = None, split: str = "test") -> dict[str, Any]:
    """Greedy-decoded EM, strict EM, F1 and EM per difficulty, plus teacher-forced strict EM."""
    step = checkpoints.resolve_step(run.run_dir, step)
    meta = next(c for c in checkpoints.list_checkpoints(run.run_dir) if c["step"] == step)
    return {
        "run_dir": run.run_dir,
        "step": step,
        "tokens": meta.get("tokens"),
        "fraction": meta.get("fraction"),
        "split": split,
        **score_params(run.graphdef, run.params(step), run.split(split), run.cfg.eval_batch_size),
        **({"data_changed": run.data_changes} if run.data_changes else {}),  # only with allow_changed_data
    }


def score_params(graphdef, params, data: EncodedSplit, batch_size: int) -> dict[str, Any]:
    """Decoded EM, strict EM, F1, EM per difficulty; teacher-forced strict EM and loss."""
    tf = evaluate.teacher_forced(graphdef, params, data, batch_size)
    decoded = evaluate.decode_split(graphdef, params, data, batch_size)
    return {**evaluate.score(decoded, data), "teacher_forced_strict_em": tf["strict_em"], "loss": tf["loss"]}
