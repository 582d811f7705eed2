"""Attention for recoup's models: `jax.nn.dot_product_attention`, its kernel chosen where it runs.

Both models (transformer.py, llama.py) call `attend(q, k, v, mask)`. What runs where:

- On a CPU (and a TPU): XLA's implementation. The [b, heads, t, s] scores are float32 (bfloat16
  inputs are multiplied with float32 accumulation and output), masked with a large finite negative
  (so a fully masked row, a padding query, is uniform rather than NaN), softmax in float32, the
  probabilities cast back to the inputs' dtype for the product with v: today's einsum attention, the
  same numbers to float32 rounding (tests/test_attention.py).
- On a GPU: cuDNN's fused flash attention when the inputs are bfloat16 or float16 and jax's own
  checks pass when tracing (head dim a multiple of 8, at most 128, or 256 from Hopper on; even
  sequence lengths when a mask is trained through; a cuDNN installed); otherwise XLA's. A float32
  model always runs XLA's (cuDNN has no float32 flash kernel), so it keeps its float32 softmax.
  jax 0.10's `implementation=None` means XLA's on every device, hence the explicit choice here.

Grouped-query attention: k and v have `kv` heads, q a multiple of them; query head i reads key/value
head i // (heads // kv), transformers' `repeat_kv` layout, and neither implementation copies k or v.

The mask. The protocol hands every model a boolean [b, t, s] mask (framework/models/protocol.py), and
a boolean mask is something cuDNN takes only as an additive bias: [b, 1, t, s] in the compute dtype,
read by the kernel, with a gradient computed for it in the backward pass. That is still flash attention
(no [b, heads, t, s] float32 scores), but it computes the masked blocks too. So a mask whose value is
known when tracing (a numpy array: `causal_mask`, which `transformer.forward` passes for the training
layout) is looked at once, when tracing, and a plain lower-triangular one becomes `is_causal=True` and
no mask: no bias, and cuDNN skips the blocks above the diagonal. Any other mask (left-padded prompts,
decoding with a KV cache, packed documents' block-diagonal causal mask) goes in as a mask. No caller
changes, and a model of one's own still receives a boolean array.

Why not segment ids in the call: `jax.nn.dot_product_attention` takes none in jax 0.10 (cuDNN's packed
layout, `q_offsets`, is only reachable through jax._src and needs Hopper), so packed documents would be
turned into a bias all the same, which the mask already is.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def causal_mask(t: int) -> np.ndarray:
    """[1, t, t] lower-triangular mask (query i attends keys 0..i), as a numpy array: `attend` sees,
    when tracing, that it is plain causal."""
    return _tril(t)[None]


@functools.lru_cache(maxsize=8)
def _tril(t: int) -> np.ndarray:
    mask = np.tril(np.ones((t, t), bool))
    mask.flags.writeable = False  # shared between calls
    return mask


def is_plain_causal(mask) -> bool:
    """Whether `mask` [b, t, t] is known when tracing (a numpy array) to be lower triangular in every row."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 3 or mask.shape[1] != mask.shape[2]:
        return False
    return bool((mask == _tril(mask.shape[1])[None]).all())


def implementation(dtype) -> str:
    """"cudnn" where cuDNN's flash attention may run (a GPU, bfloat16 or float16 inputs), else "xla"."""
    return "cudnn" if jax.default_backend() == "gpu" and jnp.dtype(dtype) in _CUDNN_DTYPES else "xla"


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask) -> jax.Array:
    """softmax(q kᵀ / sqrt(head_dim), where `mask`) v, per head.

    q [b, t, heads, d]; k, v [b, s, kv, d] in q's dtype, kv dividing heads; mask [b or 1, t, s] bool
    (query t may attend to key s). Returns [b, t, heads, d] in q's dtype.
    """
    causal = is_plain_causal(mask)
    kwargs = {"mask": None if causal else jnp.asarray(mask)[:, None], "is_causal": causal}
    if implementation(q.dtype) == "cudnn":
        try:
            return jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **kwargs)
        except (NotImplementedError, RuntimeError):
            # jax's checks of cuDNN's conditions, raised when tracing (under jax.grad, its backward's
            # too): head dim, sequence lengths with a bias, compute capability, no cuDNN. XLA's runs
            # instead, and raises itself if the inputs are wrong for any attention.
            pass
    return jax.nn.dot_product_attention(q, k, v, implementation="xla", **kwargs)
