"""`recoup train --text` (issue 23 item 1): a text corpus trained end to end on packed rows, resumed bit
for bit (the stream's position is in the checkpoint), validated by loss; what needs examples or an
exact match refuses a text run in one line; a changed corpus is found on resume."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil

import jax
import numpy as np
import pytest

from framework.app.cli import main
from framework.checkpoints import store as checkpoints
from framework.config import DataConfig, RunConfig
from framework.data import identity, text
from framework.data.tokenizer import BYTE
from framework.errors import ConfigError
from framework.run_dirs import load_run_config
from framework.runner.build import train
from framework.runner.check import check
from framework.training.runs import open_run
from tests.conftest import crash_then_resume, event_scalars, logged_lines, metrics_scalars

WORDS = "the a cat dog sat ran on under mat hill green far into while slowly river stone".split()
SEQ_LEN = 32
TEXT_RUN = ["--preset", "tiny", "--seq-len", str(SEQ_LEN), "--val-size", "4", "--test-size", "4", "--batch-size", "8",
            "--budget-tokens", "6k", "--stops", "0.5", "--batch-warmup", "0",
            "--ema-half-life", "1k", "--dropout", "0.1", "--log-every", "3", "--eval-batch-size", "16", "--no-progress",
            "--stop-rule", "patience:metric=val_loss,patience=50"]


def write_corpus(directory, docs: int = 60, seed: int = 0) -> str:
    """`docs` documents of 2..40 random words as paragraphs of three .txt files (no downloads)."""
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    for f in range(3):
        paragraphs = [f"doc {f}.{i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 40)))
                      for i in range(docs // 3)]
        with open(os.path.join(directory, f"part{f}.txt"), "w") as out:
            out.write("\n\n".join(paragraphs) + "\n")
    return str(directory)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A text run trained through the CLI: an EMA, dropout, and a stopping rule on the validation loss."""
    root = tmp_path_factory.mktemp("text")
    corpus, out = write_corpus(root / "corpus"), str(root / "run")
    assert main(["train", "--text", corpus, *TEXT_RUN, "--out", out]) == 0
    return out


def test_a_text_run_trains_on_every_token_of_full_rows_and_validates_by_loss(text_run, capsys):
    lines = [json.loads(ln) for ln in open(os.path.join(text_run, "metrics.jsonl"))]
    train, evals = [x for x in lines if x["event"] == "train"], [x for x in lines if x["event"] == "eval"]
    # rows are full (the stream never pads), the loss is on every token, and there are no examples' difficulties
    assert all(x["tokens"] % SEQ_LEN == 0 and x["answer_tokens"] == x["tokens"] for x in train)
    assert not any("difficulty_mean" in x for x in train)
    assert [e["fraction"] for e in evals if e["kind"] == "stop"] == [0.5, 1.0]
    for e in evals:
        assert e["val_em"] is None and "val_correct" not in e and 0 < e["val_loss"] < np.log(BYTE.vocab_size)
        assert set(e["average_val_loss"]) == {"ema-1000"} and "average_val_em" not in e
        assert "stopping" in e  # a rule on the validation loss ran at every evaluation
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert event_scalars(text_run) == metrics_scalars(text_run)  # TensorBoard: eval/val_loss, no eval/val_em
    assert "eval/average_val_loss/ema-1000" in event_scalars(text_run)
    record = identity.read(text_run)
    assert record["text_path"] == os.path.abspath(load_run_config(text_run).data.text)
    assert set(record) == {"text_path", "text_fingerprint", "splits"}
    capsys.readouterr()
    assert main(["runs", "show", text_run]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert "val EM" in shown[0] and all(row.split()[4] == "-" for row in shown[1:-1])  # no EM: a dash


def test_a_text_run_resumes_bit_for_bit_and_a_changed_corpus_is_found(text_run, tmp_path):
    cfg = load_run_config(text_run)
    copy = shutil.copytree(cfg.data.text, tmp_path / "corpus")  # the same files: the same fingerprint
    broken = dataclasses.replace(cfg, out_dir=str(tmp_path / "broken"), data=dataclasses.replace(cfg.data,
                                                                                                    text=str(copy)))
    before = crash_then_resume(broken)  # killed past 0.6 of the budget
    assert before[-1]["tokens"] < cfg.budget_tokens * 0.6
    a, b = open_run(text_run).params(), open_run(broken.out_dir).params()
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
    assert logged_lines(text_run) == logged_lines(broken.out_dir)
    assert [c["step"] for c in checkpoints.list_checkpoints(text_run)] == [
        c["step"] for c in checkpoints.list_checkpoints(broken.out_dir)]
    with open(copy / "part2.txt", "a") as f:
        f.write("\none more document\n")
    with pytest.raises(ConfigError, match=r"has changed \(its files.*--allow-changed-data"):
        train(broken, resume=True, show_progress=False)


def test_what_needs_an_exact_match_refuses_a_text_run_in_one_line(text_run, capsys):
    capsys.readouterr()
    assert main(["eval", text_run]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "text corpus" in err and "no exact match" in err
    assert main(["tune-stopping", text_run, "--price", "1"]) == 2
    assert "no validation EM" in capsys.readouterr().err
    assert main(["ensemble", "build", text_run, "--budget", "1.0", "--out", text_run + "-ens"]) == 2
    assert "no exact match" in capsys.readouterr().err


def _text_cfg(tmp_path, **run) -> RunConfig:
    return RunConfig(out_dir=str(tmp_path / "run"), budget_tokens=10_000,
                     data=DataConfig(task=None, text=str(tmp_path), seq_len=64), **run)


@pytest.mark.parametrize("data, words", [
    (dict(text="c.txt", seq_len=64), "exactly one of data.task, data.data_path and data.text"),
    (dict(task=None, text="c.txt"), "data.text: needs data.seq_len"),
    (dict(pack=True), "data.pack: needs data.seq_len"),
    (dict(task=None, text="c.txt", seq_len=64, pack=True), "data.pack: packs prompt/answer examples"),
    (dict(task=None, text="c.txt", seq_len=2048), "2048 is over data.max_seq_len 1024"),
    (dict(task=None, text="c.txt", seq_len=1), "must be an integer >= 2"),
    (dict(seq_len=64), "applies only to a text corpus (data.text) or packed examples (data.pack)"),
    (dict(task=None, text="", seq_len=64), "data.text: '' must be a non-empty string"),
])
def test_text_config_errors_name_their_fields(data, words):
    with pytest.raises(ConfigError) as e:
        DataConfig(**data).validate()
    assert words in str(e.value)


@pytest.mark.parametrize("run, words", [
    (dict(curriculum="easy-to-hard"), "curriculum: 'easy-to-hard' chooses among training examples"),
    (dict(scorer="prompt-length"), "scorer: 'prompt-length' chooses among training examples"),
    (dict(stop_rules=({"rule": "patience", "patience": 2},)), "rule 'patience' watches validation EM"),
    (dict(stop_rules=({"rule": "paired-test"},)), "rule 'paired-test' watches validation EM"),
    (dict(stop_rules=({"rule": "budget", "price": 2.0},)), "rule 'budget' watches validation EM"),
])
def test_what_needs_examples_or_em_is_refused_before_anything_is_read(tmp_path, run, words):
    with pytest.raises(ConfigError) as e:
        check(_text_cfg(tmp_path, **run))
    assert words in str(e.value)
    check(_text_cfg(tmp_path, stop_rules=({"rule": "patience", "metric": "val_loss"}, {"rule": "grad-norm"})))


def test_held_out_documents_are_never_trained_on(tmp_path):
    corpus = write_corpus(tmp_path / "c", docs=30)
    data = text.prepare(DataConfig(task=None, text=corpus, seq_len=16, val_size=3, test_size=2))
    docs = [p for f in sorted(os.listdir(corpus)) for p in open(os.path.join(corpus, f)).read().split("\n\n")]

    def decoded(rows) -> str:
        return bytes(int(i) - 3 for i in rows.inputs.ravel() if i >= 3).decode()

    assert decoded(data.validation).startswith(docs[0]) and docs[2].strip() in decoded(data.validation)
    assert docs[3].strip() not in decoded(data.validation)
    rows, state = data.stream.next_rows(data.stream.init(), 400)  # more than the corpus: a second epoch
    trained = decoded(rows)
    assert state.epoch >= 1 and trained.startswith(docs[5].strip()[:10])
    assert not any(d.strip()[:12] in trained for d in docs[:5])  # "doc 0.3: ..." is unique to its document
    with pytest.raises(ConfigError, match="data.test_size: .* 30 documents .* none is left to train on"):
        text.prepare(DataConfig(task=None, text=corpus, seq_len=16, val_size=20, test_size=10))
    with pytest.raises(ConfigError, match="data.val_size: .* too few"):
        text.prepare(DataConfig(task=None, text=corpus, seq_len=16, val_size=40, test_size=10))


def test_the_stream_state_is_a_fixed_size_array(tmp_path):
    state = text.StreamState({"shard_idx": 3, "note": "é"}, 5, 1)
    array = text.state_array(state)
    assert array.shape == (text.STATE_BYTES,) and array.dtype == np.uint8
    assert text.state_of(array) == state
    with pytest.raises(ConfigError, match="more than the 8,192 a checkpoint keeps"):
        text.state_array(state._replace(stream={"x": "y" * text.STATE_BYTES}))


def test_the_corpus_fingerprint_sees_sizes_names_and_ends_without_reading_everything(tmp_path):
    corpus = write_corpus(tmp_path / "c", docs=9)
    before = identity.corpus_fingerprint(corpus)
    assert identity.corpus_fingerprint(shutil.copytree(corpus, tmp_path / "copy")) == before
    os.rename(os.path.join(corpus, "part2.txt"), os.path.join(corpus, "part3.txt"))
    assert identity.corpus_fingerprint(corpus) != before
    os.rename(os.path.join(corpus, "part3.txt"), os.path.join(corpus, "part2.txt"))
    with open(os.path.join(corpus, "part0.txt"), "r+") as f:
        f.write("X")  # the same size, an edit in the first bytes
    assert identity.corpus_fingerprint(corpus) != before


def test_the_cli_sets_a_text_run_and_lists_the_flags(capsys):
    from framework.app.cli import build_parser
    from framework.app.train_commands import config_from_args

    args = build_parser().parse_args(["train", "--text", "c.txt", "--seq-len", "128", "--text-col", "body",
                                      "--mix", "a=b/=0.2", "--mix", "d=0.1", "--budget-tokens", "1M", "--out", "x"])
    cfg = config_from_args(args)
    assert (cfg.data.task, cfg.data.text, cfg.data.seq_len, cfg.data.text_col) == (None, "c.txt", 128, "body")
    assert cfg.data.mixture == (("a=b/", 0.2), ("d", 0.1))
    assert RunConfig.from_dict(json.loads(cfg.dumps())) == cfg  # config.json gives the pairs back: resume compares
    args = build_parser().parse_args(["train", "--task", "addition", "--pack", "--seq-len", "64", "--budget-tokens",
                                      "1M", "--out", "x"])
    assert config_from_args(args).data.pack
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "data (one of --task / --data / --text)" in shown
    for flag in ("--text PATH a text corpus", "--text-col C text: the column", "--seq-len N text or pack: tokens",
                 "--pack, --no-pack prompt/answer data: pack whole examples",
                 "--mix PATH=SHARE other sources mixed into the training rows", "or prompt/answer examples (qa:FILE"):
        assert flag in shown
