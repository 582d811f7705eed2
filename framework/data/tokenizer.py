"""A byte-level tokenizer: no vocabulary file, nothing to download.

Ids 0..2 are PAD, BOS, EOS; byte b (UTF-8) is id b + 3. Any text round-trips exactly.
A training sequence is `BOS prompt answer EOS`, right-padded with PAD; the loss covers the
answer bytes and the EOS only (see framework/data/encoding.py).
"""

from __future__ import annotations

import numpy as np

PAD, BOS, EOS = 0, 1, 2
N_SPECIAL = 3
VOCAB_SIZE = 256 + N_SPECIAL


def encode(text: str) -> list[int]:
    """UTF-8 bytes of `text` as token ids (no BOS/EOS)."""
    return [b + N_SPECIAL for b in text.encode("utf-8")]


def decode(ids) -> str:
    """Token ids back to text; stops at the first EOS, skips PAD and BOS.

    Invalid UTF-8 (a model can emit any byte sequence) is replaced, never raised.
    """
    out = bytearray()
    for i in np.asarray(ids).tolist():
        if i == EOS:
            break
        if i >= N_SPECIAL:
            out.append(i - N_SPECIAL)
    return out.decode("utf-8", errors="replace")


def decode_generated(ids) -> tuple[str, bool]:
    """A model's output: the text up to its first special id, and whether that id was EOS.

    An output that never emits EOS (or emits PAD/BOS first) has no end; evaluation counts it as a
    miss, which is what teacher-forced strict EM counts too (it requires EOS after the answer).
    """
    out, ended = bytearray(), False
    for i in np.asarray(ids).tolist():
        if i < N_SPECIAL:
            ended = i == EOS
            break
        out.append(i - N_SPECIAL)
    return out.decode("utf-8", errors="replace"), ended
