"""Server under load and faults: `recoup serve` under 2,000 mixed requests from 32 concurrent clients.

    python -m experiments.chaos_serving                     # -> runs/chaos-serve; docs/reliability.md
    python -m experiments.chaos_serving --requests 200      # a quick look (the docs are not touched)

Trains the demo recipe with the `tiny` preset once (`runs/chaos-serve/tiny`, seconds), serves it in
a `recoup serve` process on loopback and drives it with asyncio httpx clients. The requests, drawn
with a fixed seed: greedy ones (one to three prompts, varied max_tokens), sampled ones (with and
without a seed), greedy ones with stop strings, invalid bodies (each must get its own 4xx), and
about 5% whose client disconnects as soon as its body is sent, without its answer.

It fails (exit status 1) on any 5xx (seen by a client or counted by the server's /metrics), any
transport error other than the deliberate disconnects, any greedy answer that differs from the
one the idle server gave before the load, any invalid body answered with other than its 4xx, a
request the server never finished, rows still waiting afterwards, a wrong answer to a fresh
request after the load (wedged), or the server's memory growing by more than RSS_GROWTH_LIMIT_MB
from the first tenth of the load to the last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from harness.load import RSS_GROWTH_LIMIT_MB, chaos
from harness.report import machine, splice
from harness.served import recoup_serve

OUT = "runs/chaos-serve"
DOC, TITLE = "docs/reliability.md", "# Reliability"
SECTION = "## Server under load and faults"
SERVE_ARGS = ("--batch-buckets", "1,8,32", "--prompt-buckets", "32", "--new-token-buckets", "16")
TOKENS = 200_000  # the tiny run's budget: its greedy answers differ between prompts (none is right)
def tiny_run(out_dir: str) -> str:
    """The demo recipe with the `tiny` preset, trained once into OUT_DIR/tiny (a few seconds)."""
    from experiments.demo import get_config
    from framework.checkpoints import store as checkpoints
    from framework.config import PRESETS
    from framework.runner.build import train

    cfg = dataclasses.replace(get_config(os.path.join(out_dir, "tiny")), model=PRESETS["tiny"], preset="tiny",
                              budget_tokens=TOKENS, every_tokens=None, ema_half_lives=())
    started = os.path.isfile(os.path.join(cfg.out_dir, "config.json"))
    if not (started and any(c["fraction"] == 1.0 for c in checkpoints.list_checkpoints(cfg.out_dir))):
        print(f"training {cfg.out_dir} ({TOKENS:,} tokens, tiny preset)", flush=True)
        train(cfg, resume=started, show_progress=False)
    return cfg.out_dir


def run(out_dir: str = OUT, n_requests: int = 2000, concurrency: int = 32, run_dir: str | None = None,
        seed: int = 0) -> dict[str, Any]:
    """Serve `run_dir` (default: `tiny_run(out_dir)`) with `recoup serve` in its own process and
    drive it (`chaos`); the server's output is kept in OUT_DIR/serve.log."""
    from framework.serving.generation import served_id
    from framework.training.runs import open_run

    run_dir = run_dir or tiny_run(out_dir)
    prompts = list(open_run(run_dir).split("test").prompts)
    os.makedirs(out_dir, exist_ok=True)
    with recoup_serve([run_dir], *SERVE_ARGS, log_path=os.path.join(out_dir, "serve.log")) as server:
        result = chaos(server.url, [served_id(run_dir)], prompts, n_requests, concurrency, server.proc.pid, seed)
    return {**result, "run_dir": run_dir, "ready_s": server.ready_s}


def section(r: dict[str, Any]) -> str:
    statuses = ", ".join(f"{s}: {v}" for s, v in r["server_statuses"].items())
    verdict = "**passed**" if not r["failures"] else "**FAILED**: " + "; ".join(r["failures"])
    return "\n".join([
        SECTION, "", machine(), "",
        f"`python -m experiments.chaos_serving`: the demo recipe with the `tiny` preset served by `recoup serve` "
        f"({' '.join(SERVE_ARGS)}) in its own process, driven by {r['concurrency']} concurrent asyncio httpx "
        f"clients with {r['requests']:,} requests: {', '.join(f'{v} {k}' for k, v in r['kinds'].items())}. "
        "Greedy answers (stop strings applied) are checked against the idle server's answers to the same prompts; "
        "each invalid body must get its own 4xx; a disconnecting client closes its connection as soon as its "
        "body is sent, without reading the answer. The load generator "
        "shares the CPU with the server (and here with other jobs), so the latencies are not a clean figure; "
        "the status counts and the memory are what matter.", "",
        "| measure | value |", "|---|---|",
        f"| requests finished by the server, by status | {statuses} |",
        f"| 5xx (clients / server) | {r['client_5xx']} / {r['server_5xx']} |",
        f"| transport errors besides the deliberate disconnects | {sum(r['transport_errors'].values())} |",
        f"| wrong answers (greedy or stop vs the idle server; invalid body vs its 4xx) | {len(r['wrong'])} |",
        f"| disconnects: made / caught mid-request by the server (499: its waiting rows dropped) / answered "
        f"before the server saw the client go | {r['disconnects_made']} / {r['disconnects_seen']} / "
        f"{r['disconnects_made'] - r['disconnects_seen']} |",
        f"| requests/s; p50, p99 latency of valid requests | {r['rps']:.1f}; {r['p50_ms']:.0f} ms, "
        f"{r['p99_ms']:.0f} ms |",
        f"| server RSS: first tenth, last tenth (median), max | {r['rss_start_mb']:.0f} MB, {r['rss_end_mb']:.0f} MB, "
        f"{r['rss_max_mb']:.0f} MB ({r['rss_samples']} samples, every 0.5 s) |",
        f"| RSS growth (flat: < {RSS_GROWTH_LIMIT_MB:g} MB) | {r['rss_growth_mb']:+.1f} MB |",
        f"| after the load: rows waiting; a fresh request answered as before | {r['rows_waiting_after']:g}; "
        f"{'yes' if r['fresh_answers_ok'] else 'no'} |", "",
        f"Verdict: {verdict}.", ""])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    r = run(args.out, args.requests, args.concurrency, seed=args.seed)
    text = section(r)
    print(text)
    with open(os.path.join(args.out, "chaos.json"), "w") as f:
        json.dump(r, f, indent=1)
    if args.requests == 2000 and args.concurrency == 32:  # the documented configuration only
        splice(text, DOC, TITLE)
    for line in r["failures"]:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if r["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
