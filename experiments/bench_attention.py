"""Attention micro-benchmark: `jax.nn.dot_product_attention` (what recoup's models run) against the
einsum attention they ran before, forward and backward, at 1024 and 2048 tokens, in one run.

    python -m experiments.bench_attention          # this section only, spliced into docs/benchmarks.md
    python -m experiments.bench_attention --seq-lens 1024,2048,4096 --dtype bfloat16   # e.g. on a GPU
    make bench                                     # every benchmark

The shape of the long-sequence presets' attention (`long-1k`..`long-4k`: 8 heads of 64), one row per
step, two masks: the training layout's causal mask (a numpy array, run as `is_causal`) and a packed
row of four documents (a block-diagonal causal mask passed in, traced). Measured: the gradients of
q, k and v (what training runs), each attention timed in alternating rounds; and the compiled
program's temporary memory (`memory_analysis()`), the scores and probabilities an attention keeps.
On a CPU both run XLA; on a GPU in bfloat16 or float16, dpa runs cuDNN's flash attention.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp

from harness.bench_attention import attention_section, attention_timings
from harness.report import splice


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-lens", default="1024,2048", help="comma-separated sequence lengths")
    p.add_argument("--batch", type=int, default=1, help="rows per step")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = p.parse_args(argv)
    dtype = jnp.dtype(args.dtype)
    rows = attention_timings(tuple(int(s) for s in args.seq_lens.split(",")), batch=args.batch, dtype=dtype)
    section = attention_section(rows, batch=args.batch, dtype=dtype)
    print(section)
    splice(section)


if __name__ == "__main__":
    main()
