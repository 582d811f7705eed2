"""Text corpora, streamed and packed into rows of `seq_len` tokens (issue 23).

A corpus is a `.txt` file, a `.jsonl` or `.parquet` file, a directory of files of one of those
kinds, or a `datasets` save_to_disk directory. It is read as a stream with `datasets`'
IterableDataset, never whole: `datasets` is already how recoup reads prompt/answer files, it reads
all four layouts (text in chunks, JSON lines in chunks, Parquet by row group, an Arrow directory
memory-mapped), and its `state_dict()` / `load_state_dict()` say exactly which example comes next,
which is what an exact resume needs. (grain would also resume exactly, but reads its own formats and
would be a second data stack beside `datasets`.)

Documents: a `.txt` file is read paragraph by paragraph (blank-line separated, so one paragraph at a
time is in memory); a JSON line, a Parquet row or a save_to_disk row is one document, its text in
`text_col`. Empty and blank documents are skipped.

Packing (rows: framework.data.packing): a document is `prefix text EOS` in the tokenizer's ids, and
every token but the last is an input predicting the next. Rows take those (input, target) pairs in
order; a document that does not fit in what is left of a row continues in the next one, so no pair
is lost and a document longer than a row is split and counted in full. Within a row, each piece of
a document is a segment: `segment_ids` (1, 2, ...; 0 is padding) keep attention inside it and
`positions` restart at 0. The loss covers every pair. Counted tokens keep their one definition: the
non-PAD inputs (`framework.data.encoding.counted_tokens`), here every filled slot.

State: `StreamState` (JSON-able, checkpointed with the run) is where the stream stands: the
IterableDataset's state before the document being packed, how many of its pairs are packed, and
the epoch (a finished corpus starts again). `TextStream.next_rows(state, n)` is a pure function of
the state; it keeps the open iterator between calls only as a cache. A checkpoint keeps it as JSON in
a fixed-size array (`state_array`), the run's `sampler` item.

A run (`prepare`, `DataConfig.text`): the first `val_size` documents are validation, packed once
(`pack_documents`); the next `test_size` are test; training streams from the document after them,
and so does every later epoch (`TextStream.hold_out`), so no split shares a document.
"""

from __future__ import annotations

import codecs
import json
import os
from typing import Any, NamedTuple

import numpy as np

from framework.config import DataConfig
from framework.data.encoding import Batches
from framework.data.packing import PackedRows, empty_rows, pack_documents, place
from framework.data.tokenizer import Tokenizer, load
from framework.errors import ConfigError

KINDS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
CHECK_BYTES = 1 << 20  # of each file, read at start: empty, binary, invalid UTF-8, a missing column


class StreamState(NamedTuple):
    stream: dict  # the IterableDataset's state_dict() before the document being packed
    offset: int  # pairs of that document already packed
    epoch: int  # passes over the corpus finished

    def to_json(self) -> dict:
        return {"stream": self.stream, "offset": self.offset, "epoch": self.epoch}

    @classmethod
    def from_json(cls, d: dict) -> StreamState:
        return cls(d["stream"], int(d["offset"]), int(d["epoch"]))


# == the files =======================================================================================


def corpus_files(path: str) -> tuple[str, list[str]]:
    """The `datasets` builder ("text", "json", "parquet", or "arrow" for a save_to_disk directory)
    and the files of `path`, in sorted order; a ConfigError naming what is wrong."""
    if not os.path.exists(path):
        raise ConfigError("data.text", f"{path} does not exist")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "dataset_info.json")) or os.path.isfile(os.path.join(path, "state.json")):
            return "arrow", [path]
        files = sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names if not n.startswith("."))
        kinds = {KINDS.get(os.path.splitext(f)[1].lower()) for f in files}
        if not files or None in kinds or len(kinds) > 1:
            found = sorted({os.path.splitext(f)[1] or os.path.basename(f) for f in files}) or ["nothing"]
            raise ConfigError("data.text", f"{path} must hold files of one kind (.txt, .jsonl or .parquet), or be a "
                                           f"datasets save_to_disk directory; it holds {', '.join(found)}")
        return kinds.pop(), files
    kind = KINDS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise ConfigError("data.text", f"{path}: a text corpus is a .txt, .jsonl or .parquet file, a directory of "
                                       "them, or a datasets save_to_disk directory")
    return kind, [path]


def check_files(kind: str, files: list[str], text_col: str) -> None:
    """What can be wrong with a corpus, found before anything trains: an empty file, a binary file,
    invalid UTF-8 in the first MiB of a text file (later bytes that are not UTF-8 read as U+FFFD), a
    Parquet file whose footer is damaged, a text column that is missing."""
    if kind == "arrow":
        import datasets

        try:
            names = datasets.load_from_disk(files[0]).column_names
        except Exception as e:  # datasets' own words, in one line
            raise ConfigError("data.text", f"{files[0]} is not a readable save_to_disk directory: "
                                           f"{str(e).splitlines()[0][:200]}") from None
        _has_column(files[0], names, text_col)
        return
    for f in files:
        if os.path.getsize(f) == 0:
            raise ConfigError("data.text", f"{f} is empty")
        if kind == "parquet":
            import pyarrow.parquet as pq

            try:
                names = pq.read_schema(f).names
            except Exception as e:
                raise ConfigError("data.text", f"{f} is not a readable Parquet file: "
                                               f"{str(e).splitlines()[0][:200]}") from None
            _has_column(f, names, text_col)
            continue
        with open(f, "rb") as stream:
            head = stream.read(CHECK_BYTES)
        nul = head.find(b"\0")
        if nul >= 0:
            raise ConfigError("data.text", f"{f} looks binary (a NUL byte at offset {nul:,}); a corpus is UTF-8 text")
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < CHECK_BYTES)
        except UnicodeDecodeError as e:
            raise ConfigError("data.text", f"{f} is not UTF-8 text (byte {e.start:,}: {e.reason})") from None
        if kind == "json":
            line = head.split(b"\n", 1)[0]
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ConfigError("data.text", f"{f}: its first line is not JSON ({e})") from None
            _has_column(f, list(row) if isinstance(row, dict) else [], text_col)


def _has_column(where: str, names: list[str], text_col: str) -> None:
    if text_col not in names:
        raise ConfigError("data.text_col", f"{where} has no column {text_col!r}", names or ["none"])


def open_documents(path: str, text_col: str = "text"):
    """The corpus at `path` as an IterableDataset of {"text": str} documents, after `check_files`."""
    import datasets

    kind, files = corpus_files(path)
    check_files(kind, files, text_col)
    if kind == "arrow":
        ds = datasets.load_from_disk(files[0]).select_columns([text_col]).to_iterable_dataset()
    elif kind == "text":
        ds = datasets.load_dataset("text", data_files=files, sample_by="paragraph", streaming=True, split="train",
                                   encoding_errors="replace")
    else:
        ds = datasets.load_dataset(kind, data_files=files, streaming=True, split="train").select_columns([text_col])
    return ds.rename_column(text_col, "text") if text_col != "text" and kind != "text" else ds


# == the stream =====================================================================================


class TextStream:
    """Rows of `seq_len` (input, target) pairs packed from the documents of `path` (see the module)."""

    def __init__(self, path: str, tok: Tokenizer, seq_len: int, text_col: str = "text"):
        if seq_len < 2:
            raise ConfigError("data.seq_len", f"{seq_len} must be at least 2")
        self.path, self.tok, self.seq_len = path, tok, seq_len
        self._ds = open_documents(path, text_col)
        self._start = self._ds.state_dict()
        self._live: tuple[StreamState, Any, list[int] | None] | None = None  # (state it stands at, iterator, doc)
        self._at = self._start

    def init(self) -> StreamState:
        return StreamState(self._start, 0, 0)

    def hold_out(self, n_val: int, n_test: int) -> list[list[int]]:
        """Hold out the corpus's first documents: returns the tokens of the first `n_val` (validation),
        passes over the next `n_test` (test), and from then on the stream starts, and every epoch starts
        again, at the document after them, so training never reads a held-out document."""
        it, docs, seen, start = self._open(self._start), [], 0, None
        while True:
            if seen == n_val + n_test and start is None:  # (datasets' state_dict() is right once it has yielded)
                start = self._ds.state_dict() if seen else self._start
            try:
                text = next(it)["text"]
            except StopIteration:
                left = "none is left to train on" if start is not None else "too few"
                raise ConfigError("data.val_size" if seen < n_val else "data.test_size",
                                  f"{self.path} holds {seen:,} documents with val_size {n_val:,} and test_size "
                                  f"{n_test:,} held out: {left}; lower them (--val-size, --test-size: documents, "
                                  "for a text corpus)") from None
            self._check_text(text)
            if text and text.strip():
                if start is not None:  # the first document left to train on
                    self._start, self._live = start, None
                    return docs
                seen += 1
                if seen <= n_val:
                    docs.append(self._document(text))

    def _check_text(self, text) -> None:
        if text is not None and not isinstance(text, str):
            raise ConfigError("data.text_col", f"{self.path}: a document is a {type(text).__name__}, not text")

    def _document(self, text: str) -> list[int]:
        return [*self.tok.prefix, *self.tok.encode(text.rstrip("\n")), self.tok.eos]

    def _open(self, stream: dict):
        """An iterator from `stream` (a state_dict). `datasets` applies a loaded state when iteration
        starts, so until the first document the position is the one loaded, not `state_dict()`."""
        self._ds.load_state_dict(stream)
        self._at = stream  # the stream's state before the next document
        return iter(self._ds)

    def _next_doc(self, it, state: StreamState):
        """The next non-empty document's tokens (a finished corpus starts again), the iterator, and
        the state before that document. Empty and blank documents are skipped."""
        wrapped = False
        while True:
            before = self._at
            try:
                text = next(it)["text"]
            except StopIteration:
                if wrapped:  # a whole pass without one document
                    raise ConfigError("data.text", f"{self.path} holds no documents (every one is empty)") from None
                wrapped = True
                it, state = self._open(self._start), StreamState(self._start, 0, state.epoch + 1)
                continue
            self._at = self._ds.state_dict()
            self._check_text(text)
            if text and text.strip():
                return self._document(text), it, state._replace(stream=before)

    def next_rows(self, state: StreamState, n: int) -> tuple[PackedRows, StreamState]:
        """`n` packed rows from `state`, and the state after them."""
        if self._live is not None and self._live[0] == state:
            _, it, doc = self._live
        else:  # a state the open iterator is not at (the first call, a resume): reopen there
            it, doc = self._open(state.stream), None
        L = self.seq_len
        rows = empty_rows(n, L, self.tok.pad)
        for r in range(n):
            col, segment = 0, 0
            while col < L:
                if doc is None:
                    doc, it, state = self._next_doc(it, state)
                pairs = len(doc) - 1
                k = min(L - col, pairs - state.offset)
                if k > 0:
                    segment += 1
                    place(rows, r, col, doc, state.offset, k, segment)
                    col += k
                state = state._replace(offset=state.offset + k)
                if state.offset >= pairs:  # done: the next document's state is where the stream is now
                    doc, state = None, StreamState(self._at, 0, state.epoch)
        self._live = (state, it, doc)
        return rows, state


# == a text run's data ===============================================================================
# A checkpoint keeps the stream's position as the `sampler` item: its JSON in a fixed-size uint8 array,
# zero padded, so that the restore target (made before anything is read) has the saved shape.
STATE_BYTES = 8192


def state_array(state: StreamState) -> np.ndarray:
    raw = json.dumps(state.to_json(), sort_keys=True, separators=(",", ":")).encode()
    if len(raw) > STATE_BYTES:
        raise ConfigError("data.text", f"the stream's position is {len(raw):,} bytes of JSON, more than the "
                                       f"{STATE_BYTES:,} a checkpoint keeps for it (framework.data.text.STATE_BYTES)")
    out = np.zeros(STATE_BYTES, np.uint8)
    out[:len(raw)] = np.frombuffer(raw, np.uint8)
    return out


def state_of(array) -> StreamState:
    return StreamState.from_json(json.loads(np.asarray(array, np.uint8).tobytes().rstrip(b"\0")))


class TextData(NamedTuple):
    stream: TextStream  # the training documents: those after the held-out ones
    validation: PackedRows  # the first val_size documents, packed
    tokenizer: Tokenizer


def prepare(cfg: DataConfig) -> TextData:
    """The text corpus of `cfg` (`cfg.text`, see `DataConfig`): its stream, past the held-out
    documents, and its validation rows. Reads the held-out documents only."""
    tok = load(cfg.tokenizer)
    stream = TextStream(cfg.text, tok, cfg.seq_len, cfg.text_col)
    validation = stream.hold_out(cfg.val_size, cfg.test_size)
    return TextData(stream, pack_documents(validation, cfg.seq_len, tok.pad), tok)


def packed_batches(stream: TextStream, batch_size: int) -> Batches:
    """Training batches of `batch_size` packed rows from `stream`; their state is the stream's
    position (`state_array`), and no example indices come with them."""

    def draw(state: np.ndarray, tokens_seen: int):
        del tokens_seen  # the corpus is read in order
        rows, after = stream.next_rows(state_of(state), batch_size)
        return rows.batch(), None, state_array(after)

    return Batches(lambda: state_array(stream.init()), draw)
