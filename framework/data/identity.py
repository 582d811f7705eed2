"""What a run's data was, so that nothing reads other data as if it were the same.

When a run starts, `RUN/data.json` records the data file's resolved path and sha256 (a
`save_to_disk` directory: over its files) and a sha256 of each split's rows, in order. Every later
reading of the run's data (`--resume`, a cooldown branch, `recoup eval`, `ensemble build/eval`,
`report`) rebuilds the splits and compares: a changed file or split is a ConfigError saying what
changed, unless the caller allows it (`--allow-changed-data`), and then the result says so. A data
path given relative to where the run was trained is found from any directory through the
recorded absolute path. Runs made before this file existed are read as they always were.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from framework.checkpoints.integrity import write_atomic
from framework.config import DataConfig, RunConfig, resolve_init_from
from framework.errors import ConfigError

DATA_FILE = "data.json"


def fingerprint_path(path: str) -> str:
    """sha256 of a file, or of a directory's files (relative paths and contents, in sorted order)."""
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, n) for d, _, names in os.walk(path) for n in names)
    for f in files:
        if f != path:
            h.update(os.path.relpath(f, path).encode() + b"\0")
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def split_fingerprints(splits: Mapping[str, Any]) -> dict[str, dict]:
    """Per split: its rows and a sha256 of its (prompt, answer) pairs in order (a sampler's state
    holds row indices, so the order matters as much as the rows)."""
    out = {}
    for name, split in splits.items():
        h = hashlib.sha256()
        for prompt, answer in zip(split.prompts, split.answers, strict=True):
            h.update(prompt.encode() + b"\0" + answer.encode() + b"\0")
        out[name] = {"rows": len(split.prompts), "sha256": h.hexdigest()}
    return out


def record(data: DataConfig, splits: Mapping[str, Any]) -> dict:
    """What `data.json` holds for `data` and the splits built from it."""
    path = os.path.abspath(data.data_path) if data.data_path else None
    return {"data_path": path, "data_sha256": fingerprint_path(path) if path else None,
            "splits": split_fingerprints(splits)}


def read(run_dir: str) -> dict | None:
    """The run's record, or None for a run made before runs kept one."""
    path = os.path.join(run_dir, DATA_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError("data", f"{path} is not a readable data record ({e})") from None


def write(run_dir: str, rec: dict) -> None:
    write_atomic(os.path.join(run_dir, DATA_FILE), json.dumps(rec, indent=2))


def resolved(data: DataConfig, run_dirs: Iterable[str]) -> DataConfig:
    """`data` with its file found: as given (relative to here), else where the first of `run_dirs`
    that recorded it trained on it."""
    if data.data_path is None or os.path.exists(data.data_path):
        return data
    for run_dir in run_dirs:
        rec = read(run_dir)
        if rec and rec.get("data_path") and os.path.exists(rec["data_path"]):
            return dataclasses.replace(data, data_path=rec["data_path"])
    return data  # reading it fails with the usual "not found", naming the path


def data_of(cfg: RunConfig) -> DataConfig:
    """`cfg.data` with its file found from here: as given, or where the run (or the run it branches
    from) recorded training on it (a path given relative to another directory)."""
    sources = [cfg.out_dir] + ([resolve_init_from(cfg, "branch_from")[0]] if cfg.branch_from else [])
    return resolved(cfg.data, sources)


def differences(saved: dict, now: dict) -> list[str]:
    """What changed between two records, in words; empty when nothing did."""
    out = []
    if saved.get("data_sha256") and saved["data_sha256"] != now.get("data_sha256"):
        out.append(f"{now.get('data_path') or saved.get('data_path')} has changed (sha256 "
                   f"{str(now.get('data_sha256'))[:12]}..., {saved['data_sha256'][:12]}... when trained)")
    for name, was in saved.get("splits", {}).items():
        is_ = now.get("splits", {}).get(name)
        if is_ != was:
            rows = f"{is_['rows']:,} rows, {was['rows']:,} then" if is_ else "missing now"
            out.append(f"the {name} split differs ({rows})")
    return out


def check(run_dir: str, now: dict, allow: bool, what: str = "data") -> list[str]:
    """Compare `now` with the record of `run_dir`: a difference is a ConfigError naming it, or, with
    `allow`, returned (for the caller to report). Nothing to compare for an older run."""
    saved = read(run_dir)
    changes = differences(saved, now) if saved else []
    if changes and not allow:
        raise ConfigError(what, f"{run_dir} was trained on other data: {'; '.join(changes)}. Its held-out "
                                "splits are not the ones it held out; pass --allow-changed-data to go on anyway "
                                "(results will say so)")
    return changes
