"""recoup's own Transformer as a Llama-family model: the same computation, other parameter names.

recoup's decoder (`transformer.py`, gated MLP) is a Llama: pre-norm RMSNorm (eps 1e-6), RoPE in the
rotate-half layout with frequencies base^(-2i/d), SwiGLU, no biases, every head its own key and
value, output head tied to the embedding. Only its q, k and v are one fused matrix, whose columns
hold q, then k, then v, head after head. `as_llama` splits them and renames the rest, so a
recoup run can be written as a Hugging Face checkpoint (`framework.models.hf.save`) that
transformers and vLLM load as a LlamaForCausalLM. The GELU MLP has no Llama counterpart.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from framework.config import ModelConfig
from framework.data.tokenizer import VOCAB_SIZE
from framework.errors import ConfigError
from framework.models.llama import Llama, LlamaConfig

RMS_EPS = 1e-6  # flax.nnx.RMSNorm's default, which recoup's Transformer uses


def llama_config(cfg: ModelConfig, vocab_size: int = VOCAB_SIZE) -> LlamaConfig:
    """The LlamaConfig of recoup's Transformer of `cfg`."""
    if cfg.factory is not None:
        raise ConfigError("model.factory", f"{cfg.factory} is a model of your own: recoup cannot say what "
                                           "architecture it is")
    if cfg.mlp != "gated":
        raise ConfigError("model.mlp", f"a {cfg.mlp!r} MLP has no Llama counterpart (only 'gated', SwiGLU, has)")
    return LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.n_heads, rms_norm_eps=RMS_EPS, rope_theta=float(cfg.rope_base),
                       tie_word_embeddings=True, dtype=cfg.dtype,
                       max_position_embeddings=1024)


def as_llama(cfg: ModelConfig, params) -> Llama:
    """A `Llama` computing what recoup's Transformer of `cfg` with `params` (its nnx.Param state or
    the pure dict of it) computes."""
    src = params if isinstance(params, dict) else nnx.to_pure_dict(params)
    lcfg = llama_config(cfg, vocab_size=int(np.shape(src["embed"]["embedding"])[0]))
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(lcfg, rngs=nnx.Rngs(0))))
    d = cfg.d_model
    layers = {}
    for i, block in src["blocks"].items():
        qkv = jnp.asarray(block["attn"]["qkv"]["kernel"])
        layers[i] = {
            "input_layernorm": {"weight": block["attn_norm"]["scale"]},
            "self_attn": {"q_proj": {"kernel": qkv[:, :d]}, "k_proj": {"kernel": qkv[:, d:2 * d]},
                          "v_proj": {"kernel": qkv[:, 2 * d:]}, "o_proj": {"kernel": block["attn"]["out"]["kernel"]}},
            "post_attention_layernorm": {"weight": block["mlp_norm"]["scale"]},
            "mlp": {"gate_proj": {"kernel": block["mlp"]["gate"]["kernel"]},
                    "up_proj": {"kernel": block["mlp"]["up"]["kernel"]},
                    "down_proj": {"kernel": block["mlp"]["down"]["kernel"]}},
        }
    pure = {"embed_tokens": {"embedding": src["embed"]["embedding"]}, "layers": layers,
            "norm": {"weight": src["final_norm"]["scale"]}}
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), pure))
    return nnx.merge(graphdef, state)
