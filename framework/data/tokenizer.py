"""Tokenizers: the byte tokenizer (the built-in tasks' default) and Hugging Face `tokenizers` files.

Everything that turns text into ids or ids into text goes through a `Tokenizer`: the encoding of a
training example (`prefix prompt answer EOS`; `framework/data/encoding.py`), the one definition of a
counted token (a non-PAD input token), the prompt/answer boundary, greedy decoding's stop and EM's
answer text, and serving's prompts and stops.

- `BYTE`: ids 0..2 are PAD, BOS, EOS; byte b (UTF-8) is id b + 3. Any text round-trips exactly;
  nothing to download.
- `HFTokenizer`: a `tokenizer.json` (and, beside it, `tokenizer_config.json` for BOS/EOS/PAD and the
  chat template, `generation_config.json` for further end-of-answer ids), as a Hugging Face checkpoint
  directory ships them. Its prefix (BOS or nothing) is what its own post-processor puts before a
  text, so a model sees its pretraining layout; a tokenizer with no PAD pads with its EOS, which is
  safe because EOS is only ever a target (never an input) in recoup's layout. User text is encoded
  with special tokens read as plain text, so a prompt that contains "</s>" cannot end itself.

    tok = load("byte")                 # or load("path/to/tokenizer.json"), load("checkpoint_dir")
    ids = [*tok.prefix, *tok.encode("12+34=")]
    text, ended = tok.decode_generated(generated_ids)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, NamedTuple

import numpy as np

from framework.errors import ConfigError

PAD, BOS, EOS = 0, 1, 2  # the byte tokenizer's
N_SPECIAL = 3
VOCAB_SIZE = 256 + N_SPECIAL
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json")


class Ends(NamedTuple):
    """What decoding needs inside jit (hashable, so a static argument): the PAD id it writes after an
    answer and reads as left padding, and the ids that end an answer (EOS first)."""

    pad: int
    stop: tuple[int, ...]


class ByteTokenizer:
    """UTF-8 bytes as ids 3..258; PAD, BOS, EOS are 0, 1, 2."""

    name = "byte"
    vocab_size = VOCAB_SIZE
    pad, bos, eos = PAD, BOS, EOS
    prefix = (BOS,)
    chat_template = None
    ends = Ends(PAD, (EOS,))
    identity = {"kind": "byte"}

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of `text` as token ids (no BOS/EOS)."""
        return [b + N_SPECIAL for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        """Token ids back to text; stops at the first EOS, skips PAD and BOS. Invalid UTF-8 (a model
        can emit any byte sequence) is replaced, never raised."""
        out = bytearray()
        for i in np.asarray(ids).tolist():
            if i == EOS:
                break
            if i >= N_SPECIAL:
                out.append(i - N_SPECIAL)
        return out.decode("utf-8", errors="replace")

    def decode_generated(self, ids) -> tuple[str, bool]:
        """A model's output: the text up to its first special id, and whether that id was EOS.

        An output that never emits EOS (or emits PAD/BOS first) has no end; evaluation counts it as a
        miss, which is what teacher-forced strict EM counts too (it requires EOS after the answer).
        """
        ids = np.asarray(ids).tolist()
        cut, ended = self.answer_end(ids)
        return bytes(i - N_SPECIAL for i in ids[:cut]).decode("utf-8", errors="replace"), ended

    def answer_end(self, ids) -> tuple[int, bool]:
        """Where a generated answer ends (its first special id, or the end), and whether that id is EOS."""
        ids = np.asarray(ids).tolist()
        cut = next((k for k, i in enumerate(ids) if i < N_SPECIAL), len(ids))
        return cut, cut < len(ids) and ids[cut] == EOS

    def chat_prompt(self, messages: list[dict]) -> tuple[int, ...]:
        """A chat as a prompt: no template, so the last user message (`last_user_text`)."""
        return (*self.prefix, *self.encode(last_user_text(messages)))

    def write_hf(self, directory: str) -> list[str]:
        """This tokenizer as Hugging Face files (`write_byte_tokenizer`)."""
        return write_byte_tokenizer(directory)


BYTE = ByteTokenizer()


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json names it: a string, or {"content": ...} (older files)."""
    return value.get("content") if isinstance(value, dict) else value


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer.json with its BOS, EOS and PAD (see the module's docstring)."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        self.path = path
        directory = os.path.dirname(path)
        try:  # two copies: user text reads special tokens as text, a chat template's output as markup
            self._tok, self._markup = Tokenizer.from_file(path), Tokenizer.from_file(path)
        except Exception as e:  # a damaged or foreign file: the library's message, in one line
            raise ConfigError("data.tokenizer", f"{path} is not a readable tokenizer.json: "
                                                f"{str(e).splitlines()[0][:200]}") from None
        config = _read_optional(os.path.join(directory, "tokenizer_config.json"))
        generation = _read_optional(os.path.join(directory, "generation_config.json"))
        specials = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        self._special_ids = frozenset(specials.values())
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        eos_ids = generation.get("eos_token_id")
        eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
        eos_text = _token_text(config.get("eos_token"))
        if eos_text is not None:
            self.eos = self._id_of(eos_text, "eos_token")
        elif eos_ids:
            self.eos = eos_ids[0]
        else:
            raise ConfigError("data.tokenizer", f"{path} names no EOS token (tokenizer_config.json's eos_token or "
                                                "generation_config.json's eos_token_id): recoup ends every answer "
                                                "with it and stops decoding there")
        pad_text = _token_text(config.get("pad_token"))
        self.pad = self._id_of(pad_text, "pad_token") if pad_text is not None else self.eos
        bos_text = _token_text(config.get("bos_token"))
        self.bos = self._id_of(bos_text, "bos_token") if bos_text is not None else None
        plain = self._tok.encode("a", add_special_tokens=False).ids
        marked = self._tok.encode("a", add_special_tokens=True).ids
        self.prefix = tuple(marked[:marked.index(plain[0])]) if plain and plain[0] in marked else ()
        self.ends = Ends(self.pad, tuple(dict.fromkeys([self.eos, *eos_ids])))
        self.chat_template = config.get("chat_template") if isinstance(config.get("chat_template"), str) else None
        self.name = path
        self.identity = {"kind": "hf", "sha256": _sha256(path)}
        self._tok.encode_special_tokens = True  # user text: "</s>" in a prompt is text, not an end
        self._markup.encode_special_tokens = False

    def _id_of(self, text: str, field: str) -> int:
        i = self._tok.token_to_id(text)
        if i is None:
            raise ConfigError("data.tokenizer", f"tokenizer_config.json's {field} {text!r} is not in {self.path}")
        return i

    def encode(self, text: str) -> list[int]:
        """`text` as ids, special tokens in it read as plain text, nothing added before or after."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_with_specials(self, text: str) -> list[int]:
        """`text` in which special tokens are markup (a chat template's output)."""
        return self._markup.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """Ids back to text up to the first end-of-answer id, special tokens skipped."""
        ids = np.asarray(ids).tolist()
        cut = next((k for k, i in enumerate(ids) if i in self.ends.stop), len(ids))
        return self._tok.decode(ids[:cut], skip_special_tokens=True)

    def decode_generated(self, ids) -> tuple[str, bool]:
        """A model's output: the text up to its first special id, and whether that id ends an answer."""
        ids = np.asarray(ids).tolist()
        cut, ended = self.answer_end(ids)
        return self._tok.decode(ids[:cut], skip_special_tokens=False), ended

    def answer_end(self, ids) -> tuple[int, bool]:
        """Where a generated answer ends (its first special id, or the end), and whether that id ends answers."""
        ids = np.asarray(ids).tolist()
        cut = next((k for k, i in enumerate(ids) if i in self._special_ids or i == self.pad), len(ids))
        return cut, cut < len(ids) and ids[cut] in self.ends.stop

    def chat_prompt(self, messages: list[dict]) -> tuple[int, ...]:
        """A chat as a prompt: its chat template rendered with a generation prompt (the template writes
        BOS itself, as transformers' apply_chat_template leaves it to), or, without a template, the
        last user message. `messages`: [{"role", "content": str}]; a ChatError if the template refuses."""
        if self.chat_template is None:
            return (*self.prefix, *self.encode(last_user_text(messages)))
        text = render_chat(self.chat_template, messages, bos_token=self._text_of(self.bos),
                           eos_token=self._text_of(self.eos))
        return tuple(self.encode_with_specials(text))

    def _text_of(self, i: int | None) -> str:
        return "" if i is None else self._tok.id_to_token(i)

    def write_hf(self, directory: str) -> list[str]:
        """The tokenizer's files (tokenizer.json and the configs beside it) copied into `directory`."""
        import shutil

        os.makedirs(directory, exist_ok=True)
        source = os.path.dirname(self.path)
        out = []
        for name in TOKENIZER_FILES:
            src = self.path if name == "tokenizer.json" else os.path.join(source, name)
            if os.path.isfile(src):
                out.append(shutil.copyfile(src, os.path.join(directory, name)))
        return out


Tokenizer = ByteTokenizer | HFTokenizer


class ChatError(ValueError):
    """A chat the tokenizer cannot turn into a prompt (no user message; a template that raised)."""


def last_user_text(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m.get("role") == "user"]
    if not users:
        raise ChatError("messages has no user message (with no chat template, the last one is the prompt)")
    return users[-1]


def render_chat(template: str, messages: list[dict], **specials: str) -> str:
    """`template` (Jinja) rendered as transformers renders chat templates: a sandbox, trim_blocks and
    lstrip_blocks, loop controls, `raise_exception` and a `tojson` that keeps non-ASCII text."""
    from datetime import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ChatError(f"the chat template refused the messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, separators=None, sort_keys=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=True, tools=None,
                                                documents=None, **specials)
    except jinja2.TemplateError as e:
        raise ChatError(f"the chat template failed: {e}") from None


def _read_optional(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            out = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError("data.tokenizer", f"{path} is not readable JSON: {e}") from None
    return out if isinstance(out, dict) else {}


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tokenizer_file(spec: str) -> str:
    """The tokenizer.json that `spec` (a file, or a directory holding one) names; a ConfigError if none."""
    path = os.path.join(spec, "tokenizer.json") if os.path.isdir(spec) else spec
    if not os.path.isfile(path):
        where = f"{spec} holds no tokenizer.json" if os.path.isdir(spec) else f"{spec} does not exist"
        raise ConfigError("data.tokenizer", f"{where}: give \"byte\", a tokenizer.json, or a directory with one "
                                            "(a Hugging Face checkpoint directory)")
    return os.path.abspath(path)


def load(spec: str) -> Tokenizer:
    """The tokenizer `spec` names: "byte", a tokenizer.json, or a directory holding one."""
    if spec == "byte":
        return BYTE
    path = tokenizer_file(spec)
    return _load_file(path, os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _load_file(path: str, mtime_ns: int) -> HFTokenizer:  # the mtime: an edited file is read again
    return HFTokenizer(path)


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


def write_byte_tokenizer(directory: str) -> list[str]:
    """The byte tokenizer as Hugging Face files (tokenizer.json, tokenizer_config.json): a byte-level BPE
    with no merges whose byte b is id b + 3 and whose PAD/BOS/EOS are <pad>/<s>/</s> at 0/1/2, a BOS
    put before every text, so that `AutoTokenizer` encodes and decodes exactly as recoup does."""
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
