"""The training-loop benchmark's measurements: recoup's train against a hand-written loop, MFU,
checkpoint and data overhead (the recipe and its command: experiments/bench_training.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

SECTION = "## Training loop: recoup against a hand-written loop, MFU, checkpoint and data overhead"
TOKENS = 240_000  # per timed run: ~60 steps of the demo's batch


def bench_config(base, out_dir: str, preset: str | None = "small", batch_size: int = 128, **overrides):
    """`base` (the recipe's config: data, optimizer) into `out_dir` with the model `preset` and batch size;
    or, with `preset=None, model=ModelConfig(factory=...)`, a model of one's own."""
    from framework.config import PRESETS

    model = overrides.pop("model", None) or PRESETS[preset]
    return dataclasses.replace(base, out_dir=out_dir, every_tokens=None, ema_half_lives=(), log_every=10,
                               model=model, preset=preset, batch_size=batch_size, **overrides)


def hand_written_optimizer(cfg) -> optax.GradientTransformation:
    """AdamW with clipping and a warmup-cosine schedule, as a user would chain it from optax."""
    o = cfg.optim
    schedule = optax.warmup_cosine_decay_schedule(0.0, o.peak_lr, 10, 1000)
    return optax.chain(optax.clip_by_global_norm(o.clip_norm),
                       optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))


def hand_written_step(cfg):
    """What a user would write: one jitted step, AdamW with clipping and the same schedule.
    Returns (step(params, opt_state, inputs, targets, mask) -> (params, opt_state, loss), params, opt_state).
    The model is the one `cfg.model` names, recoup's Transformer or a factory's (the same parameters)."""
    from framework.models.protocol import build
    from framework.models.transformer import forward

    graphdef, params = nnx.split(build(cfg.model, cfg.seed), nnx.Param)
    tx = hand_written_optimizer(cfg)
    step = _jitted_step(graphdef, tx, lambda model, inputs: forward(model, inputs))
    return step, params, tx.init(params)


def _jitted_step(graphdef, tx: optax.GradientTransformation, logits_of: Callable):
    """One jitted update: masked mean cross-entropy of `logits_of(model, inputs, *extra)`, then `tx`.
    Returns step(params, opt_state, inputs, targets, mask, *extra) -> (params, opt_state, loss)."""

    @jax.jit
    def step(params, opt_state, inputs, targets, mask, *extra):
        def loss_fn(p):
            logits = logits_of(nnx.merge(graphdef, p), inputs, *extra)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets) * mask
            return ce.sum() / jnp.maximum(mask.sum(), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def hand_written_tokens_per_s(cfg, train_split, steps: int = 50, warmup: int = 5) -> float:
    """The hand-written step in a plain loop, uniform draws built on the host each step."""
    from framework.data.encoding import counted_tokens, make_batch

    step, params, opt_state = hand_written_step(cfg)
    rng = np.random.default_rng(cfg.seed)
    tokens, loss = 0, None
    for i in range(warmup + steps):
        if i == warmup:
            jax.block_until_ready(loss)
            t0, tokens = time.perf_counter(), 0
        b = make_batch(train_split, rng.integers(0, len(train_split), cfg.batch_size))
        tokens += counted_tokens(b, train_split.tokenizer.pad)
        params, opt_state, loss = step(params, opt_state, b.inputs, b.targets, b.loss_mask)
    jax.block_until_ready(loss)
    return tokens / (time.perf_counter() - t0)


def _train_lines(run_dir: str) -> tuple[list[dict], list[dict]]:
    """(train lines, save lines): the save lines time how long each checkpoint blocked training."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        lines = [json.loads(x) for x in f if x.strip()]
    return [x for x in lines if x["event"] == "train"], [x for x in lines if x["event"] == "save"]


def recoup_tokens_per_s(base, out_dir: str, preset: str, batch_size: int, tokens: int) -> float:
    return steady_tokens_per_s(bench_config(base, out_dir, preset, batch_size, budget_tokens=tokens, stops=(1.0,)))


def steady_tokens_per_s(cfg) -> float:
    """Train `cfg` with recoup's `train`; tokens/s over its log windows after the first (compilation)."""
    from framework.runner.build import train

    train(cfg, show_progress=False)
    lines = _train_lines(cfg.out_dir)[0]
    if len(lines) < 2:  # the first window holds compilation: without a second there is no steady speed
        raise ValueError(f"{cfg.out_dir} logged {len(lines)} train window(s) of {cfg.log_every} steps; a steady "
                         "speed needs at least 2: give more tokens")
    tokens = np.diff([w["tokens"] for w in lines])  # the tokens of every window but the first (compilation)
    return float(tokens.sum() / sum(t / w["tokens_per_s"] for t, w in zip(tokens, lines[1:], strict=True)))


def peak_matmul_flops(n: int | None = None, repeats: int = 10) -> tuple[float, str]:
    on_gpu = jax.devices()[0].platform == "gpu"
    dtype, n = (jnp.bfloat16, n or 8192) if on_gpu else (jnp.float32, n or 2048)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)  # not constants: those can run faster than data
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    t = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    jax.block_until_ready(out)
    return 2 * n**3 * repeats / (time.perf_counter() - t), f"{n}x{n} {jnp.dtype(dtype).name} matmul"


def checkpoint_and_data_overhead(base, out_dir: str, preset: str, batch_size: int, tokens: int) -> dict:
    """The default cadence: the config's default stops, asynchronous saves."""
    from framework.config import DEFAULT_STOPS
    from framework.runner.build import train

    cfg = bench_config(base, out_dir, preset, batch_size, budget_tokens=tokens, stops=DEFAULT_STOPS)
    t = time.perf_counter()
    train(cfg, show_progress=False)
    wall = time.perf_counter() - t
    train_lines, saves = _train_lines(out_dir)
    blocking = sum(e["save_s"] for e in saves)
    return {"saves": len(saves), "save_share": blocking / wall, "wall_s": wall,
            "data_share": float(np.mean([x["data_time_frac"] for x in train_lines[1:]])),
            "data_worst": float(np.max([x["data_time_frac"] for x in train_lines[1:]]))}


def training_benchmark(base, preset: str = "small", batch_size: int = 128, tokens: int = TOKENS,
                       cadence_tokens: int | None = None) -> str:
    """The section, for `base` (the demo's config) with `preset` and `batch_size`; `cadence_tokens`
    (default `tokens`) sizes the run that times saves at the default stops: a run of a few seconds
    would overstate what seven saves cost a real one."""
    from framework.data.encoding import mean_counted_tokens, prepare
    from framework.models.transformer import build_model, count_params, training_flops
    from harness.report import machine

    cfg = bench_config(base, "unused", preset, batch_size)
    train_split = prepare(cfg.data)["train"]
    hand, ours = [], []
    with tempfile.TemporaryDirectory() as d:
        for i in range(2):  # alternated, so drift in the machine's speed hits both
            hand.append(hand_written_tokens_per_s(cfg, train_split))
            ours.append(recoup_tokens_per_s(base, os.path.join(d, f"recoup{i}"), preset, batch_size, tokens))
            print(f"hand-written {hand[-1]:,.0f} tok/s, recoup {ours[-1]:,.0f} tok/s", flush=True)
        overhead = checkpoint_and_data_overhead(base, os.path.join(d, "cadence"), preset, batch_size,
                                                cadence_tokens or tokens)
    n_params = count_params(build_model(cfg.model, 0))
    mean_len = mean_counted_tokens(train_split)
    flops_per_token = training_flops(cfg.model, n_params, 1, mean_len)
    peak, how = peak_matmul_flops()
    best_hand, best_ours = max(hand), max(ours)
    ratio = best_ours / best_hand
    default = (preset, batch_size, tokens, cadence_tokens) == ("small", 128, TOKENS, None)
    flags = f" --preset {preset} --batch-size {batch_size} --tokens {tokens}" + \
        (f" --cadence-tokens {cadence_tokens}" if cadence_tokens else "")
    command = "python -m experiments.bench_training" + ("" if default else flags)
    heading = SECTION if default else f"{SECTION} ({preset}, {cfg.model.dtype}, batch {batch_size})"
    lines = [heading, "", machine(), "",
             f"`{command}`: the `{preset}` model ({n_params:,} parameters, {cfg.model.dtype} compute), batch "
             f"{batch_size} sequences of the demo's data ({mean_len:.1f} counted tokens each on average), "
             f"{tokens:,} tokens per timed run"
             + (f" ({cadence_tokens:,} in the run at the default stops); " if cadence_tokens else "; ") +
             "each loop timed twice, alternating, best of each.", "",
             "| measure | value | target |", "|---|---|---|",
             f"| recoup `train` / hand-written loop, tokens/s | {ratio:.3f} ({best_ours:,.0f} / {best_hand:,.0f}) "
             f"| >= 0.95: {'met' if ratio >= 0.95 else '**not met**'} |",
             f"| model FLOP utilization (recoup, {flops_per_token / 1e6:.2f} MFLOP per token; peak from a {how}) "
             f"| {best_ours * flops_per_token / peak:.1%} | GPU goal >= 40% (H100, >= 100M parameters) |",
             f"| checkpoint saves, blocking part, share of wall time ({overhead['saves']} saves at the default "
             f"stops) | {overhead['save_share']:.2%} | <= 3%: "
             f"{'met' if overhead['save_share'] <= 0.03 else '**not met**'} |",
             f"| time choosing and building batches, share of step time (mean / worst window) | "
             f"{overhead['data_share']:.2%} / {overhead['data_worst']:.2%} | < 5%: "
             f"{'met' if overhead['data_share'] < 0.05 else '**not met**'} |", ""]
    return "\n".join(lines)


# ---- packed text rows: recoup's `train --text` against a hand-written loop that passes positions and segments

PACKED_SECTION = "## Training loop on packed text rows: recoup against a hand-written loop"
PACKED = {"preset": "small", "seq_len": 512, "batch_size": 8, "tokens": 120 * 8 * 512, "hand_steps": 40,
          "repeats": 5, "corpus_mb": 1.0}  # the defaults of `--packed`: 120 steps of recoup per round


def text_config(base, corpus: str, out_dir: str, preset: str | None = "small", seq_len: int = 512,
                batch_size: int = 8, tokens: int = 0):
    """`base` trained on the text corpus `corpus` in packed rows of `seq_len` tokens, as
    `recoup train --text corpus --seq-len ... --val-size 4 --test-size 4 --stops 1.0` would."""
    from framework.config import DataConfig

    data = DataConfig(task=None, text=corpus, seq_len=seq_len, val_size=4, test_size=4,
                      tokenizer=base.data.tokenizer)
    return bench_config(base, out_dir, preset, batch_size, data=data, budget_tokens=tokens, stops=(1.0,))


def hand_written_packed_step(cfg, tx: optax.GradientTransformation | None = None):
    """What a user would write for packed rows: `hand_written_step` with the batch's positions and a mask
    that keeps attention causal and inside each segment, the model called as recoup's step calls it.
    `tx`: the optimizer (default: `hand_written_step`'s AdamW with clipping). Returns (step(params,
    opt_state, inputs, targets, mask, positions, segment_ids) -> (params, opt_state, loss), params, opt_state)."""
    from framework.models.protocol import build
    from framework.models.transformer import segment_causal_mask

    graphdef, params = nnx.split(build(cfg.model, cfg.seed), nnx.Param)
    tx = tx or hand_written_optimizer(cfg)
    step = _jitted_step(graphdef, tx, lambda model, inputs, positions, segment_ids:
                        model(inputs, positions, segment_causal_mask(segment_ids))[0])
    return step, params, tx.init(params)


def hand_written_packed_tokens_per_s(cfg, steps: int = 40, warmup: int = 5) -> float:
    """The packed step in a plain loop over the corpus of `cfg.data.text`, rows packed on the host each
    step (the stream recoup reads, past the same held-out documents)."""
    from framework.data import text
    from framework.data.encoding import counted_tokens

    step, params, opt_state = hand_written_packed_step(cfg)
    data = text.prepare(cfg.data)
    state, tokens, loss = data.stream.init(), 0, None
    for i in range(warmup + steps):
        if i == warmup:
            jax.block_until_ready(loss)
            t0, tokens = time.perf_counter(), 0
        rows, state = data.stream.next_rows(state, cfg.batch_size)
        b = rows.batch()
        tokens += counted_tokens(b, data.tokenizer.pad)
        params, opt_state, loss = step(params, opt_state, b.inputs, b.targets, b.loss_mask, b.positions,
                                       b.segment_ids)
    jax.block_until_ready(loss)
    return tokens / (time.perf_counter() - t0)


def packed_benchmark(base, preset: str = PACKED["preset"], seq_len: int = PACKED["seq_len"],
                     batch_size: int = PACKED["batch_size"], tokens: int = PACKED["tokens"],
                     hand_steps: int = PACKED["hand_steps"], repeats: int = PACKED["repeats"],
                     corpus_mb: float = PACKED["corpus_mb"]) -> dict:
    """tokens/s of recoup's `train` on a generated text corpus in packed rows and of the hand-written
    packed loop, `repeats` rounds alternating, in this process.

    Args:
      base: the recipe's config (optimizer, seed, tokenizer): the demo's.
      preset: the model preset of both loops.
      seq_len: tokens per packed row.
      batch_size: rows per step.
      tokens: counted tokens per recoup run; its first log window (compilation) is left out.
      hand_steps: timed steps of the hand-written loop, after 5 warm-ups (which compile).
      repeats: rounds; each times both loops, the hand-written one first in even rounds (0, 2, ...).
      corpus_mb: MiB of generated .txt paragraphs (harness.bench_text.write_corpus); read again from its
        start when finished.

    Returns:
      {"hand": [tokens/s per round], "recoup": [...], "ratio": median recoup / median hand-written,
      "ratio_best": best / best, "params", and the arguments}.
    """
    from framework.models.protocol import build
    from framework.models.transformer import count_params
    from harness.bench_text import write_corpus

    hand, ours = [], []
    with tempfile.TemporaryDirectory() as d:
        corpus = os.path.join(d, "corpus")
        write_corpus(corpus, corpus_mb)
        for i in range(repeats):
            cfg = text_config(base, corpus, os.path.join(d, f"recoup{i}"), preset, seq_len, batch_size, tokens)
            # Alternated, and the order flipped every round (hand-written first in even rounds), so neither
            # a drift in the machine's speed nor going first favours one loop.
            for loop in (("hand", "recoup") if i % 2 == 0 else ("recoup", "hand")):
                if loop == "hand":
                    hand.append(hand_written_packed_tokens_per_s(cfg, steps=hand_steps))
                else:
                    ours.append(steady_tokens_per_s(cfg))
            print(f"packed: hand-written {hand[-1]:,.0f} tok/s, recoup {ours[-1]:,.0f} tok/s", flush=True)
        costs = packed_step_costs(cfg)
    return {"preset": preset, "seq_len": seq_len, "batch_size": batch_size, "tokens": tokens,
            "hand_steps": hand_steps, "corpus_mb": corpus_mb, "params": count_params(build(cfg.model, cfg.seed)),
            "hand": hand, "recoup": ours, "ratio": float(np.median(ours) / np.median(hand)),
            "ratio_best": max(ours) / max(hand),
            "ratio_paired": float(np.median(np.asarray(ours) / np.asarray(hand))), "step_costs": costs}


def packed_step_costs(cfg) -> dict[str, dict[str, float]]:
    """XLA's cost analysis of the two compiled steps on one packed batch of `cfg`: {"hand" | "recoup":
    {"flops", "bytes"}}. What each step asks of the machine, free of timing noise."""
    from framework.data import text
    from framework.models import protocol
    from framework.runner.build import build as build_parts
    from framework.training.step import make_train_step

    def cost(compiled) -> dict[str, float]:
        c = compiled.cost_analysis()
        return {"flops": float(c["flops"]), "bytes": float(c["bytes accessed"])}

    step, params, opt_state = hand_written_packed_step(cfg)
    data = text.prepare(cfg.data)
    b = data.stream.next_rows(data.stream.init(), cfg.batch_size)[0].batch()
    hand = step.lower(params, opt_state, b.inputs, b.targets, b.loss_mask, b.positions, b.segment_ids).compile()
    parts = build_parts(cfg, splits=data)
    graphdef, params = nnx.split(protocol.build(cfg.model, cfg.seed, parts.tokenizer.vocab_size), nnx.Param)
    optimizer = parts.optimizer(cfg.batch_size)
    ours = make_train_step(graphdef, optimizer, parts.schedule, cfg.model.dropout > 0).lower(
        params, optimizer.init(params), parts.batches.draw(parts.batches.init(), 0)[0], np.float32(0),
        jax.random.key(0), np.int32(0), np.float32(1)).compile()
    return {"hand": cost(hand), "recoup": cost(ours)}


def packed_section(r: dict) -> str:
    """The docs/benchmarks.md section of a `packed_benchmark` result."""
    from harness.report import machine

    default = all(r[k] == v for k, v in PACKED.items() if k != "repeats") and len(r["hand"]) == PACKED["repeats"]
    command = "python -m experiments.bench_training --packed" + ("" if default else (
        f" --preset {r['preset']} --seq-len {r['seq_len']} --batch-size {r['batch_size']} --tokens {r['tokens']}"
        f" --repeats {len(r['hand'])}"))
    rounds = ", ".join(f"{o:,.0f} / {h:,.0f}" for o, h in zip(r["recoup"], r["hand"], strict=True))
    return "\n".join([
        PACKED_SECTION, "", machine(), "",
        f"`{command}`: the `{r['preset']}` model ({r['params']:,} parameters) on a generated {r['corpus_mb']:g} MiB "
        f".txt corpus (`harness.bench_text.write_corpus`), batch {r['batch_size']} packed rows of {r['seq_len']} "
        "tokens (byte tokenizer; every slot filled, so every slot counted). recoup: `train` on the corpus as "
        f"`recoup train --text` runs it, {r['tokens']:,} tokens per run, its log windows after the compiling one "
        "(packing, step and logging included; the final evaluation and save excluded). Hand-written: one "
        "`jax.jit` step over `nnx.split` parameters, the model called with the rows' `positions` and a "
        "segment-causal mask, AdamW with clipping; the rows packed on the host each step from the same stream; "
        f"{r['hand_steps']} steps after 5 warm-ups. {len(r['hand'])} rounds, alternating, the hand-written loop "
        "first in odd rounds and second in even ones; the medians compared. On a shared CPU the claim is the "
        "ratio; absolute tokens/s are context. The two compiled steps' cost, from XLA's cost analysis, is "
        "below the timings: the same model call and loss, recoup's step adding per-example losses and the "
        "non-finite guard.", "",
        "| measure | value | target |", "|---|---|---|",
        f"| recoup `train` / hand-written loop, tokens/s (median of each) | {r['ratio']:.3f} "
        f"({np.median(r['recoup']):,.0f} / {np.median(r['hand']):,.0f}) | >= 1.0: "
        f"{'met' if r['ratio'] >= 1.0 else '**not met**'} |",
        f"| the same, best of each | {r['ratio_best']:.3f} | |",
        f"| every round, recoup / hand-written tokens/s | {rounds} | |",
        *([f"| median of the rounds' ratios | {r['ratio_paired']:.3f} | |"] if "ratio_paired" in r else []),
        *([_costs_row(c)] if (c := r.get("step_costs")) else []), ""])


def _costs_row(c: dict[str, dict[str, float]]) -> str:
    flops, data = (c["recoup"][k] / c["hand"][k] for k in ("flops", "bytes"))
    return (f"| compiled step, recoup / hand-written: FLOPs; bytes accessed | {flops:.4f} "
            f"({c['recoup']['flops'] / 1e9:,.2f} / {c['hand']['flops'] / 1e9:,.2f} GFLOP); {data:.4f} "
            f"({c['recoup']['bytes'] / 2**30:,.2f} / {c['hand']['bytes'] / 2**30:,.2f} GiB) | |")
