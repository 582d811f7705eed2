"""Training-loop benchmark: recoup's `train` against a minimal hand-written loop, in one run.

    python -m experiments.bench_training            # this section only, spliced into docs/benchmarks.md
    python -m experiments.bench_training --llama    # the Llama-family section only (below)
    python -m experiments.bench_training --packed   # packed text rows, seq_len 512 (below)
    make bench                                      # every benchmark

The demo's model and batch (`small`, 8-digit addition, batch 128). Measured here, in the same process:

- tokens/s of `framework.runner.build.train` (steady state: its log windows after the first, which holds
  the compilation; data, step and logging included, evaluations excluded) against a hand-written
  jax + flax.nnx + optax loop of the same model and batch size (optax.adamw with clipping and a
  warmup-cosine schedule, uniform draws built on the host each step), timed after a warm-up.
  Alternated twice; the better of each is compared.
- model FLOP utilization: achieved training FLOP/s (6 x parameters x tokens + causal attention,
  `framework.models.transformer.training_flops`) over the peak matmul FLOP/s of this machine, measured with a
  large jitted matmul (float32 on a CPU, bfloat16 on a GPU).
- checkpoint overhead at the default cadence (the default stops, asynchronous saves): the blocking
  part of every save (the `save` lines of metrics.jsonl: the write of the previous checkpoint
  waited for and sealed, then this one started) over the run's wall time; and
  the share of step time spent choosing and building batches (`data_time_frac`).

With `--llama`, its own section: a Llama-family model (`harness.bench_llama`: ~3.2M parameters,
grouped-query attention, SwiGLU, RMSNorm, RoPE) trained by `train` through the model-factory path
(`ModelConfig.factory`, as `recoup train --model harness.bench_llama:bench_llama` does) against the
same hand-written loop on that model, the demo's batch, 3 rounds alternating, the best of each compared.

With `--packed`, its own section: `train` on a generated text corpus in packed rows (as `recoup train
--text` runs it: the `small` preset, 8 rows of 512 tokens, 120 steps) against a hand-written loop that
calls the model with the rows' `positions` and a segment-causal mask (`harness.bench_training.
hand_written_packed_step`, the same model call and loss as recoup's step; tests/test_bench_packed.py
checks their losses agree), rows packed from the same stream on the host each step; 5 rounds
alternating (the order flipped every round), the medians compared (target >= 1.0), and the two compiled
steps' FLOPs and bytes from XLA's cost analysis. `--preset`, `--batch-size` (default 8 here), `--tokens`
and `--seq-len` size it.
"""

from __future__ import annotations

import argparse

from experiments.demo import get_config
from harness.bench_llama import llama_benchmark, llama_section
from harness.bench_training import PACKED, TOKENS, packed_benchmark, packed_section, training_benchmark
from harness.report import splice


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", help="model preset (GPU: base, ~106M parameters in bfloat16)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default 128; --packed: rows, default 8)")
    p.add_argument("--tokens", type=int, help=f"tokens per timed run (default {TOKENS:,}; --packed: "
                   f"{PACKED['tokens']:,})")
    p.add_argument("--cadence-tokens", type=int, help="tokens of the run at the default stops (default: --tokens)")
    p.add_argument("--llama", action="store_true", help="the Llama-family model from a factory instead (its own "
                   "section; the demo's batch, default sizes)")
    p.add_argument("--packed", action="store_true", help="packed text rows against a hand-written loop that passes "
                   "positions and segments (its own section)")
    p.add_argument("--seq-len", type=int, default=PACKED["seq_len"], help="--packed: tokens per row")
    p.add_argument("--repeats", type=int, default=PACKED["repeats"], help="--packed: rounds")
    args = p.parse_args(argv)
    if args.packed:
        section = packed_section(packed_benchmark(
            get_config(), args.preset, args.seq_len, args.batch_size or PACKED["batch_size"],
            args.tokens or PACKED["tokens"], repeats=args.repeats))
    elif args.llama:
        section = llama_section(llama_benchmark(get_config()))
    else:
        section = training_benchmark(get_config(), args.preset, args.batch_size or 128, args.tokens or TOKENS,
                                     args.cadence_tokens)
    print(section)
    splice(section)


if __name__ == "__main__":
    main()
