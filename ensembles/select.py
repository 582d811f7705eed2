"""Choosing an ensemble under a training-token budget B and an inference-cost cap C.

Only checkpoints with tokens <= B are candidates, and members drawn from several runs count the
tokens of every run they come from (`Candidate.training_tokens <= B`). Every candidate is scored
on the **validation** split; the test split is never read here (a test checks it), so the test EM
that `recoup ensemble build` reports afterwards is an honest estimate.

Candidate families (C = max_cost):
- single: each checkpoint on its own (what plain early stopping ships: the latest one);
- latest-k: uniform weight average of the k latest checkpoints (LAWA), k = 2..all;
- ema / swa: the running averages a run kept during training, at its latest checkpoint;
- soup: a greedy soup (Wortsman et al. 2022) over the checkpoints, best validation EM first;
- logits: log-prob averaging of the k latest checkpoints, k = 2..C;
- vote: majority vote of the k latest checkpoints, k = 3..C;
- with several runs, logits and vote across runs too: one member per run, each stopped at B / k;
- cascade (ensembles/cascade.py): one of the few best one-model candidates answers, and the best
  log-prob average of k members answers again where it is unsure, for each k that fits some
  escalation rate (1 + k / n_validation <= C); the signal and threshold are chosen on validation
  so that the **mean** cost 1 + k * escalation_rate stays within C.

C may be fractional only for cascades (`auto` considers them too); every other family has a whole
number of forward passes and keeps k <= floor(C).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from ensembles import trees
from ensembles.cascade import Cascade, cascades, fits
from ensembles.members import Candidate, Member, ParamStore, check_compatible, run_members, strict_em
from framework.checkpoints import store as checkpoints
from framework.errors import ConfigError
from framework.parsing import parse_share_or_tokens

METHODS = ("auto", "single", "average", "latest-k", "ema", "swa", "soup", "logits", "vote", "cascade")
ONE_MODEL = ("single", "average", "latest-k", "ema", "swa", "soup")  # the families of cost 1
SELECTION_SPLIT = "validation"
CASCADE_FIRSTS = 3  # the best few one-model candidates, each tried as a cascade's first model

Choice = Candidate | Cascade


@dataclasses.dataclass
class Selection:
    best: Choice
    val_em: float
    scored: list[tuple[Choice, float]]  # every candidate tried, in the order tried (cascades' parts too)


def check_max_cost(max_cost: float, method: str) -> None:
    """C >= 1; a fraction only where a cascade may be chosen (its cost is a mean); a cascade needs C > 1."""
    if isinstance(max_cost, bool) or not isinstance(max_cost, int | float) or not math.isfinite(max_cost) \
            or max_cost < 1:
        raise ConfigError("max_cost", f"{max_cost!r} must be a number >= 1 (1: weight averages only)")
    if max_cost != int(max_cost) and method not in ("auto", "cascade"):
        raise ConfigError("max_cost", f"{max_cost!r} is fractional, and only a cascade's cost is a mean that falls "
                                      f"between whole numbers (--method cascade, or auto); --method {method} runs "
                                      f"a whole number of models: give an integer such as {math.floor(max_cost)}")
    need = {"logits": 2, "vote": 3}.get(method, 1)
    if method in ("logits", "vote") and max_cost < need:
        raise ConfigError("max_cost", f"--method {method} needs --max-cost of at least {need}, got {max_cost}")
    if method == "cascade" and max_cost <= 1:
        raise ConfigError("max_cost", f"--method cascade needs --max-cost above 1 (escalated queries run an "
                                      f"ensemble too), got {max_cost}")


def parse_budget(spec: str | float, planned_tokens: int) -> int:
    """'0.62' (a fraction of the run's planned budget, <= 1) or a token count ('500k', '1.2M') -> tokens."""
    try:
        positive = float(spec) > 0
    except (TypeError, ValueError):
        positive = True  # a count such as '500k': parse_tokens checks it
    if not positive:
        raise ConfigError("budget", f"{spec!r} must be > 0: a fraction of the planned budget (0.62) or tokens (500k)")
    return parse_share_or_tokens(spec, planned_tokens, "budget")


def candidates(store: ParamStore, run_dirs: Sequence[str], budget_tokens: int, max_cost: int,
               methods: Sequence[str]) -> list[Candidate]:
    """Every candidate of the named families (soup excluded: it is built greedily by `select`)."""
    out: list[Candidate] = []
    for d in run_dirs:
        ms = run_members(d, budget_tokens)
        if not ms:
            continue
        latest = ms[-1]
        if "single" in methods:
            out += [Candidate("single", (m,), (1.0,), "weights") for m in ms]
        if "latest-k" in methods:
            out += [Candidate("latest-k", tuple(ms[-k:]), (1.0,) * k, "weights") for k in range(2, len(ms) + 1)]
        if "average" in methods:
            out.append(Candidate("average", tuple(ms), (1.0,) * len(ms), "weights"))
        for name in _kept_averages(d, latest.step):
            family = name.split("-")[0]  # "ema-50000" -> "ema"
            if family in methods:
                out.append(Candidate(family, (dataclasses.replace(latest, average=name),), (1.0,), "weights"))
        for combine, k_min in (("logits", 2), ("vote", 3)):
            if combine in methods:
                out += [Candidate(combine, tuple(ms[-k:]), (1.0,) * k, combine)
                        for k in range(k_min, min(max_cost, len(ms)) + 1)]
    for k in range(2, min(max_cost, len(run_dirs)) + 1):  # across runs: each run stopped at B / k
        per_run = [run_members(d, budget_tokens // k) for d in run_dirs[:k]]
        if all(per_run):
            members = tuple(ms[-1] for ms in per_run)
            for combine, k_min in (("logits", 2), ("vote", 3)):
                if combine in methods and k >= k_min:
                    out.append(Candidate(combine, members, (1.0,) * k, combine))
    return [c for c in out if c.inference_cost <= max_cost and c.training_tokens <= budget_tokens]


def _kept_averages(run_dir: str, step: int) -> list[str]:
    """The weight averages a checkpoint holds that had started by then (a SWA before its start is empty)."""
    meta = next(c for c in checkpoints.list_checkpoints(run_dir) if c["step"] == step)
    if "average_val_em" in meta:  # recorded for every average with weight > 0
        return [n for n in meta.get("averages") or [] if n in meta["average_val_em"]]
    return [n for n in meta.get("averages") or [] if not (n.startswith("swa-") and int(n[4:]) >= meta["tokens"])]


def greedy_soup(ranked: Sequence[Member], score: Callable[[Candidate], float]) -> tuple[Candidate, float]:
    """Wortsman et al.'s greedy soup (`ensembles.trees.greedy_soup`) over a run's checkpoints: from the
    best member down, keep each one whose addition to the uniform average does not lower the score."""
    members, best = trees.greedy_soup(ranked, lambda ms: score(Candidate("soup", ms, (1.0,) * len(ms), "weights")))
    return Candidate("soup", members, (1.0,) * len(members), "weights"), best


def select(run_dirs: Sequence[str], budget_tokens: int, max_cost: float = 1, method: str = "auto",
           store: ParamStore | None = None, log: Callable[[str], None] = print) -> Selection:
    """The candidate with the best validation strict EM under the budgets.

    Ties go to the cheaper candidate: lower inference cost, then fewer training tokens, then
    fewer members.

    Args:
      run_dirs: runs of one model and data config (for example several seeds).
      budget_tokens: B; only checkpoints with tokens <= B, summed over the runs a candidate uses.
      max_cost: C >= 1; 1 allows weight averages only, k allows output ensembles of k members; a
        cascade's mean cost must stay within C, which may then be fractional (`check_max_cost`).
      method: "auto" (every family) or one of METHODS.
      store: a ParamStore to share loaded weights with the caller.
      log: receives one progress line per candidate.
    """
    if method not in METHODS:
        raise ConfigError("method", f"unknown method {method!r}", METHODS)
    check_max_cost(max_cost, method)
    run_dirs = list(dict.fromkeys(run_dirs))
    store = store or ParamStore()
    check_compatible(store, run_dirs)
    under = {d: run_members(d, budget_tokens) for d in run_dirs}
    if not any(under.values()):
        tokens = [c["tokens"] for c in checkpoints.list_checkpoints(run_dirs[0])]
        raise ConfigError("budget", f"no checkpoint has at most {budget_tokens:,} tokens", tokens or ["no checkpoints"])
    methods = [m for m in METHODS if m not in ("auto",)] if method == "auto" else [method]
    # a cascade's first model is one of the one-model candidates: score them even for --method cascade
    families = [m for m in methods if m != "cascade"] + (list(ONE_MODEL) if method == "cascade" else [])
    scored: list[tuple[Choice, float]] = []
    cache: dict[Candidate, float] = {}

    def score(c: Candidate) -> float:
        if c not in cache:
            cache[c] = strict_em(store, c, SELECTION_SPLIT)
            scored.append((c, cache[c]))
            log(f"  {c.describe():<60} cost {c.inference_cost}  {c.training_tokens:>11,} tokens  "
                f"val EM {cache[c]:.3f}")
        return cache[c]

    for c in candidates(store, run_dirs, budget_tokens, math.floor(max_cost), families):
        score(c)
    if "soup" in families:
        singles = [m for d in run_dirs[:1] for m in under[d]]  # a soup averages one run's checkpoints
        if singles:
            ranked = sorted(singles, key=lambda m: -score(Candidate("single", (m,), (1.0,), "weights")))
            greedy_soup(ranked, score)
    if "cascade" in methods and max_cost > 1:
        for c, em in _cascades(store, run_dirs, budget_tokens, max_cost, scored, score):
            scored.append((c, em))
            log(f"  {c.describe():<60} cost {c.inference_cost:.3f}  {c.training_tokens:>11,} tokens  val EM {em:.3f}"
                f"  (escalates {c.escalation_rate:.1%})")
    allowed = [(c, s) for c, s in scored if c.method in methods and fits(c.inference_cost, max_cost)]
    if not allowed:
        raise ConfigError("method", f"no {method} candidate fits budget {budget_tokens:,} tokens and "
                                    f"max cost {max_cost}")
    best, em = min(allowed, key=lambda cs: (-cs[1], cs[0].inference_cost, cs[0].training_tokens,
                                            len(cs[0].members)))
    return Selection(best, em, scored)


def _cascades(store: ParamStore, run_dirs: list[str], budget_tokens: int, max_cost: float,
              scored: list[tuple[Choice, float]], score: Callable[[Candidate], float]) -> list[tuple[Cascade, float]]:
    """Cascades of the CASCADE_FIRSTS best one-model candidates scored so far and, per k, the best
    log-prob average of k members, for every k that fits some escalation (one query of the
    validation split escalated: 1 + k / n <= max_cost). Their parts decode the validation split once."""
    validation = store.run(run_dirs[0]).split(SELECTION_SPLIT)
    k_fits = math.floor((max_cost - 1) * len(validation) + 1e-9)
    ones = sorted([(c, s) for c, s in scored if isinstance(c, Candidate) and c.one_model],
                  key=lambda cs: (-cs[1], cs[0].training_tokens, len(cs[0].members)))
    models = {}  # one entry per distinct model: a soup of one member is that checkpoint, a soup of two the latest-2
    for c, _ in ones:
        models.setdefault(frozenset(zip(c.members, (w / sum(c.weights) for w in c.weights), strict=True)), c)
    firsts = list(models.values())[:CASCADE_FIRSTS]
    best_of_k: dict[int, tuple[Candidate, float]] = {}
    for c in candidates(store, run_dirs, budget_tokens, k_fits, ["logits"]):
        em, k = score(c), len(c.members)
        if k not in best_of_k or (-em, c.training_tokens) < (-best_of_k[k][1], best_of_k[k][0].training_tokens):
            best_of_k[k] = (c, em)
    fallbacks = [c for _, (c, _) in sorted(best_of_k.items())]
    if not firsts or not fallbacks:
        return []
    return cascades(store, firsts, fallbacks, max_cost, budget_tokens, validation,
                    store.run(run_dirs[0]).cfg.eval_batch_size)
