"""Serving benchmark: `recoup serve` under 1, 8 and 32 concurrent clients.

    python -m experiments.bench_serving     # this section only, spliced into docs/benchmarks.md
    make bench                              # every benchmark

Serves a weight average (latest-k, one forward pass) and a 3-member log-prob ensemble of the demo's
plain run (`make demo` first), in a `recoup serve` process on loopback, and drives it with
asyncio httpx clients: greedy answers to the test split's prompts, max_tokens 12. Per level:
requests/s, generated tokens/s, p50/p99 latency. The baseline, measured in the same run, is
`generation.generate` called directly on full batches of 32 (no HTTP, no batcher): the ratio
"served / direct" is what the HTTP layer and micro-batching leave of the model's throughput.
On a CPU the clients and the server share the cores; compare rows, not machines.
"""

from __future__ import annotations

from harness.bench_serving import serving_benchmark
from harness.report import splice

if __name__ == "__main__":
    section = serving_benchmark()
    print(section)
    splice(section)
