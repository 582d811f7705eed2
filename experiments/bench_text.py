"""Streamed text training benchmark (issue 23): how long the loop waits for packed rows, and whether
peak memory stays flat as the corpus grows.

    python -m experiments.bench_text                   # 100 MB and 1 GB corpora, spliced into docs/benchmarks.md
    python -m experiments.bench_text --quick           # a few MB and a few steps (~1-2 minutes), printed only
    python -m experiments.bench_text --dir /data/tmp --keep   # where the corpora go, and keep them
    make bench                                         # every benchmark

Two corpora of `.txt` paragraphs are written to disk in chunks (never held in memory): the documents
of `harness.tiny_corpus` (one paragraph of facts per entity of a knowledge base), repeated, each
repetition under a heading paragraph of its own, until each corpus has its size. The same run,
`recoup train --text CORPUS --seq-len N` with the same model, batch and step count, trains on each in a
fresh subprocess. Measured:

1. Data wait share: `data_time_frac` of the runs' metrics.jsonl, which the training loop already logs
   per window: host time in `parts.batches.draw` (reading the stream, tokenizing, packing rows) over
   the window's wall time. The first window (compilation, opening the stream) is left out; mean and
   worst of the rest. An upper bound on how long the step waits for data (dispatch is asynchronous).
   Target < 2%.
2. Peak memory: the child's peak resident set (`ru_maxrss` from `os.wait4` on that child alone), on
   the small and the large corpus, and large / small. A corpus is streamed, so nothing should grow with
   its size. Target <= 1.1.

Not here: packed long-sequence training against a hand-written loop. The hand-written loop of
`harness.bench_training` calls the model without `segment_ids` and `positions`, so on packed rows it
would attend across documents: not the same computation, and no fair baseline.

The corpora are removed afterwards unless `--keep`. Only `--quick` leaves docs/benchmarks.md alone.
"""

from __future__ import annotations

import argparse
import sys

from harness.bench_text import FULL, QUICK, text_benchmark, text_section
from harness.report import splice


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a few MB, a few steps), not written to docs")
    p.add_argument("--dir", help="where the corpora and runs go (default: a new directory under the temp directory)")
    p.add_argument("--keep", action="store_true", help="keep the corpora and runs afterwards")
    p.add_argument("--small-mb", type=float, help="the small corpus, MiB (default 100; --quick 2)")
    p.add_argument("--large-mb", type=float, help="the large corpus, MiB (default 1000; --quick 8)")
    p.add_argument("--steps", type=int, help="train steps on each corpus (default 120; --quick 12)")
    p.add_argument("--seq-len", type=int, help="packed row length (default 512; --quick 128)")
    p.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    args = p.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    for key in ("small_mb", "large_mb", "steps", "seq_len"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    result = text_benchmark(args.dir, args.keep, preset=args.preset, **sizes)
    section = text_section(result, "python -m experiments.bench_text" + (" " + " ".join(argv or sys.argv[1:])).rstrip())
    print(section)
    print(f"corpora {'kept in' if result['kept'] else 'removed from'} {result['dir']}")
    if not args.quick:
        splice(section)


if __name__ == "__main__":
    main()
