"""A tiny Hugging Face checkpoint directory made here, with no download: a random Qwen3-layout model
(framework.models.hf.save) and a byte-level BPE tokenizer trained on a built-in task's text, with
ChatML's chat template. It is what the README's `--init-from hf:DIR` examples and the tests start
from; a real checkpoint directory (`huggingface-cli download Qwen/Qwen3-0.6B --local-dir DIR`) is
used the same way.

    python -m harness.tiny_checkpoint out/tiny-qwen3 [--task addition] [--layout qwen|llama]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|pad|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def task_text(task: str = "addition", n: int = 2_000) -> list[str]:
    """Prompts with their answers from a built-in task's generator, for a BPE to learn merges from."""
    from framework.config import DataConfig
    from framework.data import tasks
    from framework.data.files import column

    data = DataConfig(task=task, max_digits=3, n_examples=n, val_size=10, test_size=10)
    ds = tasks.build_splits(data)["train"]
    return [p + a for p, a in zip(column(ds, "prompt"), column(ds, "answer"), strict=True)]


def write_bpe_tokenizer(directory: Path, texts: list[str], layout: str = "qwen", vocab_size: int = 400) -> Path:
    """tokenizer.json, tokenizer_config.json and generation_config.json in `directory`, in the layout of
    Qwen (no BOS; EOS `<|endoftext|>`, which pads too) or Llama 3 (a BOS its post-processor puts first,
    a PAD of its own, and `<|im_end|>` as a second end-of-answer id)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
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
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return directory


def write_checkpoint(directory: Path, task: str = "addition", layout: str = "qwen", seed: int = 0) -> Path:
    """A random Qwen3-layout model (q/k norms, grouped-query attention, tied embeddings; 0.2M
    parameters) and a BPE tokenizer of the task's text in `directory`, as transformers saves them."""
    from flax import nnx

    from framework.models import hf
    from framework.models.llama import Llama, LlamaConfig

    directory = write_bpe_tokenizer(Path(directory), task_text(task), layout)
    from tokenizers import Tokenizer

    n_ids = Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    # the vocabulary padded to a multiple of 64, as released checkpoints pad theirs
    cfg = LlamaConfig(vocab_size=-(-n_ids // 64) * 64, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, qk_norm=True, rms_norm_eps=1e-6,
                      rope_theta=1e6, tie_word_embeddings=True, max_position_embeddings=1024)
    hf.save(Llama(cfg, rngs=nnx.Rngs(params=seed)), directory)
    return directory


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="the directory to write")
    p.add_argument("--task", default="addition", help="the built-in task whose text the BPE learns")
    p.add_argument("--layout", default="qwen", choices=("qwen", "llama"), help="the tokenizer's BOS/EOS/PAD layout")
    args = p.parse_args(argv)
    out = write_checkpoint(Path(args.out), args.task, args.layout)
    print(f"wrote {out}: {', '.join(sorted(f.name for f in out.iterdir()))}")


if __name__ == "__main__":
    main()
