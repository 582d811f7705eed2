"""Feedback through kills: `recoup serve --feedback-db` SIGKILLed mid-load again and again, restarted on the same file.

    python -m experiments.chaos feedback                    # 6 rounds -> runs/chaos-feedback; docs/reliability.md
    python -m experiments.chaos_feedback --rounds 10 --seed 1

Builds a cascade of the tiny run that experiments/chaos_serving.py serves (`tiny_run`; both are
made once and kept in runs/chaos-feedback), serves it with --feedback-db and drives it with 32
concurrent clients, each asking for a completion and posting a feedback on it at once (the feedback
on every fifth completion is held back). At a random moment, up to 5 s after the first answer,
the server is killed with SIGKILL; the file is checked as the kill left it, the server is started
again on it, and the posts whose answers are known are made (harness/feedback_chaos.py says
which); then the next round. A clean stop and a last check of the file end it.

It fails (exit status 1) on an integrity_check other than ok, an acknowledged feedback missing or
changed, a feedback stored twice or never posted, a completion answered but not recorded, any
feedback refused during the load, or any probe answered with other than its status.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from experiments.chaos_serving import tiny_run
from harness.feedback_chaos import PROBES, kill_rounds
from harness.report import machine, splice

OUT = "runs/chaos-feedback"
DOC, TITLE = "docs/reliability.md", "# Reliability"
SECTION = "## Feedback database through kills (recoup serve --feedback-db)"
# Few shapes, so that each restart compiles little; the demo's prompts (up to 18 characters) fit the
# prompt bucket, or the first requests after each start would compile their shape.
SERVE_ARGS = ("--batch-buckets", "1,8", "--prompt-buckets", "32", "--new-token-buckets", "8")
MAX_COST = 1.5  # the cascade's cap on inference cost, as tests/conftest.py's built_cascade


def cascade(out_dir: str) -> tuple[str, str]:
    """The tiny run and a cascade built on it (OUT_DIR/tiny and OUT_DIR/cascade), each made once."""
    from ensembles.artifact import MANIFEST, build
    from framework.training.runs import open_run

    run_dir = tiny_run(out_dir)
    ens = os.path.join(out_dir, "cascade")
    if not os.path.isfile(os.path.join(ens, MANIFEST)):
        shutil.rmtree(ens, ignore_errors=True)  # a build cut short leaves a directory build refuses
        print(f"building a cascade of {run_dir} into {ens} (about a minute)", flush=True)
        build([run_dir], open_run(run_dir).cfg.budget_tokens, MAX_COST, ens, method="cascade", log=lambda _: None)
    return run_dir, ens


def run(out_dir: str = OUT, rounds: int = 6, seed: int = 0, max_kill_s: float = 5.0,
        concurrency: int = 32) -> dict[str, Any]:
    from framework.training.runs import open_run

    run_dir, ens = cascade(out_dir)
    prompts = list(open_run(run_dir).split("test").prompts)
    r = kill_rounds(ens, SERVE_ARGS, os.path.join(out_dir, "feedback.db"), prompts, rounds, seed, max_kill_s,
                    concurrency, log_dir=out_dir)
    return {**r, "seed": seed, "max_kill_s": max_kill_s, "concurrency": concurrency}


# The table's columns after the round: how the probes of these kinds were answered (as they must be / made).
PROBE_COLUMNS = {"held back": ("held back",), "in doubt": ("in doubt, stored", "in doubt, not stored"),
                 "second feedback": ("second feedback",), "unknown": ("unknown id", "unknown choice")}


def _counts(x: dict[str, Any]) -> list[int]:
    """One round's numbers, in the table's order (a probe column gives two: as it must be, made; recorded,
    never answered: all so far)."""
    tally = [(kind, int(status), n) for key, n in x["probes"].items() for kind, status in [key.split(": ")]]
    out = [x["answered"], x["acked"], x["in_doubt"], x["in_doubt_stored"], x["recorded_never_answered"]]
    for kinds in PROBE_COLUMNS.values():
        out.append(sum(n for kind, status, n in tally if kind in kinds and status == PROBES[kind]))
        out.append(sum(n for kind, _, n in tally if kind in kinds))
    return out


def section(r: dict[str, Any]) -> str:
    def line(name: str, after: str, c: list[int], integrity: str, ready: str) -> str:
        probes = " | ".join(f"{c[i]} / {c[i + 1]}" for i in range(5, len(c), 2))
        return (f"| {name} | {after} | {c[0]:,} | {c[1]:,} | {c[2]} ({c[3]} stored) | {c[4]} | {probes} "
                f"| {integrity} | {ready} |")

    counts = [_counts(x) for x in r["rounds"]]
    so_far = [c[4] for c in counts]
    for c, before in zip(counts[1:], so_far, strict=False):  # "recorded, never answered": so far -> in the round
        c[4] -= before
    rows = [line(str(i), f"{x['kill_after_s']:.2f}", c, x["integrity"], f"{x['ready_s']:.0f}")
            for i, (x, c) in enumerate(zip(r["rounds"], counts, strict=True), 1)]
    rows.append(line("all", "", [sum(col) for col in zip(*counts, strict=True)], "", ""))
    f = r["final"]
    verdict = "**passed**" if not r["failures"] else "**FAILED**: " + "; ".join(r["failures"])
    return "\n".join([
        SECTION, "", machine(), "",
        f"`python -m experiments.chaos feedback` (= `python -m experiments.chaos_feedback --rounds {len(r['rounds'])} "
        f"--seed {r['seed']}`; {r['seconds']:.0f} s, the tiny run and its cascade made beforehand). A cascade of "
        f"the tiny run is served by `recoup serve --feedback-db` ({' '.join(SERVE_ARGS)}) and driven by "
        f"{r['concurrency']} concurrent clients, each asking for a completion and posting a feedback on it at once "
        "(every fifth one held back). At a random moment, 0 to "
        f"{r['max_kill_s']:g} s after the first answer, the server is killed with SIGKILL; the file is checked as "
        "the kill left it (SQLite's integrity_check; every feedback acknowledged with a 200, in any round so far, "
        "there with its value; none stored twice or without having been posted; every completion answered with "
        "a 200 recorded), then the server is started again on it and these posts must get these statuses:", "",
        "- held back: a feedback on a completion answered before the kill, posted only after the restart: 200. "
        "A completion is committed to the file before its answer is sent, so any completion a client has an id "
        "for takes feedback after a kill. (One whose record failed, a database error, would still have been "
        "answered, and would get 404 completion_not_found here: a failure of this check.)",
        "- in doubt: a feedback posted when the kill came, without an answer, posted again: 200 whether the file "
        "has it (it was committed, its answer lost: a retry of the same feedback is answered as the first post was) "
        "or not; either way it is then stored once.",
        "- second feedback: another value on an acknowledged one: 409, and the first one stands (checked at the "
        "next kill and at the end).",
        "- unknown: a random id, or choice 1 of a one-prompt completion: 404.", "",
        "Recorded, never answered: completions committed while their answer was still on its way at the kill; "
        "no client has their ids, so nobody can post a feedback on them (counted, not a failure).", "",
        "| round | kill after (s) | completions answered | feedback acknowledged | in doubt at the kill "
        "| recorded, never answered | held back: 200 / posted | in doubt: as expected / posted "
        "| second feedback: 409 / posted | unknown: 404 / posted | integrity_check | restart (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        f"At the end, after a clean stop: the file holds {r['feedback_stored']:,} feedbacks, exactly those "
        f"acknowledged or settled after a restart (lost: {len(f['lost'])}, changed: {len(f['wrong'])}, stored "
        f"twice: {f['stored_twice']}, never posted: {len(f['never_posted'])}); of the {r['completions_answered']:,} "
        f"completions answered, {len(f['answered_not_recorded'])} not recorded; integrity_check: {f['integrity']}.",
        "",
        "A SIGKILL ends the process, not the machine: what SQLite had handed the kernel is still written. So this "
        "checks that the server acknowledges only what it has committed and that the file is whole after a "
        "crash at any moment; surviving a power cut also rests on synchronous=FULL's fsync, which no kill tests.",
        "", f"Verdict: {verdict}.", ""])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6, help="kills, each followed by a restart on the same file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-kill-s", type=float, default=5.0, help="the kill comes 0 to this many s after the "
                                                                  "first answer")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    r = run(args.out, args.rounds, args.seed, args.max_kill_s)
    text = section(r)
    print(text)
    with open(os.path.join(args.out, "chaos.json"), "w") as f:
        json.dump(r, f, indent=1, default=list)
    splice(text, DOC, TITLE)
    for line in r["failures"]:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if r["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
