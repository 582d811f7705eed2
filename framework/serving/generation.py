"""Generation for the server: a served model answers a batch of prompts in one of a few fixed shapes.

A served model is a run's latest checkpoint, a saved weight average (one forward pass), an
output ensemble (its members vmapped: log-prob averaging, or a vote), or a cascade (its saved 1x
model answers every row with its confidence; the rows below the threshold are decoded again,
together, by its log-prob ensemble). `generate` pads a batch to the smallest bucket that holds it
(rows, prompt length, new tokens), so a server that compiled every bucket at start-up (`warm_up`)
never compiles while answering. Temperature, seed and max_tokens are per-row arrays: they never
change a shape.

    model = load("runs/demo-ens")
    warm_up(model, Buckets())
    [c] = generate(model, [Row(encode_prompt(model.tokenizer, "12+34="), max_tokens=8)], Buckets())
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ensembles import cascade, output
from ensembles.members import ParamStore
from framework.data.tokenizer import Tokenizer
from framework.errors import ConfigError
from framework.evaluation import evaluate
from framework.training.runs import open_run


class Buckets(NamedTuple):
    """The shapes a server compiles: every (batch, prompt, new) combination, each list ascending."""

    batch: tuple[int, ...] = (1, 8, 32)  # rows per forward pass; the largest is the maximum batch size
    prompt: tuple[int, ...] = (32, 128)  # prompt tokens, BOS (the tokenizer's prefix) included
    new: tuple[int, ...] = (16, 64)  # tokens generated

    def validate(self) -> Buckets:
        for name, sizes in self._asdict().items():
            if not sizes or any(not isinstance(s, int) or s < 1 for s in sizes) or list(sizes) != sorted(set(sizes)):
                raise ConfigError(f"{name}_buckets", f"{list(sizes)} must be positive integers in ascending order")
        return self

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        return [(b, p, m) for b in self.batch for p in self.prompt for m in self.new]


def fit(n: int, sizes: Sequence[int]) -> int:
    """The smallest bucket that holds n; past the largest, the next power of two. Buckets are the
    shapes compiled at start-up, not a limit: a longer prompt or a larger max_tokens compiles its
    shape on first use (counted in /metrics as recoup_compilations) and reuses it after."""
    return next((s for s in sizes if s >= n), 1 << (n - 1).bit_length())


class Row(NamedTuple):
    prompt: tuple[int, ...]  # the tokenizer's prefix (BOS) and the prompt's tokens (`encode_prompt`)
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    seed: int = 0  # the sampling key of this row: its draws do not depend on its batch


class Route(NamedTuple):
    """How a cascade answered one row: the path taken, and the 1x model's own answer and confidence."""

    path: str  # "single": the 1x model's answer stands; "ensemble": escalated, the ensemble's answer is served
    signal: str  # the rule in force: escalate iff confidence[signal] < tau
    tau: float
    confidence: dict[str, float]  # the 1x model's confidence in its answer under every signal (cascade.SIGNALS)
    first_text: str  # the 1x model's answer (escalated or not) and whether it ended with EOS
    first_ended: bool
    ended: bool  # whether the served answer ended with EOS (before any stop string)


class Completion(NamedTuple):
    text: str
    finish_reason: str  # "stop": EOS or a stop string; "length": max_tokens reached
    completion_tokens: int  # tokens generated, EOS included
    route: Route | None = None  # a cascade's answers only


def encode_prompt(tok: Tokenizer, text: str) -> tuple[int, ...]:
    return (*tok.prefix, *tok.encode(text))


# == models =====================================================================================


@dataclasses.dataclass
class ServedModel:
    id: str
    path: str
    combine: str  # "weights" (one forward pass), "logits" or "vote" (k members)
    graphdef: Any
    params: Any  # one parameter tree, or the members' stacked on a leading axis
    weights: np.ndarray | None  # [k] member weights of an output ensemble
    context: int  # the longest sequence the model was trained on: prompt + generated tokens
    info: dict[str, Any]  # what /v1/models shows
    tokenizer: Tokenizer  # the first member's run's (every member of an ensemble shares its vocabulary)
    cascade: CascadeRule | None = None  # combine "cascade": graphdef and params are its 1x model's

    @property
    def inference_cost(self) -> int:
        """Forward passes per row, at most (a cascade's escalated rows run its 1x model and its k members)."""
        if self.cascade is not None:
            return 1 + self.cascade.fallback.inference_cost
        return 1 if self.weights is None else len(self.weights)


class CascadeRule(NamedTuple):
    signal: str  # a name in cascade.SIGNALS
    tau: float  # a row escalates iff the 1x model's confidence under `signal` is below tau
    fallback: ServedModel  # the k-member log-prob average that answers the escalated rows again


def served_id(path: str) -> str:
    """The id a directory is served under: its name."""
    return os.path.basename(os.path.abspath(path))


def load(path: str, model_id: str | None = None) -> ServedModel:
    """An ensemble directory (manifest.json) or a run directory (config.json: its latest checkpoint)."""
    from ensembles import artifact

    path = os.path.normpath(path)
    model_id = model_id or served_id(path)
    if os.path.isfile(os.path.join(path, artifact.MANIFEST)):
        manifest = artifact.load_manifest(path)
        if manifest["combine"] == "cascade":
            return _load_cascade(path, model_id, manifest)
        c = artifact.candidate_of(manifest)
        store = ParamStore()
        run = store.run(c.members[0].run)
        info = {"kind": "ensemble", "method": c.method, "members": [m.label for m in c.members],
                "training_tokens": manifest.get("training_tokens"), "inference_cost": c.inference_cost}
        if c.one_model:
            params, weights = artifact.saved_average(path, run), None
        else:
            params = output.stack_params([store.params(m) for m in c.members])
            weights = output.member_weights(c.weights, len(c.members))
        return ServedModel(model_id, path, c.combine, run.graphdef, params, weights, run.cfg.data.max_seq_len, info,
                           run.tokenizer)
    if os.path.isfile(os.path.join(path, "config.json")):
        from framework.checkpoints import store as checkpoints

        run = open_run(path)
        step = checkpoints.resolve_step(path, None)
        info = {"kind": "checkpoint", "step": step, "inference_cost": 1}
        return ServedModel(model_id, path, "weights", run.graphdef, run.params(step), None,
                           run.cfg.data.max_seq_len, info, run.tokenizer)
    raise ConfigError("model", f"{path} is neither a recoup ensemble (no manifest.json) nor a run directory "
                               "(no config.json)")


def _load_cascade(path: str, model_id: str, manifest: dict[str, Any]) -> ServedModel:
    """A cascade: its saved 1x model (as `recoup ensemble eval` reads it) and its fallback's members stacked."""
    from ensembles import artifact

    c = artifact.cascade_of(manifest)
    store = ParamStore()
    run = store.run(c.first.members[0].run)
    stacked = output.stack_params([store.params(m) for m in c.fallback.members])
    weights = output.member_weights(c.fallback.weights, c.k)
    context = run.cfg.data.max_seq_len
    fallback = ServedModel(f"{model_id}:fallback", path, "logits", run.graphdef, stacked, weights, context,
                           {"members": [m.label for m in c.fallback.members]}, run.tokenizer)
    info = {"kind": "ensemble", "method": "cascade", "members": [m.label for m in c.members],
            "training_tokens": manifest.get("training_tokens"), "inference_cost": c.inference_cost,
            "cascade": {"signal": c.signal, "tau": c.tau if np.isfinite(c.tau) else str(c.tau), "k": c.k,
                        "first": [m.label for m in c.first.members]}}
    return ServedModel(model_id, path, "cascade", run.graphdef, artifact.saved_average(path, run), None, context,
                       info, run.tokenizer, CascadeRule(c.signal, c.tau, fallback))


# == decoding ===================================================================================


@functools.partial(jax.jit, static_argnums=(0, 7, 8))
def _decode_one(graphdef, params, weights, prompts, temperature, keys, limits, max_new, ends):
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(prompts.shape[0], prompts.shape[1] + max_new)
    return evaluate.decode_loop(model, cache, prompts, max_new, ends, sampling=(temperature, keys), limits=limits)


@functools.partial(jax.jit, static_argnums=(0, 7, 8))
def _decode_confident(graphdef, params, weights, prompts, temperature, keys, limits, max_new, ends):
    """`_decode_one`, plus each row's `Confidence` in its answer: a cascade's 1x model."""
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(prompts.shape[0], prompts.shape[1] + max_new)
    return evaluate.decode_loop(model, cache, prompts, max_new, ends, sampling=(temperature, keys), limits=limits,
                                with_confidence=True)


@functools.partial(jax.jit, static_argnums=(0, 7, 8))
def _decode_logits(graphdef, stacked, weights, prompts, temperature, keys, limits, max_new, ends):
    step, cache = output.ensemble_step(graphdef, stacked, weights, prompts.shape[0], prompts.shape[1] + max_new)
    return evaluate.decode_loop(step, cache, prompts, max_new, ends, sampling=(temperature, keys), limits=limits)


@functools.partial(jax.jit, static_argnums=(0, 7, 8))
def _decode_members(graphdef, stacked, weights, prompts, temperature, keys, limits, max_new, ends):
    """Every member decodes alone (vmapped), each drawing with its own keys: tokens and log-probs [k, b, ...]."""

    def member(params, i):
        model = nnx.merge(graphdef, params)
        cache = model.init_cache(prompts.shape[0], prompts.shape[1] + max_new)
        member_keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
        return evaluate.decode_loop(model, cache, prompts, max_new, ends, with_logprob=True,
                                    sampling=(temperature, member_keys), limits=limits)

    return jax.vmap(member)(stacked, jnp.arange(weights.shape[0]))


def _majority(out, tok: Tokenizer) -> np.ndarray:
    """The vote: per row, the tokens of the member answer (text, ended) that most members gave
    (ties to the highest mean log-prob, as `output.majority`)."""
    tokens, logprob = (np.asarray(x) for x in out)  # [k, b, max_new], [k, b]
    answers = [[tok.decode_generated(row) for row in member] for member in tokens]
    winners = output.majority(answers, logprob)
    return np.stack([tokens[next(k for k in range(len(answers)) if answers[k][i] == w), i]
                     for i, w in enumerate(winners)])


# combine -> (jitted decode, host-side finish to [b, max_new] tokens; a cascade's with their Confidence)
DECODERS = {"weights": (_decode_one, lambda out, tok: np.asarray(out)),
            "logits": (_decode_logits, lambda out, tok: np.asarray(out)),
            "vote": (_decode_members, _majority),
            "cascade": (_decode_confident, lambda out, tok: jax.tree.map(np.asarray, out))}


def generate(model: ServedModel, rows: Sequence[Row], buckets: Buckets) -> list[Completion]:
    """Decode `rows` (at most the largest batch bucket) in the smallest shape that holds them (`fit`)."""
    if model.cascade is not None:
        return _generate_cascade(model, rows, buckets)
    tokens = _decode(model, rows, buckets)
    return [_finish(tokens[i, :r.max_tokens], model.tokenizer)[0] for i, r in enumerate(rows)]


def _generate_cascade(model: ServedModel, rows: Sequence[Row], buckets: Buckets) -> list[Completion]:
    """The 1x model answers every row; the rows whose confidence is below tau (`cascade.escalated`, as
    offline) are decoded again by the ensemble, all in one call padded to a compiled bucket."""
    rule, tok = model.cascade, model.tokenizer
    tokens, conf = _decode(model, rows, buckets)
    conf = evaluate.Confidence(*(x[:len(rows)] for x in conf))  # without the bucket's filler rows
    signals = {name: f(conf) for name, f in cascade.SIGNALS.items()}
    up = cascade.escalated(signals[rule.signal], rule.tau)
    again = iter(())
    if up.any():
        escalated = [r for r, u in zip(rows, up, strict=True) if u]
        again = iter(_decode(rule.fallback, escalated, buckets)[:len(escalated)])
    out = []
    for i, r in enumerate(rows):
        first, first_ended = _finish(tokens[i, :r.max_tokens], tok)
        served, ended = _finish(next(again)[:r.max_tokens], tok) if up[i] else (first, first_ended)
        route = Route("ensemble" if up[i] else "single", rule.signal, rule.tau,
                      {name: float(s[i]) for name, s in signals.items()}, first.text, first_ended, ended)
        out.append(served._replace(route=route))
    return out


def answers(model: ServedModel, rows: Sequence[Row], buckets: Buckets) -> list[tuple[str, bool]]:
    """Each row's answer by the model's own decoder (not a cascade's routing): its text, and whether it
    ended with EOS. Any number of rows, in batches of the largest batch bucket."""
    out, size = [], buckets.batch[-1]
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        tokens = _decode(model, chunk, buckets)
        tokens = tokens[0] if model.cascade is not None else tokens  # a cascade's 1x model: without its Confidence
        out += [(c.text, ended) for c, ended in (_finish(tokens[i, :r.max_tokens], model.tokenizer)
                                                 for i, r in enumerate(chunk))]
    return out


def _decode(model: ServedModel, rows: Sequence[Row], buckets: Buckets):
    """The model's decoder on `rows` padded to the smallest bucket shape that holds them: its host-side
    output, filler rows included (`DECODERS`)."""
    b = fit(len(rows), buckets.batch)
    p = fit(max(len(r.prompt) for r in rows), buckets.prompt)
    m = fit(max(r.max_tokens for r in rows), buckets.new)
    padded = list(rows) + [rows[0]._replace(max_tokens=1)] * (b - len(rows))  # filler rows end at once
    tok = model.tokenizer
    prompts = np.full((b, p), tok.pad, np.int32)
    for i, r in enumerate(padded):
        prompts[i, p - len(r.prompt):] = r.prompt
    temperature = np.array([r.temperature for r in padded], np.float32)
    # Raw threefry keys [hi, lo] of each row's 64-bit seed, built on the host: no JAX call per request.
    keys = np.array([[(r.seed >> 32) & 0xFFFFFFFF, r.seed & 0xFFFFFFFF] for r in padded], np.uint32)
    limits = np.array([r.max_tokens for r in padded], np.int32)
    decode, finish = DECODERS[model.combine]
    weights = np.ones(1, np.float32) if model.weights is None else model.weights
    return finish(decode(model.graphdef, model.params, weights, prompts, temperature, keys, limits, m, tok.ends), tok)


def _finish(tokens: np.ndarray, tok: Tokenizer) -> tuple[Completion, bool]:
    """A row's generated tokens as a Completion, and whether its answer ended with EOS."""
    cut, ended = tok.answer_end(tokens)  # one scan: the answer's end, then its text (no special id before cut)
    text = tok.decode(tokens[:cut])
    # An answer that ended is its tokens and the EOS; any other ran to its limit (the loop stops only at either).
    n = cut + 1 if ended else len(tokens)
    special_stop = not ended and cut < len(tokens)  # sampled a PAD/BOS: nothing sensible follows
    return Completion(text, "stop" if ended or special_stop else "length", n), ended


def apply_stop(c: Completion, stops: Sequence[str]) -> Completion:
    """Cut the text at the earliest stop string (not included), as the OpenAI API does."""
    cuts = [i for i in (c.text.find(s) for s in stops) if i >= 0]
    return c._replace(text=c.text[:min(cuts)], finish_reason="stop") if cuts else c


def warm_up(model: ServedModel, buckets: Buckets, log=print) -> int:
    """Compile every bucket shape once (sampling included: temperature is an array), a cascade's
    ensemble too (its escalated rows are padded to the same buckets). Returns the count."""
    tok = model.tokenizer
    filler = tok.encode(" ")[0]
    for b, p, m in buckets.shapes:  # rows that need exactly this shape, sampled (the greedy path is the same program)
        _decode(model, [Row((*tok.prefix, *(filler,) * (p - len(tok.prefix))), m, 1.0)] * b, buckets)
    log(f"  {model.id}: compiled {len(buckets.shapes)} shapes")
    return len(buckets.shapes) + (warm_up(model.cascade.fallback, buckets, log) if model.cascade else 0)


# == compilations ===============================================================================


class CompileCounter:
    """XLA compilations in this process from the moment it is made: a jax.monitoring listener the
    server registers when it starts, not when this module is imported. (jax has no public way to
    remove a listener, so make one per server, not one per request.)"""

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            with self._lock:
                self.count += 1

    def __call__(self) -> int:
        return self.count
