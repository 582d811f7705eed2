"""Hugging Face checkpoint directories (framework/models/hf.py) against transformers' own files: tiny
random models saved with `save_pretrained` (safetensors) load with logits equal to transformers', and
what `hf.save` writes loads back into transformers with the same logits.

Tolerances: float32, max |logits_HF - logits_ours| < 1e-4 (as tests/test_llama.py). A bfloat16 file
read into float32 parameters is compared with transformers' float32 model of the same file (the
upcast is exact), to the same 1e-4; bfloat16 compute with transformers' bfloat16 model only by
KL < 1e-2, since the two round at different points. Measured on a CPU (torch 2.13.0, transformers
5.25.0, jax 0.10.2): load max abs 4-6e-6 for all three; what hf.save writes, transformers runs to the
same logits as the original files, bit for bit (so ours again to 4-6e-6); bfloat16 compute KL 1.1e-4
(max abs 6e-2).

Memory: in a fresh process, after a warm-up load of a tiny model, loading a 17 MiB float32 checkpoint
raises peak RSS by 1.10-1.11x the file size (asserted < 1.5x): the parameters themselves, which jax on a
CPU keeps in the buffers the loader filled, plus about the largest tensor. Files are read with
safetensors' pread backend, not memory-mapped, so no file pages count in RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import save_file
from safetensors.torch import load_file

from framework.errors import ConfigError
from framework.models import hf
from framework.models.llama import Llama, LlamaConfig, hf_layout
from tests.test_llama import MAX_ABS, batch, hf_logits, hf_model, kl, our_logits

ROOT = Path(__file__).resolve().parents[1]
# family -> how transformers saves it: (max_shard_size or None, torch dtype)
CASES = {
    "llama": (None, torch.float32),  # llama3 RoPE scaling, untied head, one model.safetensors
    "qwen2": ("20KB", torch.float32),  # tied head, 15 shards and an index
    "qwen3": (None, torch.bfloat16),  # q/k norms, weights stored in bfloat16
}


def saved(family: str, directory: Path):
    """A tiny transformers model saved by `save_pretrained`, loaded back by transformers in float32 (a
    bfloat16 file's weights upcast exactly; RoPE's inverse frequencies computed afresh in float32)."""
    shard, dtype = CASES[family]
    hf_model(family).to(dtype).save_pretrained(directory, **({"max_shard_size": shard} if shard else {}))
    return from_pretrained(directory)


def from_pretrained(directory: Path, dtype=torch.float32):
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="eager")


@pytest.mark.parametrize("family", sorted(CASES))
def test_load_and_save_match_transformers(family, tmp_path):
    reference = saved(family, tmp_path / "hf")
    if family == "qwen2":
        assert len(list((tmp_path / "hf").glob("model-*-of-*.safetensors"))) > 1
    tokens, positions = batch()
    want = hf_logits(reference, tokens, positions)
    model = hf.load(tmp_path / "hf")
    got = our_logits(model, tokens, positions)
    print(f"{family} load: max abs {np.abs(want - got).max():.2e}")
    np.testing.assert_allclose(got, want, atol=MAX_ABS, rtol=0)

    # and back: what hf.save writes (sharded for qwen2, bfloat16 for qwen3) transformers loads as it was
    shard = 20_000 if family == "qwen2" else None
    hf.save(model, tmp_path / "ours", max_shard_bytes=shard, dtype="bfloat16" if family == "qwen3" else "float32")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["model_type"] == family and config["architectures"] == [type(reference).__name__]
    back = from_pretrained(tmp_path / "ours")
    again = hf_logits(back, tokens, positions)
    print(f"{family} save: max abs {np.abs(again - got).max():.2e} (to the first HF model's: "
          f"{np.abs(again - want).max():.2e})")
    np.testing.assert_allclose(again, got, atol=MAX_ABS, rtol=0)
    assert back.config.tie_word_embeddings == reference.config.tie_word_embeddings
    if shard:
        index = json.loads((tmp_path / "ours" / hf.INDEX).read_text())
        assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "ours" / hf.WEIGHTS).exists()


def test_bfloat16_compute_from_a_bfloat16_file(tmp_path):
    saved("qwen3", tmp_path)
    tokens, positions = batch()
    want = hf_logits(from_pretrained(tmp_path, torch.bfloat16), tokens, positions)
    got = our_logits(hf.load(tmp_path, dtype="bfloat16"), tokens, positions)
    divergence = kl(want, got)
    print(f"bfloat16 qwen3: max abs {np.abs(want - got).max():.2e}, KL {divergence:.2e}")
    assert divergence < 1e-2


def test_one_error_names_a_renamed_a_missing_and_a_misshapen_tensor(tmp_path):
    saved("llama", tmp_path)
    tensors = {k: v.numpy() for k, v in load_file(tmp_path / hf.WEIGHTS).items()}
    tensors["model.layers.0.mlp.upproj.weight"] = tensors.pop("model.layers.0.mlp.up_proj.weight")  # renamed
    del tensors["model.layers.1.self_attn.v_proj.weight"]  # missing
    tensors["model.norm.weight"] = tensors["model.norm.weight"][:-1]  # misshapen
    save_file(tensors, tmp_path / hf.WEIGHTS)
    with pytest.raises(ConfigError) as err:
        hf.load(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "4 bad tensor(s)" in message, message
    for name in ("model.layers.0.mlp.upproj.weight: unknown", "model.layers.0.mlp.up_proj.weight: missing",
                 "model.layers.1.self_attn.v_proj.weight: missing", "model.norm.weight: shape (63,)"):
        assert name in message, message


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        hf.read_config(tmp_path / "nowhere")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"config\.json: not found .*pytorch_model\.bin"):
        hf.read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma"}))
    with pytest.raises(ConfigError, match="model_type"):
        hf.read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", **TINY_JSON}))
    with pytest.raises(ConfigError, match="only safetensors"):
        hf.load(tmp_path)
    (tmp_path / hf.INDEX).write_text(json.dumps({"weight_map": {"model.norm.weight": "model-1.safetensors"}}))
    with pytest.raises(ConfigError, match="model-1.safetensors"):
        hf.load(tmp_path)


TINY_JSON = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1)

MEMORY_SCRIPT = """
import json, sys
import numpy as np
from framework.models import hf

def status(key):
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(key + ":"))) * 1024

big, small = sys.argv[1], sys.argv[2]
hf.load(small)  # the code paths warmed on a tiny model, so that only the big one's arrays count
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current RSS
baseline = status("VmRSS")
model = hf.load(big)
print(json.dumps({"peak": status("VmHWM") - baseline, "after": status("VmRSS") - baseline}))
"""


def write_random(directory: Path, **fields) -> int:
    """A float32 checkpoint of random weights written with numpy (no torch in the measured process);
    returns the file's size."""
    cfg = LlamaConfig(**fields)
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(hf.hf_config(cfg)))
    rng = np.random.default_rng(0)
    pure = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))))
    tensors = {}
    for name, (path, transposed) in hf_layout(cfg).items():
        leaf = pure
        for key in path:
            leaf = leaf[key]
        shape = tuple(reversed(leaf.shape)) if transposed else tuple(leaf.shape)
        tensors[name] = rng.standard_normal(shape, dtype=np.float32)
    save_file(tensors, directory / hf.WEIGHTS)
    return (directory / hf.WEIGHTS).stat().st_size


def test_load_peak_memory_stays_under_one_and_a_half_copies(tmp_path):
    """Peak RSS growth of `hf.load` in a fresh process, over a baseline taken after a warm-up load, is
    under 1.5x the file: the parameters (1x) plus about one tensor in flight, never a second copy."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    size = write_random(tmp_path / "big", vocab_size=4096, hidden_size=256, intermediate_size=512,
                        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    write_random(tmp_path / "small", **TINY_JSON)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(MEMORY_SCRIPT), str(tmp_path / "big"),
                          str(tmp_path / "small")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"file {size / 2**20:.1f} MiB, peak growth {measured['peak'] / size:.2f}x, "
          f"after {measured['after'] / size:.2f}x")
    assert measured["after"] > 0.8 * size  # the weights really are in this process's memory
    assert measured["peak"] < 1.5 * size, measured
