"""What benchmarks and chaos checks share to report: the machine they ran on, a median timing, and
writing a section into a docs page (docs/benchmarks.md, docs/reliability.md) in place."""

from __future__ import annotations

import os
import platform
import statistics
import time


def machine() -> str:
    """The line every benchmark and chaos section starts with: where its figures were measured."""
    import jax  # here, so that writing docs needs no jax

    d = jax.devices()[0]
    return f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on {d.platform} " \
           f"({d.device_kind})."


def splice(section: str, path: str = "docs/benchmarks.md", title: str = "# Benchmarks") -> None:
    """Replace the section of `path` with `section`'s heading (its first line), or append it; a
    missing file starts with `title`."""
    text = open(path).read() if os.path.isfile(path) else title + "\n"
    heading = section.splitlines()[0]
    start = text.find(heading + "\n")
    if start >= 0:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section.rstrip("\n") + ("\n" + text[end:] if end >= 0 else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)


def median_seconds(fn, repeats: int) -> float:
    """Median seconds of `fn()` after one warm-up call (which compiles)."""
    import jax  # only the benchmarks time compiled functions

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(statistics.median(times))
