"""GPU figures of the scale-out issue: the `base` preset (~106M parameters, bfloat16) on one accelerator.

    python -m experiments.bench_gpu        # on a GPU machine; `make bench` calls it there

Every section is spliced into docs/benchmarks.md beside the CPU ones (headings name the model and device):

1. batch sweep: the hand-written loop's tokens/s and MFU at several batch sizes. The demo's
   sequences are ~24 tokens, so a step needs thousands of rows to give the chip matmuls worth the name;
2. the step alone: the hand-written step, recoup's (nothing donated: an asynchronous save may still
   be reading the previous state) and recoup's with params and optimizer state donated;
3. the training benchmark (`experiments.bench_training`: recoup vs hand-written, MFU, checkpoint and
   data overhead) at the sweep's best batch, the default-stops run sized to about a minute;
4. output-ensemble decode latency for the demo's model and for `base`.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SECTION = "## GPU: batch sweep, the step alone, donated buffers (`base`, bfloat16)"


def _pipelined_seconds(run, batches, steps: int = 30) -> float:
    """Seconds per step of `run(batch)` over `steps` steps dispatched back to back (as a training loop
    does), after three warm-ups; `run` threads its own state and returns something to wait on."""
    for b in batches[:3]:
        out = run(b)
    jax.block_until_ready(out)
    t = time.perf_counter()
    for i in range(steps):
        out = run(batches[i % len(batches)])
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / steps


def step_comparison(cfg, train_split) -> dict:
    """Seconds per step, on the same device-resident batches: the hand-written step, recoup's step as
    it is (nothing donated: an asynchronous save may still be reading the previous state), and
    recoup's step with params and optimizer state donated. Each timed twice, alternating; the better kept."""
    from framework.data.encoding import make_batch
    from framework.models.transformer import build_model
    from framework.training.optimizers import build as build_optimizer
    from framework.training.schedules import warmup_constant
    from framework.training.step import make_train_step
    from harness.bench_training import hand_written_step

    rng = np.random.default_rng(0)
    batches = [jax.device_put(make_batch(train_split, rng.integers(0, len(train_split), cfg.batch_size)))
               for _ in range(4)]
    hand, hand_params, hand_opt = hand_written_step(cfg)
    graphdef = nnx.split(build_model(cfg.model, 0), nnx.Param)[0]
    tx = build_optimizer(cfg.optim, cfg.batch_size)
    ours = make_train_step(graphdef, tx, warmup_constant(10**6, 1e-3), False)
    donated = jax.jit(ours.__wrapped__, donate_argnums=(0, 1))
    key = jax.random.key(0)

    def looped(kind):
        if kind == "hand-written":
            state = [jax.tree.map(jnp.copy, hand_params), jax.tree.map(jnp.copy, hand_opt)]

            def run(b):
                state[0], state[1], loss = hand(*state, b.inputs, b.targets, b.loss_mask)
                return loss
        else:
            fn = donated if kind == "recoup, donated" else ours
            p = jax.tree.map(jnp.copy, hand_params)  # a donated step consumes its inputs
            state = [p, tx.init(p)]

            def run(b):
                state[0], state[1], m = fn(*state, b, np.float32(0), key)
                return m["loss"]
        return _pipelined_seconds(run, batches)

    out = {}
    for kind in ("hand-written", "recoup", "recoup, donated") * 2:
        t = looped(kind)
        out[kind] = min(out.get(kind, t), t)
        print(f"  step, {kind}: {t * 1e3:.2f} ms", flush=True)
    return out


def main(batches=(512, 2048, 4096)) -> None:
    from experiments.demo import get_config
    from framework.data.encoding import mean_counted_tokens, prepare
    from framework.models.transformer import build_model, count_params, training_flops
    from harness.bench_ensembles import output_ensemble_latency
    from harness.bench_training import bench_config, hand_written_tokens_per_s, peak_matmul_flops, training_benchmark
    from harness.report import machine, splice

    if jax.default_backend() == "cpu":
        raise SystemExit("experiments.bench_gpu needs a GPU: jax sees only the CPU here")
    base = get_config()
    cfg = bench_config(base, "unused", "base")
    train_split = prepare(cfg.data)["train"]
    mean_len = mean_counted_tokens(train_split)
    flops_per_token = training_flops(cfg.model, count_params(build_model(cfg.model, 0)), 1, mean_len)
    peak, how = peak_matmul_flops(repeats=50)
    print(f"peak {peak / 1e12:.0f} TFLOP/s ({how})", flush=True)
    sweep = []
    for b in batches:
        try:
            tps = hand_written_tokens_per_s(dataclasses.replace(cfg, batch_size=b), train_split, steps=30)
        except Exception as e:  # out of memory at the largest batch: say so and keep the others
            print(f"batch {b}: failed ({str(e).splitlines()[0][:200]})", flush=True)
            continue
        sweep.append((b, tps))
        print(f"batch {b}: hand-written {tps:,.0f} tok/s, MFU {tps * flops_per_token / peak:.1%}", flush=True)
    best_batch, best_tps = max(sweep, key=lambda x: x[1])
    steps = step_comparison(dataclasses.replace(cfg, batch_size=best_batch), train_split)
    hand, ours, donated = steps["hand-written"], steps["recoup"], steps["recoup, donated"]
    lines = [SECTION, "", machine(), "",
             f"`python -m experiments.bench_gpu`: the hand-written loop of `experiments.bench_training` (30 timed "
             f"steps after 5 warm-ups) at each batch; the demo's data, {mean_len:.1f} counted tokens per sequence; "
             f"MFU against the measured peak ({peak / 1e12:.0f} TFLOP/s, {how}).", "",
             "| batch (sequences) | tokens/s | MFU |", "|---:|---:|---:|",
             *[f"| {b} | {t:,.0f} | {t * flops_per_token / peak:.1%} |" for b, t in sweep], "",
             f"The step alone at batch {best_batch} (batches already on the device, 30 steps dispatched back to "
             "back after 3 warm-ups, each timed twice, the better kept): "
             f"hand-written {hand * 1e3:.1f} ms, recoup's {ours * 1e3:.1f} ms ({hand / ours:.3f}x the hand-written "
             f"speed), recoup's with params and optimizer state donated {donated * 1e3:.1f} ms "
             f"({ours / donated:.3f}x recoup's as is).", ""]
    splice("\n".join(lines))
    step_tokens = best_batch * mean_len
    tokens = int(60 * step_tokens)  # ~60 steps per timed run: five log windows after the compiling one
    cadence = int(max(tokens, 60 * best_tps))  # about a minute of training at the default stops
    section = training_benchmark(base, "base", best_batch, tokens, cadence)
    splice(section)
    for preset in ("small", "base"):
        splice(output_ensemble_latency(base, preset=preset))
    print(open("docs/benchmarks.md").read())


if __name__ == "__main__":
    main()
