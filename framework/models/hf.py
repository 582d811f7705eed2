"""Hugging Face checkpoint directories for the Llama family: `read_config`, `load` and `save`.

A directory holds `config.json` and the weights as safetensors, either one `model.safetensors` or
shards named by `model.safetensors.index.json` (its `weight_map`: tensor name -> shard file), as
transformers' `save_pretrained` writes them. Only safetensors are read (never pickled
`pytorch_model.bin`, which runs code on load).

`load` keeps host memory near one copy of the weights: the model is built abstractly, every name and
shape is checked from the files' headers before any data is read, and then each tensor is read on its
own and converted (float32, transposed) into its parameter slot. safetensors opens the files with its
`pread` backend, so a tensor is read into a fresh buffer and the file is never memory-mapped (a mapped
file's pages would count as resident memory too). bfloat16 and float16 files read as ml_dtypes/numpy
arrays (safetensors' numpy mode names ml_dtypes' bfloat16, which needs ml_dtypes imported).

Example:
    model = hf.load("Qwen3-0.6B")  # a directory from `huggingface-cli download`
    hf.save(model, "out", max_shard_bytes=2 << 30)
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import ml_dtypes  # also registers numpy's 'bfloat16', which safetensors' numpy mode asks for
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from framework.errors import ConfigError
from framework.models.llama import Llama, LlamaConfig, from_hf_tensors, to_hf_state_dict

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
SAVE_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
# transformers' class for each model_type this module writes (Mistral's layout is Llama's: see _model_type)
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def _listing(directory: Path) -> str:
    if not directory.is_dir():
        return f"{directory} is not a directory"
    names = sorted(p.name for p in directory.iterdir())
    return f"{directory} holds {names[:20] or 'nothing'}" + (" ..." if len(names) > 20 else "")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(str(path), f"not found ({_listing(path.parent)})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), f"not valid JSON: {err}") from None


def read_config(directory: str | os.PathLike, dtype: str = "float32") -> LlamaConfig:
    """The `LlamaConfig` of `directory/config.json`; `dtype` is the compute dtype to run in.

    Raises:
        ConfigError: the file is missing (the message lists what the directory holds), not JSON, or
            describes a model this decoder cannot reproduce (every unsupported field named at once).
    """
    path = Path(directory) / CONFIG
    config = _read_json(path)
    try:
        return LlamaConfig.from_hf(config, dtype=dtype)
    except ValueError as err:
        raise ConfigError(str(path), str(err)) from None


def tensor_files(directory: Path) -> list[Path]:
    """The safetensors files holding the weights: every shard the index names, or the single file."""
    index = directory / INDEX
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConfigError(str(index), "has no 'weight_map' object")
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ConfigError(str(index), f"names shards that are not there: {missing} ({_listing(directory)})")
        return files
    if (directory / WEIGHTS).is_file():
        return [directory / WEIGHTS]
    raise ConfigError(str(directory), f"no {WEIGHTS} or {INDEX} (only safetensors are read; {_listing(directory)})")


def load(directory: str | os.PathLike, dtype: str = "float32") -> Llama:
    """The `Llama` of a Hugging Face checkpoint directory, parameters in float32 whatever the files hold.

    Args:
        directory: holds config.json and model.safetensors, or shards and model.safetensors.index.json.
        dtype: the compute dtype ("float32" or "bfloat16"); parameters stay float32.

    Returns:
        The model, whose logits equal transformers' for the same weights.

    Raises:
        ConfigError: a missing or unsupported config or weights file, or one message naming every
            unknown, missing or misshapen tensor (nothing is read before the names and shapes agree).
    """
    directory = Path(directory)
    cfg = read_config(directory, dtype)
    files = tensor_files(directory)
    with contextlib.ExitStack() as stack:
        handles, shapes, where = {}, {}, {}
        for file in files:
            handles[file] = stack.enter_context(safe_open(file, framework="numpy", backend="pread"))
            for name in handles[file].keys():
                if name in where:
                    raise ConfigError(str(directory), f"tensor {name} is in both {where[name].name} and {file.name}")
                where[name], shapes[name] = file, tuple(handles[file].get_slice(name).get_shape())
        return from_hf_tensors(cfg, shapes, lambda name: handles[where[name]].get_tensor(name), str(directory))


def _model_type(cfg: LlamaConfig) -> str:
    """The transformers model_type whose layout is `cfg`'s. Qwen3 is the one with q/k norms; Qwen2 biases
    q/k/v but not o; anything else is a Llama (a Mistral without a sliding window is one: same tensors,
    same computation, so it is written as a Llama)."""
    if cfg.qk_norm:
        if cfg.attention_bias != cfg.o_bias:
            raise ValueError("a Qwen3 layout biases all of q, k, v and o or none; this config biases only some")
        return "qwen3"
    if cfg.attention_bias and not cfg.o_bias:
        return "qwen2"
    if cfg.attention_bias != cfg.o_bias:
        raise ValueError("o_proj biased without q/k/v biases has no transformers model_type")
    return "llama"


def hf_config(cfg: LlamaConfig, dtype: str = "float32") -> dict:
    """The config.json dict of `cfg` that transformers (v4.43+ and v5) loads into the same model.

    RoPE is written in v4's layout (`rope_theta` and `rope_scaling` at the top), which v5 still reads;
    the weights' dtype under both `torch_dtype` (v4) and `dtype` (v5)."""
    kind = _model_type(cfg)
    config = {
        "architectures": [ARCHITECTURES[kind]], "model_type": kind, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps, "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta, "rope_scaling": None, "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": dtype, "dtype": dtype,
    }
    if cfg.rope_scaling is not None:
        scaling = cfg.rope_scaling
        config["rope_scaling"] = {"rope_type": "llama3", "factor": scaling.factor,
                                  "low_freq_factor": scaling.low_freq_factor,
                                  "high_freq_factor": scaling.high_freq_factor,
                                  "original_max_position_embeddings": scaling.original_max_position_embeddings}
    if kind == "qwen2":  # Qwen2 hard-codes its biases; its window must be off, as ours is
        config.update(use_sliding_window=False, sliding_window=None)
    else:
        config.update(attention_bias=cfg.attention_bias)
        if kind == "llama":
            config.update(mlp_bias=False)
        else:
            config.update(use_sliding_window=False, sliding_window=None)
    return config


def _shards(names: list[str], sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Consecutive groups of names of at most `max_bytes` each (a tensor larger than that gets its own)."""
    groups, size = [[]], 0
    for name in names:
        if groups[-1] and size + sizes[name] > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += sizes[name]
    return groups


def save(model: Llama, directory: str | os.PathLike, max_shard_bytes: int | None = None,
         dtype: str = "float32") -> list[Path]:
    """Write `model` as a Hugging Face checkpoint directory that `AutoModelForCausalLM.from_pretrained`
    loads: config.json and model.safetensors, or, with `max_shard_bytes`, shards
    `model-00001-of-0000N.safetensors` and model.safetensors.index.json. A tied model writes no
    `lm_head.weight`, as transformers does. The other layout's file of a previous save (the index, or
    the single file) is removed, since `load` would read it first. Makes one host copy of the
    parameters (on a CPU, where the model itself is in host memory, that is a second copy).

    Args:
        model: the model to write.
        directory: created if missing; files of the same names are replaced.
        max_shard_bytes: the most bytes of tensors per shard; None writes one file.
        dtype: the weights' dtype on disk, "float32" or "bfloat16".

    Returns:
        The paths written, config.json first.
    """
    if dtype not in SAVE_DTYPES:
        raise ConfigError("dtype", f"{dtype!r} cannot be saved", SAVE_DTYPES)
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ConfigError("max_shard_bytes", f"{max_shard_bytes} must be a positive number of bytes")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = hf_config(model.cfg, dtype)
    tensors = {name: np.ascontiguousarray(array.astype(SAVE_DTYPES[dtype], copy=False))
               for name, array in to_hf_state_dict(model).items()}
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    written = [directory / CONFIG]
    metadata = {"format": "pt"}  # what transformers writes; it marks the tensors' layout as torch's
    (directory / (INDEX if max_shard_bytes is None else WEIGHTS)).unlink(missing_ok=True)
    if max_shard_bytes is None:
        save_file(tensors, directory / WEIGHTS, metadata=metadata)
        return [*written, directory / WEIGHTS]
    groups = _shards(list(tensors), {k: v.nbytes for k, v in tensors.items()}, max_shard_bytes)
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({name: tensors[name] for name in group}, directory / file, metadata=metadata)
        weight_map |= dict.fromkeys(group, file)
        written.append(directory / file)
    index = {"metadata": {"total_size": sum(v.nbytes for v in tensors.values())}, "weight_map": weight_map}
    (directory / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return [*written, directory / INDEX]
