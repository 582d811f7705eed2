"""Checkpoint retention (RunConfig.keep_latest, keep_best): which checkpoints stay, that deleting the
others takes nothing a reader or a resume needs, and that a SIGKILL in the middle of a deletion
leaves a run that reads cleanly and resumes to the same end, bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from framework.checkpoints import store as checkpoints
from framework.checkpoints.retention import KEEP_ALL, Retention, kept
from framework.errors import ConfigError
from framework.runner.build import train
from harness import faults
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# == which steps stay: a pure function of the checkpoints' metadata ==============================

CKPTS = [{"step": s, "kind": k, "val_em": em} for s, k, em in [
    (10, "periodic", 0.2), (20, "periodic", 0.5), (30, "stop", 0.1), (40, "periodic", 0.5),
    (50, "periodic", 0.3), (60, "periodic", 0.4), (70, "stop", 0.3)]]


@pytest.mark.parametrize("retention, protect, expect", [
    (KEEP_ALL, (), [10, 20, 30, 40, 50, 60, 70]),  # the default deletes nothing
    (Retention(latest=2, best=1), (), [20, 30, 60, 70]),  # stops, the newest 2, the best (20 ties 40: earlier)
    (Retention(latest=1, best=0), (), [30, 70]),  # the newest is a stop
    (Retention(latest=3, best=2), (), [20, 30, 40, 50, 60, 70]),
    (Retention(latest=1, best=0), (10,), [10, 30, 70]),  # the stopping rule's best stays
])
def test_kept_steps(retention, protect, expect):
    assert sorted(kept(CKPTS, retention, protect)) == expect
    assert sorted(kept(list(reversed(CKPTS)), retention, protect)) == expect  # order does not matter


def test_only_a_known_periodic_checkpoint_is_ever_deleted():
    odd = [{"step": 1}, {"step": 2, "kind": "stopped", "restored_best_step": 3}, {"step": 3, "kind": "periodic"},
           {"step": 4, "kind": "periodic", "val_em": float("nan")}, {"step": 5, "kind": "periodic"}]
    assert sorted(kept(odd, Retention(latest=1, best=0))) == [1, 2, 3, 5]


@pytest.mark.parametrize("fields, field, says", [
    *[({"keep_latest": v}, "keep_latest", "integer >= 1") for v in (0, -2, True, 1.5, "2")],
    ({"keep_latest": 2, "keep_best": -1}, "keep_best", "integer >= 0"),
    ({"keep_latest": 2, "keep_best": 0.5}, "keep_best", "integer >= 0"),
    ({"keep_best": 3}, "keep_best", "only with keep_latest"),  # nothing is deleted without it: say so
])
def test_bad_retention_fields_are_named(tmp_path, fields, field, says):
    with pytest.raises(ConfigError) as e:
        tiny_config(tmp_path, **fields).validate()
    assert e.value.field == field and says in e.value.message


# == in the trainer ==============================================================================

EVERY = 3_000  # eight checkpoints in the 24k-token tiny run: 6 periodic, stops at 0.5 and 1.0


def _cfg(out_dir, **kw):
    return tiny_config(out_dir, every_tokens=EVERY, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny run twice: keeping every checkpoint (the default), and with keep_latest=2."""
    root = tmp_path_factory.mktemp("retention")
    full = train(_cfg(root / "all"), show_progress=False)
    some = train(_cfg(root / "kept", keep_latest=2), show_progress=False)
    return {"all": str(root / "all"), "kept": str(root / "kept"), "full": full, "some": some}


def _steps(run_dir):
    return [c["step"] for c in checkpoints.list_checkpoints(run_dir)]


def _seals(run_dir):
    return sorted(int(n.removesuffix(".json")) for n in os.listdir(os.path.join(run_dir, "integrity")))


def test_by_default_every_checkpoint_stays(runs):
    full = runs["full"]
    assert [c["kind"] for c in full].count("periodic") == 6 and len(full) == 8
    assert _seals(runs["all"]) == _steps(runs["all"]) == [c["step"] for c in full]


def test_only_the_stops_the_latest_and_the_best_stay(runs):
    full, run = runs["full"], runs["kept"]
    stops = [c["step"] for c in full if c["kind"] == "stop"]
    best = max(full, key=lambda c: (c["val_em"], -c["step"]))["step"]
    expect = sorted({*stops, *(c["step"] for c in full[-2:]), best})
    assert _steps(run) == expect == sorted(kept(full, Retention(2, 1))) and len(expect) < len(full)
    # Deleting changed nothing that was trained or recorded: the kept checkpoints are the full run's.
    same = [{k: v for k, v in c.items() if k != "wall_s"} for c in full if c["step"] in expect]
    assert [{k: v for k, v in c.items() if k != "wall_s"} for c in checkpoints.list_checkpoints(run)] == same
    assert faults.metrics_lines(run) == faults.metrics_lines(runs["all"])
    assert faults.same_params(run, runs["all"])
    # Seals went with their steps; what is left is whole, and nothing is left half-deleted.
    assert _seals(run) == checkpoints.finished_steps(run) == expect
    assert all(checkpoints.verify_step(run, s) for s in expect)
    assert not os.path.exists(os.path.join(run, checkpoints.DELETING)) and faults.leftovers(run) == []


def test_readers_offer_only_the_kept_checkpoints(runs):
    from ensembles.members import run_members

    run = runs["kept"]
    assert [m.step for m in run_members(run)] == _steps(run)
    gone = next(c["step"] for c in runs["full"] if c["step"] not in _steps(run))
    with pytest.raises(ConfigError, match=f"no checkpoint at step {gone}"):
        checkpoints.resolve_step(run, gone)


def test_runs_show_prints_disk_use(runs, capsys):
    from framework.app.cli import main

    capsys.readouterr()
    assert main(["runs", "show", runs["kept"]]) == 0
    text = capsys.readouterr().out
    total, by_step = checkpoints.disk_use(runs["kept"])
    assert f"in {len(by_step)} checkpoint(s)" in text and "disk: " in text and "KiB" in text
    assert main(["runs", "show", runs["kept"], "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {c["step"]: c["bytes"] for c in listed} == by_step and all(b > 0 for b in by_step.values())
    assert total > sum(by_step.values())  # config.json, metrics.jsonl, the seals
    assert total < checkpoints.disk_use(runs["all"])[0]


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 2**20, "5.0 MiB"),
                                     (3 * 2**30 // 2, "1.5 GiB"), (2**50, "1024.0 TiB")])
def test_human_bytes(n, text):
    from framework.app.train_commands import human_bytes

    assert human_bytes(n) == text


def test_resuming_with_keep_latest_prunes_a_run_that_kept_everything(runs, tmp_path):
    """keep_latest may change on resume (it changes what stays, not what is computed); the resumed
    run prunes before anything else, here a finished run, to what keeping from the start left."""
    run = str(tmp_path / "later")
    shutil.copytree(runs["all"], run)
    train(_cfg(run, keep_latest=2), resume=True, show_progress=False)
    assert _steps(run) == _steps(runs["kept"]) == _seals(run)


# A child process that trains the kept run and SIGKILLs itself in the middle of its first deletion:
# after the step's directory was renamed away (its seal still there), or halfway through removing its files.
KILLER = """
import os, signal, sys, types
from framework.checkpoints import store
from tests.conftest import tiny_config
from framework.runner.build import train

out, point, every = sys.argv[1:]
kill = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if point == "renamed":
    store._forget = kill
else:
    def half(path, *a, **k):
        files = sorted(os.path.join(h, n) for h, _, names in os.walk(path) for n in names)
        for f in files[:len(files) // 2]:
            os.remove(f)
        kill()
    store.shutil = types.SimpleNamespace(rmtree=half)
train(tiny_config(out, every_tokens=int(every), keep_latest=2), show_progress=False)
"""


@pytest.mark.slow  # in make chaos (pytest -m slow): keeps make test under CI's 10 minutes
@pytest.mark.parametrize("point", ["renamed", "half removed"])
def test_a_kill_mid_deletion_leaves_a_readable_run_that_resumes_to_the_same_end(runs, tmp_path, point, capsys):
    from ensembles.members import run_members
    from framework.app.cli import main

    run = str(tmp_path / "killed")
    proc = subprocess.run([sys.executable, "-c", KILLER, run, point, str(EVERY)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == -9, proc.stderr[-3000:]
    [doomed] = os.listdir(os.path.join(run, checkpoints.DELETING))
    assert os.path.isfile(checkpoints.seal_path(run, int(doomed))) == (point == "renamed")
    # Readable as it is: the step on its way out is not listed, and every step listed is whole and sealed.
    listed = _steps(run)
    assert int(doomed) not in listed and listed == checkpoints.finished_steps(run) and faults.leftovers(run) == []
    assert all(checkpoints.verify_step(run, s) for s in listed)
    assert [m.step for m in run_members(run)] == listed
    capsys.readouterr()
    assert main(["runs", "show", run]) == 0 and "half-deleted: --resume removes them" in capsys.readouterr().out
    # Resumable: the deletion is finished, and the run ends as the one never killed, bit for bit.
    train(_cfg(run, keep_latest=2), resume=True, show_progress=False)
    assert not os.path.exists(os.path.join(run, checkpoints.DELETING))
    assert _steps(run) == _steps(runs["kept"]) == _seals(run)
    assert faults.same_params(run, runs["all"])
    assert faults.metrics_lines(run) == faults.metrics_lines(runs["kept"])


def test_the_stopping_rules_best_stays_for_restore_best(tmp_path):
    """keep_latest=1, keep_best=0 alone would delete the first evaluation's periodic checkpoint, which
    patience restores when it fires: the trainer protects the rule's best until then."""
    cfg = _cfg(tmp_path / "rule", keep_latest=1, keep_best=0, stop_rules=({"rule": "patience", "patience": 2},))
    stops = train(cfg, show_progress=False)
    last = stops[-1]
    assert last["kind"] == "stopped" and last["restored_best_step"] == stops[0]["step"]
    assert [c["step"] for c in stops] == [last["restored_best_step"], last["step"]]  # the one in between: deleted
    assert _seals(cfg.out_dir) == [c["step"] for c in stops]
