"""The attention micro-benchmark's measurements: recoup's attention (`jax.nn.dot_product_attention`,
framework/models/attention.py) against the einsum attention the models ran before it, forward and
backward, at long sequence lengths (the recipe and its command: experiments/bench_attention.py).

`einsum_attention` is that earlier code, kept as the benchmark's baseline and as the tests' reference
for the logits (tests/test_attention.py); nothing in the framework calls it.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

SECTION = "## Attention: jax.nn.dot_product_attention against the einsum attention, forward and backward"


def einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask) -> jax.Array:
    """The attention recoup's models ran before `jax.nn.dot_product_attention`: q [b, t, heads, d],
    k, v [b, s, kv, d], mask [b or 1, t, s]; query heads grouped over the kv heads, float32 scores and
    softmax, a finite -1e30 where masked (a fully masked row is uniform, not NaN)."""
    b, t, heads, d = q.shape
    kv = k.shape[2]
    grouped = q.reshape(b, t, kv, heads // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", grouped, k).astype(jnp.float32) * d**-0.5
    scores = jnp.where(jnp.asarray(mask)[:, None, None], scores, -1e30)
    weights = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", weights, v).reshape(b, t, heads, d)


def packed_mask(t: int, documents: int) -> np.ndarray:
    """[1, t, t] causal and same-document mask of `documents` equal documents packed in one row."""
    segment = np.arange(t) * documents // t
    return np.tril(segment[:, None] == segment[None, :])[None]


def _train_step(attention, mask, traced_mask: bool):
    """jit of (q, k, v, w[, mask]) -> gradients of sum(attention(q, k, v, mask) * w) in q, k, v: the
    forward and backward a training step runs. A traced mask is an argument (as a packed batch's is);
    otherwise the numpy mask is a constant of the compiled function (the training layout's causal mask)."""
    def loss(q, k, v, w, m):
        return jnp.sum(attention(q, k, v, m).astype(jnp.float32) * w)

    grad = jax.grad(loss, argnums=(0, 1, 2))
    if traced_mask:
        return jax.jit(grad), (jnp.asarray(mask),)
    return jax.jit(lambda q, k, v, w: grad(q, k, v, w, mask)), ()


def _seconds(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return min(times)


def attention_timings(seq_lens=(1024, 2048), batch: int = 1, heads: int = 8, kv_heads: int = 8, head_dim: int = 64,
                      dtype=jnp.float32, rounds: int = 3, repeats: int = 3) -> list[dict]:
    """Per sequence length and mask form (plain causal; four packed documents, block-diagonal causal),
    seconds of the forward and backward with each attention (best call of each round, median over the
    rounds, the two alternating within a round), and of the compiled program its temporary bytes
    (`memory_analysis`: the buffers XLA allocates besides the arguments and outputs) and FLOPs (XLA's
    `cost_analysis`), which no other job on the machine can perturb."""
    from framework.models.attention import attend, causal_mask

    dtype = jnp.dtype(dtype)
    rows = []
    for t in seq_lens:
        keys = jax.random.split(jax.random.key(t), 4)
        q = jax.random.normal(keys[0], (batch, t, heads, head_dim), dtype)
        k, v = (jax.random.normal(key, (batch, t, kv_heads, head_dim), dtype) for key in keys[1:3])
        w = jax.random.normal(keys[3], (batch, t, heads, head_dim), jnp.float32)
        for form, mask, traced in (("causal", causal_mask(t), False), ("packed, 4 documents", packed_mask(t, 4), True)):
            steps = {"einsum": _train_step(einsum_attention, mask, traced), "dpa": _train_step(attend, mask, traced)}
            compiled = {name: fn.lower(q, k, v, w, *extra).compile() for name, (fn, extra) in steps.items()}
            temp = {name: c.memory_analysis().temp_size_in_bytes for name, c in compiled.items()}
            flops = {name: c.cost_analysis().get("flops", float("nan")) for name, c in compiled.items()}
            times = {name: [] for name in steps}
            for _ in range(rounds):
                for name, (fn, extra) in steps.items():
                    times[name].append(_seconds(fn, (q, k, v, w, *extra), repeats))
            seconds = {name: statistics.median(ts) for name, ts in times.items()}
            rows.append({"seq_len": t, "form": form, "seconds": seconds, "temp_bytes": temp, "flops": flops,
                         "ratio": seconds["einsum"] / seconds["dpa"], "rounds": rounds, "repeats": repeats})
            print(f"t={t} {form}: einsum {seconds['einsum']:.3f} s, dpa {seconds['dpa']:.3f} s, "
                  f"temp {temp['einsum'] / 2**20:.0f} / {temp['dpa'] / 2**20:.0f} MiB", flush=True)
    return rows


def attention_section(rows: list[dict], batch: int = 1, heads: int = 8, kv_heads: int = 8, head_dim: int = 64,
                      dtype=jnp.float32) -> str:
    from framework.models.attention import implementation
    from harness.report import machine

    dtype = jnp.dtype(dtype)
    impl = {"xla": "XLA", "cudnn": "cuDNN"}[implementation(dtype)]
    rounds, repeats = rows[0]["rounds"], rows[0]["repeats"]
    lines = [SECTION, "", machine(), "",
             "`python -m experiments.bench_attention`: gradients in q, k and v of sum(attention(q, k, v) * w), "
             f"jitted, batch {batch}, {heads} query heads over {kv_heads} key/value heads of dimension {head_dim}, "
             f"{jnp.dtype(dtype).name}. einsum: the attention the models ran before (harness.bench_attention."
             f"einsum_attention); dpa: `framework.models.attention.attend`, `jax.nn.dot_product_attention` "
             f"running {impl}'s implementation here. Causal: the training layout's mask, a numpy array, which "
             "dpa runs as `is_causal`; packed: a block-diagonal causal mask of four documents passed as an "
             f"argument (traced), as a packed batch's is. Seconds: the best of {repeats} calls, median of "
             f"{rounds} rounds alternating the two. Temporary memory: the compiled program's "
             "`memory_analysis().temp_size_in_bytes`; FLOPs: its `cost_analysis()` (both deterministic).", "",
             "| sequence | mask | einsum s | dpa s | einsum / dpa time | einsum temp MiB | dpa temp MiB "
             "| dpa / einsum FLOPs |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s, m = r["seconds"], r["temp_bytes"]
        lines.append(f"| {r['seq_len']} | {r['form']} | {s['einsum']:.3f} | {s['dpa']:.3f} | {r['ratio']:.2f} | "
                     f"{m['einsum'] / 2**20:.0f} | {m['dpa'] / 2**20:.0f} | "
                     f"{r['flops']['dpa'] / r['flops']['einsum']:.4f} |")
    return "\n".join(lines + [""])
