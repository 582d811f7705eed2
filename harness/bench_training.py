"""The training-loop benchmark's measurements: recoup's train against a hand-written loop, MFU,
checkpoint and data overhead (the recipe and its command: experiments/bench_training.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

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


def hand_written_step(cfg):
    """What a user would write: one jitted step, AdamW with clipping and the same schedule.
    Returns (step(params, opt_state, inputs, targets, mask) -> (params, opt_state, loss), params, opt_state).
    The model is the one `cfg.model` names, recoup's Transformer or a factory's (the same parameters)."""
    from framework.models.protocol import build
    from framework.models.transformer import forward

    graphdef, params = nnx.split(build(cfg.model, cfg.seed), nnx.Param)
    o = cfg.optim
    schedule = optax.warmup_cosine_decay_schedule(0.0, o.peak_lr, 10, 1000)
    tx = optax.chain(optax.clip_by_global_norm(o.clip_norm),
                     optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, inputs, targets, mask):
        def loss_fn(p):
            logits = forward(nnx.merge(graphdef, p), inputs)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets) * mask
            return ce.sum() / jnp.maximum(mask.sum(), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, params, opt_state


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
