"""Prompt/answer files mixed into packed training rows (`--mix qa:FILE=SHARE`, issue 23 item 1): a file's
train split only, whole examples a row with the loss on their answers and the counted tokens unpacked
training counts; several files and corpora drawn by their shares; a text run mixing them resumes bit for
bit; RUN/data.json fingerprints each file; bad input is one line naming data.mixture."""

from __future__ import annotations

import csv
import dataclasses
import json
import random

import jax
import numpy as np
import pytest

from framework.config import DataConfig
from framework.data import identity, mixture, packing, text
from framework.data.encoding import counted_tokens, make_batch, prepare
from framework.errors import ConfigError
from framework.runner.build import build, train
from tests.conftest import assert_resumes_bit_for_bit, tiny_config
from tests.test_text_train import write_corpus

COLUMNS = dict(prompt_col="q", answer_col="a")  # not the defaults: the run's column names are the ones read


def write_qa(path, n: int, seed: int = 0, columns=("q", "a")) -> str:
    """`n` distinct addition problems as a prompt/answer file, JSON Lines or CSV by `path`'s extension."""
    rng, rows = random.Random(seed), {}
    while len(rows) < n:
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        rows[f"{a}+{b}="] = str(a + b)
    with open(path, "w", newline="") as f:
        if str(path).endswith(".csv"):
            out = csv.writer(f)
            out.writerow(columns)
            out.writerows(rows.items())
        else:
            f.writelines(json.dumps(dict(zip(columns, row, strict=True))) + "\n" for row in rows.items())
    return str(path)


def text_data(tmp_path, mixture_: tuple, seq_len: int = 32) -> DataConfig:
    """A text run on a corpus of 30 documents (5 validation, 5 test) with `mixture_` mixed in."""
    return DataConfig(task=None, text=write_corpus(tmp_path / "corpus", docs=30), seq_len=seq_len, val_size=5,
                      test_size=5, mixture=mixture_, **COLUMNS)


def drawn_rows(data: DataConfig, shares: list[float], rows: int, seed: int = 0):
    """`rows` rows of a text run mixing `data.mixture` in, one draw each, with the source each came from (the
    one whose state the draw moved)."""
    mix = packing.mixed_batches([text.packed_batches(text.prepare(data).stream, 1), *mixture.sources(data, seed)],
                                shares, 1, seed)
    state, out = mix.init(), []
    for _ in range(rows):
        batch, idx, after = mix.draw(state, 0)
        moved = [k for k in range(len(shares)) if not all(
            jax.tree.leaves(jax.tree.map(np.array_equal, state[f"source{k}"], after[f"source{k}"])))]
        assert idx is None and len(moved) == 1  # one source a row
        out.append((batch, moved[0]))
        state = after
    return out


def test_a_qa_file_in_a_text_run_packs_whole_train_examples_with_the_loss_on_their_answers(tmp_path):
    qa = write_qa(tmp_path / "qa.jsonl", 40)
    data = text_data(tmp_path, ((f"qa:{qa}", 0.5),))
    # what `--data qa.jsonl` with the run's columns and split sizes holds out, found here independently
    splits = prepare(DataConfig(task=None, data_path=qa, val_size=5, test_size=5, **COLUMNS))
    train_split, pad = splits["train"], splits["train"].tokenizer.pad
    alone = make_batch(train_split, np.arange(len(train_split)))
    example_of = {tuple(alone.inputs[i][alone.inputs[i] != pad]): i for i in range(len(train_split))}
    held_out = {p for s in ("validation", "test") for p in splits[s].prompts}
    seen, qa_rows = [], 0
    for batch, source in drawn_rows(data, [0.5, 0.5], 60):
        filled = batch.segment_ids[0] > 0
        if source == 0:  # a corpus row: full, the loss on every pair
            assert filled.all() and np.array_equal(batch.loss_mask[0], filled.astype(np.float32))
            continue
        qa_rows += 1
        examples = []
        for seg in range(1, int(batch.segment_ids[0].max()) + 1):
            cols = np.flatnonzero(batch.segment_ids[0] == seg)
            i = example_of[tuple(batch.inputs[0, cols])]  # a whole example of the train split (KeyError: not)
            n = len(cols)
            np.testing.assert_array_equal(batch.targets[0, cols], alone.targets[i, :n])
            np.testing.assert_array_equal(batch.loss_mask[0, cols], alone.loss_mask[i, :n])  # the answer, its EOS
            np.testing.assert_array_equal(batch.positions[0, cols], np.arange(n))
            examples.append(i)
        one = make_batch(train_split, np.asarray(examples))
        assert counted_tokens(batch, pad) == counted_tokens(one, pad)  # prefix prompt answer, as unpacked
        assert batch.loss_mask.sum() == sum(int(train_split.answer_lens[i]) + 1 for i in examples)
        assert not filled[int(filled.sum()):].any()  # the examples fill the row from its start
        seen += examples
    assert 20 <= qa_rows <= 40 and len(seen) > len(train_split)  # past one epoch of the file's train split
    assert {train_split.prompts[i] for i in seen} == set(train_split.prompts)  # all of it, and nothing held out
    assert not held_out & {train_split.prompts[i] for i in seen} and len(held_out) == 10


def test_two_qa_files_and_a_corpus_are_drawn_by_their_shares(tmp_path):
    first, second = write_qa(tmp_path / "a.jsonl", 30), write_qa(tmp_path / "b.csv", 30, seed=1)
    other = write_corpus(tmp_path / "other", docs=12, seed=1)
    data = text_data(tmp_path, ((f"qa:{first}", 0.3), (f"qa:{second}", 0.2), (other, 0.1)))
    sources = [k for _, k in drawn_rows(data, [0.4, 0.3, 0.2, 0.1], 1500)]
    # seeded, so the same every time; 0.04 is three standard deviations of a share of 0.4 over 1,500 rows
    assert np.allclose(np.bincount(sources, minlength=4) / 1500, [0.4, 0.3, 0.2, 0.1], atol=0.04)


def test_a_mix_of_qa_files_continues_exactly_from_a_state_with_fresh_sources(tmp_path):
    """What a resume does: the sources built anew, the mixture's state restored; every later batch the same."""
    qa, csv_qa = write_qa(tmp_path / "a.jsonl", 20), write_qa(tmp_path / "b.csv", 20, seed=1)
    data = text_data(tmp_path, ((f"qa:{qa}", 0.4), (f"qa:{csv_qa}", 0.3)))
    cfg = tiny_config(tmp_path / "run", data=data, batch_size=6)
    batches = build(cfg).batches
    state, straight = batches.init(), []
    for _ in range(12):  # past an epoch of each file's 10 train examples
        b, _, state = batches.draw(state, 0)
        straight.append(b)
    assert all(int(state[f"source{k}"].epoch) >= 1 for k in (1, 2))
    state = batches.init()
    for _ in range(5):
        _, _, state = batches.draw(state, 0)
    again = build(cfg).batches
    for k in range(5, 12):
        b, _, state = again.draw(state, 0)
        for got, want in zip(b, straight[k], strict=True):
            np.testing.assert_array_equal(got, want)


def test_a_text_run_with_qa_files_and_a_corpus_mixed_in_trains_records_them_and_resumes_bit_for_bit(tmp_path):
    qa, csv_qa = write_qa(tmp_path / "a.jsonl", 60), write_qa(tmp_path / "b.csv", 60, seed=1)
    other = write_corpus(tmp_path / "other", docs=12, seed=1)
    data = text_data(tmp_path, ((f"qa:{qa}", 0.3), (f"qa:{csv_qa}", 0.2), (other, 0.1)), seq_len=48)
    common = dict(data=data, batch_size=8, budget_tokens=8_000, log_every=3)
    train(tiny_config(tmp_path / "straight", **common), show_progress=False)
    broken = tiny_config(tmp_path / "broken", **common)
    lines = assert_resumes_bit_for_bit(str(tmp_path / "straight"), broken)
    assert lines[-1]["loss"] < lines[0]["loss"]  # it trains
    assert all(x["answer_tokens"] < x["tokens"] for x in lines)  # the examples' loss is on their answers only
    recorded = identity.read(broken.out_dir)["mixture"]
    assert [(r.get("data_path"), r.get("text_path"), r["share"]) for r in recorded] == [
        (qa, None, 0.3), (csv_qa, None, 0.2), (None, other, 0.1)]
    assert recorded[0]["data_sha256"] == identity.fingerprint_path(qa)
    with open(csv_qa, "a") as f:  # a changed file is found on --resume, as a changed corpus is
        f.write("1+1=,2\n")
    with pytest.raises(ConfigError, match=f"{csv_qa}, mixed into training, has changed"):
        train(broken, resume=True, show_progress=False)


def test_a_qa_source_is_found_where_the_run_recorded_it(tmp_path):
    qa = write_qa(tmp_path / "a.jsonl", 20)
    data = text_data(tmp_path, (("qa:a.jsonl", 0.2),))
    run = tmp_path / "run"
    run.mkdir()
    identity.write(str(run), identity.mixture_record(dataclasses.replace(data, mixture=((f"qa:{qa}", 0.2),))))
    assert identity.resolved(data, [str(run)]).mixture == ((f"qa:{qa}", 0.2),)  # run from another directory


@pytest.mark.parametrize("entry, words", [
    ("qa:{tmp}/missing.jsonl", "data.mixture: qa:{tmp}/missing.jsonl: data: {tmp}/missing.jsonl not found"),
    ("qa:{tmp}/columns.jsonl", "data.mixture: qa:{tmp}/columns.jsonl: prompt_col: column 'q' not found in "
                               "columns.jsonl (columns found: prompt, answer)"),
    ("qa:{tmp}/long.jsonl", "data.mixture: qa:{tmp}/long.jsonl: data.seq_len: 8 cannot hold the example with prompt"),
    ("qa:", "data.mixture: 'qa:' names no file"),
    ("{tmp}/missing", "data.mixture: {tmp}/missing: data.text: {tmp}/missing does not exist"),
])
def test_a_bad_source_is_one_line_naming_data_mixture(tmp_path, entry, words):
    write_qa(tmp_path / "columns.jsonl", 20, columns=("prompt", "answer"))
    write_qa(tmp_path / "long.jsonl", 20)  # "123+456=" "579": 13 pairs, over rows of 8
    data = text_data(tmp_path, ((entry.format(tmp=tmp_path), 0.2),), seq_len=8)
    with pytest.raises(ConfigError) as e:
        build(tiny_config(tmp_path / "run", data=data))
    assert str(e.value).startswith(words.format(tmp=tmp_path)) and "\n" not in str(e.value)


@pytest.mark.parametrize("share", [0.0, 1.0, 1.5, -0.2])
def test_a_share_out_of_range_names_data_mixture(tmp_path, share):
    data = DataConfig(task=None, text="c", seq_len=8, mixture=(("qa:a.jsonl", share),))
    with pytest.raises(ConfigError, match=r"data.mixture: .* each share in \(0, 1\)"):
        data.validate()


def test_the_flag_takes_a_qa_source():
    from framework.app.cli import build_parser
    from framework.app.train_commands import config_from_args

    args = build_parser().parse_args(["train", "--text", "c", "--seq-len", "64", "--mix", "qa:a=b.jsonl=0.2",
                                      "--mix", "corpus/=0.1", "--budget-tokens", "1M", "--out", "x"])
    assert config_from_args(args).data.mixture == (("qa:a=b.jsonl", 0.2), ("corpus/", 0.1))
    with pytest.raises(ConfigError, match="data.mixture: 'qa:a.jsonl' is not PATH=SHARE"):
        config_from_args(build_parser().parse_args(["train", "--text", "c", "--seq-len", "64", "--mix", "qa:a.jsonl",
                                                    "--budget-tokens", "1M", "--out", "x"]))
