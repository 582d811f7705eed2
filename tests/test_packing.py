"""Packed prompt/answer examples (`--pack`) and mixtures (`--mix PATH=SHARE`), issue 23 item 1: whole
examples share a row with the loss on their answers and the counted tokens unpacked training counts;
mixed rows come from each source by its share; a packed, mixed run resumes bit for bit and validates by
EM as an unpacked one does. Prompt/answer files mixed in (`qa:FILE`): tests/test_mixture.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from framework.config import DataConfig
from framework.data import identity, packing
from framework.data.encoding import Batch, Batches, counted_tokens, make_batch, prepare, uniform_sampler
from framework.errors import ConfigError
from framework.runner.build import train
from framework.runner.check import check
from tests.conftest import assert_resumes_bit_for_bit, tiny_config
from tests.test_mixture import write_qa
from tests.test_text_train import write_corpus

ADDITION = DataConfig(task="addition", max_digits=3, n_examples=400, val_size=20, test_size=20)


@pytest.fixture(scope="module")
def split():
    return prepare(ADDITION)["train"]


def _segments(batch: Batch):
    """(row, columns) of every segment of a packed batch, in order."""
    for r in range(len(batch.inputs)):
        for seg in range(1, int(batch.segment_ids[r].max()) + 1):
            yield r, np.flatnonzero(batch.segment_ids[r] == seg)


def test_packed_rows_hold_whole_examples_in_the_uniform_order_with_their_answer_loss(split):
    batches = packing.packed_examples(split, 40, 4, seed=3)
    batch, idx, state = batches.draw(batches.init(), 0)
    assert idx is None and batch.inputs.shape == (4, 40)
    uniform = uniform_sampler(len(split), len(split), 3)
    order = uniform.next(uniform.init(), 0)[0]
    drawn = list(_segments(batch))
    assert int(state.cursor) == len(drawn)  # every segment is one whole example, drawn in the uniform order
    alone = make_batch(split, order[:len(drawn)])
    for k, (r, cols) in enumerate(drawn):
        n = len(cols)
        assert cols[0] == 0 or batch.segment_ids[r, cols[0] - 1] > 0  # no gap inside a row
        np.testing.assert_array_equal(batch.inputs[r, cols], alone.inputs[k, :n])
        np.testing.assert_array_equal(batch.targets[r, cols], alone.targets[k, :n])
        np.testing.assert_array_equal(batch.loss_mask[r, cols], alone.loss_mask[k, :n])  # the answer and its EOS
        np.testing.assert_array_equal(batch.positions[r, cols], np.arange(n))
        assert alone.loss_mask[k, n:].sum() == 0
    assert counted_tokens(batch, split.tokenizer.pad) == counted_tokens(alone, split.tokenizer.pad)
    # a row is left short only where the next example does not fit
    for r in range(4):
        used = int((batch.segment_ids[r] > 0).sum())
        following = order[sum(1 for rr, _ in drawn if rr <= r) % len(split)]
        assert used + packing.example_pairs(split)[following] > 40


def test_packed_batches_continue_exactly_from_a_state(split):
    batches = packing.packed_examples(split, 32, 8, seed=0)
    state, straight = batches.init(), []
    for _ in range(30):  # past an epoch of 380 examples
        b, _, state = batches.draw(state, 0)
        straight.append(b.inputs)
    assert int(state.epoch) >= 1
    state = batches.init()
    for _ in range(11):
        _, _, state = batches.draw(state, 0)
    again = packing.packed_examples(split, 32, 8, seed=0)
    for k in range(11, 30):
        b, _, state = again.draw(state, 0)
        np.testing.assert_array_equal(b.inputs, straight[k])


def test_an_example_longer_than_a_row_names_seq_len(split):
    with pytest.raises(ConfigError, match="data.seq_len: 8 cannot hold the example with prompt"):
        packing.packed_examples(split, 8, 4, seed=0)


def _rows_of(value: int) -> Batches:
    """A source whose every row is `value`, its state the rows it drew."""
    def draw(state, tokens):
        one = np.full((1, 4), value, np.int32)
        return Batch(one, one, one.astype(np.float32), one, one), None, state + 1
    return Batches(lambda: np.asarray(0, np.int64), draw)


def test_mixed_rows_come_from_each_source_by_its_share_the_same_on_resume():
    mix = packing.mixed_batches([_rows_of(1), _rows_of(2), _rows_of(3)], [0.5, 0.3, 0.2], 50, seed=0)
    state, rows = mix.init(), []
    for _ in range(40):
        b, idx, state = mix.draw(state, 0)
        rows.append(b.inputs[:, 0])
    rows = np.concatenate(rows)
    assert idx is None and [int(state[f"source{k}"]) for k in range(3)] == [int((rows == v).sum()) for v in (1, 2, 3)]
    assert np.allclose([(rows == v).mean() for v in (1, 2, 3)], [0.5, 0.3, 0.2], atol=0.03)
    resumed = {**mix.init(), "rows": np.asarray(1000, np.int64)}  # rows 1000.. as an uninterrupted run drew them
    np.testing.assert_array_equal(mix.draw(resumed, 0)[0].inputs[:, 0], rows[1000:1050])


@pytest.mark.parametrize("data, run, words", [
    (dict(seq_len=64, mixture=(("c", 0.3),)), {}, "data.mixture: mixes packed rows"),
    (dict(pack=True, seq_len=64, mixture=(("c", 0.6), ("d", 0.4))), {}, "its shares add up to 1"),
    (dict(pack=True, seq_len=64, mixture=(("c", 1.5),)), {}, "must be (path, share) pairs"),
    (dict(pack=True, seq_len=64, mixture=(("", 0.5),)), {}, "must be (path, share) pairs"),
    (dict(pack=True, seq_len=64), dict(curriculum="self-paced"), "curriculum: 'self-paced' chooses among"),
    (dict(pack=True, seq_len=64), dict(pacing="linear"), "pacing: 'linear' chooses among"),
])
def test_pack_and_mixture_config_errors_name_their_fields(tmp_path, data, run, words):
    cfg = tiny_config(tmp_path / "run", data=dataclasses.replace(ADDITION, **data), **run)
    with pytest.raises(ConfigError) as e:
        check(cfg)
    assert words in str(e.value)


def test_a_packed_mixed_run_validates_by_em_and_resumes_bit_for_bit(tmp_path):
    """Addition packed into rows of 48, 30% of the rows from a text corpus and 30% from two prompt/answer
    files (their train splits), an EMA and dropout."""
    corpus = write_corpus(tmp_path / "corpus", docs=30)
    qa = [write_qa(tmp_path / "a.jsonl", 60, columns=("prompt", "answer")),
          write_qa(tmp_path / "b.csv", 60, seed=1, columns=("prompt", "answer"))]
    data = dataclasses.replace(ADDITION, pack=True, seq_len=48,
                               mixture=((corpus, 0.3), (f"qa:{qa[0]}", 0.2), (f"qa:{qa[1]}", 0.1)))
    common = dict(data=data, batch_size=8, budget_tokens=8_000, ema_half_lives=(1_000,), log_every=3,
                  model=dataclasses.replace(tiny_config("x").model, dropout=0.1))
    straight = train(tiny_config(tmp_path / "straight", **common), show_progress=False)
    assert all(isinstance(c["val_em"], float) and "average_val_em" in c for c in straight)  # EM, as unpacked
    broken = tiny_config(tmp_path / "broken", **common)
    lines = assert_resumes_bit_for_bit(str(tmp_path / "straight"), broken)
    assert all(x["answer_tokens"] < x["tokens"] for x in lines)  # the examples' loss is on their answers
    assert [r.get("data_path") for r in identity.read(broken.out_dir)["mixture"]] == [None, *qa]
