"""What a run's data was, so that nothing reads other data as if it were the same.

When a run starts, `RUN/data.json` records the data file's resolved path and sha256 (a
`save_to_disk` directory: over its files), a sha256 of each split's rows, in order, and for a file
split by hash the cut points, which every later build for the run keeps. A text corpus, which may be
far too big to hash, is recorded by its files' names, sizes and first and last bytes
(`corpus_fingerprint`) and a sha256 of its packed validation rows. Sources mixed into training
(`--mix`) are recorded too, each with its share: a corpus by its fingerprint, a prompt/answer file
(`qa:FILE`) by its sha256. Every later
reading of the run's data (`--resume`, a cooldown branch, `recoup eval`, `ensemble build/eval`,
`report`) rebuilds the splits and compares (`serve` and `tune-stopping`, which read no examples,
compare the file's sha256 where the file is still there): a changed file or split is a ConfigError saying what
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
from framework.config import QA_PREFIX, DataConfig, RunConfig, qa_source
from framework.errors import ConfigError
from framework.run_dirs import resolve_init_from

DATA_FILE = "data.json"
TOKENIZER_DIR = "tokenizer"  # RUN/tokenizer: a copy of a Hugging Face tokenizer's files, made when the run starts


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


def hashed(data: DataConfig) -> bool:
    """Whether `data`'s splits are cut by prompt hash (a data file split by "hash")."""
    return data.data_path is not None and data.split_by == "hash"


def record(data: DataConfig, splits: Mapping[str, Any]) -> dict:
    """What `data.json` holds for `data` and the splits built from it; for splits by hash, the cuts
    they were made at, which every later build for the run reuses."""
    path = os.path.abspath(data.data_path) if data.data_path else None
    rec = {"data_path": path, "data_sha256": fingerprint_path(path) if path else None,
           "splits": split_fingerprints(splits)}
    tok = next(iter(splits.values())).tokenizer if splits else None
    if tok is not None and tok.identity["kind"] != "byte":  # a byte run's record stays as it always was
        rec["tokenizer"] = tok.identity
    if hashed(data):
        from framework.data.tasks import split_cuts_of  # datasets: only where splits were built anyway
        rec["split_cuts"] = list(data.split_cuts or split_cuts_of(splits, data.seed))
    return rec


SAMPLED_BYTES = 1 << 16  # of each corpus file's head and tail, in its fingerprint


def corpus_fingerprint(path: str) -> str:
    """sha256 over a text corpus's files (framework.data.text): each one's path under `path`, size, and
    first and last 64 KiB. Cheap on any corpus, never reading it whole: a growing or shrinking file, a
    new, renamed or removed one, an edit near either end are seen; an edit in the middle of a file that
    keeps its size is not."""
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, n) for d, _, names in os.walk(path) for n in names if not n.startswith("."))
    for f in files:
        size = os.path.getsize(f)
        h.update(f"{os.path.relpath(f, path) if f != path else ''}\0{size}\0".encode())
        with open(f, "rb") as stream:
            h.update(stream.read(SAMPLED_BYTES))
            stream.seek(max(0, size - SAMPLED_BYTES))
            h.update(stream.read(SAMPLED_BYTES))
    return h.hexdigest()


def text_record(data: DataConfig, corpus) -> dict:
    """What `data.json` holds for a text corpus (`corpus`: its framework.data.text.TextData): the corpus's
    path and `corpus_fingerprint`, and a sha256 of the validation rows (the held-out documents, packed)."""
    path, val = os.path.abspath(data.text), corpus.validation
    h = hashlib.sha256(val.inputs.tobytes() + val.targets.tobytes() + val.segment_ids.tobytes())
    rec = {"text_path": path, "text_fingerprint": corpus_fingerprint(path),
           "splits": {"validation": {"rows": len(val.inputs), "sha256": h.hexdigest()}}}
    if corpus.tokenizer.identity["kind"] != "byte":
        rec["tokenizer"] = corpus.tokenizer.identity
    return rec


def mixture_record(data: DataConfig) -> dict:
    """The sources mixed into training (DataConfig.mixture), each with its share: a corpus as `text_record`
    records the main one (path, `corpus_fingerprint`), a prompt/answer file ("qa:FILE") as `record` records a
    data file (path, sha256)."""
    if not data.mixture:
        return {}
    out = []
    for entry, share in data.mixture:
        file = qa_source(entry)
        if file is not None:
            path = os.path.abspath(file)
            out.append({"data_path": path, "share": share, "data_sha256": fingerprint_path(path)})
        else:
            path = os.path.abspath(entry)
            out.append({"text_path": path, "share": share, "text_fingerprint": corpus_fingerprint(path)})
    return {"mixture": out}


def _found_mixture(data: DataConfig, recorded: list[dict]) -> DataConfig:
    """`data` with each mixed-in source that is not here (a path relative to where the run trained) found at
    the absolute path the run recorded for it, as the main data is found."""
    entries = []
    for (entry, share), rec in zip(data.mixture, recorded, strict=True):
        file, was = qa_source(entry), rec.get("data_path") or rec.get("text_path")
        if not os.path.exists(file or entry) and was and os.path.exists(was):
            entry = QA_PREFIX + was if file is not None else was
        entries.append((entry, share))
    return dataclasses.replace(data, mixture=tuple(entries))


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


def run_tokenizer(run_dir: str) -> str | None:
    """The copy of its tokenizer a run keeps (RUN/tokenizer/tokenizer.json), if it keeps one."""
    path = os.path.join(run_dir, TOKENIZER_DIR, "tokenizer.json")
    return path if os.path.isfile(path) else None


def resolved(data: DataConfig, run_dirs: Iterable[str]) -> DataConfig:
    """`data` with its tokenizer the copy the first of `run_dirs` keeps (a run reads its text with the
    tokenizer it trained with, wherever the original went); its file found: as given (relative to
    here), else where the first of `run_dirs` that recorded it trained on it; and, split by hash, with
    the cuts the first of them recorded (so rows added since fall where their hash puts them, and no
    earlier prompt moves)."""
    run_dirs = list(run_dirs)
    if data.tokenizer != "byte":
        copies = [t for t in map(run_tokenizer, run_dirs) if t]
        data = dataclasses.replace(data, tokenizer=copies[0]) if copies else data
    records = [rec for rec in map(read, run_dirs) if rec]
    if data.mixture and records and len(records[0].get("mixture", [])) == len(data.mixture):  # (a built-in task too)
        data = _found_mixture(data, records[0]["mixture"])
    if data.data_path is None and data.text is None:
        return data
    if data.text is not None:  # a text corpus, found the same way
        found = [r["text_path"] for r in records if r.get("text_path") and os.path.exists(r["text_path"])]
        return dataclasses.replace(data, text=found[0]) if found and not os.path.exists(data.text) else data
    if not os.path.exists(data.data_path):
        found = [r["data_path"] for r in records if r.get("data_path") and os.path.exists(r["data_path"])]
        if found:
            data = dataclasses.replace(data, data_path=found[0])  # else reading fails with "not found"
    cuts = [r["split_cuts"] for r in records if r.get("split_cuts")]
    if hashed(data) and data.split_cuts is None and cuts:
        data = dataclasses.replace(data, split_cuts=tuple(cuts[0]))
    return data


def data_of(cfg: RunConfig) -> DataConfig:
    """`cfg.data` as the run (or the run it branches from) recorded it: its file found from here
    (a path given relative to another directory) and its hash cuts."""
    sources = [cfg.out_dir] + ([resolve_init_from(cfg, "branch_from")[0]] if cfg.branch_from else [])
    return resolved(cfg.data, sources)


def differences(saved: dict, now: dict) -> list[str]:
    """What changed between two records, in words; empty when nothing did."""
    out = []
    if saved.get("tokenizer") and saved["tokenizer"] != now.get("tokenizer"):
        out.append(f"the tokenizer has changed (sha256 {str(now.get('tokenizer', {}).get('sha256'))[:12]}..., "
                   f"{str(saved['tokenizer'].get('sha256'))[:12]}... when trained)")
    if saved.get("data_sha256") and saved["data_sha256"] != now.get("data_sha256"):
        out.append(f"{now.get('data_path') or saved.get('data_path')} has changed (sha256 "
                   f"{str(now.get('data_sha256'))[:12]}..., {saved['data_sha256'][:12]}... when trained)")
    if saved.get("text_fingerprint") and saved["text_fingerprint"] != now.get("text_fingerprint"):
        out.append(f"{now.get('text_path') or saved.get('text_path')} has changed (its files, their sizes, or their "
                   "first or last 64 KiB)")
    for was, is_ in zip(saved.get("mixture", []), now.get("mixture", []), strict=False):
        if was.get("text_fingerprint") != is_.get("text_fingerprint"):
            out.append(f"{is_.get('text_path')}, mixed into training, has changed (its files, their sizes, or their "
                       "first or last 64 KiB)")
        if was.get("data_sha256") != is_.get("data_sha256"):
            out.append(f"{is_.get('data_path')}, mixed into training, has changed (sha256 "
                       f"{str(is_.get('data_sha256'))[:12]}..., {str(was.get('data_sha256'))[:12]}... when trained)")
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
        held = all(saved["splits"].get(s) == now.get("splits", {}).get(s) for s in ("validation", "test"))
        why = ("Its validation and test splits are still the ones it held out (split by hash), but it did not "
               "train on this data" if held else "Its held-out splits are not the ones it held out")
        raise ConfigError(what, f"{run_dir} was trained on other data: {'; '.join(changes)}. {why}; pass "
                                "--allow-changed-data to go on anyway (results will say so)")
    return changes


def check_file(run_dirs: Iterable[str], allow: bool) -> list[str]:
    """For commands that read no examples (`serve`, `tune-stopping`): each run's data file, where it
    is still on this machine, must be the one it trained on (sha256 only; no splits are rebuilt).
    A file that is not here is no change: a serving machine holds no training data."""
    changes = []
    for run_dir in dict.fromkeys(run_dirs):
        saved = read(run_dir)
        path = saved and saved.get("data_path")
        if path and saved.get("data_sha256") and os.path.exists(path) \
                and fingerprint_path(path) != saved["data_sha256"]:
            changes.append(f"{run_dir}: {path} has changed since it trained")
        path = saved and saved.get("text_path")
        if path and saved.get("text_fingerprint") and os.path.exists(path) \
                and corpus_fingerprint(path) != saved["text_fingerprint"]:
            changes.append(f"{run_dir}: {path} has changed since it trained")
    if changes and not allow:
        raise ConfigError("data", f"{'; '.join(changes)}; what the runs recorded (validation EM at "
                                  "every stop) was measured on the data as it was. Pass --allow-changed-data to go on "
                                  "anyway")
    return changes

