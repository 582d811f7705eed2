"""`recoup export` (issue 22, item 4): a recoup run as a Hugging Face checkpoint that transformers
loads unchanged, tokenizer included: the same tokens, the same logits (float32, max abs < 1e-4),
the same greedy answer. recoup's Transformer is written as a Llama (framework.models.convert)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from framework.app.cli import main
from framework.config import ModelConfig
from framework.data import tokenizer
from framework.data.tokenizer import BYTE
from framework.errors import ConfigError
from framework.models import convert
from framework.models.protocol import build
from framework.models.transformer import forward


def test_recoups_transformer_is_a_llama():
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=96, rope_base=500.0)
    model = build(cfg, 3)
    from flax import nnx

    graphdef, params = nnx.split(model, nnx.Param)  # pushed off the init, so a wrong mapping shows
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), params)
    tokens = jax.random.randint(jax.random.key(2), (2, 12), 3, tokenizer.VOCAB_SIZE)
    ours = forward(nnx.merge(graphdef, params), tokens)
    assert float(jnp.max(jnp.abs(ours - forward(convert.as_llama(cfg, params), tokens)))) < 1e-5
    with pytest.raises(ConfigError, match="no Llama counterpart"):
        convert.llama_config(ModelConfig(mlp="gelu"))


def test_the_byte_tokenizer_as_hugging_face_files_encodes_and_decodes_as_recoup(tmp_path):
    BYTE.write_hf(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(tmp_path)
    for text in ("12+34=", "Who is the boss of Kesu?", "héllo ✓ \n\t x"):
        ids = tok(text)["input_ids"]
        assert ids == [tokenizer.BOS, *BYTE.encode(text)]
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (tokenizer.PAD, tokenizer.BOS, tokenizer.EOS)


def test_a_run_exports_to_a_checkpoint_transformers_loads_with_the_same_logits(trained_run, tmp_path, capsys):
    cfg, _ = trained_run
    out = tmp_path / "hf"
    assert main(["export", cfg.out_dir, "--hf", str(out)]) == 0
    assert "Hugging Face checkpoint" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    hf_model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    from framework.training.runs import open_run

    run = open_run(cfg.out_dir)
    from flax import nnx

    ours = nnx.merge(run.graphdef, run.params())
    prompt = "123+45="
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits.numpy()
    mine = np.asarray(forward(ours, jnp.asarray([ids])))
    assert np.max(np.abs(theirs - mine)) < 1e-4
    # the same greedy continuation, ended by the same EOS
    with torch.no_grad():
        gen = hf_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    seq = list(ids)
    for _ in range(8):
        nxt = int(np.argmax(np.asarray(forward(ours, jnp.asarray([seq])))[0, -1]))
        seq.append(nxt)
        if nxt == tokenizer.EOS:
            break
    assert gen[: len(seq) - len(ids)] == seq[len(ids):]


def test_a_model_of_ones_own_that_is_not_a_llama_is_refused():
    import types

    from flax import nnx

    from framework.app.export import _llama

    graphdef, params = nnx.split(build(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64), 0), nnx.Param)
    run = types.SimpleNamespace(run_dir="r", graphdef=graphdef, cfg=types.SimpleNamespace(
        model=ModelConfig(factory="mymod:make")))  # a factory's module that is recoup's Transformer, not a Llama
    with pytest.raises(ConfigError, match="recoup exports its Transformer and framework.models.llama.Llama"):
        _llama(run, params)


def test_an_output_ensemble_exports_its_members_and_says_it_is_not_one_model(trained_run, tmp_path, capsys):
    cfg, _ = trained_run
    ens = tmp_path / "ens"
    assert main(["ensemble", "build", cfg.out_dir, "--budget", "1.0", "--max-cost", "2", "--method", "logits",
                 "--out", str(ens)]) == 0
    capsys.readouterr()
    assert main(["export", str(ens), "--hf", str(tmp_path / "hf")]) == 0
    out, err = capsys.readouterr()
    assert "not one model" in err and "output ensemble" in out
    manifest = json.loads((tmp_path / "hf" / "ensemble.json").read_text())
    assert manifest["combine"] == "logits" and manifest["members"] == ["member-0", "member-1"]
    for member in manifest["members"]:
        assert (tmp_path / "hf" / member / "model.safetensors").is_file()
        assert (tmp_path / "hf" / member / "tokenizer.json").is_file()
