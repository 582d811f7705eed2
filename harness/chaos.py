"""The checks behind `make chaos` (experiments.chaos), each returning a docs/reliability.md section
and whether it passed: kills and resumes (`kills_section`), the same with checkpoints deleted as the
run goes (`retention_section`), damaged checkpoints (`corruption_section`),
a full disk (`disk_section`), a data file edited after training (`data_section`) and the fuzzing
properties at many more examples (`fuzz_section`). What each checks is in its docstring and its
section's text.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

from framework.checkpoints import store as checkpoints
from harness.faults import (
    DAMAGE,
    FILL_DISK,
    ROOT,
    check_against_straight,
    damage_targets,
    kill_and_resume,
    same_params,
    train_argv,
)


def kills_section(work: str, kills: int, seed: int) -> tuple[str, bool]:
    straight, killed = os.path.join(work, "straight"), os.path.join(work, "killed")
    for d in (straight, killed):
        shutil.rmtree(d, ignore_errors=True)
    t = time.time()
    subprocess.run(train_argv(straight), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    print(f"uninterrupted run: {time.time() - t:.0f} s", flush=True)
    t = time.time()
    k = kill_and_resume(killed, kills, seed)
    c = check_against_straight(killed, straight)
    ok = (c["bitwise_equal_params"] and c["metrics_equal"] and c["checkpoints_equal"] and not c["duplicate_lines"]
          and c["all_sealed_and_intact"] and not c["half_written_left"])
    mid_save = sum(bool(x["half_written"]) for x in k["killed_at"])
    rows = "\n".join(f"| {i + 1} | {x['after_s']} | {x['checkpoints']} | {x['metrics_lines']} | "
                     f"{', '.join(x['half_written']) or '-'} |" for i, x in enumerate(k["killed_at"]))
    section = f"""## Kills: SIGKILL at random moments, resumed each time

`python -m experiments.chaos kills --kills {kills} --seed {seed}` ({time.time() - t:.0f} s). A tiny run
(400k tokens, a checkpoint every 10k tokens, dropout 0.1) was killed {k['kills']} times and resumed with
`recoup train ... --resume` after each; then compared with the same run trained without interruption.

| check | result |
|---|---|
| final parameters equal the uninterrupted run's, bit for bit | {c['bitwise_equal_params']} |
| metrics.jsonl lines equal (timings and save lines aside) | {c['metrics_equal']} |
| duplicated (event, step) lines | {c['duplicate_lines']} |
| same checkpoints at the same steps | {c['checkpoints_equal']} ({c['checkpoints']}) |
| every checkpoint sealed and matching its seal | {c['all_sealed_and_intact']} |
| half-written saves left after the final resume | {c['half_written_left'] or 'none'} |
| kills that landed mid-save (a temporary save directory existed) | {mid_save} |

| kill | seconds after launch | finished checkpoints | metrics lines | half-written save at the kill |
|---|---|---|---|---|
{rows}

Why bitwise: on one CPU device XLA's reductions run in a fixed order, and everything a step depends
on (weights, optimizer moments, sampler position and its pending losses, RNG key, token counters)
is in the checkpoint, so a resumed step computes exactly what the uninterrupted one did. On a GPU
some XLA reductions are not deterministic by default, so expect agreement within float tolerance
there rather than bits (not measured: no GPU was lent to this project's sessions).
"""
    return section, ok


def retention_section(work: str, kills: int, seed: int) -> tuple[str, bool]:
    """The kills of `kills_section` on a run that deletes checkpoints as it goes (`--keep-latest 2`):
    it must end as an uninterrupted run with the same policy (the same checkpoints kept, the same
    weights bit for bit), with no step left half-deleted and no seal without its step."""
    keep = ["--keep-latest", "2"]
    full, straight, killed = (os.path.join(work, f"retention-{name}") for name in ("all", "straight", "killed"))
    for d in (full, straight, killed):
        shutil.rmtree(d, ignore_errors=True)
    t = time.time()
    subprocess.run(train_argv(full), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(train_argv(straight, extra=keep), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    print(f"uninterrupted runs, keeping all and keeping 2: {time.time() - t:.0f} s", flush=True)
    t = time.time()
    k = kill_and_resume(killed, kills, seed, extra=keep)
    c = check_against_straight(killed, straight)
    as_full = same_params(killed, full)
    ok = (c["bitwise_equal_params"] and as_full and c["metrics_equal"] and c["checkpoints_equal"]
          and not c["duplicate_lines"] and c["all_sealed_and_intact"] and not c["half_written_left"]
          and not c["half_deleted_left"] and not c["seals_without_a_step"])
    (all_bytes, all_steps), (kept_bytes, _) = checkpoints.disk_use(full), checkpoints.disk_use(killed)
    mid = sum(bool(x["half_deleted"]) for x in k["killed_at"])
    rows = "\n".join(f"| {i + 1} | {x['after_s']} | {x['checkpoints']} | {', '.join(x['half_written']) or '-'} | "
                     f"{', '.join(x['half_deleted']) or '-'} |" for i, x in enumerate(k["killed_at"]))
    section = f"""## Kills while checkpoints are deleted (--keep-latest)

`python -m experiments.chaos retention --kills {kills} --seed {seed}` ({time.time() - t:.0f} s). The run of the
section above with `--keep-latest 2`: after each save, the periodic checkpoints that are neither among
the 2 newest nor the best by validation EM are deleted (renamed out of `checkpoints/` into
`RUN/deleting/`, then their seals and files removed). Killed {k['kills']} times and resumed after each;
compared with the same run uninterrupted, and with the run keeping every checkpoint.

| check | result |
|---|---|
| final parameters equal the uninterrupted run's (and the keep-everything run's), bit for bit | \
{c['bitwise_equal_params']} ({as_full}) |
| metrics.jsonl lines equal (timings and save lines aside) | {c['metrics_equal']} |
| same checkpoints kept at the same steps | {c['checkpoints_equal']} ({c['checkpoints']} of {len(all_steps)}) |
| every checkpoint sealed and matching its seal; seals without their step | {c['all_sealed_and_intact']}; \
{c['seals_without_a_step'] or 'none'} |
| half-written saves, half-deleted checkpoints left after the final resume | \
{c['half_written_left'] or 'none'}, {c['half_deleted_left'] or 'none'} |
| kills with a half-deleted checkpoint in RUN/deleting/ at the kill (one may carry over to the next kill) | {mid} |
| run directory on disk: keeping 2, keeping all | {kept_bytes / 2**20:.1f} MiB, {all_bytes / 2**20:.1f} MiB |

| kill | seconds after launch | finished checkpoints | half-written save | half-deleted checkpoint |
|---|---|---|---|---|
{rows}

A kill in the middle of one deletion is also made on purpose, after the rename and halfway through
the files, by tests/test_retention.py: the run lists only whole, sealed steps, and resumes to the same end.
"""
    return section, ok


# -- corruption ------------------------------------------------------------------------------


def corruption_section(work: str) -> tuple[str, bool]:
    """Every damage x every part of the newest checkpoint: caught on load naming the file; resume
    falls back to the checkpoint before it; ensemble build skips it (damaged weights only)."""
    from ensembles.members import run_members
    from framework.checkpoints.integrity import CorruptCheckpoint

    base = os.path.join(work, "corrupt-base")
    if not os.path.isdir(base) or not checkpoints.list_checkpoints(base):
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(train_argv(base, budget="60k", every="20k"), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    steps = [c["step"] for c in checkpoints.list_checkpoints(base)]
    rows, ok = [], True
    for part in damage_targets(checkpoints.step_dir(base, steps[-1])):
        for name, damage in DAMAGE.items():
            run = os.path.join(work, "corrupt-case")
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(base, run)
            victim = damage_targets(checkpoints.step_dir(run, steps[-1]))[part]
            damage(victim)
            rel = os.path.relpath(victim, checkpoints.step_dir(run, steps[-1]))
            try:
                checkpoints.verify_step(run, steps[-1])
                caught = "not caught"
            except CorruptCheckpoint as e:
                caught = "caught, names the file" if rel in str(e) else f"caught, but names {e.file}"
            skipped = steps[-1] not in [m.step for m in run_members(run)]
            moved = checkpoints.set_aside_corrupt(run)
            fell_back = [c["step"] for c in checkpoints.list_checkpoints(run)] == steps[:-1] and len(moved) == 1
            ok &= caught == "caught, names the file" and fell_back and skipped
            rows.append(f"| {part} | {name} | {caught} | {'yes' if fell_back else 'NO'} | "
                        f"{'yes' if skipped else 'NO'} |")
            shutil.rmtree(run)
    section = f"""## Corruption: damaged checkpoints are caught, named and routed around

`python -m experiments.chaos corruption`. Each finished checkpoint is sealed with the size and
sha256 of its files (`RUN/integrity/STEP.json`); every load checks the files it reads. For each part
of the newest checkpoint of a tiny run and each kind of damage: is it caught on load, naming the
file; does resume's check (`checkpoints.set_aside_corrupt`, what `recoup train --resume` runs) move it
to `RUN/corrupt/` and resume from the checkpoint before; does `recoup ensemble build` leave it out
(`ensembles.members.run_members`, which reads only intact checkpoints)?

| part | damage | on load | resume falls back | ensemble build skips |
|---|---|---|---|---|
{chr(10).join(rows)}

{len(rows)} damaged checkpoints, {sum('names the file' in r for r in rows)} caught naming the file.
Loading a damaged checkpoint directly (`recoup eval RUN --step S`, serving, `--init-from`) is an
error: `checkpoint: RUN/checkpoints/S is corrupt: params/ocdbt.process_0/d/... has 44,127 bytes,
88,255 when it was saved (truncated)`. A checkpoint saved before sealing existed is trusted as
Orbax's atomic rename left it, and sealed when its run next resumes.
"""
    return section, ok


# -- disk full ---------------------------------------------------------------------------------

def disk_section(work: str) -> tuple[str, bool]:
    full, straight = os.path.join(work, "disk-full"), os.path.join(work, "disk-straight")
    for d in (full, straight):
        shutil.rmtree(d, ignore_errors=True)
    argv = train_argv(full, budget="60k", every="20k")
    cli = FILL_DISK + "from framework.app.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.run([sys.executable, "-c", cli, *argv[3:]], cwd=ROOT, capture_output=True, text=True)
    # Orbax's writer threads may still print "Event loop is closed" tracebacks after our error, at exit
    said = next((line for line in reversed(proc.stderr.splitlines()) if "could not write" in line), "")
    kept = [c["step"] for c in checkpoints.list_checkpoints(full)]
    intact = all(checkpoints.verify_step(full, s) for s in kept)
    subprocess.run(train_argv(full, budget="60k", every="20k", resume=True), cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(train_argv(straight, budget="60k", every="20k"), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    equal = same_params(full, straight)
    ok = proc.returncode == 2 and "could not write" in said and len(kept) == 1 and intact and equal
    section = f"""## Disk full during a save

`python -m experiments.chaos disk`. `recoup train` on a tiny run, with every write past 50 kB made
to fail (a file-size limit set after the first checkpoint: the write fails with an OS error inside
Orbax's background writer, as it would with ENOSPC on a full disk; a tmpfs cannot be mounted
without privileges, which CI does not have).

| check | result |
|---|---|
| exit status | {proc.returncode} (2: a clear error, no traceback) |
| what it printed last | `{said}` |
| checkpoints left, all matching their seals | {kept} ({'intact' if intact else 'NOT intact'}) |
| `--resume` with space again: final weights equal an uninterrupted run's, bit for bit | {equal} |
"""
    return section, ok


# -- data edited between training and evaluation ------------------------------------------------

DATA_TRAIN = ("--preset tiny --budget-tokens 12k --batch-size 16 --stops 0.5,1.0 --val-size 40 --test-size 60 "
              "--max-seq-len 32 --no-progress").split()


def _products(a_range) -> list[str]:
    return [json.dumps({"prompt": f"{a}*{b}=", "answer": str(a * b)}) + "\n" for a in a_range for b in range(2, 12)]


def _cli(argv: list[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "framework.app.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT})


def data_section(work: str) -> tuple[str, bool]:
    """Each edit of the data file on a fresh copy of one trained run: every command that reads the
    run's data refuses it in one line; allowed, eval goes on, says so, and no prompt changed sides."""
    from framework.training.runs import open_run

    base = os.path.abspath(os.path.join(work, "data-edit"))
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(os.path.join(base, "trained", "data"))
    with open(os.path.join(base, "trained", "data", "mul.jsonl"), "w") as f:
        f.writelines(_products(range(2, 40)))
    trained = _cli(["train", "--data", "data/mul.jsonl", *DATA_TRAIN, "--out", "run"], os.path.join(base, "trained"))
    trained.check_returncode()
    held = {s: set(open_run(os.path.join(base, "trained", "run")).split(s).prompts) for s in ("validation", "test")}

    def edit_append(path):
        with open(path, "a") as f:
            f.writelines(_products(range(40, 60)))

    def edit_reorder(path):
        lines = open(path).readlines()
        random.Random(0).shuffle(lines)
        open(path, "w").writelines(lines)

    def edit_answer(path):
        lines = open(path).readlines()
        lines[7] = lines[7].replace('"answer": "', '"answer": "1')
        open(path, "w").writelines(lines)

    edits = {"200 rows appended": edit_append, "rows reordered": edit_reorder, "one answer changed": edit_answer,
             "file removed": os.remove}
    rows, ok = [], True
    for name, edit in edits.items():
        root = os.path.join(base, name.replace(" ", "-"))
        shutil.copytree(os.path.join(base, "trained"), root)
        run, data = os.path.join(root, "run"), os.path.join(root, "data", "mul.jsonl")
        rec_path = os.path.join(run, "data.json")
        rec = json.load(open(rec_path))
        json.dump({**rec, "data_path": data}, open(rec_path, "w"))  # the copy trains on its own file
        edit(data)
        refused = {}
        for cmd, argv in {"eval": ["eval", run], "ensemble build": ["ensemble", "build", run, "--budget", "1.0",
                                                                    "--out", os.path.join(root, "ens")],
                          "report": ["report", run, "--out", os.path.join(root, "rep"), "--max-cost", "1"],
                          "tune-stopping": ["tune-stopping", run, "--price", "2"],
                          "--resume": ["train", "--data", "data/mul.jsonl", *DATA_TRAIN, "--out", "run", "--resume"]
                          }.items():
            p = _cli(argv, root)
            lines = p.stderr.strip().splitlines()
            refused[cmd] = (p.returncode == 2 and len(lines) == 1 and "mul.jsonl" in lines[0]
                            and ("has changed" in lines[0] or "not found" in lines[0]))
            if not refused[cmd]:
                print(f"  {name}: {cmd} exited {p.returncode}: {p.stderr[-400:]}", flush=True)
        if name == "file removed":
            said = _cli(["eval", run], root).stderr.strip().replace(root + os.sep, "")
            allowed, kept = "-", "-"
            refused.pop("tune-stopping")  # no file here to compare: a serving machine holds no data
        else:
            p = _cli(["eval", run, "--json", "--allow-changed-data"], root)
            allowed = p.returncode == 0 and bool(json.loads(p.stdout).get("data_changed")) and "NOTE" in p.stderr
            said = _cli(["eval", run], root).stderr.strip().replace(root + os.sep, "")
            now = open_run(run, allow_changed_data=True)
            kept = all(held[s] <= set(now.split(s).prompts) for s in held)
            ok &= allowed and kept
        ok &= all(refused.values())
        yes, no = [c for c, r in refused.items() if r], [c for c, r in refused.items() if not r]
        rows.append(f"| {name} | {', '.join(yes)} | {', '.join(no) or '-'} | `{said[:200]}` | {allowed} | {kept} |")
    section = f"""## Data edited between training and evaluation

`python -m experiments.chaos data`. A tiny run trained on `data/mul.jsonl` (380 products, split by
hash: 40 validation and 60 test prompts), given relative to the directory it trained in; then, on a
fresh copy of the run and its file each time, the file is edited and every command that reads the
run's data is run on it from the copy's directory. Each must refuse in one line naming what
changed (exit status 2). With `--allow-changed-data`, `recoup eval` goes on, its JSON lists the
change and stderr says so; and every validation and test prompt of the run is still held out
(splits by hash, at the cuts the run recorded). `tune-stopping` and `serve` read no examples: they
compare the file's sha256 where the file is still there (a serving machine holds no training data).

| edit | refused in one line | not refused | what `recoup eval` said | allowed: eval goes on, says so | none moved |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Verdict: **{'passed' if ok else 'FAILED'}**.
"""
    return section, ok


# -- fuzzing -----------------------------------------------------------------------------------


def fuzz_section(examples: int) -> tuple[str, bool]:
    files = ["tests/test_fuzz_configs.py", "tests/test_fuzz_cli.py", "tests/test_fuzz_files.py",
             "tests/test_fuzz_requests.py"]
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--hypothesis-show-statistics", *files], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "RECOUP_FUZZ_EXAMPLES": str(examples)})
    rows = []
    for block in re.split(r"^(?=tests/\S+::\S+:$)", proc.stdout, flags=re.MULTILINE)[1:]:
        name = block.splitlines()[0].rstrip(":")
        counts = [tuple(map(int, m)) for m in re.findall(r"(\d+) passing, (\d+) failing", block)]
        stop = re.search(r"Stopped because (.*)", block)
        rows.append(f"| `{name}` | {sum(c[0] for c in counts)} | {sum(c[1] for c in counts)} | "
                    f"{stop.group(1) if stop else ''} |")
    total = sum(int(r.split("|")[2]) for r in rows)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    section = f"""## Fuzzing: invalid configs, CLI arguments, data files and request bodies

`RECOUP_FUZZ_EXAMPLES={examples} python -m pytest {' '.join(files)}`
({time.time() - t:.0f} s; `python -m experiments.chaos fuzz`). Every property: the input ends in a
clear error naming the field, flag, line or column (ConfigError, exit status 2, or an HTTP 4xx
with an OpenAI error body), never a traceback from inside jax, datasets or pyarrow. The default
test suite runs the same properties with fewer examples.

| property | examples run | failing | why it stopped |
|---|---|---|---|
{chr(10).join(rows)}

{total:,} examples in all. pytest: {summary}
"""
    return section, proc.returncode == 0 and total > 0
