"""The Llama-family benchmark's measurements: a Llama-family model trained by recoup's `train` through
the model-factory path (`ModelConfig.factory`, what `recoup train --model module:attr` sets) against
a hand-written jax + flax.nnx + optax loop of the same model, batch and optimizer (the recipe and
its command: `python -m experiments.bench_training --llama`).

The factories below are what a user would write in their own module: `attr(vocab_size, rngs)`
returning a `framework.models.llama.Llama`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

SECTION = "## Training loop: a Llama-family model from a factory, recoup against a hand-written loop"
TOKENS = 100_000  # per timed recoup run: ~32 steps of the demo's batch, 2 log windows after the compiling one
HAND_STEPS = 25  # timed steps of the hand-written loop (after 5 warm-ups): about as many as recoup's timed
REPEATS = 3  # rounds, each timing both loops one after the other; the best of each is compared

# Llama-family shapes: grouped-query attention (num_key_value_heads < num_attention_heads), SwiGLU,
# RMSNorm and RoPE are in every one (framework.models.llama); the vocabulary is the tokenizer's.
SIZES = {
    # ~3.2M parameters: 0.5-0.9 steps/s of the demo's batch on 2 shared CPU cores (measured)
    "bench": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2),
    # tests: compiles and trains in seconds
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}
FACTORIES = {"bench": "harness.bench_llama:bench_llama", "tiny": "harness.bench_llama:tiny_llama"}


def _llama(size: str, vocab_size: int, rngs):
    from framework.models.llama import Llama, LlamaConfig

    return Llama(LlamaConfig(vocab_size=vocab_size, **SIZES[size]), rngs=rngs)


def bench_llama(vocab_size: int, rngs):
    """The benchmark's model (`SIZES["bench"]`), as `--model harness.bench_llama:bench_llama` builds it."""
    return _llama("bench", vocab_size, rngs)


def tiny_llama(vocab_size: int, rngs):
    """A tiny one for tests (`SIZES["tiny"]`)."""
    return _llama("tiny", vocab_size, rngs)


def llama_benchmark(base, size: str = "bench", batch_size: int = 128, tokens: int = TOKENS,
                    hand_steps: int = HAND_STEPS, repeats: int = REPEATS) -> dict:
    """tokens/s of recoup's `train` and of the hand-written loop on `SIZES[size]`, `repeats` rounds.

    Args:
      base: the recipe's config (data, optimizer, seed): the demo's.
      size: a key of `SIZES`.
      batch_size: sequences per step, for both loops.
      tokens: counted tokens per recoup run; its first log window (compilation) is left out.
      hand_steps: timed steps of the hand-written loop, after 5 warm-ups (which compile).
      repeats: rounds; each times the hand-written loop, then recoup's.

    Returns:
      {"hand": [tokens/s per round], "recoup": [...], "ratio": best recoup / best hand-written,
      "params", "batch_size", "seq_len", "mean_tokens", "tokens", "hand_steps", "size", "shape"}.
    """
    from framework.config import ModelConfig
    from framework.data.encoding import mean_counted_tokens, prepare
    from framework.models import protocol
    from framework.models.transformer import count_params
    from harness.bench_training import bench_config, hand_written_tokens_per_s, steady_tokens_per_s

    cfg = bench_config(base, "unused", batch_size=batch_size, model=ModelConfig(factory=FACTORIES[size]),
                       preset=None, budget_tokens=tokens, stops=(1.0,))
    train_split = prepare(cfg.data)["train"]
    hand, ours = [], []
    with tempfile.TemporaryDirectory() as d:
        for i in range(repeats):  # alternated, so drift in the machine's speed hits both
            hand.append(hand_written_tokens_per_s(cfg, train_split, steps=hand_steps))
            ours.append(steady_tokens_per_s(dataclasses.replace(cfg, out_dir=os.path.join(d, f"recoup{i}"))))
            print(f"llama ({size}): hand-written {hand[-1]:,.0f} tok/s, recoup {ours[-1]:,.0f} tok/s", flush=True)
    return {"size": size, "shape": SIZES[size], "params": count_params(protocol.build(cfg.model, cfg.seed)),
            "batch_size": batch_size, "seq_len": int(train_split.tokens.shape[1] - 1),
            "mean_tokens": mean_counted_tokens(train_split), "tokens": tokens, "hand_steps": hand_steps,
            "hand": hand, "recoup": ours, "ratio": max(ours) / max(hand)}


def llama_section(r: dict) -> str:
    """The docs/benchmarks.md section of a `llama_benchmark` result."""
    from harness.report import machine

    s = r["shape"]
    default = (r["size"], r["batch_size"], r["tokens"], r["hand_steps"]) == ("bench", 128, TOKENS, HAND_STEPS)
    command = "python -m experiments.bench_training --llama" + \
        ("" if default else f" (size {r['size']}, batch {r['batch_size']}, {r['tokens']:,} tokens)")
    rounds = ", ".join(f"{o:,.0f} / {h:,.0f}" for o, h in zip(r["recoup"], r["hand"], strict=True))
    return "\n".join([
        SECTION, "", machine(), "",
        f"`{command}`: `framework.models.llama.Llama` ({r['params']:,} parameters, float32; hidden "
        f"{s['hidden_size']}, {s['num_hidden_layers']} layers, {s['num_attention_heads']} query heads sharing "
        f"{s['num_key_value_heads']} key/value heads, SwiGLU width {s['intermediate_size']}, RMSNorm, RoPE), "
        f"built by the factory `{FACTORIES[r['size']]}` as `recoup train --model` builds it. Batch "
        f"{r['batch_size']} sequences of the demo's data (width {r['seq_len']}, {r['mean_tokens']:.1f} counted "
        f"tokens each on average), AdamW with clipping in both loops. recoup: `train`, {r['tokens']:,} tokens "
        "per run, its log windows after the compiling one (data, step and logging included; the final "
        f"evaluation and save excluded). Hand-written: one `jax.jit` step over `nnx.split` parameters, "
        f"{r['hand_steps']} steps after 5 warm-ups, batches built on the host each step. {len(r['hand'])} "
        "rounds, alternating; the best of each is compared. On a shared CPU the claim is the ratio; "
        "absolute tokens/s are context.", "",
        "| measure | value | target |", "|---|---|---|",
        f"| recoup `train` / hand-written loop, tokens/s (best of each) | {r['ratio']:.3f} "
        f"({max(r['recoup']):,.0f} / {max(r['hand']):,.0f}) | >= 0.95: "
        f"{'met' if r['ratio'] >= 0.95 else '**not met**'} |",
        f"| every round, recoup / hand-written tokens/s | {rounds} | |", ""])
