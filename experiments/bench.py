"""Benchmarks, written to docs/benchmarks.md with the machine they ran on.

    make bench            # = python -m experiments.bench

On a CPU only ratios against a baseline measured in the same run are reported (absolute times on
a shared 2-core machine mean little); on a GPU absolute throughput is added.

1. Evaluation cost: scoring one stopping point by teacher-forced strict EM (one forward pass)
   against greedy decoding of the same split, and whether both give the same strict EM.
2. Checkpoint cost: a blocking `save` call (the asynchronous part runs beside training) against
   one train step.
3. The sections of harness/: ensembles, serving, the training loop, the Llama-family model, and
   attention at 1k and 2k tokens (experiments/bench_attention.py).
4. Streamed text training (experiments/bench_text.py): the data wait and peak memory on a 100 MB and a
   1 GB generated corpus; and packed text rows (seq_len 512) trained by `train` against a hand-written
   loop that passes positions and segments (`python -m experiments.bench_training --packed`).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from framework.checkpoints import store as checkpoints
from framework.config import PRESETS, DataConfig, OptimConfig
from framework.data.encoding import make_batch, prepare, uniform_sampler
from framework.evaluation import evaluate
from framework.models.transformer import build_model
from framework.training.optimizers import build as build_optimizer
from framework.training.schedules import warmup_constant
from framework.training.step import make_train_step
from harness.report import median_seconds


def bench_eval(graphdef, params, split) -> dict:
    """Decode time / teacher-forced time on one split, and both strict EMs."""

    def tf():
        return evaluate.teacher_forced(graphdef, params, split, 256)["strict_em"]

    def dec():
        return evaluate.decode_split(graphdef, params, split, 256)

    t_tf, t_dec = median_seconds(tf, 3), median_seconds(dec, 3)
    return {"eval_ratio": t_dec / t_tf, "tf_em": tf(), "dec_em": evaluate.score(dec(), split)["strict_em"],
            "tf_s": t_tf, "dec_s": t_dec}


def bench_preset(name: str, split, train_split) -> dict:
    model = build_model(PRESETS[name], 0)
    graphdef, params = nnx.split(model, nnx.Param)
    result = {"preset": name, **bench_eval(graphdef, params, split)}

    tx = build_optimizer(OptimConfig(), 128)
    step = make_train_step(graphdef, tx, warmup_constant(10**6, 1e-3), False)
    opt_state = tx.init(params)
    sampler = uniform_sampler(len(train_split), 128, 0)
    idx, _ = sampler.next(sampler.init(), 0)
    batch = make_batch(train_split, idx)
    key = jax.random.key(0)
    t_step = median_seconds(lambda: step(params, opt_state, batch, np.float32(0), key)[2]["loss"], 10)
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "run"))
        mgr = checkpoints.open_manager(os.path.join(d, "run"))
        saves = []
        for i in range(5):
            t = time.perf_counter()
            checkpoints.save(mgr, i, params=params, opt_state=opt_state, sampler_state=(np.asarray(0),),
                             progress={"step": i}, metadata={"tokens": i})
            saves.append(time.perf_counter() - t)
            checkpoints.seal_finished(mgr)
        mgr.close()
    return result | {"save_vs_step": float(np.median(saves[1:])) / t_step, "step_s": t_step}


def bench_trained(run_dir: str) -> dict | None:
    """The same comparison on the final checkpoint of a finished run (the demo's plain recipe), if there is one."""
    if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
        return None
    from framework.training.runs import open_run

    run = open_run(run_dir)
    return {"preset": f"{run.cfg.preset}, trained ({run_dir}, final checkpoint)",
            **bench_eval(run.graphdef, run.params(), run.split("validation"))}


def bench_data_time(budget_tokens: int = 200_000) -> list[dict]:
    """Share of wall time the host spends choosing and building batches, per curriculum.

    The demo's model and data, a short run each; the first log window (compilation) is left out.
    """
    import json

    from experiments.demo import get_config
    from framework.runner.build import train

    rows = []
    variants = {
        "uniform": ("uniform", {}, "constant", {}),
        "easy-to-hard": ("easy-to-hard", {}, "linear", {"start": 0.2, "ramp": 0.5}),
        "seqlen-warmup": ("seqlen-warmup", {}, "linear", {"start": 0.2, "ramp": 0.5}),
        "self-paced": ("self-paced", {}, "linear", {"start": 0.5, "ramp": 0.5}),
        "replay-mix": ("replay-mix", {"base": "self-paced"}, "linear", {"start": 0.5, "ramp": 0.5}),
    }
    with tempfile.TemporaryDirectory() as d:
        for name, (curriculum, cargs, pacing, pargs) in variants.items():
            cfg = get_config(os.path.join(d, name))
            cfg = dataclasses.replace(cfg, budget_tokens=budget_tokens, stops=(1.0,), log_every=10,
                                      curriculum=curriculum, curriculum_args=cargs, pacing=pacing, pacing_args=pargs)
            train(cfg, show_progress=False)
            with open(os.path.join(cfg.out_dir, "metrics.jsonl")) as f:
                lines = [json.loads(ln) for ln in f if '"train"' in ln][1:]
            rows.append({"curriculum": name, "data_frac": float(np.mean([ln["data_time_frac"] for ln in lines])),
                         "data_frac_max": float(np.max([ln["data_time_frac"] for ln in lines]))})
    return rows


def main() -> None:
    splits = prepare(DataConfig(task="addition", max_digits=5, n_examples=6_000, val_size=1_000, test_size=500))
    rows = [bench_preset(p, splits["validation"], splits["train"]) for p in ("tiny", "small")]
    trained = bench_trained("runs/demo/addition/cosine-seed0")  # the plain recipe of `make demo`
    data_rows = bench_data_time()
    eval_rows = rows + ([trained] if trained else [])
    device = jax.devices()[0]
    on_gpu = device.platform == "gpu"
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m experiments.bench`); rerun it to refresh this file.",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on "
        f"{device.platform} ({device.device_kind}).",
        "",
        "## Evaluation: teacher-forced strict EM vs greedy decoding",
        "",
        "Scoring one stopping point: ratio = time of greedy decoding (KV cache, one compiled loop) / time "
        "of one teacher-forced pass, on the same prompts. Untrained models: 1,000 validation prompts of "
        "5-digit addition (every row decodes to the length limit). Trained: the demo's final checkpoint "
        "on its 500 validation prompts (8-digit addition; rows stop at EOS), if `make demo` was run first.",
        "",
        "| model | decode / teacher-forced | strict EM, teacher-forced | strict EM, decoded |",
        "|---|---|---|---|",
        *[f"| {r['preset']} | {r['eval_ratio']:.1f}x | {r['tf_em']:.4f} | {r['dec_em']:.4f} |" for r in eval_rows],
        "",
        "## Checkpointing: blocking part of an asynchronous save vs one train step",
        "",
        "| preset | blocking save / train step (batch 128) |",
        "|---|---|",
        *[f"| {r['preset']} | {r['save_vs_step']:.2f}x |" for r in rows],
        "",
        "## Data: host time choosing and building batches, as a share of training wall time",
        "",
        "The demo's model and data (`small`, 8-digit addition, batch 128), 200k tokens per curriculum; "
        "`data_time_frac` from metrics.jsonl, mean and worst log window (10 steps), compilation excluded. "
        "This is an upper bound on how long the train step waits for data (JAX dispatch is asynchronous).",
        "",
        "| curriculum | mean | worst window |",
        "|---|---|---|",
        *[f"| {r['curriculum']} | {100 * r['data_frac']:.2f}% | {100 * r['data_frac_max']:.2f}% |" for r in data_rows],
    ]
    from experiments.demo import get_config
    from harness.bench_attention import attention_section, attention_timings
    from harness.bench_ensembles import averaging_cost, output_ensemble_latency
    from harness.bench_llama import llama_benchmark, llama_section
    from harness.bench_serving import serving_benchmark
    from harness.bench_text import text_benchmark, text_section
    from harness.bench_training import packed_benchmark, packed_section, training_benchmark

    base = get_config()
    lines += ["", output_ensemble_latency(base), averaging_cost(), serving_benchmark(), training_benchmark(base),
              llama_section(llama_benchmark(base)), text_section(text_benchmark()),
              packed_section(packed_benchmark(base))]
    dtype = "bfloat16" if on_gpu else "float32"  # on a GPU, what cuDNN's flash attention takes
    lines += [attention_section(attention_timings(dtype=dtype), dtype=dtype)]
    if on_gpu:
        lines += ["", "## Absolute times (GPU)", "", "| preset | train step ms | teacher-forced s | decode s |",
                  "|---|---|---|---|",
                  *[f"| {r['preset']} | {1e3 * r['step_s']:.1f} | {r['tf_s']:.3f} | {r['dec_s']:.3f} |" for r in rows]]
    os.makedirs("docs", exist_ok=True)
    with open("docs/benchmarks.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if on_gpu:  # the scale-out issue's GPU figures: `base` (>= 100M parameters) in bfloat16, spliced in
        from experiments import bench_gpu

        bench_gpu.main()


if __name__ == "__main__":
    main()
