"""Users' own data files: JSON Lines, CSV, Parquet or a `save_to_disk` directory, read into a
`datasets.Dataset` with columns prompt, answer, difficulty; every fault named with its line or
column. No jax here, so the CLI checks a data file before jax starts.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from framework.errors import ConfigError

COLUMNS = ("prompt", "answer", "difficulty")
FILE_TYPES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

Row = tuple[str, str, int | float]  # (prompt, answer, difficulty)


def column(ds: datasets.Dataset, name: str) -> list:
    """Column `name` of `ds` as a list. Since datasets 4, `ds[name]` is a lazy Column that reads one row
    per item when iterated (~100x slower than slicing it whole: 2.6 s of every addition run's setup)."""
    return ds[name][:]


def to_dataset(rows: list[Row], difficulty_dtype: str = "int64") -> datasets.Dataset:
    # Explicit features keep the column types right even when there are no rows.
    columns = [list(c) for c in zip(*rows, strict=True)] or [[], [], []]
    features = datasets.Features({"prompt": datasets.Value("string"),
                                  "answer": datasets.Value("string"),
                                  "difficulty": datasets.Value(difficulty_dtype)})
    return datasets.Dataset.from_dict(dict(zip(COLUMNS, columns, strict=True)), features=features)


def _missing_path_message(path: Path) -> str:
    if not path.parent.is_dir():
        return f"{path} not found (its directory {path.parent} does not exist)"
    names = sorted(p.name for p in path.parent.iterdir())
    more = f", ... ({len(names) - 20} more)" if len(names) > 20 else ""
    return f"{path} not found ({path.parent} holds: {', '.join(names[:20]) or 'nothing'}{more})"


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
               type(None): "null"}


def _noting_int64(too_big: list[str]):
    """A json parse_int that notes every integer outside 64 bits (pyarrow fails on one, naming no line):
    noted, not raised, so that a line which is no object at all is reported as such first."""
    def parse(text: str) -> int:
        value = int(text)
        if not -2**63 <= value < 2**63:
            too_big.append(text)
        return value
    return parse


def _json_fault(text: str, lines_only: bool) -> str | None:
    """Where JSON Lines (or, unless `lines_only`, one JSON document) text is malformed, or None."""
    if not lines_only:
        try:
            json.loads(text)
            return None  # one document: datasets reads an array of rows or an object
        except json.JSONDecodeError as e:
            if not e.msg.startswith("Extra data"):  # else: more than one value, so JSON Lines
                return f"line {e.lineno} column {e.colno}: JSON parse error: {e.msg}"
        except (ValueError, RecursionError):  # an integer of over 4300 digits, deep nesting
            pass  # the line by line pass below says where
    any_column = False
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        too_big: list[str] = []
        try:
            row = json.loads(line, parse_int=_noting_int64(too_big))
        except json.JSONDecodeError as e:
            return f"line {n} column {e.colno}: JSON parse error: {e.msg}"
        except (ValueError, RecursionError) as e:
            return f"line {n}: JSON parse error: {e or 'nested too deeply'}"
        if not isinstance(row, dict):
            return f"line {n} is {_JSON_KINDS[type(row)]}, not an object of columns such as {{\"prompt\": ...}}"
        if too_big:
            return (f"line {n}: JSON parse error: the integer {too_big[0]} does not fit in 64 bits "
                    "(write it as a string)")
        any_column = any_column or bool(row)
    return None if any_column else "every row is an empty object {}"


def _csv_fault(text: str) -> str | None:
    """Where CSV text is malformed, or None. Checked here because pandas reads rows with one field
    more than the header by silently turning the first column into an index."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next((row for row in reader if row), [])
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:  # pandas would rename the second one 'NAME.1'
            return f"line {reader.line_num} names column {repeated[0]!r} twice"
        rows = 0
        for row in reader:
            if len(row) > len(header):  # fewer is fine: the missing cells are empty
                return f"line {reader.line_num} has {len(row)} fields, the header has {len(header)}"
            rows += bool(row)
    except csv.Error:
        return None  # pandas' parser, which datasets uses, has the final word
    return None if rows else "it has a header but no rows"


def _check_text(path: Path, lines_only: bool, is_csv: bool) -> None:
    """Reports a malformed JSON (Lines) or CSV file by line and column, before datasets reads it:
    its parsers name neither, and it reads bytes that are not UTF-8 into strings that fail only
    when a row is read."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line, line_start = raw.count(b"\n", 0, e.start) + 1, raw.rfind(b"\n", 0, e.start) + 1
        column = len(raw[line_start:e.start].decode("utf-8", "replace")) + 1
        raise ConfigError("data", f"{path} line {line} column {column}: byte 0x{raw[e.start]:02x} is not "
                                  "UTF-8 text (save the file as UTF-8)") from None
    if not text.strip():
        raise ConfigError("data", f"{path} has no rows")
    fault = _csv_fault(text) if is_csv else _json_fault(text, lines_only)
    if fault:
        raise ConfigError("data", f"could not read {path}: {fault}")


def _read(path: Path) -> datasets.Dataset:
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError as exc:
            raise ConfigError("data", f"{path} is a directory but not one written by "
                                      f"Dataset.save_to_disk ({exc})") from exc
        if isinstance(loaded, datasets.DatasetDict):
            # The user's splits are merged: split_by_prompt re-splits them without leaks.
            try:
                return datasets.concatenate_datasets(list(loaded.values()))
            except ValueError as exc:
                raise ConfigError("data", f"the splits in {path} differ in columns: {exc}") from exc
        return loaded
    builder = FILE_TYPES.get(path.suffix.lower())
    if builder is None:
        raise ConfigError("data", f"unsupported file type '{path.suffix}' for {path}",
                          allowed=[*FILE_TYPES, "a Dataset.save_to_disk directory"])
    if builder != "parquet":
        _check_text(path, lines_only=path.suffix.lower() == ".jsonl", is_csv=builder == "csv")
    try:
        # datasets fails obscurely on a parquet file without rows: read the count from its footer.
        if path.stat().st_size > 0 and (builder != "parquet" or pq.read_metadata(path).num_rows):
            return _load_quietly(builder, path)
    except Exception as exc:  # a malformed user file is bad input: report it with the cause
        cause = exc
        while cause.__cause__ is not None:  # datasets wraps the parser's error in a generic one
            cause = cause.__cause__
        raise ConfigError("data", f"could not read {path}: {cause}") from exc
    raise ConfigError("data", f"{path} has no rows")


def _load_quietly(builder: str, path: Path) -> datasets.Dataset:
    """A local file through datasets' packaged builders (no network: the builder ships with
    datasets). Its "Generating train split" bars are noise for a file read in milliseconds: they are
    off for this call only, not for the rest of the user's process."""
    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    finally:
        if was_on:
            datasets.enable_progress_bars()


def _column(ds: datasets.Dataset, field: str, col: str, name: str) -> list:
    # Json: a JSON column whose rows differ in type ("4" in one, 4 in another, or an object)
    if not isinstance(ds.features[col], datasets.Value | datasets.Json):
        raise ConfigError(field, f"column '{col}' in {name} holds "
                                 f"{type(ds.features[col]).__name__} values, not one per row")
    values = column(ds, col)
    for i, v in enumerate(values):
        if v is None:
            raise ConfigError(field, f"column '{col}' in {name} is empty in row {i} (counting from 0)")
        if isinstance(v, dict | list):
            what = "an object" if isinstance(v, dict) else "a list"
            raise ConfigError(field, f"column '{col}' in {name} holds {what} in row {i} (counting from 0), "
                                     "not one value")
    return values


def load_file(path: str, prompt_col: str = "prompt", answer_col: str = "answer",
              difficulty_col: str | None = None) -> datasets.Dataset:
    """Loads a local data set and renames its columns to prompt, answer, difficulty.

    Args:
      path: a JSON Lines (`.jsonl`/`.json`), `.csv` or `.parquet` file, or a directory written by
        `Dataset.save_to_disk` (a DatasetDict's splits are concatenated).
      prompt_col, answer_col: the columns holding prompts and answers (cast to str).
      difficulty_col: a numeric column of difficulty scores, or None: every row then gets
        difficulty 0, meaning "unscored" (a scorer may fill it in later).

    Returns:
      A Dataset with exactly the columns prompt, answer, difficulty (int64 for integer scores,
      float64 otherwise). Bad input raises ConfigError naming the field to fix.
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise ConfigError("data", _missing_path_message(file))
    ds = _read(file)
    if len(ds) == 0:
        raise ConfigError("data", f"{file} has no rows")
    wanted = {"prompt_col": prompt_col, "answer_col": answer_col, "difficulty_col": difficulty_col}
    for field, col in wanted.items():
        if col is not None and col not in ds.column_names:
            raise ConfigError(field, f"column '{col}' not found in {file.name} "
                                     f"(columns found: {', '.join(ds.column_names)})")
    prompts = [str(v) for v in _column(ds, "prompt_col", prompt_col, file.name)]
    answers = [str(v) for v in _column(ds, "answer_col", answer_col, file.name)]
    if difficulty_col is None:
        difficulty, dtype = [0] * len(ds), "int64"
    else:
        difficulty = _column(ds, "difficulty_col", difficulty_col, file.name)
        for i, v in enumerate(difficulty):  # NaN would sort anywhere in an easy-to-hard curriculum
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                what = "not finite" if isinstance(v, float) else "not numeric"
                raise ConfigError("difficulty_col", f"column '{difficulty_col}' in {file.name} is {what}: "
                                                    f"row {i} (counting from 0) holds {v!r}")
        dtype = "int64" if all(isinstance(v, int) and abs(v) < 2**63 for v in difficulty) else "float64"
    return to_dataset(list(zip(prompts, answers, difficulty, strict=True)), dtype)
