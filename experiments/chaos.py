"""Chaos: the long reliability checks behind `make chaos`, written to docs/reliability.md.

    make chaos                          # everything below (~5 min on 2 idle CPU cores, + ~9 for retention,
                                        # + ~3 for feedback)
    python -m experiments.chaos kills   # one part: kills | retention | corruption | disk | fuzz | serving | data
                                        #           | feedback

- kills: `recoup train` killed with SIGKILL at random moments, again and again, resuming each
  time; the final weights must equal an uninterrupted run's bit for bit, metrics.jsonl must hold
  the same lines, and no half-written checkpoint may be left or listed.
- retention: the same with `--keep-latest 2` (checkpoints deleted after each save): the same
  checkpoints kept as an uninterrupted run, nothing half-deleted, no seal without its step.
- corruption: every way of damaging a saved checkpoint is caught on load, naming the file;
  `--resume` falls back to the newest intact checkpoint; `recoup ensemble build` skips it.
- disk full: a save that cannot be written (a file-size limit stands in for a full disk: the
  write itself fails with an OS error, as it would there) ends the run with a one-line error and
  leaves the earlier checkpoints intact; `--resume` then finishes the run exactly.
- fuzz: the hypothesis properties of tests/test_fuzz_{configs,cli,files,requests}.py
  with many more examples each (RECOUP_FUZZ_EXAMPLES).
- serving: experiments/chaos_serving.py, 2,000 requests at concurrency 32 with faults.
- feedback: experiments/chaos_feedback.py, `recoup serve --feedback-db` SIGKILLed mid-load
  (completions and feedbacks at concurrency 32) in each of --feedback-rounds rounds and restarted on
  the same file: integrity_check ok, every acknowledged feedback there once with its value, every
  answered completion still taking feedback, duplicates and unknown ids still their 4xx.
- data: a tiny run trained on a JSON Lines file given by a relative path; then the file is edited
  (rows appended, rows reordered, one answer changed, the file removed) and `recoup eval`,
  `ensemble build`, `report`, `tune-stopping` and `--resume` must refuse the changed data in one
  line (or, with --allow-changed-data, go on, say so, and keep every prompt on its side).

The default test suite runs each of these once, small (tests/test_crash.py, tests/test_integrity.py).
This file is the recipe (which parts, how many kills and examples); the checks are harness.chaos.
"""

from __future__ import annotations

import argparse
import os
import sys

from harness import chaos

DOC = "docs/reliability.md"


def main() -> int:
    from harness.report import splice

    parts = ("kills", "retention", "corruption", "disk", "fuzz", "serving", "data", "feedback")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # No `choices=`: with nargs="*", Python 3.11's argparse rejects the empty default against them.
    p.add_argument("what", nargs="*", help=f"the parts to run: {' '.join(parts)} (default: all)")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fuzz-examples", type=int, default=1000)
    p.add_argument("--feedback-rounds", type=int, default=6, help="feedback: kills of the server, each restarted")
    p.add_argument("--work", default="runs/chaos")
    args = p.parse_args()
    if set(args.what) - set(parts):
        p.error(f"unknown part(s) {', '.join(sorted(set(args.what) - set(parts)))}; choose from {', '.join(parts)}")
    os.makedirs(args.work, exist_ok=True)
    failed = []
    for part in args.what or parts:
        print(f"== chaos: {part}", flush=True)
        if part == "serving":
            from experiments import chaos_serving

            if chaos_serving.main([]) != 0:
                failed.append(part)
            continue
        if part == "feedback":
            from experiments import chaos_feedback

            if chaos_feedback.main(["--rounds", str(args.feedback_rounds), "--seed", str(args.seed)]) != 0:
                failed.append(part)
            continue
        section, ok = {"kills": lambda: chaos.kills_section(args.work, args.kills, args.seed),
                       "retention": lambda: chaos.retention_section(args.work, args.kills, args.seed),
                       "corruption": lambda: chaos.corruption_section(args.work),
                       "disk": lambda: chaos.disk_section(args.work),
                       "data": lambda: chaos.data_section(args.work),
                       "fuzz": lambda: chaos.fuzz_section(args.fuzz_examples)}[part]()
        print(section, flush=True)
        splice(section, DOC, "# Reliability")
        if not ok:
            failed.append(part)
    print(f"chaos: {'FAILED: ' + ', '.join(failed) if failed else 'all passed'} (written to {DOC})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
