"""Hugging Face tokenizers (issue 22, item 6): a tokenizer.json with its BOS, EOS and PAD, made in the
tests (tests/hf_tokenizers.py). The counted token, the prompt/answer boundary, greedy decoding's stop,
EM's answer text, serving and export all follow the tokenizer a run trained with, and the run keeps
its own copy of it."""

import dataclasses
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from framework.app.cli import main
from framework.checkpoints.store import list_checkpoints
from framework.data import encoding, identity
from framework.data import tokenizer as tokenizers
from framework.errors import ConfigError
from framework.evaluation import evaluate
from framework.models.transformer import forward
from framework.runner.build import train
from framework.serving import generation
from framework.training.runs import evaluate_checkpoint, open_run
from tests import hf_tokenizers
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return hf_tokenizers.write(tmp_path_factory.mktemp("qwen-tok"), "qwen")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return hf_tokenizers.write(tmp_path_factory.mktemp("llama-tok"), "llama")


def test_bos_eos_and_pad_come_from_the_tokenizers_files(qwen_dir, llama_dir):
    qwen = tokenizers.load(str(qwen_dir))
    eos = qwen.encode_with_specials("<|endoftext|>")[0]
    assert (qwen.prefix, qwen.eos, qwen.pad, qwen.bos, qwen.ends.stop) == ((), eos, eos, None, (eos,))
    assert qwen.vocab_size == 400 and qwen.chat_template
    llama = tokenizers.load(str(llama_dir / "tokenizer.json"))  # the file itself works too
    bos, im_end, pad = (llama.encode_with_specials(t)[0] for t in ("<|begin_of_text|>", "<|im_end|>", "<|pad|>"))
    assert (llama.prefix, llama.bos, llama.pad, llama.ends.stop) == ((bos,), bos, pad, (llama.eos, im_end))


def test_special_tokens_in_user_text_are_text(qwen_dir):
    tok = tokenizers.load(str(qwen_dir))
    ids = tok.encode("12+<|endoftext|>")
    assert tok.eos not in ids and tok.decode_generated(ids) == ("12+<|endoftext|>", False)


def test_a_generated_answer_ends_at_an_end_id_and_stops_short_at_another_special(llama_dir):
    tok = tokenizers.load(str(llama_dir))
    answer = tok.encode("5210")
    im_end, im_start = tok.encode_with_specials("<|im_end|>")[0], tok.encode_with_specials("<|im_start|>")[0]
    assert tok.decode_generated([*answer, tok.eos, *answer]) == ("5210", True)
    assert tok.decode_generated([*answer, im_end, tok.pad]) == ("5210", True)  # generation_config's other EOS
    assert tok.decode_generated([*answer, im_start, tok.eos]) == ("5210", False)  # a special that ends nothing
    assert tok.decode_generated(answer) == ("5210", False)  # ran out of room
    assert tok.answer_end([*answer, tok.eos]) == (len(answer), True)


@pytest.mark.parametrize("layout", ["qwen", "llama"])
def test_the_answer_boundary_and_the_counted_tokens_follow_the_tokenizer(layout, tmp_path):
    tok = tokenizers.load(str(hf_tokenizers.write(tmp_path, layout)))
    import datasets

    rows = {"prompt": ["12+34=", "7+5="], "answer": ["64", "21"], "difficulty": [0, 0]}
    ds = datasets.Dataset.from_dict(rows)
    split = encoding.encode_split(ds, encoding.sequence_width({"x": ds}, tok), tok)
    batch = encoding.make_batch(split, np.arange(2))
    for i, a in enumerate(rows["answer"]):
        answer = tok.encode(a)
        start = split.prompt_lens[i]
        assert batch.targets[i, start:start + len(answer) + 1].tolist() == [*answer, tok.eos]
        assert batch.loss_mask[i].sum() == len(answer) + 1
    want = sum(len(tok.prefix) + len(tok.encode(p)) + len(tok.encode(a))
               for p, a in zip(rows["prompt"], rows["answer"], strict=True))
    assert encoding.counted_tokens(batch, tok.pad) == want


def test_a_tokenizer_that_cannot_be_used_is_a_clear_error(tmp_path, qwen_dir):
    with pytest.raises(ConfigError, match="data.tokenizer.*does not exist"):
        tokenizers.load(str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError, match="holds no tokenizer.json"):
        tokenizers.load(str(tmp_path))
    shutil.copy(qwen_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(ConfigError, match="names no EOS token"):
        tokenizers.load(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable tokenizer.json"):
        tokenizers.load(str(tmp_path))


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, qwen_dir):
    """A tiny run trained with the Qwen-layout BPE, its tokenizer then moved away."""
    source = tmp_path_factory.mktemp("tok-source") / "tok"
    shutil.copytree(qwen_dir, source)
    base = tiny_config(tmp_path_factory.mktemp("runs") / "bpe")
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, tokenizer=str(source)))
    train(cfg, show_progress=False)
    shutil.rmtree(source)  # the run reads its own copy from now on
    return cfg


def test_a_run_trains_with_the_tokenizer_and_keeps_its_own_copy(bpe_run):
    run = open_run(bpe_run.out_dir)
    assert run.tokenizer.identity["kind"] == "hf" and run.tokenizer.vocab_size == 400
    assert run.abstract_params["embed"]["embedding"].shape[0] == 400
    assert identity.read(bpe_run.out_dir)["tokenizer"] == run.tokenizer.identity
    last = list_checkpoints(bpe_run.out_dir)[-1]
    assert last["fraction"] == 1.0 and 0.95 * bpe_run.budget_tokens <= last["tokens"] <= bpe_run.budget_tokens
    result = evaluate_checkpoint(run, split="test")
    assert result["n"] == 100 and 0 <= result["em"] <= 1


def test_greedy_decoding_agrees_with_teacher_forcing_under_the_bpe(bpe_run):
    """Decoded token j equals the teacher-forced argmax at answer position j while the decode matches
    the reference: the prompt/answer boundary, the prefix and the stop are the tokenizer's."""
    run = open_run(bpe_run.out_dir)
    split, params, tok = run.split("test"), run.params(), run.tokenizer
    batch = encoding.make_batch(split, np.arange(len(split)))
    argmax = np.asarray(jnp.argmax(forward(nnx.merge(run.graphdef, params), jnp.asarray(batch.inputs)), -1))
    decoded = np.asarray(evaluate.greedy_decode(run.graphdef, params, evaluate.left_padded_prompts(split.prompts, tok),
                                                int(split.answer_lens.max()) + 2, tok.ends))
    checked = 0
    for i in range(len(split)):
        start, length = split.prompt_lens[i], split.answer_lens[i] + 1
        for j in range(length):
            assert decoded[i, j] == argmax[i, start + j], f"example {i}, answer token {j}"
            checked += 1
            if argmax[i, start + j] != batch.targets[i, start + j]:
                break
    assert checked >= len(split)
    tf = evaluate.teacher_forced(run.graphdef, params, split, 64)
    assert tf["strict_em"] == evaluate.score(evaluate.decode_split(run.graphdef, params, split, 64), split)["strict_em"]


def test_serving_encodes_and_stops_with_the_runs_tokenizer(bpe_run):
    model = generation.load(bpe_run.out_dir)
    tok = model.tokenizer
    assert tok.identity["kind"] == "hf"
    buckets = generation.Buckets((1,), (16,), (8,))
    [c] = generation.generate(model, [generation.Row(generation.encode_prompt(tok, "12+34="), 8)], buckets)
    assert 1 <= c.completion_tokens <= 8 and isinstance(c.text, str)


def test_export_writes_the_runs_tokenizer_that_transformers_reads_the_same(bpe_run, tmp_path, capsys):
    from transformers import AutoTokenizer

    out = tmp_path / "hf"
    assert main(["export", bpe_run.out_dir, "--hf", str(out)]) == 0
    ours = open_run(bpe_run.out_dir).tokenizer
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 400 and config["eos_token_id"] == ours.eos and "bos_token_id" not in config
    theirs = AutoTokenizer.from_pretrained(out)
    for text in ("12+34=", "531+8="):
        assert theirs(text)["input_ids"] == [*ours.prefix, *ours.encode(text)]
    assert theirs.eos_token_id == ours.eos


def test_a_changed_tokenizer_is_a_change_of_data():
    saved = {"tokenizer": {"kind": "hf", "sha256": "a" * 64}, "splits": {}}
    assert any("tokenizer has changed" in d for d in identity.differences(saved, {"tokenizer": {"sha256": "b" * 64}}))
    assert identity.differences(saved, dict(saved)) == []
