"""The Llama-family decoder against Hugging Face transformers, on tiny random models built here on CPU
torch (no downloads): Llama (llama3 RoPE scaling, untied head, attention biases), Qwen2 (q/k/v biases,
tied head), Qwen3 (q/k norms, head_dim apart from hidden/heads) and Mistral (no sliding window).

Tolerances, float32, eager attention in HF: max |logits_HF - logits_ours| < 1e-4 and
KL(HF || ours) < 1e-9 nats per position, mean over positions. Measured on a CPU (torch 2.13.0,
transformers 5.25.0, jax 0.10.2), logits of std ~1.2: max abs 4-6e-6 and KL ~4e-13 for every family.
Cached decoding must equal the full forward to 1e-5. bfloat16 compute is compared with HF's bfloat16
model only loosely (KL < 1e-2; measured ~1.2e-4), since the two round at different points.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from scipy.special import log_softmax

from framework.models.llama import Llama, LlamaConfig, from_hf_state_dict, rope_inv_freq, to_hf_state_dict

MAX_ABS, MAX_KL = 1e-4, 1e-9
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10_000.0, "factor": 4.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
FAMILIES = {
    # original_max_position_embeddings 64 with head_dim 16 (wavelengths 2*pi*10000^(i/8)) keeps one
    # frequency, smooths two and slows five: every branch of the llama3 scaling is exercised
    "llama": (transformers.LlamaConfig, dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False,
                                             attention_bias=True, rms_norm_eps=1e-5)),
    "qwen2": (transformers.Qwen2Config, dict(rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                                             tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, dict(head_dim=32, tie_word_embeddings=False)),
    "mistral": (transformers.MistralConfig, dict(sliding_window=None, tie_word_embeddings=False)),
}


def hf_model(family: str, seed: int = 0, dtype=torch.float32):
    """A tiny transformers model with weights far from their init (norms near 1, biases nonzero), so a
    wrong transpose, bias or norm placement changes the logits visibly."""
    cls, extra = FAMILIES[family]
    config = cls(**TINY, **extra)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn_like(p)
            p.copy_(1.0 + 0.1 * noise if name.endswith("norm.weight") else 0.15 * noise)
    return model.to(dtype).eval()


def state_dict_np(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def batch(seed: int = 0, b: int = 2, t: int = 24):
    """Random tokens; the second row starts at position 70, past original_max_position_embeddings."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, TINY["vocab_size"], (b, t))
    positions = np.arange(t)[None] + np.array([[0], [70]])[:b]
    return tokens, positions


def hf_logits(model, tokens, positions) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), position_ids=torch.tensor(positions))
    return out.logits.float().numpy()


def our_logits(model: Llama, tokens, positions) -> np.ndarray:
    t = tokens.shape[1]
    mask = jnp.tril(jnp.ones((t, t), bool))[None]
    return np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions), mask)[0])


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over positions of KL(p || q), in float64."""
    logp, logq = log_softmax(p_logits.astype(np.float64), -1), log_softmax(q_logits.astype(np.float64), -1)
    return float(np.mean(np.sum(np.exp(logp) * (logp - logq), axis=-1)))


def convert(model, dtype: str = "float32") -> Llama:
    cfg = LlamaConfig.from_hf(model.config.to_dict(), dtype=dtype)
    return from_hf_state_dict(cfg, state_dict_np(model))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers(family):
    hf = hf_model(family)
    tokens, positions = batch()
    want, got = hf_logits(hf, tokens, positions), our_logits(convert(hf), tokens, positions)
    diff, divergence = float(np.abs(want - got).max()), kl(want, got)
    print(f"{family}: max abs {diff:.2e}, KL {divergence:.2e}")
    assert diff < MAX_ABS and divergence < MAX_KL, (diff, divergence)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_rope_frequencies_equal_transformers(family):
    """Bit for bit: the same float32 operations as HF's, so angles agree at long positions too."""
    hf = hf_model(family)
    cfg = LlamaConfig.from_hf(hf.config.to_dict())
    want = hf.model.rotary_emb.inv_freq.numpy()
    np.testing.assert_array_equal(rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling), want)


def test_config_from_hf_reads_each_family():
    llama = LlamaConfig.from_hf(hf_model("llama").config.to_dict())
    assert llama.rope_scaling.factor == 4.0 and llama.rope_scaling.original_max_position_embeddings == 64
    assert (llama.attention_bias, llama.o_bias, llama.tie_word_embeddings) == (True, True, False)
    qwen2 = LlamaConfig.from_hf(hf_model("qwen2").config.to_dict())
    assert (qwen2.attention_bias, qwen2.o_bias, qwen2.tie_word_embeddings, qwen2.rope_theta) == (True, False, True, 1e6)
    qwen3 = LlamaConfig.from_hf(hf_model("qwen3").config.to_dict())
    assert (qwen3.qk_norm, qwen3.head_dim) == (True, 32)
    # transformers v4's layout (rope_theta at the top, rope_scaling with 'type') reads the same
    v4 = {**TINY, "model_type": "llama", "rope_theta": 10_000.0,
          "rope_scaling": {k: v for k, v in LLAMA3_ROPE.items() if k not in ("rope_type", "rope_theta")} | {
              "type": "llama3"}}
    assert LlamaConfig.from_hf(v4).rope_scaling == llama.rope_scaling
    # a config.json that leaves out defaults takes those of its family: Qwen3's head_dim is 128
    assert LlamaConfig.from_hf({**TINY, "model_type": "qwen3"}).head_dim == 128


def test_config_from_hf_names_every_unsupported_field():
    bad = {**TINY, "model_type": "mistral", "sliding_window": 16, "hidden_act": "gelu",
           "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}
    with pytest.raises(ValueError) as err:
        LlamaConfig.from_hf(bad)
    for field in ("sliding_window", "hidden_act", "rope_parameters.rope_type"):
        assert field in str(err.value)
    with pytest.raises(ValueError, match="model_type"):
        LlamaConfig.from_hf({**TINY, "model_type": "gemma"})
    # a Qwen2 window that no layer uses (the published configs) is fine
    LlamaConfig.from_hf({**TINY, "model_type": "qwen2", "use_sliding_window": False, "sliding_window": 16})


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_cached_decoding_equals_full_forward(family):
    model = convert(hf_model(family))
    tokens, positions = batch(seed=1)
    full = our_logits(model, tokens, positions)
    b, t = tokens.shape
    cache, prefill = model.init_cache(b, t), 8
    steps = [(0, prefill)] + [(i, i + 1) for i in range(prefill, t)]
    step = nnx.jit(lambda m, tok, pos, mask, cache, index: m(tok, pos, mask, cache, index))
    for start, end in steps:
        mask = jnp.broadcast_to(jnp.arange(t)[None, :] <= jnp.arange(start, end)[:, None], (b, end - start, t))
        logits, cache = step(model, jnp.asarray(tokens[:, start:end]), jnp.asarray(positions[:, start:end]),
                             mask, cache, start)
        np.testing.assert_allclose(np.asarray(logits), full[:, start:end], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_to_hf_state_dict_round_trips(family):
    """HF -> ours -> HF gives back every tensor; and a model of ours that never saw HF (native init)
    exports weights under which transformers computes our logits."""
    hf = hf_model(family)
    original = state_dict_np(hf)
    exported = to_hf_state_dict(convert(hf))
    for name, array in exported.items():
        np.testing.assert_array_equal(array, original[name], err_msg=name)
    # torch's state_dict repeats a tied head; save_pretrained's files, like our export, leave it out
    assert set(original) - set(exported) == ({"lm_head.weight"} if hf.config.tie_word_embeddings else set())

    ours = Llama(LlamaConfig.from_hf(hf.config.to_dict()), rngs=nnx.Rngs(3))
    fresh = hf_model(family, seed=1)
    result = fresh.load_state_dict({k: torch.from_numpy(v) for k, v in to_hf_state_dict(ours).items()}, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}, result
    tokens, positions = batch(seed=2)
    np.testing.assert_allclose(hf_logits(fresh, tokens, positions), our_logits(ours, tokens, positions),
                               atol=MAX_ABS, rtol=0)


def test_one_error_names_every_bad_tensor():
    hf = hf_model("qwen3")
    tensors = state_dict_np(hf)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.k_proj.weight"][:-1]
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(128, np.float32)  # Qwen3 has no biases here
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(16, np.float32)  # old buffers: skipped
    with pytest.raises(ValueError) as err:
        from_hf_state_dict(LlamaConfig.from_hf(hf.config.to_dict()), tensors)
    message = str(err.value)
    assert "3 bad tensor(s)" in message, message
    for name in ("model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                 "model.layers.0.self_attn.q_proj.bias"):
        assert name in message
    assert "inv_freq" not in message


def test_tied_head_must_equal_the_embedding():
    hf = hf_model("qwen2")
    tensors = state_dict_np(hf)
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1.0
    with pytest.raises(ValueError, match="lm_head.weight: differs"):
        from_hf_state_dict(LlamaConfig.from_hf(hf.config.to_dict()), tensors)


def test_bfloat16_compute_stays_close_to_transformers_bfloat16():
    hf = hf_model("qwen3", dtype=torch.bfloat16)
    tokens, positions = batch()
    model = convert(hf, dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    want, got = hf_logits(hf, tokens, positions), our_logits(model, tokens, positions)
    divergence = kl(want, got)
    print(f"bfloat16 qwen3: max abs {np.abs(want - got).max():.2e}, KL {divergence:.2e}")
    assert divergence < 1e-2
