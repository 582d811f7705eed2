"""Hugging Face tokenizer directories made in the tests (no downloads): a byte-level BPE trained here
on addition problems (harness/tiny_checkpoint.py), in the two layouts checkpoints ship: Qwen's (no
BOS, EOS doubling as PAD) and Llama 3's (a BOS its post-processor puts first, a PAD of its own, a
second end-of-answer id)."""

from __future__ import annotations

from pathlib import Path

from framework.data import tasks
from harness.tiny_checkpoint import write_bpe_tokenizer


def corpus(n: int = 2_000) -> list[str]:
    """Text the BPE learns its merges from: addition problems with their sums, and a little prose."""
    ds = tasks.addition(n, 3, seed=0, operand_format="lsb-first")
    return [p + a for p, a in zip(ds["prompt"], ds["answer"], strict=True)] + ["the quick brown fox"] * 20


def write(directory: Path, layout: str = "qwen", vocab_size: int = 400) -> Path:
    """A tokenizer.json, tokenizer_config.json and generation_config.json in `directory`."""
    return write_bpe_tokenizer(Path(directory), corpus(), layout, vocab_size)
