"""The serving benchmark's measurements: `recoup serve` under concurrent clients against direct
generation (the recipe and its command: experiments/bench_serving.py).
"""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np

from harness.report import machine
from harness.served import recoup_serve

RUN = "runs/demo/addition/cosine-seed0"
OUT = "runs/bench-serve"
MAX_TOKENS = 12
SECTION = "## Serving: `recoup serve` under concurrent clients"


def _ensembles(run_dir: str, out: str) -> dict[str, str]:
    from ensembles import artifact
    from framework.run_dirs import load_run_config

    budget = load_run_config(run_dir).budget_tokens
    dirs = {}
    for name, cost, method in (("avg", 1, "latest-k"), ("ens3", 3, "logits")):
        d = dirs[name] = os.path.join(out, name)
        if not os.path.isfile(os.path.join(d, artifact.MANIFEST)):
            print(f"building {d}", flush=True)
            artifact.build([run_dir], budget, cost, d, method, log=lambda _: None)
    return dirs


def _direct_tokens_per_s(ens_dir: str, prompts: list[str], repeats: int = 5) -> float:
    from framework.serving import generation

    model = generation.load(ens_dir)
    buckets = generation.Buckets((32,), (32,), (16,))
    rows = [generation.Row(generation.encode_prompt(model.tokenizer, p), MAX_TOKENS) for p in prompts[:32]]
    generation.generate(model, rows, buckets)  # compile
    t = time.perf_counter()
    n = sum(c.completion_tokens for _ in range(repeats) for c in generation.generate(model, rows, buckets))
    return n / (time.perf_counter() - t)


async def _level(url: str, model: str, prompts: list[str], concurrency: int, seconds: float) -> dict:
    import httpx

    latencies, tokens, errors = [], 0, 0
    stop_at = time.perf_counter() + seconds

    async def client(i: int, c: httpx.AsyncClient):
        nonlocal tokens, errors
        j = i
        while time.perf_counter() < stop_at or len(latencies) < 2 * concurrency:
            t = time.perf_counter()
            r = await c.post("/v1/completions", json={"model": model, "prompt": prompts[j % len(prompts)],
                                                      "max_tokens": MAX_TOKENS})
            latencies.append(time.perf_counter() - t)
            if r.status_code == 200:
                tokens += r.json()["usage"]["completion_tokens"]
            else:
                errors += 1
            j += concurrency

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, c) for i in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return {"requests": len(lat), "errors": errors, "rps": len(lat) / wall, "tps": tokens / wall,
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))}


def _compilations(metrics_text: str) -> float:
    lines = metrics_text.splitlines()
    return next(float(line.split()[-1]) for line in lines if line.startswith("recoup_compilations "))


def serving_benchmark(run_dir: str = RUN, out: str = OUT, concurrencies=(1, 8, 32), seconds: float = 10.0) -> str:
    import httpx

    from framework.training.runs import open_run

    if not os.path.isdir(run_dir):
        return f"{SECTION}\n\nSkipped: {run_dir} is missing (run `make demo` first).\n"
    dirs = _ensembles(run_dir, out)
    prompts = list(open_run(run_dir).split("test").prompts)
    direct = {name: _direct_tokens_per_s(d, prompts) for name, d in dirs.items()}
    with recoup_serve(list(dirs.values()), "--batch-buckets", "1,8,32", "--prompt-buckets", "32",
                      "--new-token-buckets", "16") as server:
        url, ready_s = server.url, server.ready_s
        compiles_at_ready = _compilations(httpx.get(url + "/metrics").text)
        rows = []
        for name in dirs:
            for c in concurrencies:
                r = asyncio.run(_level(url, name, prompts, c, seconds))
                rows.append({"model": name, "concurrency": c, **r})
                print(f"{name} c={c}: {r['rps']:.1f} req/s, {r['tps']:.0f} tok/s, p50 {1e3 * r['p50']:.0f} ms, "
                      f"p99 {1e3 * r['p99']:.0f} ms, {r['errors']} errors", flush=True)
        compiles_at_end = _compilations(httpx.get(url + "/metrics").text)
    after = "none" if compiles_at_end == compiles_at_ready else f"{compiles_at_end - compiles_at_ready:g} (a bug)"
    label = {"avg": "weight average (latest-k, 1x)", "ens3": "log-prob ensemble of 3 (3x)"}
    lines = [SECTION, "", machine(), "",
             f"`python -m experiments.bench_serving`: the demo's plain run served as a weight average and a 3-member "
             f"log-prob ensemble; greedy, max_tokens {MAX_TOKENS}, test-split prompts, each level for {seconds:g} s "
             f"after start-up ({ready_s:.0f} s to load and compile; compilations while serving: {after}). "
             "Direct: `generation.generate` on batches of 32 in-process, no HTTP. On a CPU the load generator "
             "shares the cores with the server.", "",
             "| model | clients | requests | errors | req/s | tokens/s | served / direct tokens/s | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|---|",
             *[f"| {label[r['model']]} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['rps']:.1f} | "
               f"{r['tps']:.0f} | {r['tps'] / direct[r['model']]:.2f} | {1e3 * r['p50']:.0f} | {1e3 * r['p99']:.0f} |"
               for r in rows], ""]
    return "\n".join(lines)
