"""Cascades: a 1x model answers; where it is unsure, an output ensemble answers again.

A `Cascade` is two candidates and a rule. `first`, one model (a checkpoint or a weight average),
decodes every query; a query whose confidence `SIGNALS[signal]` in that answer is below `tau` is
escalated to `fallback`, a log-prob average of k members (ensembles/output.py: vmapped, one
compiled decode), whose answer replaces the first one.

Cost, in forward passes per query relative to one model: the first model runs on every query and
an escalated query runs the k members again from its prompt (nothing of the first decode is
reused: the ensemble's tokens may differ from the first one on), so

    cost = 1 + k * escalation_rate,

and a cap bounds its **mean** over the validation queries. Every query counts alike, whatever the
length of its answer (a mean over prompts, as EM is).

Confidence signals of the first model's greedy answer (its generated tokens, EOS included;
`framework.evaluation.evaluate.Confidence`), higher meaning surer for all three:
- min_prob: the smallest probability of a chosen token (one unsure step is enough to doubt);
- mean_logprob: the mean log-probability of the chosen tokens;
- margin: the smallest top-2 margin p(first) - p(second) over the answer's steps.
A query escalates iff its signal < tau: tau = -inf never escalates (the first model alone),
+inf always (the ensemble alone, at cost 1 + k).

Choosing (signal, tau) on validation (`search`, `choose`): both parts decode the split once; for
each signal the rows are sorted by confidence and each cut at a distinct value is a threshold,
whose strict EM (the ensemble's answers below the cut, the first model's above) and mean cost are
prefix sums. The best strict EM under the cap wins, ties to the lower cost.

    signal, t = choose({name: f(conf) for name, f in SIGNALS.items()}, first_ok, ensemble_ok, k=3,
                       max_cost=1.3)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ensembles import output
from ensembles.members import COMBINERS, Candidate, Member, ParamStore, training_tokens, weights_model
from framework.data.encoding import EncodedSplit
from framework.errors import ConfigError
from framework.evaluation import evaluate, metrics
from framework.evaluation.evaluate import Confidence, Decoded

Signal = Callable[[Confidence], np.ndarray]  # a decode's Confidence -> [n] float64, higher = surer

SIGNALS: dict[str, Signal] = {
    "min_prob": lambda c: np.exp(np.asarray(c.min_logprob, np.float64)),
    "mean_logprob": lambda c: np.asarray(c.logprob, np.float64) / np.maximum(np.asarray(c.length), 1),
    "margin": lambda c: np.asarray(c.min_margin, np.float64),
}
COST_SLACK = 1e-9  # 1 + 3 * 0.1 is 1.3000000000000003 in floating point; a cap of 1.3 still admits it


def cascade_cost(k: int, escalation_rate: float) -> float:
    """Mean forward passes per query, relative to one model: one for the first model on every
    query, k more on the escalated share."""
    return 1.0 + k * escalation_rate


def fits(cost: float, max_cost: float) -> bool:
    return cost <= max_cost + COST_SLACK


class Threshold(NamedTuple):
    tau: float  # escalate a row iff its confidence < tau (-inf: never; +inf: always)
    strict_em: float
    escalation_rate: float
    mean_cost: float


def search(confidence, first_correct, fallback_correct, k: int, max_cost: float) -> Threshold:
    """The threshold of one signal with the best strict EM whose mean cost fits `max_cost`.

    Args:
      confidence: [n] the first model's confidence per row (higher = surer).
      first_correct, fallback_correct: [n] bool, each part's answer right (strict EM) per row.
      k: the fallback's members (an escalated row costs 1 + k).
      max_cost: the cap on the mean cost over the n rows.

    Returns:
      The cut with the best EM, ties to the lower cost (fewer escalations). The candidates are
      tau = -inf (none escalated, cost 1: always fits), +inf (all) and each distinct confidence
      value v (the rows below v escalate).

    >>> search([0.9, 0.2, 0.5], [True, False, False], [True, True, False], k=2, max_cost=1.7)
    Threshold(tau=0.5, strict_em=0.6666666666666666, escalation_rate=0.3333333333333333, mean_cost=1.6666666666666665)
    """
    conf = np.asarray(confidence, np.float64)
    first, fallback = np.asarray(first_correct, bool), np.asarray(fallback_correct, bool)
    n = len(conf)
    if not (first.shape == fallback.shape == (n,)) or n == 0:
        raise ValueError(f"confidence {conf.shape} and correctness {first.shape}, {fallback.shape} must be [n], n > 0")
    order = np.argsort(conf, kind="stable")
    sorted_conf = conf[order]
    gain = fallback[order].astype(np.int64) - first[order]  # what escalating each row changes
    correct = first.sum() + np.concatenate([[0], np.cumsum(gain)])  # [n + 1]: the j least sure rows escalated
    j = np.arange(n + 1)
    cut = (j == 0) | (j == n)
    cut[1:n] = sorted_conf[:-1] < sorted_conf[1:]  # a threshold can only fall between distinct values
    cut &= k * j <= (max_cost - 1.0) * n + COST_SLACK * n  # the mean cost 1 + k j / n, compared in counts
    best = int(max(np.flatnonzero(cut), key=lambda i: (correct[i], -i)))
    tau = -math.inf if best == 0 else math.inf if best == n else float(sorted_conf[best])
    return Threshold(tau, int(correct[best]) / n, best / n, cascade_cost(k, best / n))


def choose(signals: dict[str, np.ndarray], first_correct, fallback_correct, k: int,
           max_cost: float) -> tuple[str, Threshold]:
    """The best (signal, threshold) over `signals` (name -> [n] confidence): highest strict EM, then
    lowest mean cost, then the earlier signal."""
    found = [(name, search(conf, first_correct, fallback_correct, k, max_cost)) for name, conf in signals.items()]
    return max(found, key=lambda nt: (nt[1].strict_em, -nt[1].mean_cost))  # max keeps the first of equals


def escalated(confidence, tau: float) -> np.ndarray:
    """[n] bool: the rows a cascade sends to its ensemble."""
    return np.asarray(confidence, np.float64) < tau


def answer(first: Decoded, confidence, tau: float,
           fallback: Callable[[np.ndarray], Decoded]) -> tuple[Decoded, np.ndarray]:
    """The cascade's answers: the first model's, except at the rows whose confidence is below `tau`,
    which get `fallback(rows)`'s (called only when there are any). Returns them and the escalated mask."""
    up = escalated(confidence, tau)
    texts, ended = list(first.texts), list(first.ended)
    if rows := np.flatnonzero(up).tolist():
        again = fallback(np.asarray(rows))
        for i, text, done in zip(rows, again.texts, again.ended, strict=True):
            texts[i], ended[i] = text, done
    return Decoded(texts, ended), up


def strict_correct(decoded: Decoded, split: EncodedSplit) -> np.ndarray:
    """[n] bool: each answer right under strict EM (as `evaluate.score` counts it)."""
    return np.array([done and metrics.strict_exact_match(p, r)
                     for p, done, r in zip(decoded.texts, decoded.ended, split.answers, strict=True)], bool)


# == the cascade as a candidate ==================================================================


@dataclasses.dataclass(frozen=True)
class Cascade:
    first: Candidate  # one model (a checkpoint or a weight average): answers every query
    fallback: Candidate  # a log-prob average of k members: answers the escalated queries again
    signal: str  # a name in SIGNALS
    tau: float  # escalate iff the signal < tau
    escalation_rate: float  # on the validation split, where tau was chosen
    # the two parts' strict EM alone on validation (what the search saw), for the manifest
    part_val_em: tuple[float, float] | None = dataclasses.field(default=None, compare=False)
    method: str = "cascade"
    combine: str = "cascade"

    def __post_init__(self):
        if not self.first.one_model:
            raise ConfigError("cascade", f"the first model must be one model (cost 1), not {self.first.describe()}")
        if self.fallback.combine != "logits":
            raise ConfigError("cascade", f"the fallback must be a log-prob average, not {self.fallback.describe()}")
        if self.signal not in SIGNALS:
            raise ConfigError("cascade", f"unknown confidence signal {self.signal!r}", SIGNALS)

    @property
    def one_model(self) -> bool:
        return False

    @property
    def k(self) -> int:
        return len(self.fallback.members)

    @property
    def members(self) -> tuple[Member, ...]:
        return self.first.members + self.fallback.members

    @property
    def inference_cost(self) -> float:
        """The mean cost on validation (`cascade_cost`): what the cap bounds."""
        return cascade_cost(self.k, self.escalation_rate)

    @property
    def training_tokens(self) -> int:
        return training_tokens(self.members)

    def describe(self) -> str:
        return f"cascade[{self.first.describe()} -> {self.fallback.describe()} if {self.signal} < {self.tau:.4g}]"


def decode_first(graphdef, params, split: EncodedSplit, batch_size: int) -> tuple[Decoded, Confidence]:
    """One model's greedy answers for a split, with their `Confidence` (numpy, one row per prompt)."""
    tok = split.tokenizer
    tokens, conf = evaluate.decode_batches(
        lambda p, m: evaluate.greedy_decode_with_confidence(graphdef, params, p, m, tok.ends), split, batch_size)
    return evaluate.to_decoded(tokens, tok), conf


def decode(store: ParamStore, c: Cascade, split: EncodedSplit, batch_size: int,
           first_model: tuple | None = None) -> tuple[Decoded, np.ndarray]:
    """The cascade's answers for a split and its escalated mask: the first model decodes every row,
    the ensemble only the escalated ones (its members are loaded only if there are any).
    `first_model`: (graphdef, params) of the first part when the caller has them (a saved average)."""
    first, conf = decode_first(*(first_model or weights_model(store, c.first)), split, batch_size)

    def fallback(rows: np.ndarray) -> Decoded:
        return output.decode_split_ensemble(*COMBINERS["logits"].prepare(store, c.fallback), split, batch_size,
                                            rows=rows)

    return answer(first, SIGNALS[c.signal](conf), c.tau, fallback)


def evaluate_cascade(store: ParamStore, c: Cascade, split: str = "test", first_model: tuple | None = None
                     ) -> dict[str, Any]:
    """`recoup eval`'s fields for a cascade on a split, with that split's escalation rate and mean
    cost. A cascade has no single distribution to teacher-force: its teacher-forced strict EM is its
    decoded strict EM (as a vote's), and it has no loss."""
    run = store.run(c.first.members[0].run)
    data = run.split(split)
    decoded, up = decode(store, c, data, run.cfg.eval_batch_size, first_model)
    scores = evaluate.score(decoded, data)
    rate = float(up.mean())
    return {**scores, "teacher_forced_strict_em": scores["strict_em"], "loss": None,
            "escalation_rate": rate, "escalated": int(up.sum()), "mean_cost": cascade_cost(c.k, rate)}


def cascades(store: ParamStore, firsts: Sequence[Candidate], fallbacks: Sequence[Candidate], max_cost: float,
             budget_tokens: int, split: EncodedSplit, batch_size: int) -> list[tuple[Cascade, float]]:
    """Every (first, fallback) pair within `budget_tokens` (the runs behind both parts), each with the
    (signal, tau) that `choose` finds on `split` and the strict EM it gives there. Each part decodes
    the split once; the pairs and thresholds reuse those decodes. Selection passes the validation split."""
    def first(f: Candidate) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        decoded, conf = decode_first(*weights_model(store, f), split, batch_size)
        return strict_correct(decoded, split), {name: signal(conf) for name, signal in SIGNALS.items()}

    def fallback(g: Candidate) -> np.ndarray:
        prepared = COMBINERS["logits"].prepare(store, g)
        return strict_correct(output.decode_split_ensemble(*prepared, split, batch_size), split)

    # the store keeps each part's decode: selections under several caps reuse them (the store holds
    # the split itself, so its id names it while the store lives)
    seen = {f: _memo(store, ("cascade-first", f, id(split)), lambda f=f: first(f)) for f in firsts}
    again = {g: _memo(store, ("cascade-fallback", g, id(split)), lambda g=g: fallback(g)) for g in fallbacks}
    out = []
    for f, (first_ok, signals) in seen.items():
        for g, fallback_ok in again.items():
            if training_tokens(f.members + g.members) > budget_tokens:
                continue
            name, t = choose(signals, first_ok, fallback_ok, len(g.members), max_cost)
            c = Cascade(f, g, name, t.tau, t.escalation_rate, (float(first_ok.mean()), float(fallback_ok.mean())))
            out.append((c, t.strict_em))
    return out


def _memo(store: ParamStore, key: tuple, compute: Callable[[], Any]) -> Any:
    if key not in store.memo:
        store.memo[key] = compute()
    return store.memo[key]
