"""A Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) in flax.nnx whose logits match Hugging Face transformers.

It keeps recoup's calling convention (see `transformer.py`): the model holds parameters only, and
positions, the attention mask, the KV cache and a dropout key are explicit in the call. Module and
parameter names mirror transformers' (`embed_tokens`, `layers[i].self_attn.q_proj`, ...) so that
`from_hf_state_dict`/`to_hf_state_dict` are a flat table of names and transposes, not a translation.

What follows transformers on purpose: RoPE in the rotate-half layout (the first half of each head is
paired with the second half, not interleaved pairs), inverse frequencies computed in float32 as HF
does, RMSNorm normalising in float32 before casting back, attention scores and softmax in float32
(`jax.nn.dot_product_attention`, models/attention.py), and Qwen3's RMSNorm on each head of q and k
before RoPE. transformers itself is never imported here (only by the tests).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from framework.errors import ConfigError
from framework.models.attention import attend

# (k, v) per layer, each [batch, cache_len, kv_heads, head_dim].
KVCache = tuple[tuple[jax.Array, jax.Array], ...]
DTYPES = ("float32", "bfloat16")
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1's RoPE frequency scaling (transformers' rope_type "llama3")."""

    factor: float  # long wavelengths are divided by this
    low_freq_factor: float  # wavelengths above original_max_position_embeddings / this are scaled fully
    high_freq_factor: float  # wavelengths below original_max_position_embeddings / this are kept
    original_max_position_embeddings: int  # the context length of pretraining before the extension


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # width of the SwiGLU MLP
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int  # < num_attention_heads: grouped-query attention
    head_dim: int | None = None  # None: hidden_size // num_attention_heads (Qwen3 sets it apart)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    # None or the llama3 scaling; a dict with its four keys is accepted and converted (a dict is not
    # hashable, and the config sits in the model's static graph)
    rope_scaling: Llama3RopeScaling | None = None
    attention_bias: bool = False  # biases on q/k/v (Qwen2 always; Llama/Qwen3 when attention_bias)
    o_bias: bool = False  # bias on o_proj (Llama/Qwen3 with attention_bias; never Qwen2)
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k, before RoPE
    tie_word_embeddings: bool = False  # the output head is the embedding table
    dtype: str = "float32"  # compute dtype: "float32" or "bfloat16"; parameters stay float32
    max_position_embeddings: int = 2048  # informational: RoPE itself has no length limit

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if isinstance(self.rope_scaling, Mapping):
            keys = [f.name for f in dataclasses.fields(Llama3RopeScaling)]
            object.__setattr__(self, "rope_scaling", Llama3RopeScaling(**{k: self.rope_scaling[k] for k in keys}))
        if self.dtype not in DTYPES:
            raise ValueError(f"LlamaConfig.dtype: unknown compute dtype {self.dtype!r}; known: {DTYPES}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"LlamaConfig.num_key_value_heads: {self.num_key_value_heads} does not divide "
                             f"num_attention_heads {self.num_attention_heads}")

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], dtype: str = "float32") -> LlamaConfig:
        """The config of a transformers config.json dict (model_type llama, mistral, qwen2 or qwen3).

        Missing fields take the defaults of that model type's transformers config class, since
        `save_pretrained` drops fields equal to them. Anything this model cannot reproduce (another
        rope type, a sliding window that would cut attention, biased MLPs, ...) raises one ValueError
        naming every such field. `dtype` is our compute dtype, a choice of the caller, not the file's.
        """
        kind = config.get("model_type")
        if kind not in MODEL_TYPES:
            raise ValueError(f"model_type: {kind!r} is not supported; known: {MODEL_TYPES}")
        get = _with_defaults(config, _HF_DEFAULTS[kind])
        problems = []
        if get("hidden_act") != "silu":
            problems.append(f"hidden_act: {get('hidden_act')!r}, only 'silu' (SwiGLU) is supported")
        if get("mlp_bias"):
            problems.append("mlp_bias: true is not supported")
        theta, scaling = _rope_from_hf(config, get, problems)
        _check_sliding_window(kind, get, problems)
        if problems:
            raise ValueError("unsupported Hugging Face config:\n  " + "\n  ".join(problems))
        heads = get("num_attention_heads")
        biased = bool(get("attention_bias"))
        return cls(
            vocab_size=get("vocab_size"), hidden_size=get("hidden_size"),
            intermediate_size=get("intermediate_size"), num_hidden_layers=get("num_hidden_layers"),
            num_attention_heads=heads, num_key_value_heads=get("num_key_value_heads") or heads,
            head_dim=get("head_dim") or get("hidden_size") // heads, rms_norm_eps=float(get("rms_norm_eps")),
            rope_theta=theta, rope_scaling=scaling,
            # HF hard-codes these per family: Qwen2 always biases q/k/v and never o; Mistral never biases
            attention_bias={"qwen2": True, "mistral": False}.get(kind, biased),
            o_bias={"qwen2": False, "mistral": False}.get(kind, biased),
            qk_norm=kind == "qwen3", tie_word_embeddings=bool(get("tie_word_embeddings")), dtype=dtype,
            max_position_embeddings=get("max_position_embeddings"),
        )


# The transformers config classes' defaults (v5), for fields a config.json may leave out.
_COMMON = {"hidden_act": "silu", "mlp_bias": False, "attention_bias": False, "rms_norm_eps": 1e-6,
           "tie_word_embeddings": False, "num_key_value_heads": None, "head_dim": None, "rope_theta": 10_000.0,
           "sliding_window": None, "use_sliding_window": False, "max_window_layers": 28, "layer_types": None,
           "num_hidden_layers": 32, "num_attention_heads": 32, "hidden_size": 4096}
_HF_DEFAULTS = {
    "llama": {**_COMMON, "vocab_size": 32000, "intermediate_size": 11008, "max_position_embeddings": 2048},
    "mistral": {**_COMMON, "vocab_size": 32000, "intermediate_size": 14336, "max_position_embeddings": 131072,
                "num_key_value_heads": 8, "sliding_window": 4096},
    "qwen2": {**_COMMON, "vocab_size": 151936, "intermediate_size": 22016, "max_position_embeddings": 32768,
              "num_key_value_heads": 32, "sliding_window": 4096},
    "qwen3": {**_COMMON, "vocab_size": 151936, "intermediate_size": 22016, "max_position_embeddings": 32768,
              "num_key_value_heads": 32, "sliding_window": 4096, "head_dim": 128},
}


def _with_defaults(config: Mapping[str, Any], defaults: Mapping[str, Any]):
    return lambda name: config[name] if name in config else defaults[name]


def _rope_from_hf(config, get, problems) -> tuple[float, Llama3RopeScaling | None]:
    """rope_theta and the llama3 scaling, from either layout: transformers v5's `rope_parameters`
    (theta inside) or v4's top-level `rope_theta` with `rope_scaling` (type under 'type' or 'rope_type')."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    field = "rope_parameters" if config.get("rope_parameters") else "rope_scaling"
    if any(isinstance(v, Mapping) for v in params.values()):
        problems.append(f"{field}: RoPE parameters per layer type are not supported")
        return 0.0, None
    theta = float(params.get("rope_theta", get("rope_theta")))
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor"))
    if partial not in (None, 1.0):
        problems.append(f"partial_rotary_factor: {partial} is not supported (only full-width RoPE)")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        problems.append(f"{field}.rope_type: {rope_type!r} is not supported; known: ('default', 'llama3')")
        return theta, None
    keys = [f.name for f in dataclasses.fields(Llama3RopeScaling)]
    if "original_max_position_embeddings" not in params:  # HF falls back the same way
        params = {**params, "original_max_position_embeddings": get("max_position_embeddings")}
    missing = [k for k in keys if k not in params]
    if missing:
        problems.append(f"{field}: llama3 scaling lacks {missing}")
        return theta, None
    return theta, Llama3RopeScaling(**{k: params[k] for k in keys})


def _check_sliding_window(kind, get, problems) -> None:
    """A sliding window changes the output only where it is shorter than the sequences the model may see.
    Mistral slides whenever `sliding_window` is set; Qwen2/3 only with use_sliding_window, and then on
    the layers that `layer_types` (or index >= max_window_layers) marks."""
    window = get("sliding_window")
    if kind in ("qwen2", "qwen3"):
        if not get("use_sliding_window"):
            return
        n = get("num_hidden_layers")
        types = get("layer_types") or ["sliding_attention" if i >= get("max_window_layers") else "full"
                                       for i in range(n)]
        if "sliding_attention" not in types:
            return
    if kind != "llama" and window is not None and window < get("max_position_embeddings"):
        problems.append(f"sliding_window: {window} (< max_position_embeddings {get('max_position_embeddings')}) "
                        "is not supported")


# ---------------------------------------------------------------------------------------- layers


def rope_inv_freq(head_dim: int, theta: float, scaling: Llama3RopeScaling | None) -> np.ndarray:
    """RoPE inverse frequencies [head_dim/2], float32 like transformers' (the same rounding keeps angles
    equal at long positions); with llama3 scaling, long wavelengths are slowed by `factor` and the band
    between the two thresholds is interpolated smoothly."""
    inv = (1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2).astype(np.float32) / head_dim))).astype(np.float32)
    if scaling is None:
        return inv
    old = scaling.original_max_position_embeddings
    low_wavelen, high_wavelen = old / scaling.low_freq_factor, old / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (old / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_rotate_half(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """RoPE on [batch, time, heads, head_dim] in transformers' rotate-half layout. The angles are
    float32; cos and sin are cast to x's dtype before the product, as HF does (it matters in bfloat16)."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [b, t, half]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class RMSNorm(nnx.Module):
    """RMSNorm as in transformers: normalise in float32, cast back to the input's dtype, then scale."""

    def __init__(self, dim: int, eps: float, dtype: str):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * normed.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        heads, kv, hd, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        qkv_bias = cfg.attention_bias
        self.q_proj = nnx.Linear(d, heads * hd, use_bias=qkv_bias, dtype=cfg.dtype, rngs=rngs)
        self.k_proj = nnx.Linear(d, kv * hd, use_bias=qkv_bias, dtype=cfg.dtype, rngs=rngs)
        self.v_proj = nnx.Linear(d, kv * hd, use_bias=qkv_bias, dtype=cfg.dtype, rngs=rngs)
        self.o_proj = nnx.Linear(heads * hd, d, use_bias=cfg.o_bias, dtype=cfg.dtype, rngs=rngs)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps, cfg.dtype) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps, cfg.dtype) if cfg.qk_norm else None

    def __call__(self, x, positions, mask, cache=None, cache_index=0):
        cfg = self.cfg
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, cfg.num_attention_heads, cfg.head_dim)
        k = self.k_proj(x).reshape(b, t, cfg.num_key_value_heads, cfg.head_dim)
        v = self.v_proj(x).reshape(b, t, cfg.num_key_value_heads, cfg.head_dim)
        if self.q_norm is not None:  # Qwen3 normalises each head before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        q, k = rope_rotate_half(q, positions, inv_freq), rope_rotate_half(k, positions, inv_freq)
        if cache is not None:  # write this chunk's keys/values at cache_index, attend to all
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, cache_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, cache_index, 0, 0))
            cache = (k, v)
        # Grouped-query attention without copying k/v: query head h reads kv head h // group, as HF's
        # repeat_kv lays them out (models/attention.py: which kernel runs where).
        out = attend(q, k.astype(q.dtype), v.astype(q.dtype), mask)
        return self.o_proj(out.reshape(b, t, -1)), cache


class MLP(nnx.Module):
    """SwiGLU (Shazeer 2020) with transformers' names."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nnx.Linear(d, f, use_bias=False, dtype=cfg.dtype, rngs=rngs)
        self.up_proj = nnx.Linear(d, f, use_bias=False, dtype=cfg.dtype, rngs=rngs)
        self.down_proj = nnx.Linear(f, d, use_bias=False, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.dtype)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.dtype)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, positions, mask, cache, cache_index):
        h, cache = self.self_attn(self.input_layernorm(x), positions, mask, cache, cache_index)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class Llama(nnx.Module):
    """Decoder-only LM of the Llama family, with recoup's Transformer calling convention."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.dtype)
        self.lm_head = (None if cfg.tie_word_embeddings else
                        nnx.Linear(cfg.hidden_size, cfg.vocab_size, use_bias=False, dtype=cfg.dtype, rngs=rngs))

    def __call__(
        self,
        tokens: jax.Array,  # [b, t] int
        positions: jax.Array,  # [b, t] int, RoPE positions
        mask: jax.Array,  # [b, t, s] bool: query t may attend to key s
        cache: KVCache | None = None,
        cache_index: jax.Array | int = 0,
        dropout_key: jax.Array | None = None,  # accepted for the shared signature; these models train without dropout
    ) -> tuple[jax.Array, KVCache | None]:
        del dropout_key
        x = self.embed_tokens(tokens)
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, c = layer(x, positions, mask, None if cache is None else cache[i], cache_index)
            new_cache.append(c)
        x = self.norm(x)
        logits = self.embed_tokens.attend(x) if self.lm_head is None else self.lm_head(x)
        return logits.astype(jnp.float32), (None if cache is None else tuple(new_cache))

    def init_cache(self, batch: int, length: int, dtype=None) -> KVCache:
        dtype = dtype or self.cfg.dtype  # the keys and values the compute dtype produces
        shape = (batch, length, self.cfg.num_key_value_heads, self.cfg.head_dim)
        return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.layers)


# ------------------------------------------------------------------------- Hugging Face weights


def hf_layout(cfg: LlamaConfig) -> dict[str, tuple[tuple, bool]]:
    """Every transformers parameter name of `cfg`'s model -> (path in our nnx state, transposed?).
    HF's Linear weight is [out, in], nnx.Linear's kernel [in, out]; embeddings agree."""
    layout = {"model.embed_tokens.weight": (("embed_tokens", "embedding"), False),
              "model.norm.weight": (("norm", "weight"), False)}
    if not cfg.tie_word_embeddings:
        layout["lm_head.weight"] = (("lm_head", "kernel"), True)
    for i in range(cfg.num_hidden_layers):
        hf, ours = f"model.layers.{i}.", ("layers", i)
        for proj in ("q", "k", "v", "o"):
            layout[f"{hf}self_attn.{proj}_proj.weight"] = ((*ours, "self_attn", f"{proj}_proj", "kernel"), True)
            if cfg.o_bias if proj == "o" else cfg.attention_bias:
                layout[f"{hf}self_attn.{proj}_proj.bias"] = ((*ours, "self_attn", f"{proj}_proj", "bias"), False)
        if cfg.qk_norm:
            for norm in ("q_norm", "k_norm"):
                layout[f"{hf}self_attn.{norm}.weight"] = ((*ours, "self_attn", norm, "weight"), False)
        for proj in ("gate", "up", "down"):
            layout[f"{hf}mlp.{proj}_proj.weight"] = ((*ours, "mlp", f"{proj}_proj", "kernel"), True)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            layout[f"{hf}{norm}.weight"] = ((*ours, norm, "weight"), False)
    return layout


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    _get(tree, path[:-1])[path[-1]] = value


def _hf_shape(leaf, transposed: bool) -> tuple[int, ...]:
    return tuple(reversed(leaf.shape)) if transposed else tuple(leaf.shape)


def _to_param(array, transposed: bool) -> jax.Array:
    """`array` as a float32 parameter (transposed if asked), converted in one pass into a fresh 64-byte
    aligned host buffer that jax on a CPU then uses in place (`may_alias`) instead of copying it again;
    on an accelerator, device_put copies it over and the host buffer goes with `array`."""
    source = np.asarray(array)
    source = source.T if transposed else source
    raw = np.empty(source.size * 4 + 64, np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start:start + source.size * 4].view(np.float32).reshape(source.shape)
    np.copyto(out, source, casting="unsafe")  # float16 and bfloat16 (ml_dtypes) widen exactly
    return jax.device_put(out, may_alias=True)


def from_hf_state_dict(cfg: LlamaConfig, tensors: Mapping[str, Any]) -> Llama:
    """A `Llama` holding the weights of a transformers state dict (numpy-like arrays of any float
    dtype, converted to float32). Every unknown, missing or misshapen tensor is named in one ValueError.

    A tied model's `lm_head.weight` may be present (torch's state_dict keeps it) if it equals the
    embedding. RoPE's `inv_freq` buffers, which older checkpoints saved, are recomputed and skipped.
    """
    shapes = {name: tuple(np.shape(array)) for name, array in tensors.items()}
    return from_hf_tensors(cfg, shapes, tensors.__getitem__)


def from_hf_tensors(cfg: LlamaConfig, shapes: Mapping[str, tuple[int, ...]], read: Callable[[str], Any],
                    source: str = "Hugging Face state dict") -> Llama:
    """`from_hf_state_dict` for tensors read one at a time: `shapes` names every tensor there is and
    `read(name)` gives one (numpy-like, any float dtype). Every name and shape is checked before any
    data is read, and each tensor is converted (float32, transposed) straight into its slot of an
    abstractly built model, so the host holds the parameters plus about one tensor in flight, not two
    copies of the weights (a tied checkpoint's redundant lm_head is read once, to compare it).

    Raises a ConfigError (a ValueError) naming `source` and every bad tensor at once.
    """
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))))
    pure = nnx.to_pure_dict(state)
    layout = hf_layout(cfg)
    problems = []
    for name in sorted(set(shapes) - set(layout)):
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name == "lm_head.weight" and cfg.tie_word_embeddings and "model.embed_tokens.weight" in shapes:
            if not np.array_equal(np.asarray(read(name)), np.asarray(read("model.embed_tokens.weight"))):
                problems.append(f"{name}: differs from model.embed_tokens.weight, but tie_word_embeddings is true")
            continue
        problems.append(f"{name}: unknown to this config")
    for name, (path, transposed) in layout.items():
        expected = _hf_shape(_get(pure, path), transposed)
        if name not in shapes:
            problems.append(f"{name}: missing (expected shape {expected})")
        elif tuple(shapes[name]) != expected:
            problems.append(f"{name}: shape {tuple(shapes[name])}, expected {expected}")
    if problems:
        raise ConfigError(source, f"{len(problems)} bad tensor(s):\n  " + "\n  ".join(problems))
    # Largest first: the buffer of each tensor read, once freed, then fits every later one, so the host
    # allocator reuses it rather than growing by the sum of them all.
    for name, (path, transposed) in sorted(layout.items(), key=lambda item: -math.prod(shapes[item[0]])):
        _set(pure, path, _to_param(read(name), transposed))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def to_hf_state_dict(model: Llama) -> dict[str, np.ndarray]:
    """transformers' names and layouts of `model`'s parameters, float32 and contiguous (safetensors
    needs that). A tied model has no `lm_head.weight`, as in the files `save_pretrained` writes."""
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    out = {}
    for name, (path, transposed) in hf_layout(model.cfg).items():
        array = np.asarray(_get(pure, path), dtype=np.float32)
        out[name] = np.array(array.T if transposed else array, order="C")  # a writable copy, not a view
    return out
