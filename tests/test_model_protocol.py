"""A model of one's own (framework.models.protocol, issue 22): `recoup train --model module:attr`
trains any flax.nnx module that answers recoup's call; one that does not fit fails at start-up in
one line naming what is missing, before anything compiles; a run naming code is imported again
only with --trust-imports."""

import json
import os
import textwrap

import jax
import pytest
from flax import nnx

from framework.app.cli import main
from framework.config import ModelConfig
from framework.errors import ConfigError
from framework.models import protocol

MODULE = textwrap.dedent('''
    import jax.numpy as jnp
    from flax import nnx

    from framework.models.llama import Llama, LlamaConfig


    def tiny_llama(vocab_size, rngs):
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2)
        return Llama(cfg, rngs=rngs)


    class NoCache(nnx.Module):
        def __init__(self, vocab_size, rngs):
            self.embed = nnx.Embed(vocab_size, 8, rngs=rngs)

        def __call__(self, tokens, positions, mask, cache=None, cache_index=0, dropout_key=None):
            return self.embed.attend(self.embed(tokens)), cache


    def no_cache(vocab_size, rngs):
        return NoCache(vocab_size, rngs)


    class OldCall(NoCache):
        def __call__(self, tokens):
            return self.embed.attend(self.embed(tokens))

        def init_cache(self, batch, length, dtype=None):
            return ()


    def old_call(vocab_size, rngs):
        return OldCall(vocab_size, rngs)


    def wrong_vocab(vocab_size, rngs):
        return tiny_llama(vocab_size - 1, rngs)
''')
TRAIN = ["--task", "addition", "--max-digits", "2", "--n-examples", "600", "--val-size", "20", "--test-size", "20",
         "--budget-tokens", "4k", "--batch-size", "16", "--stops", "0.5,1.0", "--lr", "3e-3", "--no-progress"]


@pytest.fixture()
def in_a_user_dir(tmp_path, monkeypatch):
    (tmp_path / "mymodel.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)  # the import path resolves from here, as `python -m` would
    yield tmp_path


def test_a_llama_from_a_users_factory_trains_and_is_read_back_only_when_trusted(in_a_user_dir, capsys):
    assert main(["train", "--model", "mymodel:tiny_llama", *TRAIN, "--out", "run"]) == 0
    saved = json.loads((in_a_user_dir / "run" / "config.json").read_text())
    assert saved["model"]["factory"] == "mymodel:tiny_llama" and saved["preset"] is None
    capsys.readouterr()
    assert main(["eval", "run", "--json"]) == 2  # config.json is data: importing its code needs consent
    assert "names code to import (model=mymodel:tiny_llama)" in capsys.readouterr().err
    assert main(["eval", "run", "--json", "--trust-imports"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 20 and 0.0 <= result["em"] <= 1.0
    from framework.training.runs import open_run

    params = open_run("run").params(result["step"])  # Llama's own parameter names, in a recoup checkpoint
    names = {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert any("self_attn" in n and "k_proj" in n for n in names) and any("embed_tokens" in n for n in names), names


@pytest.mark.parametrize("factory, says", [
    ("mymodel:no_cache", "no init_cache(batch, length)"),
    ("mymodel:old_call", "__call__ takes no positions, mask, cache, cache_index, dropout_key"),
    ("mymodel:wrong_vocab", "returns logits of shape (1, 4, 258)"),
    ("mymodel:missing", "module 'mymodel' has no attribute 'missing'"),
    ("nomodule:make", "cannot import module 'nomodule'"),
])
def test_a_model_that_does_not_fit_fails_in_one_line_before_anything_runs(in_a_user_dir, capsys, factory, says):
    assert main(["train", "--model", factory, *TRAIN, "--out", "bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.factory" in err[0] and says in err[0], err
    assert not os.path.exists(in_a_user_dir / "bad" / "checkpoints")


def test_problems_name_what_a_module_lacks():
    class WithDropout(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(10, 4, rngs=rngs)
            self.drop = nnx.Dropout(0.1, rngs=rngs)

        def __call__(self, tokens, positions, mask, cache=None, cache_index=0, dropout_key=None):
            return self.embed.attend(self.embed(tokens)), cache

        def init_cache(self, batch, length, dtype=None):
            return ()

    assert protocol.problems(object()) == ["it is a object, not a flax.nnx.Module"]
    found = protocol.problems(WithDropout(nnx.Rngs(0)))
    assert len(found) == 1 and "state besides nnx.Param" in found[0] and "dropout_key" in found[0]
    assert protocol.problems(protocol.build(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64), 0)) == []


def test_the_factory_field_is_an_import_path():
    with pytest.raises(ConfigError) as err:
        ModelConfig(factory="mymodel.tiny_llama").validate()
    assert err.value.field == "model.factory" and "'module:attr'" in str(err.value)
