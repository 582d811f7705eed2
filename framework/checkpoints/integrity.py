"""Files that survive crashes, and checksums that prove a checkpoint is the one that was written.

Orbax writes a step into a temporary directory and renames it when complete, so a kill never
leaves a half-written step listed. It does not notice bytes changed or cut short afterwards (a
failing disk, an interrupted copy between machines, a hand edit): a restore would read garbage or
fail deep inside tensorstore. So every finished step is *sealed* with the size and sha256 of each
of its files, and every load checks the files it reads against the seal.

A step without a seal (saved by an older recoup, or finished just before a kill that came before
the seal was written) is trusted as Orbax's atomic rename left it, and sealed when its run resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable

from framework.errors import ConfigError, RecoupError

_CHUNK = 1 << 20


class CorruptCheckpoint(RecoupError):
    """A saved checkpoint whose files no longer match their seal."""

    def __init__(self, path: str, file: str, problem: str):
        self.path, self.file = path, file
        super().__init__("checkpoint", f"{path} is corrupt: {file} {problem}")


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` so that a crash leaves either the old file or the new one, never half."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(root: str) -> list[str]:
    """Every file under `root`, as sorted paths relative to it."""
    found = []
    for here, _, names in os.walk(root):
        found += [os.path.relpath(os.path.join(here, n), root) for n in names]
    return sorted(found)


def seal(root: str, record: str) -> None:
    """Record the size and sha256 of every file under the directory `root` in the JSON file `record`."""
    files = {rel: {"bytes": os.path.getsize(os.path.join(root, rel)), "sha256": _sha256(os.path.join(root, rel))}
             for rel in _files(root)}
    os.makedirs(os.path.dirname(record), exist_ok=True)
    write_atomic(record, json.dumps({"files": files}, indent=1, sort_keys=True))


def verify(root: str, record: str, items: Iterable[str] | None = None) -> bool:
    """Check the files under `root` against the seal in `record`; False when there is no seal.

    `items` limits the check to those top-level subdirectories (plus the files directly in `root`),
    e.g. only `params` when only the weights are read. Raises CorruptCheckpoint naming the first
    file that is missing, of another size, or of other content.
    """
    if not os.path.isfile(record):
        return False
    try:
        with open(record) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as e:
        raise CorruptCheckpoint(root, os.path.basename(record), f"(its seal) is unreadable: {e}") from None
    wanted = None if items is None else set(items)
    for rel, want in files.items():
        top = rel.split(os.sep, 1)
        if wanted is not None and len(top) > 1 and top[0] not in wanted:
            continue
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            raise CorruptCheckpoint(root, rel, "is missing")
        size = os.path.getsize(path)
        if size != want["bytes"]:
            raise CorruptCheckpoint(root, rel, f"has {size:,} bytes, {want['bytes']:,} when it was saved "
                                               f"({'truncated' if size < want['bytes'] else 'grown'})")
        if _sha256(path) != want["sha256"]:
            raise CorruptCheckpoint(root, rel, "has changed since it was saved (sha256 differs)")
    return True


def read_metrics(path: str, field: str) -> list[tuple[str, dict]]:
    """(line, record) of each line of a metrics.jsonl. A torn last line (a kill while it was being
    written; a resumed run redoes what it said) is left out; any other line that is not JSON is a
    ConfigError on `field`."""
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    out = []
    for i, ln in enumerate(lines):
        try:
            out.append((ln, json.loads(ln)))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ConfigError(field, f"{path} line {i + 1} is not JSON; the metrics file was edited or "
                                     "damaged, not cut short by a crash") from None
    return out
