"""TensorBoard event files (framework.training.event_files): the metrics.jsonl values at their tokens,
one curve after a crash and a resume (read afresh or live), none when turned off, a failed write like a
failed metrics.jsonl write. Read back with TensorBoard's own EventAccumulator. A rollback
(tests/test_nonfinite.py), SIGKILLs (tests/test_crash.py) and two processes (tests/test_sharding.py)
are checked where those are tested."""

from __future__ import annotations

import os

import pytest

from framework.checkpoints import store as checkpoints
from framework.runner.build import train
from framework.training import event_files
from tests.conftest import Crash, event_scalars, metrics_scalars, tiny_config


def test_event_files_hold_the_metrics_lines_at_their_tokens(trained_run):
    cfg, _ = trained_run
    board, expected = event_scalars(cfg.out_dir), metrics_scalars(cfg.out_dir)
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "eval/val_em", "eval/val_loss"} \
        <= set(expected)
    assert board == expected
    assert len(board["eval/val_em"]) == len(cfg.stops) and len(board["train/loss"]) > 5
    [path] = event_files.event_files(cfg.out_dir)  # one session, one file, in RUN/tensorboard
    assert os.path.dirname(path) == os.path.join(cfg.out_dir, "tensorboard")


def test_a_crash_and_a_resume_give_one_curve_read_afresh_or_live(tmp_path):
    cfg = tiny_config(tmp_path / "crash")
    saved = crash_then_resume_watched(cfg)
    live, checkpoint_tokens = saved["live"], saved["tokens"]
    expected = metrics_scalars(cfg.out_dir)
    assert event_scalars(cfg.out_dir) == expected  # read afresh
    assert {tag: [(e.step, e.value) for e in live.Scalars(tag)] for tag in live.Tags()["scalars"]} == expected
    for tag, points in expected.items():  # metrics.jsonl holds each line once: so do the curves
        assert [s for s, _ in points] == sorted({s for s, _ in points}), tag
    assert saved["orphans"], "the crash left no events past the checkpoint: this test would prove nothing"
    # The first session's file itself was cut back to the checkpoint: a reader that purges nothing sees no duplicates.
    first, _ = event_files.event_files(cfg.out_dir)
    with open(first, "rb") as f:
        data = f.read()
    records = list(event_files.records(data))
    assert max(event_files.event_pb2.Event.FromString(r[12:-4]).step for r in records) == checkpoint_tokens
    assert sum(map(len, records)) == len(data)  # the torn tail went too


def crash_then_resume_watched(cfg) -> dict:
    """`crash_then_resume`, with a TensorBoard reading the run between the crash and the resume, and the
    crash's event file torn mid-record (a kill while it was written)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def crash(event):
        if event.kind == "step" and event.tokens > 0.6 * cfg.budget_tokens:
            raise Crash()

    with pytest.raises(Crash):
        train(cfg, hooks=[crash], show_progress=False)
    [path] = event_files.event_files(cfg.out_dir)
    with open(path, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00")  # the first bytes of a record's length
    live = EventAccumulator(event_files.events_dir(cfg.out_dir), size_guidance={"scalars": 0})
    live.Reload()
    tokens = checkpoints.list_checkpoints(cfg.out_dir)[-1]["tokens"]
    orphans = [e.step for e in live.Scalars("train/loss") if e.step > tokens]
    train(cfg, resume=True, show_progress=False)
    live.Reload()
    return {"live": live, "tokens": tokens, "orphans": orphans}


def test_turned_off_it_writes_no_event_files(tmp_path):
    cfg = tiny_config(tmp_path / "off", tensorboard=False, budget_tokens=6_000, stops=(1.0,))
    train(cfg, show_progress=False)
    assert os.path.isfile(os.path.join(cfg.out_dir, checkpoints.METRICS_FILE))
    assert not os.path.exists(os.path.join(cfg.out_dir, "tensorboard"))


def test_a_failed_event_write_ends_the_run_like_a_failed_metrics_write(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path / "full")
    real = event_files.EventLog._add

    def add(self, event):
        if event.HasField("summary") and event.step > 0.6 * cfg.budget_tokens:  # past the first checkpoint (0.5)
            raise OSError(28, "No space left on device", self.path)
        return real(self, event)

    monkeypatch.setattr(event_files.EventLog, "_add", add)
    with pytest.raises(checkpoints.SaveFailed, match=r"could not write to .*: No space left on device \(.*tfevents"):
        train(cfg, show_progress=False)
    monkeypatch.undo()
    assert [c["fraction"] for c in checkpoints.list_checkpoints(cfg.out_dir)] == [0.5]
    train(cfg, resume=True, show_progress=False)
    assert event_scalars(cfg.out_dir) == metrics_scalars(cfg.out_dir)


def test_a_new_session_file_sorts_after_the_others_and_truncate_keeps_whole_records(tmp_path):
    run = str(tmp_path)
    logs = [event_files.EventLog(run, start_tokens=t) for t in (0, 100, 200)]  # within one second
    for log, tokens in zip(logs, (50, 150, 250), strict=True):
        log.scalars(tokens, {"train/loss": 1.0, "train/lr": None})
        log.close()
    assert event_files.event_files(run) == [log.path for log in logs]
    event_files.truncate(run, 150)
    kept = []
    for path in event_files.event_files(run):
        with open(path, "rb") as f:
            kept += [event_files.event_pb2.Event.FromString(r[12:-4]) for r in event_files.records(f.read())]
    assert [e.step for e in kept if e.HasField("summary")] == [50, 150]
    assert [v.tag for e in kept if e.HasField("summary") for v in e.summary.value] == ["train/loss"] * 2


def test_an_event_file_that_cannot_be_made_is_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path / "blocked")
    os.makedirs(cfg.out_dir)
    with open(os.path.join(cfg.out_dir, "tensorboard"), "w") as f:  # where the folder of event files goes
        f.write("not a directory")
    with pytest.raises(checkpoints.SaveFailed, match=r"could not write to .*blocked: File exists"):
        train(cfg, show_progress=False)
    assert checkpoints.list_checkpoints(cfg.out_dir) == []
