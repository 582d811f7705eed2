"""`recoup serve`'s checks that need no running server: what it refuses before starting, stop strings,
buckets and request limits, a port in use, and the benchmark report's sections (split from
tests/test_serving.py to keep each file readable in one sitting)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

from framework.data.tokenizer import BYTE
from framework.errors import ConfigError
from framework.serving import generation
from framework.serving.completions import APIError, parse
from framework.serving.generation import Buckets, Completion, Row, apply_stop


def test_a_port_in_use_is_one_line(tmp_path):
    from framework.serving.server import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConfigError, match=r"port: cannot listen on 127.0.0.1:\d+ .*another --port"):
            serve([str(tmp_path / "never-loaded")], port=s.getsockname()[1])


def test_serve_refuses_what_it_cannot_serve_before_starting(trained_run, tmp_path, capsys):
    from framework.app.cli import main

    cfg, _ = trained_run
    other = tmp_path / "x" / os.path.basename(cfg.out_dir)
    other.mkdir(parents=True)
    (other / "config.json").write_text("{}")
    for args, words in (([str(tmp_path / "missing")], "is not a directory"),
                        ([str(tmp_path)], "neither a recoup ensemble"),
                        ([cfg.out_dir, str(other)], "would both be served as"),
                        ([cfg.out_dir, "--port", "70000"], "port"),
                        ([cfg.out_dir, "--batch-buckets", "8,1"], "ascending")):
        assert main(["serve", *args]) == 2
        assert words in capsys.readouterr().err


def test_stop_strings_cut_the_text_at_the_earliest_one():
    c = Completion("12+34=46", "length", 8)
    assert apply_stop(c, ["=", "+"]) == Completion("12", "stop", 8)
    assert apply_stop(c, ["x"]) == c


def test_buckets_and_the_request_limits_are_checked():
    with pytest.raises(Exception, match="ascending"):
        Buckets((8, 1), (16,), (4,)).validate()
    model = generation.ServedModel("m", ".", "weights", None, None, None, context=20, info={}, tokenizer=BYTE)
    with pytest.raises(APIError, match="maximum context length is 20"):
        parse({"model": "m", "prompt": "1" * 10, "max_tokens": 12}, {"m": model})
    req = parse({"model": "m", "prompt": ["1", "2"], "seed": 5, "temperature": 1, "user": "u-17"}, {"m": model})
    assert [r.seed for r in req.rows] == [5, 6] and req.rows[0] == Row((1, 52), 16, 1.0, 5) and req.user == "u-17"
    assert np.all([r.max_tokens == 16 for r in req.rows])
    # No max_tokens: OpenAI's 16, or what the context leaves; a prompt that fills the context is refused.
    assert parse({"model": "m", "prompt": "1" * 10}, {"m": model}).rows[0].max_tokens == 9
    with pytest.raises(APIError, match="leaving no room to generate"):
        parse({"model": "m", "prompt": "1" * 19}, {"m": model})
    with pytest.raises(APIError, match="user must be a string"):
        parse({"model": "m", "prompt": "1", "user": 5}, {"m": model})


def test_benchmark_sections_are_spliced_by_their_own_heading(tmp_path):
    from harness.report import splice

    path = str(tmp_path / "b.md")
    splice("## A\n\nold a\n", path)
    splice("## B\n\nold b\n", path)
    splice("## A\n\nnew a\n", path)
    text = open(path).read()
    assert text.count("## A") == 1 and text.count("## B") == 1 and "new a" in text and "old b" in text
    assert "old a" not in text
