"""Training-loop benchmark: recoup's `train` against a minimal hand-written loop, in one run.

    python -m experiments.bench_training            # this section only, spliced into docs/benchmarks.md
    python -m experiments.bench_training --llama    # the Llama-family section only (below)
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
"""

from __future__ import annotations

import argparse

from experiments.demo import get_config
from harness.bench_llama import llama_benchmark, llama_section
from harness.bench_training import TOKENS, training_benchmark
from harness.report import splice


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", help="model preset (GPU: base, ~106M parameters in bfloat16)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--tokens", type=int, default=TOKENS, help="tokens per timed run")
    p.add_argument("--cadence-tokens", type=int, help="tokens of the run at the default stops (default: --tokens)")
    p.add_argument("--llama", action="store_true", help="the Llama-family model from a factory instead (its own "
                   "section; the demo's batch, default sizes)")
    args = p.parse_args(argv)
    if args.llama:
        section = llama_section(llama_benchmark(get_config()))
    else:
        section = training_benchmark(get_config(), args.preset, args.batch_size, args.tokens, args.cadence_tokens)
    print(section)
    splice(section)


if __name__ == "__main__":
    main()
