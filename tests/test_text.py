"""Text corpora streamed and packed (framework/data/text.py, issue 23 items 1 and 5): every (input,
target) pair of every document lands in exactly one row slot, in order; a document longer than a row
is split and counted in full; segments keep attention inside a piece and positions restart; a stream
resumed from its state continues exactly as if it had never stopped, for every corpus layout; bad
corpora are one-line errors before anything trains."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from framework.data.text import StreamState, TextStream, corpus_files
from framework.data.tokenizer import BYTE
from framework.errors import ConfigError
from framework.models.transformer import segment_causal_mask

DOCS = ["the cat sat", "a much longer document that will not fit in one row of sixteen", "x", "", "last one"]


def _write(tmp_path, layout: str, docs=DOCS):
    if layout == "txt":
        (tmp_path / "a.txt").write_text("\n\n".join(docs[:2]) + "\n")
        (tmp_path / "b.txt").write_text("\n\n".join(d for d in docs[2:] if d) + "\n")
        return tmp_path
    rows = [{"text": d, "id": i} for i, d in enumerate(docs) if d]
    if layout == "jsonl":
        path = tmp_path / "c.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    if layout == "parquet":
        path = tmp_path / "c.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
        return path
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "disk"))
    return tmp_path / "disk"


def _pairs(docs):
    out = []
    for d in docs:
        if d:
            seq = [*BYTE.prefix, *BYTE.encode(d), BYTE.eos]
            out += list(zip(seq[:-1], seq[1:], strict=True))
    return out


@pytest.mark.parametrize("layout", ["txt", "jsonl", "parquet", "disk"])
def test_every_pair_of_every_document_is_packed_once_in_order(layout, tmp_path):
    stream = TextStream(str(_write(tmp_path, layout)), BYTE, 16)
    want = _pairs(DOCS)
    rows, state = stream.next_rows(stream.init(), -(-len(want) // 16))
    got = [(i, t) for r in range(len(rows.inputs)) for i, t, m in zip(rows.inputs[r], rows.targets[r],
                                                                       rows.loss_mask[r], strict=True) if m]
    assert got[:len(want)] == want  # the long document is split across rows, no pair lost
    assert got[len(want):] == want[:len(got) - len(want)] and state.epoch == 1  # then the corpus again: no padding
    assert int(rows.loss_mask.sum()) == int((rows.inputs != BYTE.pad).sum()) == rows.inputs.size  # counted tokens


def test_segments_and_positions_restart_per_piece(tmp_path):
    stream = TextStream(str(_write(tmp_path, "jsonl")), BYTE, 16)
    rows, _ = stream.next_rows(stream.init(), 2)
    first = len(BYTE.encode(DOCS[0])) + 1  # its pairs: BOS..text, then text..EOS
    assert rows.segment_ids[0].tolist() == [1] * first + [2] * (16 - first)
    assert rows.positions[0].tolist() == list(range(first)) + list(range(16 - first))
    assert rows.positions[1, 0] == 0 and rows.segment_ids[1, 0] == 1  # the long document goes on, a new piece
    mask = np.asarray(segment_causal_mask(rows.segment_ids))
    assert mask[0, first, first] and not mask[0, first, first - 1] and not mask[0, 2, 3]


@pytest.mark.parametrize("layout", ["txt", "jsonl", "parquet", "disk"])
def test_a_resumed_stream_continues_exactly(layout, tmp_path):
    path = str(_write(tmp_path, layout, DOCS * 3))
    straight = TextStream(path, BYTE, 12)
    state, rows = straight.init(), []
    for _ in range(14):  # past the end of the corpus: the second epoch too
        r, state = straight.next_rows(state, 2)
        rows.append(r.inputs)
    for cut in (1, 6, 11):
        resumed = TextStream(path, BYTE, 12)
        s = resumed.init()
        for _ in range(cut):
            _, s = resumed.next_rows(s, 2)
        s = StreamState.from_json(json.loads(json.dumps(s.to_json())))  # as a checkpoint keeps it
        again = TextStream(path, BYTE, 12)
        for k in range(cut, 14):
            r, s = again.next_rows(s, 2)
            np.testing.assert_array_equal(r.inputs, rows[k], err_msg=f"{layout}, resumed after {cut}, batch {k}")
    assert state.epoch >= 1


def test_a_finished_corpus_starts_again(tmp_path):
    stream = TextStream(str(_write(tmp_path, "jsonl")), BYTE, 8)
    n = len(_pairs(DOCS))
    rows, state = stream.next_rows(stream.init(), -(-n // 8) + 2)
    assert state.epoch == 1
    again = [int(x) for x in rows.inputs.ravel()[n:n + 4]]
    assert again == [BYTE.bos, *BYTE.encode(DOCS[0])[:3]]


def test_bad_corpora_are_one_line_errors(tmp_path):
    def fails(path, words, **kw):
        with pytest.raises(ConfigError, match=words):
            TextStream(str(path), BYTE, 16, **kw)

    fails(tmp_path / "nope.txt", "does not exist")
    (tmp_path / "empty.txt").write_text("")
    fails(tmp_path / "empty.txt", "is empty")
    (tmp_path / "bin.txt").write_bytes(b"abc\0\1\2")
    fails(tmp_path / "bin.txt", "looks binary")
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    fails(tmp_path / "latin.txt", "not UTF-8 text")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    fails(tmp_path / "bad.parquet", "not a readable Parquet file")
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "col.parquet")
    fails(tmp_path / "col.parquet", "no column 'text'")
    (tmp_path / "col.jsonl").write_text('{"body": "a"}\n')
    fails(tmp_path / "col.jsonl", "no column 'text'")
    fails(tmp_path / "col.jsonl", "no column 'content'", text_col="content")
    (tmp_path / "x.csv").write_text("a\n")
    fails(tmp_path / "x.csv", "a .txt, .jsonl or .parquet file")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.txt").write_text("a")
    (mixed / "b.jsonl").write_text('{"text": "b"}\n')
    fails(mixed, "files of one kind")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(ConfigError, match="holds no documents"):
        stream = TextStream(str(tmp_path / "blank.jsonl"), BYTE, 4)
        stream.next_rows(stream.init(), 1)
    (tmp_path / "ok").mkdir()
    assert corpus_files(str(_write(tmp_path / "ok", "txt"))) == ("text", [str(tmp_path / "ok" / f"{n}.txt")
                                                                          for n in "ab"])


def test_an_invalid_byte_past_the_checked_head_reads_as_a_replacement(tmp_path):
    from framework.data import text

    path = tmp_path / "late.txt"
    path.write_bytes(b"a" * (text.CHECK_BYTES + 10) + b"\n\nbad \xff byte\n")
    stream = TextStream(str(path), BYTE, 64)
    rows, state = stream.next_rows(stream.init(), (text.CHECK_BYTES + 10) // 64 + 2)
    assert "\ufffd".encode() in bytes(int(i) - 3 for i in rows.inputs.ravel() if i >= 3)


def test_a_packed_row_computes_what_each_piece_computes_alone(tmp_path):
    """The segment mask and the restarted positions make a packed row's logits, slot by slot, those of
    each document piece run alone: packing changes the arithmetic's layout, not what it computes."""
    import jax.numpy as jnp

    from framework.config import PRESETS
    from framework.models.transformer import batch_logits, build_model, forward

    model = build_model(PRESETS["tiny"], 0)
    stream = TextStream(str(_write(tmp_path, "jsonl")), BYTE, 16)
    rows, _ = stream.next_rows(stream.init(), 3)
    packed = np.asarray(batch_logits(model, rows.batch()))
    checked = 0
    for r in range(3):
        for seg in set(rows.segment_ids[r].tolist()) - {0}:
            cols = np.flatnonzero(rows.segment_ids[r] == seg)
            alone = np.asarray(forward(model, jnp.asarray(rows.inputs[r, cols][None])))[0]
            np.testing.assert_allclose(packed[r, cols], alone, atol=1e-5)
            checked += len(cols)
    assert checked == rows.inputs.size
