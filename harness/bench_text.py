"""The streamed text benchmark's pieces (experiments/bench_text.py says what it measures and how):
corpora written to disk in chunks, `recoup train --text` in a fresh process with its peak RSS, the
data wait read from metrics.jsonl, and the docs/benchmarks.md section."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

MB = 1 << 20
QUICK = {"small_mb": 2, "large_mb": 8, "steps": 12, "seq_len": 128, "batch_size": 8, "log_every": 4}
FULL = {"small_mb": 100, "large_mb": 1000, "steps": 120, "seq_len": 512, "batch_size": 16, "log_every": 10}


def write_corpus(directory: str, mb: float, files: int = 4) -> int:
    """About `mb` MiB of .txt paragraphs in `files` files under `directory`, written in chunks (see the
    module); returns the bytes written."""
    from harness.tiny_corpus import documents

    block = ("\n\n".join(documents()) + "\n\n").encode()
    os.makedirs(directory, exist_ok=True)
    per_file, total, k = int(mb * MB) // files, 0, 0
    for i in range(files):
        with open(os.path.join(directory, f"part{i:02d}.txt"), "wb") as f:
            written = 0
            while written < per_file:
                chunk = f"Block {k} of part {i}.\n\n".encode() + block
                f.write(chunk)
                written, k = written + len(chunk), k + 1
        total += written
    return total


def train_argv(corpus: str, out: str, steps: int, seq_len: int, batch_size: int, log_every: int,
               preset: str = "tiny") -> list[str]:
    """`recoup train --text` for `steps` full rows of `batch_size` x `seq_len` tokens (packed rows are full)."""
    return ["train", "--text", corpus, "--seq-len", str(seq_len), "--preset", preset,
            "--batch-size", str(batch_size), "--budget-tokens", str(steps * batch_size * seq_len),
            "--stops", "1.0", "--val-size", "4", "--test-size", "4", "--batch-warmup", "0",
            "--log-every", str(log_every), "--no-progress", "--out", out]


def train_in_child(argv: list[str]) -> int:
    """Runs `recoup <argv>` in a fresh Python process; its peak resident set in bytes (Linux's
    ru_maxrss is in KiB). `os.wait4` reports that child alone (RUSAGE_CHILDREN would be the largest
    child so far)."""
    child = subprocess.Popen([sys.executable, "-m", "framework.app.cli", *argv],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    child.stdout.close()
    if child.returncode != 0:
        raise RuntimeError(f"recoup {' '.join(argv)} failed ({child.returncode}):\n{output.decode()[-3000:]}")
    return usage.ru_maxrss * 1024


def data_wait(run_dir: str) -> dict:
    """Mean and worst `data_time_frac` of a run's train lines after the first (compilation)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        lines = [json.loads(ln) for ln in f]
    fracs = [ln["data_time_frac"] for ln in lines if ln.get("event") == "train"][1:]
    if not fracs:
        raise RuntimeError(f"{run_dir}: fewer than two log windows; train more steps or log more often")
    return {"data_frac": sum(fracs) / len(fracs), "data_frac_max": max(fracs), "windows": len(fracs)}


def text_benchmark(directory: str | None = None, keep: bool = False, small_mb: float = 100, large_mb: float = 1000,
                   steps: int = 120, seq_len: int = 512, batch_size: int = 16, log_every: int = 10,
                   preset: str = "tiny") -> dict:
    """Both corpora written under `directory` (default: a new one under the system's temp directory),
    trained on, measured, and removed unless `keep`. One row per corpus and large/small peak RSS."""
    root = tempfile.mkdtemp(prefix="recoup-bench-text-", dir=directory)
    rows = []
    try:
        for name, mb in (("small", small_mb), ("large", large_mb)):
            corpus, out = os.path.join(root, f"corpus-{name}"), os.path.join(root, f"run-{name}")
            size = write_corpus(corpus, mb)
            rss = train_in_child(train_argv(corpus, out, steps, seq_len, batch_size, log_every, preset))
            rows.append({"corpus": name, "bytes": size, "peak_rss": rss, **data_wait(out)})
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return {"rows": rows, "rss_ratio": rows[1]["peak_rss"] / rows[0]["peak_rss"], "dir": root, "kept": keep,
            "steps": steps, "seq_len": seq_len, "batch_size": batch_size, "preset": preset}


def text_section(result: dict, command: str = "python -m experiments.bench_text") -> str:
    """The docs/benchmarks.md section of `text_benchmark`'s result."""
    from harness.report import machine

    rows, ratio = result["rows"], result["rss_ratio"]
    worst = max(r["data_frac"] for r in rows)
    return "\n".join([
        "## Text corpora: data wait and peak memory against corpus size",
        "",
        machine(),
        "",
        f"`{command}`: `recoup train --text` with the `{result['preset']}` preset, seq_len {result['seq_len']}, "
        f"batch {result['batch_size']} packed rows, {result['steps']} steps, on two generated .txt corpora "
        "(streamed, each in a fresh process). Data wait: `data_time_frac` of metrics.jsonl (host time drawing "
        "packed rows over wall time; first window, with compilation, left out). Peak RSS: the child's ru_maxrss.",
        "",
        "| corpus | size | data wait, mean / worst window | peak RSS |",
        "|---|---|---|---|",
        *[f"| {r['corpus']} | {r['bytes'] / MB:,.0f} MiB | {100 * r['data_frac']:.2f}% / "
          f"{100 * r['data_frac_max']:.2f}% | {r['peak_rss'] / MB:,.0f} MiB |" for r in rows],
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| data wait, share of wall time (worse corpus, mean) | {100 * worst:.2f}% | < 2%: "
        f"{'met' if worst < 0.02 else '**not met**'} |",
        f"| peak RSS, large / small corpus | {ratio:.3f} | <= 1.1: {'met' if ratio <= 1.1 else '**not met**'} |",
        "",
    ])
