"""Attention through `jax.nn.dot_product_attention` (framework/models/attention.py) gives the logits of
the einsum attention the models ran before it (harness.bench_attention.einsum_attention), to float32
rounding, in each layout the models are called with: training (right-padded rows, the causal mask),
left-padded prompts decoded with a KV cache, and packed documents (a block-diagonal causal mask with
positions restarting per document). On a GPU, cuDNN's kernel is also compared with XLA's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from framework.config import ModelConfig
from framework.models import attention, llama, transformer
from framework.models.attention import attend, causal_mask, is_plain_causal
from harness.bench_attention import einsum_attention, packed_mask

TOL = 1e-5  # max |logits(dot_product_attention) - logits(einsum)|, float32
T = 24
LLAMA = llama.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2)  # grouped-query: 2 query heads per kv head


def _models():
    return {"transformer": (transformer, transformer.build_model(ModelConfig(d_model=64, n_layers=2, n_heads=4,
                                                                             d_ff=96), 0)),
            "llama": (llama, llama.Llama(LLAMA, rngs=nnx.Rngs(0)))}


def _tokens(b: int = 2, t: int = T, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(3, 128, (b, t)), jnp.int32)


def training(model):
    """Right-padded rows: positions 0..t-1 and the causal mask (`transformer.forward`)."""
    return transformer.forward(model, _tokens())


def decoding(model, steps: int = 4):
    """Left-padded prompts (3 and 0 pads) prefilled into a KV cache, then `steps` single tokens, as
    `evaluate.decode_loop` calls a model: the logits of every call, concatenated."""
    tokens = _tokens().at[0, :3].set(0)
    valid = tokens != 0
    b, p = tokens.shape
    s = p + steps
    key_valid = jnp.concatenate([valid, jnp.zeros((b, steps), bool)], 1)
    mask = (jnp.arange(s)[None, None, :] <= jnp.arange(p)[None, :, None]) & key_valid[:, None, :]
    positions = jnp.maximum(jnp.cumsum(valid, 1) - 1, 0)
    logits, cache = model(tokens, positions, mask, cache=model.init_cache(b, s), cache_index=0)
    out = [logits]
    for i in range(steps):
        key_valid = key_valid.at[:, p + i].set(True)
        step_mask = ((jnp.arange(s) <= p + i)[None, :] & key_valid)[:, None, :]
        nxt = jnp.argmax(out[-1][:, -1], -1)[:, None]
        logits, cache = model(nxt, valid.sum(1, keepdims=True) + i, step_mask, cache=cache, cache_index=p + i)
        out.append(logits)
    return jnp.concatenate(out, 1)


def packed(model):
    """Documents packed in a row (lengths 10, 5, 9 and one of 24): causal and same-document mask, traced
    (a jax array), positions restarting at each document."""
    segments = jnp.asarray([[0] * 10 + [1] * 5 + [2] * 9, [0] * T])
    mask = (segments[:, :, None] == segments[:, None, :]) & jnp.tril(jnp.ones((T, T), bool))[None]
    starts = jnp.concatenate([jnp.ones((2, 1), bool), segments[:, 1:] != segments[:, :-1]], 1)
    index = jnp.arange(T)[None]
    positions = index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
    return model(_tokens(), positions, mask)[0]


@pytest.mark.parametrize("layout", [training, decoding, packed])
@pytest.mark.parametrize("name", ["transformer", "llama"])
def test_logits_equal_the_einsum_attention(name, layout, monkeypatch):
    module, model = _models()[name]
    ours = layout(model)
    monkeypatch.setattr(module, "attend", einsum_attention)
    before = layout(model)
    diff = float(jnp.max(jnp.abs(ours - before)))
    assert diff < TOL, f"{name}, {layout.__name__}: max |difference| {diff:.2e}"


MASKS = {
    "causal (numpy)": causal_mask(16),
    "causal (jax)": jnp.tril(jnp.ones((16, 16), bool))[None],
    "packed": jnp.asarray(packed_mask(16, 3)),
    "left-padded, fully masked rows": jnp.tril(jnp.ones((16, 16), bool))[None] & (jnp.arange(16) >= 5)[None, None],
    "a cache longer than the queries": jnp.arange(24)[None, None, :] <= jnp.arange(8, 16)[None, :, None],
}


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("mask", list(MASKS))
def test_attend_equals_einsum_attention_and_its_gradients(mask, kv_heads):
    m = MASKS[mask]
    t, s = m.shape[1:]
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (2, t, 4, 16))
    k, v = (jax.random.normal(key, (2, s, kv_heads, 16)) for key in keys[1:3])
    w = jax.random.normal(keys[3], q.shape)

    def grads(fn):
        return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v, m) * w), argnums=(0, 1, 2)))(q, k, v)

    for ours, before in zip(jax.tree.leaves(grads(attend)), jax.tree.leaves(grads(einsum_attention)), strict=True):
        np.testing.assert_allclose(ours, before, atol=2e-5, rtol=1e-5)


def test_only_a_causal_mask_known_when_tracing_runs_as_is_causal(monkeypatch):
    assert is_plain_causal(causal_mask(8)) and is_plain_causal(np.broadcast_to(causal_mask(8), (3, 8, 8)))
    assert not is_plain_causal(jnp.asarray(causal_mask(8)))  # a jax array: its value may be traced
    assert not is_plain_causal(packed_mask(8, 2)) and not is_plain_causal(np.ones((1, 8, 8), bool))
    assert not is_plain_causal(np.tril(np.ones((4, 8), bool))[None])  # not square: a cache's
    calls = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    model = _models()["transformer"][1]
    training(model)
    assert all(c["is_causal"] and c["mask"] is None for c in calls) and len(calls) == 2
    calls.clear()
    packed(model)
    assert all(not c["is_causal"] and c["mask"].shape == (2, 1, T, T) for c in calls) and len(calls) == 2


def test_bfloat16_stays_close_to_float32():
    keys = jax.random.split(jax.random.key(1), 3)
    q, k, v = (jax.random.normal(key, (2, 64, 4, 32)) for key in keys)
    m = jnp.asarray(packed_mask(64, 2))
    exact = einsum_attention(q, k, v, m)
    half = attend(*(x.astype(jnp.bfloat16) for x in (q, k, v)), m)
    assert half.dtype == jnp.bfloat16
    assert float(jnp.max(jnp.abs(half.astype(jnp.float32) - exact))) < 3e-2


def test_on_a_cpu_xla_runs():
    if jax.default_backend() == "gpu":
        assert attention.implementation(jnp.bfloat16) == "cudnn" and attention.implementation(jnp.float32) == "xla"
    else:
        assert {attention.implementation(d) for d in (jnp.float32, jnp.bfloat16, jnp.float16)} == {"xla"}


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN's flash attention needs a GPU")
@pytest.mark.parametrize("mask", list(MASKS))
def test_cudnn_equals_xla_in_bfloat16(mask):
    """On a GPU: the kernel `attend` picks (cuDNN's where it accepts the inputs) against XLA's, forward
    and gradients, bfloat16, head dim 64, 8 query heads over 2 kv heads."""
    m = MASKS[mask]
    t, s = m.shape[1:]
    keys = jax.random.split(jax.random.key(2), 4)
    q = jax.random.normal(keys[0], (2, t, 8, 64), jnp.bfloat16)
    k, v = (jax.random.normal(key, (2, s, 2, 64), jnp.bfloat16) for key in keys[1:3])
    w = jax.random.normal(keys[3], q.shape, jnp.float32)

    def xla(q, k, v, m):
        causal = is_plain_causal(m)
        return jax.nn.dot_product_attention(q, k, v, mask=None if causal else jnp.asarray(m)[:, None],
                                            is_causal=causal, implementation="xla")

    def run(fn):
        loss = lambda q, k, v: jnp.sum(fn(q, k, v, m).astype(jnp.float32) * w)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)

    for ours, ref in zip(jax.tree.leaves(run(attend)), jax.tree.leaves(run(xla)), strict=True):
        ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
        assert np.all(np.isfinite(ours))
        np.testing.assert_allclose(ours, ref, atol=5e-2 * max(1.0, np.abs(ref).max()), rtol=0)


def test_the_benchmark_measures_both_attentions_and_reports_them():
    from harness.bench_attention import SECTION, attention_section, attention_timings

    rows = attention_timings((32,), rounds=1, repeats=1)
    assert [r["form"] for r in rows] == ["causal", "packed, 4 documents"]
    assert all(r["seconds"]["einsum"] > 0 and r["seconds"]["dpa"] > 0 and r["temp_bytes"]["dpa"] > 0 for r in rows)
    section = attention_section(rows)
    assert section.startswith(SECTION) and "| 32 | packed, 4 documents |" in section and "XLA's" in section
