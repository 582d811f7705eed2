"""Property-based fuzzing of data files.

The contract every property checks, and how to run more examples: tests/fuzz_support.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from framework.data.files import load_file
from framework.errors import ConfigError
from tests.conftest import fuzz
from tests.fuzz_support import (
    JSON_VALUES,
    _fails,
    _fresh,
    encode,
    error_field,
    jsonl,
    run_cli,
    stop_after_reading_data,
)

# == 3. data files ===============================================================================
# A file that is malformed in one known way: load_file, and `recoup train --data`, name the file and
# the line or the column at fault.

CELL = st.text(alphabet="abcxyz 0123+=?,.é✓", max_size=8).map(lambda s: "q" + s)  # never a pandas NA
ROWS = st.lists(st.fixed_dictionaries({"prompt": CELL, "answer": CELL, "difficulty": st.integers(0, 9)}),
                min_size=1, max_size=6)


def csv_lines(rows, header=("prompt", "answer", "difficulty")) -> list[str]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([r.get(c, "") for c in header] for r in rows)
    return buf.getvalue().splitlines()


@st.composite
def malformed_files(draw):
    """(file name, bytes, load_file keyword arguments, field named, fragments of the message)."""
    rows = draw(ROWS)
    n = len(rows)
    fault = draw(st.sampled_from(["not utf-8", "truncated", "not an object", "garbage line", "missing column",
                                  "empty cell", "nested cell", "bad difficulty", "empty", "csv ragged",
                                  "csv header only", "csv duplicate header", "csv missing column", "json document",
                                  "parquet bytes", "parquet wrong type"]))
    k = draw(st.integers(1, n))  # the line (JSON Lines) or data row (CSV) at fault, from 1
    col = draw(st.sampled_from(["prompt", "answer"]))
    if fault == "not utf-8":
        kind = draw(st.sampled_from(["jsonl", "csv"]))
        lines = [line.encode() for line in (jsonl(rows) if kind == "jsonl" else csv_lines(rows))]
        line = k if kind == "jsonl" else k + 1
        at = draw(st.integers(0, len(lines[line - 1])))
        bad = draw(st.sampled_from([b"\xff", b"\xc0", b"\x80", b"\xe9"]))  # the line is no UTF-8, wherever it lands
        lines[line - 1] = lines[line - 1][:at] + bad + lines[line - 1][at:]
        return f"x.{kind}", b"\n".join(lines) + b"\n", {}, "data", [f"line {line} ", "not UTF-8"]
    if fault == "truncated":
        lines = jsonl(rows)
        lines[k - 1] = lines[k - 1][:draw(st.integers(1, len(lines[k - 1]) - 1))]
        return "x.jsonl", encode(lines), {}, "data", [f"line {k} "]
    if fault == "not an object":
        lines = jsonl(rows)
        lines[k - 1] = json.dumps(draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict))))
        return "x.jsonl", encode(lines), {}, "data", [f"line {k} ", "not an object"]
    if fault == "garbage line":
        lines = jsonl(rows)
        lines[k - 1] = draw(st.text(min_size=1, max_size=20).filter(lambda s: "\n" not in s and s.strip()
                                                                     and _fails(json.loads)(s)))
        return "x.jsonl", encode(lines), {}, "data", [f"line {k} "]
    if fault == "missing column":
        for r in rows:
            del r[col]
        return "x.jsonl", encode(jsonl(rows)), {}, f"{col}_col", [f"column '{col}' not found", "x.jsonl"]
    if fault == "empty cell":  # null, or the key left out (while other rows have it)
        rows[k - 1][col] = None
        if n > 1 and draw(st.booleans()):
            del rows[k - 1][col]
        return "x.jsonl", encode(jsonl(rows)), {}, f"{col}_col", [f"'{col}'", "x.jsonl", f"row {k - 1} "]
    if fault == "nested cell":
        small = st.integers(-9, 9)  # a huge one is another fault: "does not fit in 64 bits", naming the line
        rows[k - 1][col] = draw(st.lists(small, max_size=2) | st.dictionaries(st.text(max_size=2), small, max_size=2))
        fragments = [f"'{col}'", "x.jsonl"] + ([f"row {k - 1} "] if n > 1 else [])
        return "x.jsonl", encode(jsonl(rows)), {}, f"{col}_col", fragments
    if fault == "bad difficulty":
        bad = draw(st.sampled_from([None, "hard", True, math.nan, math.inf, [1], {"a": 1}]))
        rows[k - 1]["difficulty"] = bad
        row = [f"row {k - 1} "] if n > 1 or not isinstance(bad, list | dict) else []  # else: a column of lists
        return ("x.jsonl", encode(jsonl(rows)), {"difficulty_col": "difficulty"}, "difficulty_col",
                ["'difficulty'", "x.jsonl", *row])
    if fault == "empty":
        kind = draw(st.sampled_from(["jsonl", "json", "csv", "parquet"]))
        text = b"" if kind == "parquet" else draw(st.text(alphabet=" \t\r\n", max_size=5)).encode()
        return f"x.{kind}", text, {}, "data", ["has no rows"]
    if fault == "csv ragged":
        lines = csv_lines(rows)
        extra = draw(st.integers(1, 3))
        lines[k] += "," * extra
        return "x.csv", encode(lines), {}, "data", [f"line {k + 1} has {3 + extra} fields"]
    if fault == "csv header only":
        return "x.csv", encode(csv_lines([])), {}, "data", ["no rows"]
    if fault == "csv duplicate header":
        return "x.csv", encode(csv_lines(rows, ("prompt", "answer", col))), {}, "data", [f"names column '{col}' twice"]
    if fault == "csv missing column":
        header = [c for c in ("prompt", "answer", "difficulty") if c != col]
        return "x.csv", encode(csv_lines(rows, header)), {}, f"{col}_col", [f"column '{col}' not found", "x.csv"]
    if fault == "json document":  # one JSON array, cut short
        text = json.dumps(rows, indent=1, ensure_ascii=False)
        text = text[:draw(st.integers(1, len(text) - 1))]
        return "x.json", text.encode(), {}, "data", ["line ", "JSON parse error"]
    if fault == "parquet bytes":
        return "x.parquet", draw(st.binary(min_size=1, max_size=64)), {}, "data", ["could not read", "x.parquet"]
    # parquet with a column of the wrong type: lists of numbers, or text for the difficulty
    wrong = draw(st.sampled_from([col, "difficulty"]))
    values = [[i] for i in range(n)] if wrong != "difficulty" else [f"level {i}" for i in range(n)]
    table = pa.table({c: values if c == wrong else [r[c] for r in rows] for c in ("prompt", "answer", "difficulty")})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return "x.parquet", buf.getvalue(), {"difficulty_col": "difficulty"}, f"{wrong}_col", [f"'{wrong}'", "x.parquet"]


def _write_data(sandbox, name: str, content: bytes) -> str:
    path = os.path.join(_fresh(sandbox, "data"), name)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(content)
    return path


def test_the_base_files_are_valid(sandbox):
    rows = [{"prompt": "q1+2=", "answer": "q3", "difficulty": 1}, {"prompt": "qé,", "answer": "q✓", "difficulty": 2}]
    for name, content in (("x.jsonl", encode(jsonl(rows))), ("x.csv", encode(csv_lines(rows)))):
        ds = load_file(_write_data(sandbox, name, content), difficulty_col="difficulty")
        assert ds.to_dict() == {c: [r[c] for r in rows] for c in ("prompt", "answer", "difficulty")}


@fuzz(60)
@given(case=malformed_files())
def test_a_malformed_data_file_names_the_file_and_the_line_or_column(sandbox, case):
    name, content, kwargs, field, fragments = case
    path = _write_data(sandbox, name, content)
    note(f"{name}: {content[:300]!r}")
    with pytest.raises(ConfigError) as err:  # never a datasets, pyarrow, pandas or json exception
        load_file(path, **kwargs)
    assert err.value.field == field, str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value), f"{fragment!r} not in {err.value}"


@fuzz(30)
@given(case=malformed_files(), columns=st.booleans())
def test_train_with_a_malformed_data_file_exits_2_naming_it(sandbox, case, columns):
    name, content, kwargs, field, fragments = case
    path = _write_data(sandbox, name, content)
    argv = ["train", "--data", path, "--preset", "tiny", "--budget-tokens", "1k", "--val-size", "1",
            "--test-size", "1", "--out", _fresh(sandbox, "out")]
    if "difficulty_col" in kwargs:
        argv += ["--difficulty-col", kwargs["difficulty_col"]]
    if columns:  # the defaults, given explicitly
        argv += ["--prompt-col", "prompt", "--answer-col", "answer"]
    outcome, err = run_cli(argv, prepare=stop_after_reading_data)
    assert outcome == "rc=2", outcome
    assert error_field(err) == field, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err}"


@fuzz(40)
@given(kind=st.sampled_from(["jsonl", "json", "csv", "parquet"]), content=st.binary(min_size=1, max_size=200))
def test_random_bytes_as_a_data_file_are_a_clear_error(sandbox, kind, content):
    path = _write_data(sandbox, f"x.{kind}", content)
    try:
        load_file(path)
    except ConfigError as e:
        assert e.field in ("data", "prompt_col", "answer_col"), str(e)
        assert "x." + kind in str(e)


@pytest.mark.parametrize("line, fragments", [
    (b"9223372036854775808", ["line 1 ", "is a number, not an object"]),  # found by the fuzz test above
    (b'{"prompt": "1+1=", "answer": 9223372036854775808}', ["line 1:", "does not fit in 64 bits"]),
])
def test_a_huge_integer_is_named_after_what_the_line_is(tmp_path, line, fragments):
    path = tmp_path / "x.jsonl"
    path.write_bytes(line + b"\n")
    with pytest.raises(ConfigError) as err:
        load_file(str(path))
    assert err.value.field == "data" and all(f in str(err.value) for f in fragments), str(err.value)
