"""The ensemble benchmarks' measurements: output-ensemble decode latency against k, weight averaging's
time and memory (the recipe and its command: experiments/bench_ensembles.py).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import numpy as np
from flax import nnx

from ensembles.output import ensemble_greedy_decode, member_weights, stack_params
from framework.config import PRESETS
from framework.data import tasks
from framework.data.files import column
from framework.data.tokenizer import BYTE
from framework.evaluation import evaluate
from framework.models.transformer import build_model
from harness.report import median_seconds


def output_ensemble_latency(base, ks=(2, 4, 8), n_prompts: int = 128, max_new: int = 11, repeats: int = 5,
                            preset: str | None = None) -> str:
    """A markdown section: decode latency of k-member output ensembles relative to one model.

    Args:
      base: the recipe's config (the demo's): its data and model.
      ks: ensemble sizes to time.
      n_prompts: prompts in the one decoded batch (8-digit addition, as in the demo).
      max_new: tokens generated per prompt (an 8-digit sum has at most 9 digits, then EOS).
      repeats: timed calls per measurement; the median is reported.
      preset: a model preset instead of the demo's model (the section's heading then names it).

    Returns:
      A "## Output ensembles: decode latency" section with one table row per k.
    """
    cfg = base
    if preset:
        cfg = dataclasses.replace(cfg, model=PRESETS[preset], preset=preset)
    graphdef, _ = nnx.split(build_model(cfg.model, 0), nnx.Param)
    members = [nnx.split(build_model(cfg.model, seed), nnx.Param)[1] for seed in range(max(ks))]
    raw = tasks.addition(n_prompts, cfg.data.max_digits, seed=0, operand_format=cfg.data.operand_format)
    prompts = evaluate.left_padded_prompts(column(raw, "prompt"), BYTE)

    def single(params):
        return evaluate.greedy_decode(graphdef, params, prompts, max_new, BYTE.ends)

    t_one = median_seconds(lambda: single(members[0]), repeats)
    rows, outputs = [], [single(p) for p in members]
    for k in ks:
        stacked, weights = stack_params(members[:k]), member_weights(None, k)
        ensemble = functools.partial(ensemble_greedy_decode, graphdef, stacked, weights, prompts, max_new, BYTE.ends)
        t_vmap = median_seconds(ensemble, repeats)
        t_seq = median_seconds(lambda k=k: [single(p) for p in members[:k]], repeats)
        rows.append((k, t_vmap, t_seq))
        outputs.append(ensemble())
    # A row that ended early would let its decode stop sooner: say whether any did.
    full_length = all(bool((np.asarray(out) != BYTE.pad).all()) for out in outputs)

    on_cpu = jax.default_backend() == "cpu"
    device = jax.devices()[0].device_kind
    lines = [
        "## Output ensembles: decode latency" + (f" (`{preset}`, {device})" if preset else ""),
        "",
        f"Greedy decoding of {n_prompts} 8-digit addition prompts, {max_new} new tokens "
        f"({'every' if full_length else 'not every'} decode ran all steps), on "
        + (f"the `{preset}` model ({cfg.model.dtype}" if preset else f"the demo's model shape (`{cfg.preset}`")
        + f", random weights); median of {repeats} calls after a compiling one, on {device}. "
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




# == weight averaging: build time and peak memory against k =====================================

# A model big enough that its parameters dominate the process's memory (~33M parameters, 134 MB).
AVERAGING_MODEL = dict(d_model=512, n_layers=8, n_heads=8, d_ff=2048)


def _averaging_worker(ckpt_dir: str, k: int, streamed: bool) -> dict:
    """Average checkpoints 0..k-1 of `ckpt_dir` in this process; peak RSS growth and seconds."""
    import resource

    import orbax.checkpoint as ocp

    from ensembles.averaging import average
    from framework.config import ModelConfig

    model = ModelConfig(**AVERAGING_MODEL)
    abstract = nnx.split(nnx.eval_shape(lambda: build_model(model, 0)), nnx.Param)[1]
    ckptr = ocp.StandardCheckpointer()
    paths = [f"{ckpt_dir}/{i}" for i in range(k)]
    with open("/proc/self/statm") as f:  # resident pages now: the process before any weights exist
        before = int(f.read().split()[1]) * resource.getpagesize() / 1024
    jax.block_until_ready(average([ckptr.restore(paths[0], abstract)]))  # compile and warm the reader
    t = time.perf_counter()
    trees = (ckptr.restore(p, abstract) for p in paths)
    out = average(trees if streamed else list(trees))
    jax.block_until_ready(out)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"k": k, "streamed": streamed, "seconds": seconds, "peak_mb": (peak - before) / 1024}


def averaging_cost(ks=(1, 2, 4, 8)) -> str:
    """A markdown section: time and peak memory of averaging k checkpoints, streamed vs all in memory.

    Each measurement runs in a fresh process (peak RSS only grows within one), on random weights of
    a ~33M-parameter model saved as k Orbax checkpoints.
    """
    import json
    import subprocess
    import sys
    import tempfile

    import orbax.checkpoint as ocp

    from framework.config import ModelConfig
    from framework.models.transformer import count_params

    model = ModelConfig(**AVERAGING_MODEL)
    n_params = count_params(build_model(model, 0))
    tree_mb = n_params * 4 / 2**20
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckptr = ocp.StandardCheckpointer()
        for i in range(max(ks)):
            ckptr.save(f"{tmp}/{i}", nnx.split(build_model(model, i), nnx.Param)[1])
        ckptr.wait_until_finished()
        for streamed in (True, False):
            for k in ks:
                code = (f"import json; from harness.bench_ensembles import _averaging_worker; "
                        f"print(json.dumps(_averaging_worker({tmp!r}, {k}, {streamed})))")
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = {r["streamed"]: r["seconds"] for r in rows if r["k"] == 1}
    lines = ["## Weight averaging: build time and peak memory against k", "",
             f"Averaging k Orbax checkpoints of a {n_params / 1e6:.1f}M-parameter model ({tree_mb:.0f} MB of float32 "
             "weights each), each measurement in a fresh process: peak resident memory above the process before "
             "it loaded any weights (a warm-up average of one checkpoint included), and time relative to k = 1 "
             "in the same mode. `ensembles.averaging.average` streams: it reads one "
             "checkpoint at a time into a running sum. 'All in memory' loads the k trees first, for comparison.", "",
             "| k | streamed: peak | streamed: time / k=1 | all in memory: peak | in memory: time / k=1 |",
             "|---:|---:|---:|---:|---:|"]
    for k in ks:
        s = next(r for r in rows if r["k"] == k and r["streamed"])
        m = next(r for r in rows if r["k"] == k and not r["streamed"])
        lines.append(f"| {k} | {s['peak_mb']:.0f} MB ({s['peak_mb'] / tree_mb:.1f} trees) | "
                     f"{s['seconds'] / base[True]:.2f} | {m['peak_mb']:.0f} MB "
                     f"({m['peak_mb'] / tree_mb:.1f} trees) | {m['seconds'] / base[False]:.2f} |")
    return "\n".join(lines) + "\n"
