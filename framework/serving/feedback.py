"""Feedback on served answers: `recoup serve --feedback-db PATH` records every completion it serves
in SQLite, and `POST /v1/feedback` attaches a verdict or a reference answer to one by its id.

    curl localhost:8000/v1/feedback -H 'Content-Type: application/json' \
         -d '{"id": "cmpl-...", "index": 0, "correct": true}'      # or "reference": "579"

What a completion's record holds (`completions`, one row per choice): its id and index, the
model, the time, the prompt as sent (a chat: its messages as JSON) and its token ids, max_tokens,
temperature and stop strings, the served text and finish reason, and the path that answered. A
cascade's record adds what `recoup ensemble reselect` needs to re-choose its rule from feedback
alone: the 1x model's own answer (also when escalated), whether it and the served answer ended
with EOS, the rule in force, and the 1x model's confidence under every signal. A feedback
(`feedback`, at most one per choice) is a verdict on the served text (`correct`) or the right
answer (`reference`).

One connection, used by one thread: every read and write runs on it in order, off the event loop
(so a feedback posted right after its completion finds the completion's record). The file is in
WAL mode with synchronous=FULL: a completion is answered, and a feedback acknowledged, only after
its transaction is committed to disk, and a kill -9 of the server loses neither.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from ensembles.cascade import SIGNALS
from framework.errors import ConfigError
from framework.serving import generation
from framework.serving.completions import MAX_PROMPTS, APIError, CompletionRequest

# A feedback body past this is refused with 413, before it is read in full: room for any valid one (a
# 4,096-character reference written as JSON escapes is at most 12 bytes a character).
MAX_BODY_BYTES = 64 * 1024
MAX_ID = 128  # characters of a completion id ("cmpl-" and 32 hex digits)
MAX_REFERENCE = 4096  # characters of a reference answer

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS completions (
    id TEXT NOT NULL, idx INTEGER NOT NULL, model TEXT NOT NULL, created REAL NOT NULL,
    prompt TEXT NOT NULL, prompt_tokens TEXT NOT NULL, max_tokens INTEGER NOT NULL, temperature REAL NOT NULL,
    stop TEXT NOT NULL, answer TEXT NOT NULL, finish_reason TEXT NOT NULL,
    path TEXT NOT NULL,  -- a cascade's "single" or "ensemble"; another model's combine
    ended INTEGER, first_answer TEXT, first_ended INTEGER, signal TEXT, tau REAL,  -- a cascade's, else NULL
    {", ".join(f"{name} REAL" for name in SIGNALS)},
    PRIMARY KEY (id, idx));
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT NOT NULL, idx INTEGER NOT NULL, created REAL NOT NULL,
    correct INTEGER, reference TEXT,  -- one of the two
    PRIMARY KEY (id, idx));
"""
COLUMNS = ("id", "idx", "model", "created", "prompt", "prompt_tokens", "max_tokens", "temperature", "stop", "answer",
           "finish_reason", "path", "ended", "first_answer", "first_ended", "signal", "tau", *SIGNALS)


class Feedback(NamedTuple):
    id: str  # the completion's id, as its response gave it
    index: int  # the choice (one per prompt of the request)
    correct: bool | None  # a verdict on the served text ...
    reference: str | None  # ... or the right answer


def connect(path: str) -> sqlite3.Connection:
    """The database at `path` (created if new) in WAL mode; a clear error if it cannot be."""
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
    except sqlite3.Error as e:
        raise ConfigError("feedback_db", f"cannot open {path} as an SQLite database ({e})") from None
    if mode.lower() != "wal":
        raise ConfigError("feedback_db", f"{path}: SQLite could not use WAL mode there (journal mode {mode})")
    return db


class FeedbackStore:
    """The completions served and the feedback on them: one connection, used by one thread in order."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.db = connect(self.path)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recoup-feedback")

    async def run(self, fn, *args):
        """`fn(*args)` on the database thread, awaited without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def record(self, rows: list[tuple]) -> None:
        """Insert one completion's rows (`completion_rows`) in one transaction."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(f"INSERT INTO completions ({', '.join(COLUMNS)}) VALUES "
                                f"({', '.join('?' * len(COLUMNS))})", rows)

    def add(self, fb: Feedback) -> str:
        """Store a feedback: "ok"; "again" (this very feedback is stored already: a client's retry after a
        lost answer, which must not read as a refusal); "unknown" (no such completion) or "duplicate" (it
        has another one, which stands)."""
        correct = None if fb.correct is None else int(fb.correct)
        try:
            cur = self.db.execute(
                "INSERT INTO feedback (id, idx, created, correct, reference) SELECT ?, ?, ?, ?, ? "
                "WHERE EXISTS (SELECT 1 FROM completions WHERE id = ? AND idx = ?)",
                (fb.id, fb.index, time.time(), correct, fb.reference, fb.id, fb.index))
        except sqlite3.IntegrityError:
            stored = self.db.execute("SELECT correct, reference FROM feedback WHERE id = ? AND idx = ?",
                                     (fb.id, fb.index)).fetchone()
            return "again" if tuple(stored) == (correct, fb.reference) else "duplicate"
        return "ok" if cur.rowcount == 1 else "unknown"

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.db.close()


def completion_rows(completion_id: str, req: CompletionRequest, done: list[generation.Completion],
                    now: float) -> list[tuple]:
    """The `completions` rows of one response, in COLUMNS' order."""
    rows = []
    for i, (row, c) in enumerate(zip(req.rows, done, strict=True)):
        r = c.route
        cascade = ((int(r.ended), r.first_text, int(r.first_ended), r.signal, r.tau,
                    *(r.confidence[name] for name in SIGNALS)) if r else (None,) * (5 + len(SIGNALS)))
        rows.append((completion_id, i, req.model.id, now, req.texts[i] if i < len(req.texts) else "",
                     json.dumps(list(row.prompt)), row.max_tokens, row.temperature, json.dumps(req.stops), c.text,
                     c.finish_reason, r.path if r else req.model.combine, *cascade))
    return rows


def parse_feedback(body: Any) -> Feedback:
    """A decoded feedback body, checked: {"id", "index" (default 0), and "correct" (bool) or "reference" (str)}."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    for name in body:
        if name not in ("id", "index", "correct", "reference"):
            raise APIError(400, f"unrecognized request argument supplied: {name}", name, "unknown_parameter")
    cid = body.get("id")
    if not (isinstance(cid, str) and 0 < len(cid) <= MAX_ID):
        raise APIError(400, f"id is required: the completion's id, a string of at most {MAX_ID} characters", "id")
    index = body.get("index", 0)
    if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < MAX_PROMPTS):
        raise APIError(400, f"index must be the choice's index, an integer from 0 to {MAX_PROMPTS - 1}", "index")
    correct, reference = body.get("correct"), body.get("reference")
    if (correct is None) == (reference is None):
        raise APIError(400, "give one of correct (true or false: was the served answer right?) or reference "
                            "(the right answer)", "correct" if correct is not None else "reference")
    if correct is not None and not isinstance(correct, bool):
        raise APIError(400, f"correct must be true or false, got {correct!r}", "correct")
    if reference is not None:
        if not (isinstance(reference, str) and len(reference) <= MAX_REFERENCE):
            raise APIError(400, f"reference must be a string of at most {MAX_REFERENCE} characters", "reference")
        try:
            reference.encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, "reference is not valid Unicode text", "reference") from None
    return Feedback(cid, index, correct, reference)


def read_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})") from None


# == reading it back (recoup ensemble reselect) ==================================================


def read(path: str, model: str) -> list[dict[str, Any]]:
    """Every completion of `model` that has a feedback, oldest first, as dicts (COLUMNS, plus the
    feedback's `correct` and `reference`). Opened read-only: a running server may go on writing."""
    if not os.path.isfile(path):
        raise ConfigError("feedback", f"{path} does not exist (the --feedback-db of a recoup serve)")
    try:
        db = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True, timeout=30)
        db.row_factory = sqlite3.Row
        cols = ", ".join(f"c.{c}" for c in COLUMNS)
        rows = db.execute(f"SELECT {cols}, f.correct AS correct, f.reference AS reference FROM completions c "
                          "JOIN feedback f ON f.id = c.id AND f.idx = c.idx WHERE c.model = ? "
                          "ORDER BY c.created, c.id, c.idx", (model,)).fetchall()
    except sqlite3.Error as e:
        raise ConfigError("feedback", f"cannot read {path} as recoup serve's feedback database ({e})") from None
    out = [dict(r) for r in rows]
    db.close()
    return out


def reselect_cascade(ens_dir: str, db_path: str, write: bool = True, log=print) -> dict[str, Any]:
    """`recoup ensemble reselect`: re-choose a cascade's rule from the feedback on its served answers
    (`ensembles.reselect`), and write it into the manifest when it is better with confidence.

    The rows read are the cascade's (served under its directory's name) that have a feedback, and
    of them only greedy ones (temperature 0) without stop strings, whose recorded answers are what
    greedy decoding gives (a sampled answer says nothing of the rule's greedy one). The ensemble's
    answer to a row that was not escalated is decoded here from the recorded prompt and max_tokens."""
    from ensembles import artifact
    from ensembles import reselect as rs

    manifest = artifact.load_manifest(ens_dir)
    if manifest["combine"] != "cascade":
        raise ConfigError("ensemble", f"{ens_dir} is a {manifest['method']} ensemble, not a cascade: only a cascade "
                                      "has a rule to re-choose")
    c = artifact.cascade_of(manifest)
    records = read(db_path, generation.served_id(ens_dir))
    cascade_rows = [r for r in records if r["path"] in ("single", "ensemble")]
    greedy = [r for r in cascade_rows if r["temperature"] == 0 and json.loads(r["stop"]) == []]
    unescalated = [r for r in greedy if r["path"] == "single"]
    decoded: list[tuple[str, bool]] = []
    if unescalated:
        log(f"decoding the ensemble's answers to {len(unescalated)} prompts the 1x model answered")
        fallback = generation.load(ens_dir).cascade.fallback
        decoded = generation.answers(fallback, [generation.Row(tuple(json.loads(r["prompt_tokens"])), r["max_tokens"])
                                                for r in unescalated], generation.Buckets())
    ensemble = dict(zip(((r["id"], r["idx"]) for r in unescalated), decoded, strict=True))
    rows = [rs.Row({s: r[s] for s in SIGNALS}, rs.Answer(r["first_answer"], bool(r["first_ended"])),
                   rs.Answer(r["answer"], bool(r["ended"])) if r["path"] == "ensemble"
                   else rs.Answer(*ensemble[r["id"], r["idx"]]),
                   r["path"], None if r["correct"] is None else bool(r["correct"]), r["reference"]) for r in greedy]
    report = rs.reselect(rows, rs.Rule(c.signal, c.tau), c.k, float(manifest["budgets"]["max_cost"]))
    report["rows"] = {"with_feedback": len(records), "not_cascade_rows": len(records) - len(cascade_rows),
                      "sampled_or_stop_strings": len(cascade_rows) - len(greedy), **report["rows"],
                      "ensemble_decoded": len(decoded)}
    report |= {"ensemble": ens_dir, "feedback_db": db_path, "written": False}
    if report["switch"] and write:
        new = report["chosen"]
        artifact.set_cascade_rule(ens_dir, new["signal"], float(new["tau"]), new["escalation_rate"],
                                  {"chosen_on": "feedback", "feedback_db": os.path.abspath(db_path),
                                   "reason": report["reason"], "rows": report["rows"], "confirm": report["confirm"]})
        report["written"] = True
    return report
