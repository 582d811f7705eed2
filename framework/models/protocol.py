"""What recoup asks of a model, and how it builds one.

Training, teacher-forced evaluation, cached decoding, weight averages, output ensembles and serving
all call a model the same way, so any flax.nnx module that answers this call can be trained:

    logits, cache = model(tokens, positions, mask, cache=None, cache_index=0, dropout_key=None)
    cache = model.init_cache(batch, length)

tokens and positions are [b, t] ints, mask is [b, t, s] bool (query t may attend to key s), the
logits are [b, t, vocab] float32; the cache is whatever `init_cache` returns (a pytree of arrays),
passed in and returned when decoding (None when training). Parameters are `nnx.Param`s; nothing
else in the module may change during a call. recoup's Transformer is one implementation and
`framework.models.llama.Llama` another.

A model of your own is named by `ModelConfig.factory` (`recoup train --model module:attr`): a
callable `attr(vocab_size=..., rngs=nnx.Rngs(...))` returning the module. `check` builds it
abstractly (no parameters allocated) and traces one call before anything compiles, so a module that
does not fit fails at start-up with one line naming what is missing.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from framework.config import ModelConfig
from framework.data.tokenizer import VOCAB_SIZE
from framework.errors import ConfigError
from framework.registry import import_object

CALL_ARGS = ("tokens", "positions", "mask", "cache", "cache_index", "dropout_key")


class LanguageModel(Protocol):
    def __call__(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array, cache: Any = None,
                 cache_index: jax.Array | int = 0, dropout_key: jax.Array | None = None) -> tuple[jax.Array, Any]: ...

    def init_cache(self, batch: int, length: int, dtype=None) -> Any: ...


def problems(model: Any) -> list[str]:
    """What `model` lacks to be trained and served by recoup, in words; empty when it fits."""
    if not isinstance(model, nnx.Module):
        return [f"it is a {type(model).__name__}, not a flax.nnx.Module"]
    out = []
    try:
        params = inspect.signature(type(model).__call__).parameters
        missing = [a for a in CALL_ARGS if a not in params]
        if missing and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            out.append(f"__call__ takes no {', '.join(missing)} (it must take {', '.join(CALL_ARGS)})")
    except (TypeError, ValueError):
        out.append(f"__call__ must take {', '.join(CALL_ARGS)}")
    if not callable(getattr(model, "init_cache", None)):
        out.append("it has no init_cache(batch, length) (the KV cache decoding passes in and gets back)")
    if not jax.tree.leaves(nnx.state(model, nnx.Param)):
        out.append("it has no nnx.Param to train")
    other = {type(v).__name__ for v in jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param)),
                                                       is_leaf=lambda x: isinstance(x, nnx.Variable))}
    if other:
        out.append(f"it holds state besides nnx.Param ({', '.join(sorted(other))}): recoup keeps only parameters "
                   "in a checkpoint and passes randomness in the call (dropout_key)")
    return out


def _from_factory(cfg: ModelConfig, seed: int, vocab_size: int) -> nnx.Module:
    factory = import_object(cfg.factory, "model.factory")
    try:
        return factory(vocab_size=vocab_size, rngs=nnx.Rngs(params=seed))
    except TypeError as e:
        raise ConfigError("model.factory", f"{cfg.factory}(vocab_size=..., rngs=...) failed: {e}") from None


def _from_hf_config(cfg: ModelConfig, seed: int, vocab_size: int) -> nnx.Module:
    """The Llama-family model of a Hugging Face config.json, randomly initialized (a checkpoint's
    weights replace them: RunConfig.init_from "hf:DIR")."""
    from framework.models import hf
    from framework.models.llama import Llama

    try:
        lcfg = hf.read_config(cfg.hf_config, cfg.dtype)
    except ConfigError as e:  # name the field the user gave; the file's own words after it
        raise ConfigError("model.hf_config", f"{e.field}: {e.message}", e.allowed) from None
    if vocab_size > lcfg.vocab_size:
        raise ConfigError("data.tokenizer", f"the tokenizer has {vocab_size:,} ids; the model of {cfg.hf_config} "
                                            f"embeds {lcfg.vocab_size:,}: use the tokenizer it was trained with")
    return Llama(lcfg, rngs=nnx.Rngs(params=seed))


def build(cfg: ModelConfig, seed: int, vocab_size: int = VOCAB_SIZE) -> nnx.Module:
    """The model `cfg` names, its parameters drawn from `seed`: recoup's Transformer, or the user's
    factory's module (checked against the protocol)."""
    if cfg.hf_config is not None:
        return _from_hf_config(cfg, seed, vocab_size)
    if cfg.factory is None:
        from framework.models.transformer import Transformer

        return Transformer(cfg, rngs=nnx.Rngs(params=seed), vocab_size=vocab_size)
    model = _from_factory(cfg, seed, vocab_size)
    if found := problems(model):
        raise ConfigError("model.factory", f"{cfg.factory} builds a {type(model).__name__} that recoup cannot "
                                           f"train: {'; '.join(found)}")
    return model


def check(cfg: ModelConfig, vocab_size: int = VOCAB_SIZE) -> None:
    """Build `cfg`'s model abstractly and trace one call, a cached one too: a ConfigError naming what
    is wrong, before anything is allocated or compiled."""
    if cfg.factory is None and cfg.hf_config is None:
        return
    model = nnx.eval_shape(lambda: build(cfg, 0, vocab_size))  # a Hugging Face config: read, and fits the tokenizer
    if cfg.factory is None:
        return
    tokens = jnp.zeros((1, 4), jnp.int32)
    positions = jnp.arange(4)[None]
    mask = jnp.tril(jnp.ones((4, 4), bool))[None]
    graphdef, state = nnx.split(model)

    def call(state, cached: bool):
        m = nnx.merge(graphdef, state)
        cache = m.init_cache(1, 4) if cached else None
        return m(tokens, positions, mask, cache=cache, cache_index=0, dropout_key=None)

    for cached in (False, True):
        try:
            logits, _ = jax.eval_shape(lambda s, c=cached: call(s, c), state)
        except Exception as e:  # the user's code: any error it raises is the message to show
            what = "a cached call (init_cache, then cache=...)" if cached else "a call"
            raise ConfigError("model.factory", f"{cfg.factory}: {what} on tokens [1, 4] failed: "
                                               f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
        if logits.shape != (1, 4, vocab_size):
            raise ConfigError("model.factory", f"{cfg.factory} returns logits of shape {logits.shape} for tokens "
                                               f"[1, 4]; recoup needs [1, 4, {vocab_size}] (the vocabulary size it "
                                               "passed the factory)")
