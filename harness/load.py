"""A load with faults for a served recoup: mixed requests from many concurrent asyncio clients
(greedy, sampled, with stop strings, invalid bodies, clients that disconnect mid-request), and
what the server must have done afterwards (`failures`).

Used by tests/test_serving.py (small) and experiments/chaos_serving.py (2,000 requests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

MAX_TOKENS = (2, 5, 9, 16)  # what valid requests ask for (16: the largest new-token bucket served here)
N_PROMPTS = 8  # distinct prompts, so that every greedy answer has a reference from the idle server
# Flat memory: the server's RSS (about 0.5 GB, nearly all JAX and the compiled programs) grows by
# less than this from the first tenth of the load to the last. Keeping anything per request (a
# future, a body, a metrics label) at 10 kB over 2,000 requests is 20 MB; the allocator's noise
# between two windows measured here is a few MB.
RSS_GROWTH_LIMIT_MB = 20.0
SHARES = {"greedy": 0.45, "sampled": 0.2, "stop": 0.15, "invalid": 0.15, "disconnect": 0.05}


def invalid_bodies(model: str) -> list[tuple[bytes | dict, int]]:
    """(body, the status it must get): one of each way a request can be wrong."""
    return [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b'{"model": "%s", "prompt": "1+\\ud800="}' % model.encode(), 400),
        ({"model": "no-such-model", "prompt": "1+1="}, 404),
        ({"prompt": "1+1="}, 400),
        ({"model": model, "prompt": ""}, 400),
        ({"model": model, "prompt": "1+1=", "max_tokens": 0}, 400),
        ({"model": model, "prompt": "1+1=", "max_tokens": 10**6}, 400),
        ({"model": model, "prompt": "9" * 5000}, 400),  # past any context recoup trains (max_seq_len 1024 by default)
        ({"model": model, "prompt": "1+1=", "temperature": -1}, 400),
        ({"model": model, "prompt": "1+1=", "n": 2}, 400),
        ({"model": model, "prompt": "1+1=", "stream": True}, 400),
        ({"model": model, "prompt": "1+1=", "frobnicate": 1}, 400),
    ]


class Disconnect(Exception):
    """Raised from httpx's trace hook once the request is sent: the client goes without its answer."""


class Call(NamedTuple):
    kind: str  # a key of SHARES
    body: bytes | dict
    expect: int | None  # invalid: the status it must get (greedy answers are checked against references)


def plan(models: Sequence[str], prompts: Sequence[str], n: int, seed: int = 0) -> list[Call]:
    """n requests drawn from SHARES, each kind spread over the models, prompts and max_tokens."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(list(SHARES), size=n, p=list(SHARES.values()))
    calls = []
    for kind in kinds:
        model = str(rng.choice(models))
        some = [str(p) for p in rng.choice(prompts, size=int(rng.integers(1, 4)))]
        body: dict[str, Any] = {"model": model, "prompt": some[0] if len(some) == 1 else some,
                                "max_tokens": int(rng.choice(MAX_TOKENS))}
        if kind == "invalid":
            bad = invalid_bodies(model)
            body, status = bad[rng.integers(len(bad))]
            calls.append(Call(kind, body, status))
            continue
        if kind == "sampled":
            body["temperature"] = round(float(rng.uniform(0.3, 1.5)), 2)
            if rng.random() < 0.5:
                body["seed"] = int(rng.integers(2**31))
        if kind == "stop":
            body["stop"] = [["0"], ["1", "5"], ["+", "9"], ["7"]][rng.integers(4)]
        calls.append(Call(str(kind), body, None))
    return calls


async def references(client, models: Sequence[str], prompts: Sequence[str]) -> dict[tuple, tuple[str, str]]:
    """(model, prompt, max_tokens) -> (text, finish_reason), greedy, from the idle server."""
    refs = {}
    for model in models:
        for m in MAX_TOKENS:
            r = await client.post("/v1/completions", json={"model": model, "prompt": list(prompts), "max_tokens": m})
            if r.status_code != 200:
                raise SystemExit(f"the idle server refused a reference request: {r.status_code} {r.text}")
            for p, c in zip(prompts, r.json()["choices"], strict=True):
                refs[model, p, m] = (c["text"], c["finish_reason"])
    return refs


def expected_texts(body: dict, refs: dict) -> list[str]:
    from framework.serving.generation import Completion, apply_stop

    prompts = [body["prompt"]] if isinstance(body["prompt"], str) else body["prompt"]
    answers = [refs[body["model"], p, body["max_tokens"]] for p in prompts]
    return [apply_stop(Completion(text, reason, 0), body.get("stop", [])).text for text, reason in answers]


_SAMPLE = re.compile(r'^recoup_requests_total\{endpoint="/v1/completions",status="(\d+)"\} (\S+)$', re.M)


def served_statuses(metrics_text: str) -> Counter:
    """/metrics: /v1/completions requests the server has finished, by status."""
    return Counter({int(s): int(float(v)) for s, v in _SAMPLE.findall(metrics_text)})


def rows_waiting(metrics_text: str) -> float:
    return float(re.search(r"^recoup_queue_rows (\S+)$", metrics_text, re.M).group(1))


async def sample_rss(pid: int, samples: list[tuple[float, float]], every: float = 0.5) -> None:
    """(seconds, RSS in MB) of process `pid`, every `every` seconds until cancelled."""
    import psutil  # an orbax-checkpoint dependency, so always installed with recoup

    proc = psutil.Process(pid)
    while True:
        samples.append((time.perf_counter(), proc.memory_info().rss / 2**20))
        await asyncio.sleep(every)


@dataclasses.dataclass
class Tally:
    """What the clients saw."""

    statuses: Counter = dataclasses.field(default_factory=Counter)
    errors: Counter = dataclasses.field(default_factory=Counter)  # transport errors by type, disconnects aside
    latencies: list[float] = dataclasses.field(default_factory=list)  # seconds, valid requests answered 200
    wrong: list[str] = dataclasses.field(default_factory=list)  # answers that are not what they should be
    disconnects: int = 0  # clients that went once their body was sent, without their answer


async def send(client, call: Call, refs: dict, tally: Tally) -> None:
    """One request, and what its answer says about the server."""
    import httpx

    kwargs: dict[str, Any] = ({"content": call.body, "headers": {"content-type": "application/json"}}
                              if isinstance(call.body, bytes) else {"json": call.body})
    if call.kind == "disconnect":  # its body sent, it closes the connection at once, unanswered

        async def trace(event: str, info) -> None:
            # At once: a tiny model answers in about 10 ms, while this process's busy event loop
            # (32 clients on a shared CPU) adds tens of ms to any sleep here.
            if event == "http11.receive_response_headers.started":
                raise Disconnect

        try:
            await client.post("/v1/completions", extensions={"trace": trace}, **kwargs)
        except Disconnect:  # httpcore closes the connection: the server sees the client go
            tally.disconnects += 1
        except httpx.TransportError as e:
            tally.errors[type(e).__name__] += 1
        return
    t = time.perf_counter()
    try:
        r = await client.post("/v1/completions", **kwargs)
    except httpx.TransportError as e:
        tally.errors[type(e).__name__] += 1
        return
    tally.statuses[r.status_code] += 1
    if call.kind == "invalid":
        if r.status_code != call.expect:
            tally.wrong.append(f"invalid body {call.body!r:.80} got {r.status_code}, not {call.expect}")
        return
    if r.status_code != 200:
        tally.wrong.append(f"{call.kind} request {call.body} got {r.status_code}: {r.text:.200}")
        return
    tally.latencies.append(time.perf_counter() - t)
    choices = r.json()["choices"]
    n_prompts = 1 if isinstance(call.body["prompt"], str) else len(call.body["prompt"])
    if len(choices) != n_prompts or any(c["finish_reason"] not in ("stop", "length") for c in choices):
        tally.wrong.append(f"{call.kind} request {call.body}: malformed choices {choices}")
    elif call.kind in ("greedy", "stop") and [c["text"] for c in choices] != expected_texts(call.body, refs):
        tally.wrong.append(f"{call.kind} request {call.body}: {[c['text'] for c in choices]} != "
                           f"{expected_texts(call.body, refs)} (the idle server's answer)")


async def _drive(url: str, models: Sequence[str], prompts: Sequence[str], n: int, concurrency: int, pid: int,
                 seed: int) -> dict[str, Any]:
    import httpx

    from framework.serving.server import CLIENT_GONE

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        refs = await references(client, models, prompts)
        calls = plan(models, prompts, n, seed)
        before = served_statuses((await client.get("/metrics")).text)
        tally, queue = Tally(), asyncio.Queue()
        for call in calls:
            queue.put_nowait(call)

        async def worker() -> None:
            while not queue.empty():
                await send(client, queue.get_nowait(), refs, tally)

        rss: list[tuple[float, float]] = []
        sampler = asyncio.ensure_future(sample_rss(pid, rss))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        await asyncio.sleep(0.5)  # one more sample after the last request
        sampler.cancel()

        # -- after the load: every request finished by the server, no row waiting, the same answers --
        deadline = time.perf_counter() + 30
        while True:
            text = (await client.get("/metrics")).text
            served, waiting = served_statuses(text) - before, rows_waiting(text)
            if (served.total() >= n and not waiting) or time.perf_counter() > deadline:
                break
            await asyncio.sleep(0.2)
        fresh_ok = True
        for model in models:
            try:
                r = await client.post("/v1/completions", timeout=30,
                                      json={"model": model, "prompt": list(prompts), "max_tokens": MAX_TOKENS[-1]})
            except httpx.TransportError:
                fresh_ok = False
                continue
            fresh_ok &= r.status_code == 200 and [c["text"] for c in r.json()["choices"]] == \
                [refs[model, p, MAX_TOKENS[-1]][0] for p in prompts]

    in_load = [(t, mb) for t, mb in rss if t0 <= t <= t0 + wall] or rss
    span = in_load[-1][0] - in_load[0][0]
    first = np.median([mb for t, mb in in_load if t <= in_load[0][0] + 0.1 * span])
    last = np.median([mb for t, mb in in_load if t >= in_load[-1][0] - 0.1 * span])
    lat = np.array(tally.latencies or [np.nan])
    kinds = Counter(c.kind for c in calls)
    return {
        "requests": n, "concurrency": concurrency, "kinds": dict(kinds), "wall_s": wall, "rps": n / wall,
        "statuses": dict(sorted(tally.statuses.items())), "server_statuses": dict(sorted(served.items())),
        "server_finished": served.total(),
        "client_5xx": sum(v for s, v in tally.statuses.items() if s >= 500),
        "server_5xx": sum(v for s, v in served.items() if s >= 500),
        "transport_errors": dict(tally.errors), "wrong": tally.wrong,
        "disconnects": kinds["disconnect"], "disconnects_made": tally.disconnects,
        "disconnects_seen": served.get(CLIENT_GONE, 0),
        "p50_ms": 1e3 * float(np.percentile(lat, 50)), "p99_ms": 1e3 * float(np.percentile(lat, 99)),
        "rss_start_mb": float(first), "rss_end_mb": float(last), "rss_max_mb": max(mb for _, mb in rss),
        "rss_growth_mb": float(last - first), "rss_samples": len(rss),
        "rows_waiting_after": waiting, "fresh_answers_ok": bool(fresh_ok),
    }


def chaos(url: str, models: Sequence[str], prompts: Sequence[str], n_requests: int = 2000, concurrency: int = 32,
          pid: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Drive the server at `url` (process `pid`, for its memory) with `n_requests` mixed requests and
    check it afterwards; the figures and what failed (`failures`) in one dict."""
    prompts = list(prompts)[:N_PROMPTS]
    result = asyncio.run(_drive(url, models, prompts, n_requests, concurrency, pid or os.getpid(), seed))
    return {**result, "failures": failures(result)}


def failures(r: dict[str, Any]) -> list[str]:
    """What makes the run fail, in words; empty when the server held up."""
    out = []
    if r["client_5xx"] or r["server_5xx"]:
        out.append(f"5xx answers: {r['client_5xx']} seen by clients, {r['server_5xx']} counted by the server")
    if r["transport_errors"]:
        out.append(f"transport errors besides the deliberate disconnects: {r['transport_errors']}")
    if r["wrong"]:
        out.append(f"{len(r['wrong'])} wrong answers, e.g. {r['wrong'][0]}")
    if r["server_finished"] < r["requests"]:
        out.append(f"the server finished {r['server_finished']} of {r['requests']} requests (some never ended)")
    if r["rows_waiting_after"]:
        out.append(f"{r['rows_waiting_after']:g} rows still wait after the load")
    if not r["fresh_answers_ok"]:
        out.append("a fresh request after the load was not answered as before it (wedged)")
    if r["disconnects"] and not r["disconnects_seen"]:
        out.append("no disconnect reached the server mid-request: the fault was not exercised")
    if r["disconnects_made"] != r["disconnects"] or r["disconnects_seen"] > r["disconnects_made"]:
        out.append(f"{r['disconnects']} disconnects planned, {r['disconnects_made']} made, {r['disconnects_seen']} "
                   "counted by the server")
    if r["rss_growth_mb"] > RSS_GROWTH_LIMIT_MB:
        out.append(f"memory grew {r['rss_growth_mb']:.1f} MB during the load (limit {RSS_GROWTH_LIMIT_MB:g} MB)")
    return out
