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


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte, which the `tokenizers` ByteLevel steps use."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


SPECIAL_TOKENS = {"<pad>": PAD, "<s>": BOS, "</s>": EOS}


def write_hf_tokenizer(directory: str) -> list[str]:
    """This tokenizer as Hugging Face files (tokenizer.json, tokenizer_config.json): a byte-level BPE
    with no merges whose byte b is id b + 3 and whose PAD/BOS/EOS are <pad>/<s>/</s> at 0/1/2, a BOS
    put before every text, so that `AutoTokenizer` encodes and decodes exactly as recoup does."""
    import json
    import os

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {**SPECIAL_TOKENS, **{ch: b + N_SPECIAL for b, ch in _bytes_to_unicode().items()}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", BOS)])
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, "tokenizer.json"), os.path.join(directory, "tokenizer_config.json")]
    tok.save(paths[0])
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "pad_token": "<pad>", "model_max_length": 1024, "clean_up_tokenization_spaces": False}
    with open(paths[1], "w") as f:
        json.dump(config, f, indent=2)
    return paths
