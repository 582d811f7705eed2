import datasets
import numpy as np
import pytest

from framework.config import DataConfig
from framework.data import encoding as data
from framework.data.tokenizer import BOS, BYTE, EOS, PAD


def _split(rows, width=None):
    ds = datasets.Dataset.from_dict(
        {"prompt": [r[0] for r in rows], "answer": [r[1] for r in rows], "difficulty": [1] * len(rows)}
    )
    width = width or data.sequence_width({"train": ds}, BYTE)
    return data.encode_split(ds, width, BYTE)


def test_token_accounting_on_a_hand_computed_batch():
    # "1+2=" -> "3": BOS + 4 prompt + 1 answer = 6 counted, 1 answer + EOS = 2 loss tokens.
    # "12+34=" -> "64": BOS + 6 + 2 = 9 counted, 2 + EOS = 3 loss tokens.
    split = _split([("1+2=", "3"), ("12+34=", "64")])
    batch = data.make_batch(split, np.array([0, 1]))
    assert data.counted_tokens(batch, PAD) == 6 + 9
    assert data.answer_tokens(batch) == 2 + 3
    # The same examples in a wider layout count the same (padding never counts).
    wide = data.make_batch(_split([("1+2=", "3"), ("12+34=", "64")], width=33), np.array([0, 1]))
    assert data.counted_tokens(wide, PAD) == 15 and data.answer_tokens(wide) == 5


def test_batch_layout_and_loss_mask():
    split = _split([("1+2=", "3")])
    b = data.make_batch(split, np.array([0]))
    seq = [BOS, *BYTE.encode("1+2=3"), EOS]
    assert b.inputs[0, :6].tolist() == seq[:6] and (b.inputs[0, 6:] == PAD).all()
    assert b.targets[0, :6].tolist() == seq[1:]
    # Loss on the answer "3" (target index 4) and the EOS (index 5) only.
    assert b.loss_mask[0].tolist()[:8] == [0, 0, 0, 0, 1, 1, 0, 0]
    assert BYTE.decode(b.targets[0][b.loss_mask[0] == 1]) == "3"


def test_sequence_width_fits_every_example_and_is_aligned():
    split = _split([("1+2=", "3"), ("123456+1=", "7")])
    assert (split.tokens.shape[1] - 1) % 8 == 0
    assert split.tokens.shape[1] >= 1 + 9 + 1 + 1


def test_uniform_sampler_covers_each_epoch_once_and_is_deterministic():
    s = data.uniform_sampler(10, 4, seed=3)
    state, drawn = s.init(), []
    for _ in range(5):  # 20 draws = two epochs
        idx, state = s.next(state, 0)
        drawn.append(idx)
    drawn = np.concatenate(drawn)
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:]) == list(range(10))
    again = data.uniform_sampler(10, 4, seed=3)
    st = again.init()
    assert np.array_equal(np.concatenate([again.next(st, 0)[0]]), drawn[:4])
    assert not np.array_equal(drawn[:10], drawn[10:])  # a new permutation each epoch


def test_sampler_resumes_from_saved_state():
    s = data.uniform_sampler(7, 3, seed=0)
    state = s.init()
    for _ in range(4):
        _, state = s.next(state, 0)
    saved = type(state)(*(np.asarray(x) for x in state))  # what a checkpoint round trip gives
    a, _ = s.next(state, 0)
    b, _ = data.uniform_sampler(7, 3, seed=0).next(saved, 0)
    assert np.array_equal(a, b)


def test_prepared_splits_never_overlap():
    splits = data.prepare(DataConfig(task="addition", max_digits=3, n_examples=2_000, val_size=100, test_size=100))
    sets = {k: set(v.prompts) for k, v in splits.items()}
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]
    assert len(splits["test"]) == 100 and len(splits["validation"]) == 100


@pytest.mark.parametrize("task", ["addition", "multihop"])
def test_prepare_is_deterministic(task):
    cfg = DataConfig(task=task, n_examples=500, val_size=50, test_size=50)
    a, b = data.prepare(cfg), data.prepare(cfg)
    assert np.array_equal(a["train"].tokens, b["train"].tokens)
    assert a["test"].prompts == b["test"].prompts
