"""Feedback under load: completions and `POST /v1/feedback` from many concurrent asyncio clients, and
whether the server's --feedback-db holds exactly what it acknowledged (`feedback_load`).

Each client takes a prompt, asks for its completion, and posts a feedback on it at once (a verdict
or a reference, alternately), so that completions and feedbacks interleave across clients and a
feedback often arrives right after its completion was answered. Used by tests/test_serving.py
(small) and tests/test_feedback.py (2,000 posts at concurrency 32, and a kill -9 in the middle).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Coroutine, Sequence
from typing import Any


async def _drive(url: str, model: str, prompts: Sequence[str], n: int, concurrency: int, acked: dict,
                 statuses: Counter, headers: dict) -> None:
    import httpx

    todo = iter(range(n))

    async def client(c: httpx.AsyncClient) -> None:
        for i in todo:
            try:
                r = await c.post("/v1/completions", json={"model": model, "prompt": prompts[i % len(prompts)],
                                                          "max_tokens": 6})
                statuses["completion", r.status_code] += 1
                if r.status_code != 200:
                    continue
                cid = r.json()["id"]
                fb = {"id": cid, "correct": i % 3 == 0} if i % 2 else {"id": cid, "reference": str(i)}
                r = await c.post("/v1/feedback", json=fb)
                statuses["feedback", r.status_code] += 1
                if r.status_code == 200:
                    acked[cid] = fb
            except httpx.TransportError as e:  # the server went (a kill): what it acknowledged is what counts
                statuses["transport", type(e).__name__] += 1
                return

    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers,
                                 limits=httpx.Limits(max_connections=concurrency)) as c:
        await asyncio.gather(*(client(c) for _ in range(concurrency)))


def start(url: str, model: str, prompts: Sequence[str], n: int = 2000, concurrency: int = 32,
          api_key: str | None = None) -> tuple[Coroutine, dict, Counter]:
    """The load as a coroutine to run (`asyncio.run`), and the dicts it fills: the feedbacks the
    server acknowledged (completion id -> body) and the statuses seen."""
    acked: dict[str, dict] = {}
    statuses: Counter = Counter()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return _drive(url, model, prompts, n, concurrency, acked, statuses, headers), acked, statuses


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
    wrong = [cid for cid, fb in acked.items() if cid in stored and stored[cid] != (
        None if "correct" not in fb else int(fb["correct"]), fb.get("reference"))]
    return {"acknowledged": len(acked), "stored": len(stored), "lost": lost, "wrong": wrong,
            "without_completion": sorted(set(stored) - recorded), "completions_recorded": len(recorded),
            "integrity": integrity}


def feedback_load(url: str, db_path: str, model: str, prompts: Sequence[str], n: int = 2000,
                  concurrency: int = 32, api_key: str | None = None) -> dict[str, Any]:
    """`n` completions each followed by its feedback, from `concurrency` clients; then `check`."""
    load, acked, statuses = start(url, model, prompts, n, concurrency, api_key)
    asyncio.run(load)
    return {**check(db_path, acked), "statuses": {f"{k[0]} {k[1]}": v for k, v in statuses.items()}}
