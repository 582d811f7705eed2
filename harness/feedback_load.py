"""Feedback under load: completions and `POST /v1/feedback` from many concurrent asyncio clients, and
whether the server's --feedback-db holds exactly what it acknowledged (`feedback_load`).

Each client takes a prompt, asks for its completion, and posts a feedback on it at once (a verdict
or a reference, alternately), so that completions and feedbacks interleave across clients and a
feedback often arrives right after its completion was answered. What the clients were told goes
in a `Ledger`, and what the server may not have finished (a feedback posted when it was killed)
is kept apart from what it acknowledged. Used by tests/test_serving.py (small), tests/test_feedback.py
(2,000 posts at concurrency 32, and a kill -9 in the middle) and harness/feedback_chaos.py (kills
again and again, `python -m experiments.chaos feedback`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections import Counter
from collections.abc import Coroutine, Sequence
from typing import Any


@dataclasses.dataclass
class Ledger:
    """What a load saw, by completion id (every request asks for one completion: choice 0)."""

    answered: list[str] = dataclasses.field(default_factory=list)  # completions answered 200, in order
    acked: dict[str, dict] = dataclasses.field(default_factory=dict)  # feedback answered 200: id -> body
    in_doubt: dict[str, dict] = dataclasses.field(default_factory=dict)  # posted, no answer (the server went)
    held: dict[str, dict] = dataclasses.field(default_factory=dict)  # not posted (`hold_every`): for later
    refused: dict[str, int] = dataclasses.field(default_factory=dict)  # answered otherwise: id -> status
    statuses: Counter = dataclasses.field(default_factory=Counter)  # (kind, status or transport error) -> n


def body_of(cid: str, i: int) -> dict:
    """The feedback on the i-th completion of a load: a verdict or a reference, alternately."""
    return {"id": cid, "correct": i % 3 == 0} if i % 2 else {"id": cid, "reference": str(i)}


def stored_value(body: dict) -> tuple[int | None, str | None]:
    """A feedback body as its row stores it: (correct, reference)."""
    return None if "correct" not in body else int(body["correct"]), body.get("reference")


async def _drive(url: str, model: str, prompts: Sequence[str], n: int, concurrency: int, ledger: Ledger,
                 headers: dict, hold_every: int) -> None:
    import httpx

    todo = iter(range(n))

    async def client(c: httpx.AsyncClient) -> None:
        for i in todo:
            kind = "completion"
            try:
                r = await c.post("/v1/completions", json={"model": model, "prompt": prompts[i % len(prompts)],
                                                          "max_tokens": 6})
                ledger.statuses[kind, r.status_code] += 1
                if r.status_code != 200:
                    continue
                cid = r.json()["id"]
                ledger.answered.append(cid)
                fb = body_of(cid, i)
                if hold_every and i % hold_every == 0:
                    ledger.held[cid] = fb
                    continue
                kind = "feedback"
                ledger.in_doubt[cid] = fb  # until its answer comes
                r = await c.post("/v1/feedback", json=fb)
                del ledger.in_doubt[cid]
                ledger.statuses[kind, r.status_code] += 1
                if r.status_code == 200:
                    ledger.acked[cid] = fb
                else:
                    ledger.refused[cid] = r.status_code
            except httpx.TransportError as e:  # the server went (a kill): what it acknowledged is what counts
                ledger.statuses[kind, type(e).__name__] += 1
                return

    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers,
                                 limits=httpx.Limits(max_connections=concurrency)) as c:
        await asyncio.gather(*(client(c) for _ in range(concurrency)))


def start(url: str, model: str, prompts: Sequence[str], n: int = 2000, concurrency: int = 32,
          api_key: str | None = None, hold_every: int = 0) -> tuple[Coroutine, Ledger]:
    """The load as a coroutine to run (`asyncio.run`), and the ledger it fills as it goes. With
    `hold_every` k, the feedback on every k-th completion is not posted but kept in `ledger.held`."""
    ledger = Ledger()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return _drive(url, model, prompts, n, concurrency, ledger, headers, hold_every), ledger


def check(db_path: str, acked: dict[str, dict]) -> dict[str, Any]:
    """What the database holds against what the server acknowledged: every acknowledged feedback is
    there with its value and its completion's record, and the file passes SQLite's integrity_check."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        stored = {cid: (correct, reference) for cid, correct, reference in
                  db.execute("SELECT id, correct, reference FROM feedback WHERE idx = 0")}
        recorded = {cid for (cid,) in db.execute("SELECT id FROM completions")}
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()
    lost = [cid for cid in acked if cid not in stored]
    wrong = [cid for cid, fb in acked.items() if cid in stored and stored[cid] != stored_value(fb)]
    return {"acknowledged": len(acked), "stored": len(stored), "lost": lost, "wrong": wrong,
            "without_completion": sorted(set(stored) - recorded), "completions_recorded": len(recorded),
            "integrity": integrity}


def feedback_load(url: str, db_path: str, model: str, prompts: Sequence[str], n: int = 2000,
                  concurrency: int = 32, api_key: str | None = None) -> dict[str, Any]:
    """`n` completions each followed by its feedback, from `concurrency` clients; then `check`."""
    load, ledger = start(url, model, prompts, n, concurrency, api_key)
    asyncio.run(load)
    return {**check(db_path, ledger.acked), "statuses": {f"{k[0]} {k[1]}": v for k, v in ledger.statuses.items()}}
