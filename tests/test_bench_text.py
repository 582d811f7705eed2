"""The streamed text benchmark (experiments/bench_text.py, harness/bench_text.py; issue 23 item 6):
corpora written in chunks to their size, the data wait read from metrics.jsonl, the section's fields
sane, the corpora removed. The training child is stood in for here (fast); the `slow` test runs it
for real at the tiniest size."""

from __future__ import annotations

import json
import os

import pytest

from harness import bench_text
from harness.bench_text import MB, data_wait, text_benchmark, text_section, write_corpus


def test_a_corpus_is_written_to_its_size_in_paragraph_files(tmp_path):
    size = write_corpus(str(tmp_path / "c"), 0.25, files=2)
    files = sorted(os.listdir(tmp_path / "c"))
    assert files == ["part00.txt", "part01.txt"]
    assert size == sum(os.path.getsize(tmp_path / "c" / f) for f in files)
    assert 0.25 * MB <= size < 0.25 * MB + 2 * 200_000  # at most one block over, per file
    text = (tmp_path / "c" / "part00.txt").read_text()
    assert text.startswith("Block 0 of part 0.\n\n") and "\n\n" in text[30:]


def test_the_data_wait_leaves_out_the_first_window(tmp_path):
    lines = [{"event": "train", "data_time_frac": 0.5}, {"event": "eval"},
             {"event": "train", "data_time_frac": 0.01}, {"event": "train", "data_time_frac": 0.03}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    assert data_wait(str(tmp_path)) == pytest.approx({"data_frac": 0.02, "data_frac_max": 0.03, "windows": 2})
    (tmp_path / "metrics.jsonl").write_text(json.dumps(lines[0]) + "\n")
    with pytest.raises(RuntimeError, match="fewer than two log windows"):
        data_wait(str(tmp_path))


def fake_child(argv):
    """What a run leaves: metrics.jsonl under --out; a peak RSS growing a little with the corpus's bytes."""
    out, corpus = argv[argv.index("--out") + 1], argv[argv.index("--text") + 1]
    assert argv[argv.index("--budget-tokens") + 1] == str(3 * 2 * 16)  # steps x batch x seq_len
    os.makedirs(out)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for frac in (0.4, 0.01, 0.02):
            f.write(json.dumps({"event": "train", "data_time_frac": frac}) + "\n")
    return 500 * MB + sum(os.path.getsize(os.path.join(corpus, n)) for n in os.listdir(corpus))


@pytest.mark.parametrize("keep", [False, True])
def test_the_benchmark_reports_sane_fields_and_removes_its_corpora(tmp_path, monkeypatch, keep):
    monkeypatch.setattr(bench_text, "train_in_child", fake_child)
    r = text_benchmark(str(tmp_path), keep, small_mb=0.5, large_mb=2, steps=3, seq_len=16, batch_size=2, log_every=1)
    assert [row["corpus"] for row in r["rows"]] == ["small", "large"]
    for row in r["rows"]:
        assert 0 <= row["data_frac"] <= row["data_frac_max"] <= 1 and row["windows"] == 2 and row["peak_rss"] > 0
    assert 1 < r["rss_ratio"] < 1.1
    assert os.path.isdir(r["dir"]) == keep and os.path.dirname(r["dir"]) == str(tmp_path)
    section = text_section(r)
    assert section.startswith("## Text corpora") and "| peak RSS, large / small corpus | " in section
    assert "<= 1.1: met" in section and "< 2%: met" in section


def test_a_failed_child_says_what_it_ran(tmp_path):
    with pytest.raises(RuntimeError, match="recoup train --text .* failed"):
        bench_text.train_in_child(["train", "--text", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])


@pytest.mark.slow
def test_the_benchmark_trains_for_real_at_the_tiniest_size(tmp_path):
    r = text_benchmark(str(tmp_path), small_mb=0.25, large_mb=1, steps=4, seq_len=32, batch_size=4, log_every=2)
    for row in r["rows"]:
        assert 0 <= row["data_frac"] <= 1 and row["peak_rss"] > 50 * MB
    assert r["rss_ratio"] > 0 and not os.path.exists(r["dir"])
