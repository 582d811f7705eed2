"""Feedback through kills: `recoup serve --feedback-db` killed with SIGKILL in the middle of a load
of completions and feedbacks (harness.feedback_load), again and again, and started again on the
same file each time (`kill_rounds`; the recipe is experiments/chaos_feedback.py).

After each kill, the file as the kill left it (`read_db`) is judged against what the clients were
told (`compare`): SQLite's integrity_check passes, every feedback acknowledged with a 200 is there
with its value, none is there twice or without having been posted, and every completion answered
with a 200 is recorded. After each restart, `probes` are posts whose answers are known in advance:
the feedbacks held back on answered completions (200: a completion is recorded before it is
answered, so it takes feedback after a kill), the ones posted when the kill came, posted again
(200 either way: a retry of a stored feedback is answered as the first post was, and it is
stored once), a second, different feedback on acknowledged ones (409, and the first one stands)
and unknown ids or choices (404).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from harness.feedback_load import Ledger, start, stored_value
from harness.served import Served, recoup_serve

Key = tuple[str, int]  # (completion id, choice index)


class DbState(NamedTuple):
    """A --feedback-db file as read back, read-only."""

    feedback: dict[Key, tuple[int | None, str | None]]  # -> (correct, reference)
    rows: int  # feedback rows: more than len(feedback) only if a choice had two
    completions: set[str]  # the completion ids recorded
    integrity: str  # PRAGMA integrity_check, its lines joined: "ok" when sound


def read_db(path: str) -> DbState:
    db = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True, timeout=30)
    try:
        integrity = "; ".join(line for (line,) in db.execute("PRAGMA integrity_check"))
        # Read in full (no index): a damaged primary key index must not hide a row stored twice.
        rows = db.execute("SELECT id, idx, correct, reference FROM feedback NOT INDEXED").fetchall()
        completions = {cid for (cid,) in db.execute("SELECT DISTINCT id FROM completions")}
    finally:
        db.close()
    return DbState({(cid, idx): (correct, ref) for cid, idx, correct, ref in rows}, len(rows), completions,
                   integrity)


def compare(db: DbState, known: dict[str, dict], in_doubt: dict[str, dict], answered: Iterable[str]) -> dict[str, Any]:
    """`db` against what the clients were told. `known`: every feedback acknowledged so far (completion id ->
    body); `in_doubt`: posted without an answer (there or not, but with its own value if there);
    `answered`: the completions answered with a 200. Every list in the result is a failure."""
    expected = {(cid, 0): stored_value(b) for cid, b in known.items()}
    maybe = {(cid, 0): stored_value(b) for cid, b in in_doubt.items()}
    answered = set(answered)
    return {
        "integrity": db.integrity,
        "lost": sorted(cid for cid, idx in expected if (cid, idx) not in db.feedback),
        "wrong": sorted(k[0] for k, v in {**maybe, **expected}.items() if k in db.feedback and db.feedback[k] != v),
        "never_posted": sorted(k for k in db.feedback if k not in expected and k not in maybe),
        "stored_twice": db.rows - len(db.feedback),
        "answered_not_recorded": sorted(answered - db.completions),
        "without_completion": sorted(k for k in db.feedback if k[0] not in db.completions),
        "in_doubt_stored": sum(k in db.feedback for k in maybe),
        "recorded_never_answered": len(db.completions - answered),  # in flight at a kill: nobody has the id
    }


def failures(c: dict[str, Any]) -> list[str]:
    """`compare`'s findings as lines; none when the file holds exactly what it should."""
    out = [] if c["integrity"] == "ok" else [f"integrity_check: {c['integrity']}"]
    for name, why in (("lost", "acknowledged feedback missing"), ("wrong", "feedback stored with another value"),
                      ("never_posted", "feedback stored that no client posted"),
                      ("answered_not_recorded", "completions answered but not recorded"),
                      ("without_completion", "feedback without its completion")):
        if c[name]:
            out.append(f"{len(c[name])} {why} (e.g. {c[name][0]})")
    if c["stored_twice"]:
        out.append(f"{c['stored_twice']} feedback rows stored twice")
    return out


# What is posted after a restart, by kind, and the status each must get (see the module's docstring).
PROBES = {"held back": 200, "in doubt, stored": 200, "in doubt, not stored": 200, "second feedback": 409,
          "unknown id": 404, "unknown choice": 404}


class Probe(NamedTuple):
    kind: str  # one of PROBES
    body: dict  # the feedback posted


def probes(db: DbState, held: dict[str, dict], in_doubt: dict[str, dict], known: dict[str, dict],
           rng: random.Random, n_second: int = 20, n_unknown: int = 5) -> list[Probe]:
    """The posts to make after a restart, each with the status it must get (see the module's docstring).
    `db`: the file as the kill left it; `known`: the feedbacks acknowledged before the kill."""
    out = [Probe("held back", b) for b in held.values()]
    out += [Probe("in doubt, stored" if (cid, 0) in db.feedback else "in doubt, not stored", b)
            for cid, b in in_doubt.items()]
    ids = sorted(known)
    out += [Probe("second feedback", {"id": cid, "reference": "a second opinion"})
            for cid in rng.sample(ids, min(n_second, len(ids)))]
    out += [Probe("unknown id", {"id": f"cmpl-{rng.getrandbits(128):032x}", "correct": True}) for _ in range(n_unknown)]
    out += [Probe("unknown choice", {"id": cid, "index": 1, "correct": False})
            for cid in rng.sample(ids, min(n_unknown, len(ids)))]
    return out


def settle(sent: Sequence[Probe], statuses: Sequence[int]) -> tuple[Counter, list[str], dict[str, dict]]:
    """Probes and the statuses they got -> (count by (kind, status), a line for each status not the one
    expected, the feedbacks now stored: held back or in doubt, answered 200 or 409)."""
    tally: Counter = Counter()
    wrong, stored = [], {}
    for p, status in zip(sent, statuses, strict=True):
        tally[p.kind, status] += 1
        if status != PROBES[p.kind]:
            wrong.append(f"{p.kind} {p.body}: {status}, not {PROBES[p.kind]}")
        if p.kind in ("held back", "in doubt, stored", "in doubt, not stored") and status in (200, 409):
            stored[p.body["id"]] = p.body
    return tally, wrong, stored


def post(url: str, sent: Sequence[Probe]) -> list[int]:
    import httpx

    with httpx.Client(base_url=url, timeout=60) as c:
        return [c.post("/v1/feedback", json=p.body).status_code for p in sent]


def load_then_kill(server: Served, model: str, prompts: Sequence[str], rng: random.Random, max_kill_s: float,
                   concurrency: int, hold_every: int) -> tuple[Ledger, dict[str, Any]]:
    """Completions and feedbacks from `concurrency` clients, until the server is SIGKILLed at a random
    moment, 0 to `max_kill_s` seconds after its first answer; the ledger and when the kill came."""
    load, ledger = start(server.url, model, prompts, n=10**9, concurrency=concurrency, hold_every=hold_every)
    clients = threading.Thread(target=asyncio.run, args=(load,), name="feedback-load", daemon=True)
    clients.start()
    deadline = time.monotonic() + 300
    while not ledger.answered:
        if time.monotonic() > deadline or not clients.is_alive():
            raise RuntimeError(f"the load got no answer from the server: {dict(ledger.statuses)}")
        time.sleep(0.01)
    after = rng.uniform(0.0, max_kill_s)
    time.sleep(after)
    answered, loading = len(ledger.answered), clients.is_alive()
    os.kill(server.proc.pid, signal.SIGKILL)
    code = server.proc.wait(30)
    clients.join(300)
    if clients.is_alive():
        raise RuntimeError("the load's clients did not stop after the server was killed")
    return ledger, {"kill_after_s": after, "answered_at_kill": answered, "mid_load": loading, "exit": code}


def kill_rounds(path: str, serve_args: Sequence[str], db_path: str, prompts: Sequence[str], rounds: int, seed: int,
                max_kill_s: float = 5.0, concurrency: int = 32, hold_every: int = 5,
                log_dir: str | None = None) -> dict[str, Any]:
    """Serve `path` with --feedback-db `db_path` (a new file), load and SIGKILL it `rounds` times,
    restarting it on the same file after each; check the file after each kill and the probes after
    each restart, and the file once more after a clean stop at the end. Returns every count, by
    round, and `failures` (empty when all held)."""
    from framework.serving.generation import served_id

    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            os.remove(db_path + suffix)
    rng = random.Random(seed)
    model = served_id(path)
    args = ("--feedback-db", db_path, *serve_args)
    known: dict[str, dict] = {}  # acknowledged (or settled after a restart): must be there, as posted
    answered: set[str] = set()
    pending: tuple[DbState, Ledger] | None = None  # the last kill's file and ledger, to probe after the restart
    out: list[dict[str, Any]] = []
    failed: list[str] = []
    t = time.perf_counter()
    for i in range(rounds + 1):
        log = os.path.join(log_dir, f"serve-{i}.log") if log_dir else None
        with recoup_serve([path], *args, log_path=log) as server:
            if pending:
                db, ledger = pending
                sent = probes(db, ledger.held, ledger.in_doubt, known, rng)
                tally, wrong, stored = settle(sent, post(server.url, sent))
                known |= stored
                out[-1] |= {"ready_s": server.ready_s, "probes": {f"{k}: {s}": n for (k, s), n in tally.items()}}
                failed += [f"round {i}, after the restart: {line}" for line in wrong]
            if i == rounds:
                break
            ledger, kill = load_then_kill(server, model, prompts, rng, max_kill_s, concurrency, hold_every)
        answered |= set(ledger.answered)
        known |= ledger.acked
        db = read_db(db_path)
        c = compare(db, known, ledger.in_doubt, answered)
        failed += [f"round {i + 1}, after the kill: {line}" for line in failures(c)]
        if ledger.refused:
            failed.append(f"round {i + 1}: feedback refused during the load: {Counter(ledger.refused.values())}")
        if kill["exit"] != -signal.SIGKILL or not kill["mid_load"]:
            failed.append(f"round {i + 1}: not killed mid-load (exit status {kill['exit']}; the clients "
                          f"{'were' if kill['mid_load'] else 'had stopped'}: {dict(ledger.statuses)})")
        out.append({**kill, "answered": len(ledger.answered), "acked": len(ledger.acked),
                    "in_doubt": len(ledger.in_doubt), "held": len(ledger.held),
                    "statuses": {f"{k} {s}": n for (k, s), n in ledger.statuses.items()}, **c})
        pending = db, ledger
    final = compare(read_db(db_path), known, {}, answered)  # after a clean stop: exactly the known feedbacks
    failed += [f"at the end: {line}" for line in failures(final)]
    return {"rounds": out, "final": final, "feedback_stored": len(known), "completions_answered": len(answered),
            "seconds": time.perf_counter() - t, "failures": failed, "model": model}
