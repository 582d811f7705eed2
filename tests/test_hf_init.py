"""`recoup train --init-from hf:DIR` (issue 22, items 3 and 8): a tiny random Qwen2 checkpoint saved by
transformers with a BPE tokenizer trained here (no downloads) is fine-tuned on a built-in task; its
architecture comes from config.json, its tokenizer from the directory, and the run keeps copies of
both, so eval, averaging, export and serving need the checkpoint no more.

Tolerance of the round trip (init, then export untrained; Llama with llama3 RoPE scaling and an untied
head, Qwen2, Qwen3): the exported tensors equal the checkpoint's to float32 rounding (max abs < 1e-6,
measured 0: the same bits), and transformers' logits from the export equal its logits from the
original (max abs < 1e-5). recoup's own logits against transformers': tests/test_llama.py (max abs
< 1e-4, KL) and tests/test_hf_io.py."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from framework.app.cli import main
from framework.errors import ConfigError
from tests import hf_tokenizers
from tests.test_llama import FAMILIES, TINY

VOCAB = 416  # the tokenizer's 400 ids, padded up as released checkpoints pad theirs


def _checkpoint(directory, family: str = "qwen2"):
    """tests/test_llama.py's tiny model of `family` (Llama with llama3 RoPE scaling, q/k/v biases and an
    untied head; Qwen2 tied, with biases; Qwen3 with q/k norms), its vocabulary the BPE's, padded."""
    cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cls(**{**TINY, "vocab_size": VOCAB}, **extra),
                                                          attn_implementation="eager")
    model.save_pretrained(directory)
    hf_tokenizers.write(directory, "llama" if family == "llama" else "qwen")
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("qwen2-tiny"))


def _train(checkpoint, out, *extra):
    return main(["train", "--init-from", f"hf:{checkpoint}", "--task", "addition", "--max-digits", "3",
                 "--n-examples", "2000", "--val-size", "64", "--test-size", "64", "--batch-size", "16",
                 "--eval-batch-size", "64", "--out", str(out), "--no-progress", *extra])


def _logits(directory, tokens):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                              attn_implementation="eager")
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens)).logits.numpy()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_starting_from_a_checkpoint_and_exporting_untrained_gives_it_back(family, tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path / family, family)
    run = tmp_path / "run"
    # A learning rate of 1e-30 moves no float32 weight: what is exported is what was read.
    assert _train(checkpoint, run, "--budget-tokens", "2k", "--lr", "1e-30", "--weight-decay", "0") == 0
    assert "starting from the weights of hf:" in capsys.readouterr().out
    assert os.path.isfile(run / "model" / "config.json") and os.path.isfile(run / "tokenizer" / "tokenizer.json")
    out = tmp_path / "hf"
    assert main(["export", str(run), "--hf", str(out)]) == 0
    original, exported = load_file(checkpoint / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(original) == set(exported)
    assert max(float(np.max(np.abs(original[k] - exported[k]))) for k in original) < 1e-6
    tokens = [[5, 17, 300, 42, 99, 7]]
    assert float(np.max(np.abs(_logits(checkpoint, tokens) - _logits(out, tokens)))) < 1e-5


def test_a_fine_tune_from_a_checkpoint_averages_and_is_served_to_the_openai_client(checkpoint, tmp_path, capsys):
    import openai

    from harness.served import recoup_serve

    source = tmp_path / "source"
    shutil.copytree(checkpoint, source)
    run, ens = tmp_path / "run", tmp_path / "ens"
    assert _train(source, run, "--budget-tokens", "30k", "--lr", "3e-3", "--stops", "0.5,0.75,1.0") == 0
    capsys.readouterr()
    shutil.rmtree(source)  # the run holds what it needs: its config, its tokenizer, its checkpoints
    config = json.loads((run / "config.json").read_text())
    assert config["init_from"] == f"hf:{source}" and config["model"]["hf_config"] == str(source)
    assert main(["ensemble", "build", str(run), "--budget", "1.0", "--method", "average", "--out", str(ens),
                 "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert len(built["members"]) >= 2 and 0 <= built["test"]["em"] <= 1
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    with recoup_serve([str(ens)], "--batch-buckets", "1,2", "--prompt-buckets", "16", "--new-token-buckets", "8",
                      ready_timeout=180, env=env) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        out = client.completions.create(model="ens", prompt=["1+2=", "35+4="], max_tokens=6, temperature=0)
        assert [c.index for c in out.choices] == [0, 1]
        # Prompt tokens are the BPE's (no BOS in the Qwen layout), not the bytes' 1 + 4 and 1 + 5.
        from framework.data.tokenizer import load

        tok = load(str(run / "tokenizer"))
        assert out.usage.prompt_tokens == len(tok.encode("1+2=")) + len(tok.encode("35+4=")) < 9
        # A chat goes through the checkpoint's chat template (tests/hf_tokenizers.py), markup ids and all.
        messages = [{"role": "user", "content": "1+2="}]
        chat = client.chat.completions.create(model="ens", messages=messages, max_tokens=4, temperature=0)
        assert chat.choices[0].message.role == "assistant" and isinstance(chat.choices[0].message.content, str)
        assert chat.usage.prompt_tokens == len(tok.chat_prompt(messages)) > len(tok.encode("1+2="))


def test_a_bad_source_or_tokenizer_fails_before_training(checkpoint, tmp_path, capsys):
    assert _train(tmp_path / "nowhere", tmp_path / "a", "--budget-tokens", "2k") == 2
    assert "init_from" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(checkpoint / "config.json", empty / "config.json")
    assert _train(empty, tmp_path / "b", "--budget-tokens", "2k") == 2
    assert "no model.safetensors" in capsys.readouterr().err
    assert _train(checkpoint, tmp_path / "c", "--budget-tokens", "2k", "--tokenizer", "byte") == 2
    assert "embeddings are for its own tokenizer" in capsys.readouterr().err
    big = hf_tokenizers.write(tmp_path / "big", "qwen", vocab_size=600)
    assert _train(checkpoint, tmp_path / "d", "--budget-tokens", "2k", "--tokenizer", str(big)) == 2
    assert "use the tokenizer it was trained with" in capsys.readouterr().err
    assert not any((tmp_path / x).exists() for x in "abcd")
    with pytest.raises(ConfigError, match="not both"):
        from framework.config import ModelConfig

        ModelConfig(factory="m:f", hf_config=str(checkpoint)).validate()


def test_the_readmes_tiny_checkpoint_is_one_recoup_can_start_from(tmp_path):
    from framework.data.tokenizer import load
    from framework.models import hf
    from framework.runner.check import check_hf_source
    from harness.tiny_checkpoint import main as make

    make([str(tmp_path / "tiny")])
    check_hf_source(str(tmp_path / "tiny"))
    model, tok = hf.load(tmp_path / "tiny"), load(str(tmp_path / "tiny"))
    assert model.cfg.qk_norm and tok.vocab_size <= model.cfg.vocab_size < tok.vocab_size + 64
    assert tok.prefix == () and tok.chat_template
