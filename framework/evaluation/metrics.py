"""Answer metrics: SQuAD-style exact match and token F1, strict EM, EM per difficulty bucket."""

from __future__ import annotations

import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, drop punctuation and articles, collapse white space."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    """EM after `normalize_answer` on both sides.

    >>> exact_match("The Cat.", "cat")
    True
    """
    return normalize_answer(prediction) == normalize_answer(reference)


def strict_exact_match(prediction: str, reference: str) -> bool:
    """Byte-for-byte equality: what teacher-forced strict EM measures."""
    return prediction == reference


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 over normalized, white-space split tokens."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def by_bucket(values, buckets) -> dict[str, float]:
    """Mean of `values` per bucket (e.g. EM per difficulty), keys sorted numerically as strings.

    Difficulties are ints for built-in tasks; JSON keys must be strings, so 3 -> "3", 0.5 -> "0.5".
    """
    groups: dict[float, list[float]] = collections.defaultdict(list)
    for v, b in zip(values, buckets, strict=True):
        groups[float(b)].append(float(v))
    return {_bucket_key(b): sum(vs) / len(vs) for b, vs in sorted(groups.items())}


def _bucket_key(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else str(b)
