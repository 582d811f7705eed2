"""A small decoder-only transformer in flax.nnx: RoPE, RMSNorm, causal attention, gated or GELU MLP.

The model holds parameters only. Everything else is explicit in the call: positions, the attention
mask, an optional KV cache (a tuple of per-layer (k, v) arrays, passed in and returned), and a
dropout key. That keeps training, teacher-forced evaluation and cached decoding one code path, and
lets the trainer run it functionally with `nnx.split`/`nnx.merge` under a plain `jax.jit`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from framework.config import ModelConfig
from framework.data.tokenizer import VOCAB_SIZE
from framework.models.attention import attend, causal_mask  # causal_mask: a numpy array (see attention.py)

# (k, v) per layer, each [batch, cache_len, heads, head_dim].
KVCache = tuple[tuple[jax.Array, jax.Array], ...]


def rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding on [batch, time, heads, head_dim] at integer `positions` [b, t]."""
    half = x.shape[-1] // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * freq  # [b, t, half]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when `key` is None (evaluation) or rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.n_heads, self.rope_base = cfg.n_heads, cfg.rope_base
        self.qkv = nnx.Linear(cfg.d_model, 3 * cfg.d_model, use_bias=False, dtype=cfg.dtype, rngs=rngs)
        self.out = nnx.Linear(cfg.d_model, cfg.d_model, use_bias=False, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, x, positions, mask, cache=None, cache_index=0):
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3 * self.n_heads, -1), 3, axis=2)
        q, k = rope(q, positions, self.rope_base), rope(k, positions, self.rope_base)
        if cache is not None:  # write this chunk's keys/values at cache_index, attend to all
            k = jax.lax.dynamic_update_slice(cache[0], k, (0, cache_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache[1], v, (0, cache_index, 0, 0))
            cache = (k, v)
        out = attend(q, k.astype(q.dtype), v.astype(q.dtype), mask).reshape(b, t, d)  # models/attention.py
        return self.out(out), cache


class GatedMLP(nnx.Module):
    """SwiGLU (Shazeer 2020)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.gate = nnx.Linear(cfg.d_model, cfg.d_ff, use_bias=False, dtype=cfg.dtype, rngs=rngs)
        self.up = nnx.Linear(cfg.d_model, cfg.d_ff, use_bias=False, dtype=cfg.dtype, rngs=rngs)
        self.down = nnx.Linear(cfg.d_ff, cfg.d_model, use_bias=False, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, x):
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class GeluMLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.up = nnx.Linear(cfg.d_model, cfg.d_ff, dtype=cfg.dtype, rngs=rngs)
        self.down = nnx.Linear(cfg.d_ff, cfg.d_model, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, x):
        return self.down(jax.nn.gelu(self.up(x)))


MLP_CLASSES = {"gated": GatedMLP, "gelu": GeluMLP}


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, mlp_cls, *, rngs: nnx.Rngs):
        self.attn_norm = nnx.RMSNorm(cfg.d_model, dtype=cfg.dtype, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(cfg.d_model, dtype=cfg.dtype, rngs=rngs)
        self.mlp = mlp_cls(cfg, rngs=rngs)
        self.rate = cfg.dropout

    def __call__(self, x, positions, mask, cache, cache_index, key):
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        h, cache = self.attn(self.attn_norm(x), positions, mask, cache, cache_index)
        x = x + dropout(h, self.rate, k1)
        x = x + dropout(self.mlp(self.mlp_norm(x)), self.rate, k2)
        return x, cache


class Transformer(nnx.Module):
    """Decoder-only LM, output head tied to the embedding (the byte vocabulary unless told otherwise)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, vocab_size: int = VOCAB_SIZE):
        self.cfg = cfg
        self.embed = nnx.Embed(vocab_size, cfg.d_model, dtype=cfg.dtype, rngs=rngs)
        self.blocks = nnx.List([Block(cfg, MLP_CLASSES[cfg.mlp], rngs=rngs) for _ in range(cfg.n_layers)])
        self.final_norm = nnx.RMSNorm(cfg.d_model, dtype=cfg.dtype, rngs=rngs)

    def __call__(
        self,
        tokens: jax.Array,  # [b, t] int
        positions: jax.Array,  # [b, t] int, RoPE positions
        mask: jax.Array,  # [b, t, s] bool: query t may attend to key s
        cache: KVCache | None = None,
        cache_index: jax.Array | int = 0,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        x = self.embed(tokens)
        new_cache = []
        for i, block in enumerate(self.blocks):
            key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
            x, c = block(x, positions, mask, None if cache is None else cache[i], cache_index, key)
            new_cache.append(c)
        logits = self.embed.attend(self.final_norm(x))
        return logits.astype(jnp.float32), (None if cache is None else tuple(new_cache))

    def init_cache(self, batch: int, length: int, dtype=None) -> KVCache:
        dtype = dtype or self.cfg.dtype  # the keys and values the compute dtype produces
        head_dim = self.cfg.d_model // self.cfg.n_heads
        shape = (batch, length, self.cfg.n_heads, head_dim)
        return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.blocks)


def build_model(cfg: ModelConfig, seed: int, vocab_size: int = VOCAB_SIZE) -> Transformer:
    return Transformer(cfg, rngs=nnx.Rngs(params=seed), vocab_size=vocab_size)


def segment_causal_mask(segment_ids: jax.Array) -> jax.Array:
    """[b, t, t] mask for packed rows: query t attends key s iff s <= t in the same segment (0: empty)."""
    t = segment_ids.shape[1]
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    return same & jnp.tril(jnp.ones((t, t), bool))[None]


def batch_logits(model, batch, dropout_key: jax.Array | None = None) -> jax.Array:
    """Logits of a training batch (framework.data.encoding.Batch): right-padded rows (`forward`), or
    packed rows with their positions and segments."""
    if batch.segment_ids is None:
        return forward(model, batch.inputs, dropout_key)
    mask = segment_causal_mask(batch.segment_ids)
    return model(batch.inputs, batch.positions, mask, dropout_key=dropout_key)[0]


def forward(model: Transformer, inputs: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
    """Logits of right-padded sequences [b, t] (the training layout): positions 0..t-1, causal mask.

    Padding sits after every real token, so the causal mask alone keeps it out of real positions. The
    mask is a numpy array, known when tracing: attention runs as `is_causal` (models/attention.py).
    """
    positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
    return model(inputs, positions, causal_mask(inputs.shape[1]), dropout_key=dropout_key)[0]


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def training_flops(cfg: ModelConfig, n_params: int, tokens: float, mean_seq_len: float) -> float:
    """Training FLOPs of `tokens` counted tokens: 6·N per token for the weight matmuls (forward and
    backward), plus causal attention's scores and mixing, 6·L·d·s̄ per token (2·2·d·s̄/2 forward, ×3
    with the backward pass), where s̄ is the mean training sequence length. N counts every
    parameter, the embedding table included (a slight over-count: its lookup is not a matmul)."""
    return float(tokens) * (6.0 * n_params + 6.0 * cfg.n_layers * cfg.d_model * mean_seq_len)
