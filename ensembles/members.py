"""What an ensemble is made of, and how to turn it into predictions.

A `Member` names one set of weights: a checkpoint of a run, or a weight average that the run kept
during training up to that checkpoint (an EMA or SWA). A `Candidate` is members, their weights and
how they are combined:

- "weights": one model whose parameters are the weighted mean of the members' (cost 1);
- "logits": the members' next-token log-probabilities averaged at every decoding step (cost k);
- "vote": each member decodes, the most frequent answer wins (cost k).

`Combiners` maps each of those names to its two evaluation functions, so nothing downstream
branches on the name.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

from ensembles import averaging, output
from framework.checkpoints import store as checkpoints
from framework.config import SHAPE_FIELDS, DataConfig
from framework.data.encoding import EncodedSplit
from framework.errors import ConfigError
from framework.evaluation import evaluate
from framework.training.runs import Run, open_run, prepare_with_record


@dataclasses.dataclass(frozen=True)
class Member:
    run: str  # run directory
    step: int  # checkpoint step
    tokens: int  # training tokens the run had used at that checkpoint
    fraction: float  # the checkpoint's stopping fraction of its run's planned budget
    average: str | None = None  # a weight average kept during training ("ema-50000"); None: the checkpoint

    @property
    def label(self) -> str:
        return f"{self.average or 'step'}@{self.step}"


def training_tokens(members: Sequence[Member]) -> int:
    """Tokens every run behind the members had to train: the furthest member of each run."""
    furthest: dict[str, int] = {}
    for m in members:
        furthest[m.run] = max(furthest.get(m.run, 0), m.tokens)
    return sum(furthest.values())


@dataclasses.dataclass(frozen=True)
class Candidate:
    method: str  # how it was chosen: single, latest-k, average, ema, swa, soup, logits, vote
    members: tuple[Member, ...]
    weights: tuple[float, ...]  # one per member (normalized when used)
    combine: str  # "weights" | "logits" | "vote"

    @property
    def one_model(self) -> bool:
        """Whether the candidate is a single parameter tree (a weight average): what is saved with an
        ensemble and served, costing one forward pass."""
        return COMBINERS[self.combine].one_model

    @property
    def inference_cost(self) -> int:
        """Forward passes per generated token, relative to one model."""
        return 1 if self.one_model else len(self.members)

    @property
    def training_tokens(self) -> int:
        return training_tokens(self.members)

    def describe(self) -> str:
        return f"{self.method}[{', '.join(m.label for m in self.members)}]"


class ParamStore:
    """Loads members' weights and keeps the most recently used within `max_bytes` (and `max_trees`,
    if given). Selection scores many candidates over the same members: latest-k over 20
    checkpoints touches every one of them per candidate, so a bound below the members in play
    reloads each from disk again and again. Bounding bytes rather than trees keeps host memory
    flat for large models (`average` streams whatever is not kept straight from disk) without
    thrashing on small ones."""

    def __init__(self, max_trees: int | None = None, max_bytes: int = 2 << 30, allow_changed_data: bool = False):
        self.allow_changed_data = allow_changed_data  # read runs whose data changed since (framework.data.identity)
        self._runs: dict[str, Run] = {}
        self._metadata: dict[str, dict[int, dict]] = {}
        self._splits: dict[DataConfig, dict] = {}
        self._params: OrderedDict[Member, Any] = OrderedDict()
        # what a candidate gave on a split (its strict EM; a cascade part's decode), kept because several
        # selections over one store (one per cost cap, say) score the same candidates again
        self.memo: dict[tuple, Any] = {}
        self._bytes: dict[Member, int] = {}
        self.max_trees, self.max_bytes = max_trees, max_bytes

    def run(self, run_dir: str) -> Run:
        if run_dir not in self._runs:
            self._runs[run_dir] = open_run(run_dir, prepare_data=self._prepare,
                                           allow_changed_data=self.allow_changed_data)
        return self._runs[run_dir]

    def data_changes(self) -> list[str]:
        """What differed from the runs' data records, for the runs read so far (with allow_changed_data)."""
        return [f"{d}: {c}" for d, run in self._runs.items() for c in run.data_changes]

    def _prepare(self, data: DataConfig) -> tuple[dict, dict]:
        """The splits of `data` and their identity record, built once: a run's cooldowns, schedules and
        curricula read the same data (building multihop's takes about 3 s; hashing a file, its size)."""
        if data not in self._splits:
            self._splits[data] = prepare_with_record(data)
        return self._splits[data]

    def metadata(self, run_dir: str, step: int) -> dict:
        """What training recorded with checkpoint `step` (tokens, val_em, average_val_em, ...)."""
        if run_dir not in self._metadata:
            self._metadata[run_dir] = {c["step"]: c for c in checkpoints.list_checkpoints(run_dir)}
        return self._metadata[run_dir][step]

    def params(self, member: Member):
        if member in self._params:
            self._params.move_to_end(member)
            return self._params[member]
        tree = self.run(member.run).params(member.step, member.average)
        self._params[member] = tree
        self._bytes[member] = sum(x.nbytes for x in jax.tree.leaves(tree))
        while len(self._params) > 1 and (sum(self._bytes.values()) > self.max_bytes
                                         or (self.max_trees is not None and len(self._params) > self.max_trees)):
            old, _ = self._params.popitem(last=False)
            del self._bytes[old]
        return tree


def weights_model(store: ParamStore, c: Candidate):
    """(graphdef, averaged parameters) of a "weights" candidate."""
    first = store.run(c.members[0].run)
    return first.graphdef, averaging.average((store.params(m) for m in c.members), c.weights)


def _stacked(store: ParamStore, c: Candidate):
    first = store.run(c.members[0].run)
    return first.graphdef, output.stack_params([store.params(m) for m in c.members]), c.weights


def _members(store: ParamStore, c: Candidate):
    first = store.run(c.members[0].run)
    return first.graphdef, [store.params(m) for m in c.members]


class Combiner(NamedTuple):
    # (store, candidate) -> the model's pieces, built once per evaluation (an average is computed once)
    prepare: Callable[[ParamStore, Candidate], tuple]
    # (prepared, split, batch_size) -> greedy answers
    decode: Callable[[tuple, EncodedSplit, int], evaluate.Decoded]
    # (prepared, split, batch_size) -> teacher-forced dict with "strict_em" and "loss"; None for a
    # vote, which has no single distribution to teacher-force: its strict EM is its decode's
    teacher_forced: Callable[[tuple, EncodedSplit, int], dict[str, Any]] | None
    one_model: bool = False  # the members combine into one parameter tree (cost 1), not k forward passes


COMBINERS: dict[str, Combiner] = {
    "weights": Combiner(weights_model,
                        lambda m, split, bs: evaluate.decode_split(*m, split, bs),
                        lambda m, split, bs: evaluate.teacher_forced(*m, split, bs), one_model=True),
    "logits": Combiner(_stacked,
                       lambda m, split, bs: output.decode_split_ensemble(*m, split, bs),
                       lambda m, split, bs: output.ensemble_teacher_forced(*m, split, bs)),
    "vote": Combiner(_members, lambda m, split, bs: output.vote(*m, split, bs), None),
}


def logged_val_em(store: ParamStore, c: Candidate) -> float | None:
    """The validation strict EM that training recorded for this very model when it saved it: a
    checkpoint's `val_em`, or a kept average's `average_val_em`. None for anything training did not
    score (a mix of members, an output ensemble, an average of a run that predates that record).
    Training scores with the same function, split and batch size on the same float32 weights, so
    the figure is the one `strict_em` would compute (a test checks it); reading it skips a pass."""
    if not c.one_model or len(c.members) != 1:
        return None
    m = c.members[0]
    meta = store.metadata(m.run, m.step)
    return meta.get("val_em") if m.average is None else meta.get("average_val_em", {}).get(m.average)


def strict_em(store: ParamStore, c: Candidate, split: str) -> float:
    """Strict EM of a candidate on a split: one teacher-forced pass where there is one (equal to
    greedy decoding's strict EM), else (a vote) its decoded answers. On the validation split a
    figure that training already recorded for the same weights is read, not recomputed."""
    if split == "validation" and (logged := logged_val_em(store, c)) is not None:
        return float(logged)
    key = ("strict_em", c, split)
    if key not in store.memo:
        run = store.run(c.members[0].run)
        data, combiner = run.split(split), COMBINERS[c.combine]
        model = combiner.prepare(store, c)
        if combiner.teacher_forced is not None:
            em = combiner.teacher_forced(model, data, run.cfg.eval_batch_size)["strict_em"]
        else:
            em = evaluate.score(combiner.decode(model, data, run.cfg.eval_batch_size), data)["strict_em"]
        store.memo[key] = float(em)
    return store.memo[key]


def run_members(run_dir: str, budget_tokens: int | None = None) -> list[Member]:
    """Every intact checkpoint of a run as a Member, oldest first (only those with tokens <= budget).
    A checkpoint whose weights fail their seal is left out, and named on stderr."""
    out = []
    for c in checkpoints.list_checkpoints(run_dir, intact_only=True):
        if budget_tokens is None or c["tokens"] <= budget_tokens:
            out.append(Member(run_dir, c["step"], c["tokens"], c["fraction"]))
    return out


def check_compatible(store: ParamStore, run_dirs: list[str]) -> None:
    """Members must share a model shape (to average or stack) and a data config (one test split)."""
    first = store.run(run_dirs[0]).cfg
    for d in run_dirs[1:]:
        cfg = store.run(d).cfg
        if any(getattr(cfg.model, f) != getattr(first.model, f) for f in SHAPE_FIELDS):
            raise ConfigError("runs", f"{d} has model {cfg.model}, {run_dirs[0]} has {first.model}; "
                                      "ensemble members must share one model config")
        if cfg.data != first.data:
            raise ConfigError("runs", f"{d} was trained on other data than {run_dirs[0]} "
                                      f"({cfg.data} vs {first.data}); members must share one data config")
