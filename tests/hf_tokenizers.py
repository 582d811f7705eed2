"""Hugging Face tokenizer directories made in the tests (no downloads): a byte-level BPE trained here
with `tokenizers`, in the two layouts checkpoints ship: Qwen's (no BOS, EOS doubling as PAD) and
Llama 3's (a BOS its post-processor puts first, a PAD of its own, a second end-of-turn id)."""

from __future__ import annotations

import json
from pathlib import Path

from framework.data import tasks

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|pad|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def corpus(n: int = 2_000) -> list[str]:
    """Text the BPE learns its merges from: addition problems with their sums, and a little prose."""
    ds = tasks.addition(n, 3, seed=0, operand_format="lsb-first")
    return [p + a for p, a in zip(ds["prompt"], ds["answer"], strict=True)] + ["the quick brown fox"] * 20


def write(directory: Path, layout: str = "qwen", vocab_size: int = 400) -> Path:
    """A tokenizer.json, tokenizer_config.json and generation_config.json in `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
              "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False}
    generation = {"eos_token_id": tok.token_to_id("<|endoftext|>")}
    if layout == "llama":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           special_tokens=[("<|begin_of_text|>", bos)])
        config.update(bos_token="<|begin_of_text|>", pad_token="<|pad|>")
        generation = {"bos_token_id": bos, "eos_token_id": [tok.token_to_id("<|endoftext|>"),
                                                            tok.token_to_id("<|im_end|>")]}
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return directory
