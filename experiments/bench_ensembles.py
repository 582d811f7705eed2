"""Output-ensemble latency: one model, a k-member vmapped ensemble, and k sequential decodes.

    python -m experiments.bench_ensembles

Greedy decoding of a fixed batch of 8-digit addition prompts on the demo's model shape. Weights
are random (latency does not depend on what was learned); random weights almost never emit EOS,
so every decode runs all `max_new` steps, which the table reports. As in experiments/bench.py, on
a CPU only ratios against the one-model time of the same run are reported (absolute times on a
shared 2-core machine mean little); on a GPU the times are added.
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np
from flax import nnx

from ensembles.output import ensemble_greedy_decode, member_weights, stack_params
from experiments.demo import get_config
from framework import evaluate, tasks
from framework.model import build_model
from framework.tokenizer import PAD


def _time(fn, repeats: int) -> float:
    """Median seconds of `fn()` after one warm-up call (which compiles)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def output_ensemble_latency(ks=(2, 4, 8), n_prompts: int = 128, max_new: int = 11, repeats: int = 5) -> str:
    """A markdown section: decode latency of k-member output ensembles relative to one model.

    Args:
      ks: ensemble sizes to time.
      n_prompts: prompts in the one decoded batch (8-digit addition, as in the demo).
      max_new: tokens generated per prompt (an 8-digit sum has at most 9 digits, then EOS).
      repeats: timed calls per measurement; the median is reported.

    Returns:
      A "## Output ensembles: decode latency" section with one table row per k.
    """
    cfg = get_config()
    graphdef, _ = nnx.split(build_model(cfg.model, 0), nnx.Param)
    members = [nnx.split(build_model(cfg.model, seed), nnx.Param)[1] for seed in range(max(ks))]
    raw = tasks.addition(n_prompts, cfg.data.max_digits, seed=0, operand_format=cfg.data.operand_format)
    prompts = evaluate.left_padded_prompts(list(raw["prompt"]))

    def single(params):
        return evaluate.greedy_decode(graphdef, params, prompts, max_new)

    t_one = _time(lambda: single(members[0]), repeats)
    rows, outputs = [], [single(p) for p in members]
    for k in ks:
        stacked, weights = stack_params(members[:k]), member_weights(None, k)
        ensemble = functools.partial(ensemble_greedy_decode, graphdef, stacked, weights, prompts, max_new)
        t_vmap = _time(ensemble, repeats)
        t_seq = _time(lambda k=k: [single(p) for p in members[:k]], repeats)
        rows.append((k, t_vmap, t_seq))
        outputs.append(ensemble())
    # A row that ended early would let its decode stop sooner: say whether any did.
    full_length = all(bool((np.asarray(out) != PAD).all()) for out in outputs)

    on_cpu = jax.default_backend() == "cpu"
    device = jax.devices()[0].device_kind
    lines = [
        "## Output ensembles: decode latency",
        "",
        f"Greedy decoding of {n_prompts} 8-digit addition prompts, {max_new} new tokens "
        f"({'every' if full_length else 'not every'} decode ran all steps), on the demo's model shape "
        f"(`{cfg.preset}`, random weights); median of {repeats} calls after a compiling one, on {device}. "
        "A vmapped ensemble is one compiled decode over stacked members (log-prob averaging); "
        "sequential is k single-model decodes one after another (what a vote costs).",
        "",
    ]
    if on_cpu:
        lines += ["| members k | vmapped / one model | sequential / one model | vmapped / sequential |",
                  "|---:|---:|---:|---:|"]
        lines += [f"| {k} | {v / t_one:.2f} | {s / t_one:.2f} | {v / s:.2f} |" for k, v, s in rows]
    else:
        lines += ["| members k | vmapped | sequential | vmapped / one model | sequential / one model |",
                  "|---:|---:|---:|---:|---:|",
                  f"| 1 | {t_one * 1e3:.1f} ms | {t_one * 1e3:.1f} ms | 1.00 | 1.00 |"]
        lines += [f"| {k} | {v * 1e3:.1f} ms | {s * 1e3:.1f} ms | {v / t_one:.2f} | {s / t_one:.2f} |"
                  for k, v, s in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(output_ensemble_latency())
