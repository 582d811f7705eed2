import pytest

from framework.data import tokenizer
from framework.data.tokenizer import BOS, BYTE, EOS, PAD
from framework.evaluation import metrics


@pytest.mark.parametrize("text", ["", "123+45=", "Who is the teacher of Alba?", "Zoë → naïve ✓"])
def test_round_trip(text):
    ids = BYTE.encode(text)
    assert all(i >= tokenizer.N_SPECIAL for i in ids)
    assert BYTE.decode(ids) == text


def test_decode_skips_specials_and_stops_at_eos():
    ids = [BOS, *BYTE.encode("ab"), EOS, *BYTE.encode("zz"), PAD]
    assert BYTE.decode([PAD, PAD, *ids]) == "ab"


@pytest.mark.parametrize(
    "ids, text, ended",
    [
        ([*BYTE.encode("521"), EOS, PAD], "521", True),
        ([*BYTE.encode("521"), PAD, EOS], "521", False),  # PAD first: never ended
        (BYTE.encode("5210"), "5210", False),  # ran out of room
        ([EOS], "", True),
    ],
)
def test_decode_generated_reports_whether_the_answer_ended(ids, text, ended):
    assert BYTE.decode_generated(ids) == (text, ended)


def test_decode_never_raises_on_invalid_utf8():
    assert BYTE.decode([0xFF + 3, 0xFE + 3]) == "\ufffd\ufffd"


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        ("Paris", "paris", True),
        ("The  Cat.", "cat", True),
        ("an apple", "apple!", True),
        ("a b c", "abc", False),
        ("521", "521", True),
        ("521", "5210", False),
        ("", "", True),
        ("theatre", "atre", False),  # articles only as whole words
    ],
)
def test_exact_match_normalization(pred, ref, expected):
    assert metrics.exact_match(pred, ref) is expected


def test_strict_em_is_byte_exact():
    assert metrics.strict_exact_match("Cat", "Cat")
    assert not metrics.strict_exact_match("cat", "Cat")


@pytest.mark.parametrize(
    "pred, ref, f1",
    [("the cat sat", "cat sat", 1.0), ("cat", "cat sat", 2 / 3), ("dog", "cat", 0.0), ("", "", 1.0)],
)
def test_token_f1(pred, ref, f1):
    assert metrics.token_f1(pred, ref) == pytest.approx(f1)


def test_by_bucket_keys_and_means():
    out = metrics.by_bucket([1, 0, 1, 1], [2, 2, 1, 3.5])
    assert out == {"1": 1.0, "2": 0.5, "3.5": 1.0}
