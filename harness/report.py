"""What benchmarks, chaos checks and studies share to report: the machine they ran on, a median
timing, a 95% interval over seeds, a budget ladder's plateau, and writing a section into a docs page
(docs/benchmarks.md, docs/reliability.md) in place."""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np


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


# Two-sided 95% Student-t quantiles by degrees of freedom (n_seeds - 1); 1.96 beyond the table.
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def ci95_half_width(values) -> float:
    """Half-width of the two-sided 95% t-interval of the mean over seeds (0 for one seed)."""
    v = np.asarray(values, float)
    return float(_T95.get(len(v) - 1, 1.96) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def plateau(rows: list[dict], gain: float = 0.005) -> int | None:
    """The smallest budget from which every further step of the ladder adds < `gain` (None: not in the ladder)."""
    found = None
    for lo, hi in reversed(list(zip(rows, rows[1:], strict=False))):
        if hi["mean"] - lo["mean"] >= gain:
            break
        found = lo["budget"]
    return found
