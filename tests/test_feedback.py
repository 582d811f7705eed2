"""Feedback on served answers and re-choosing a cascade's rule from it (issue 24): the SQLite store,
which rows tell what (`ensembles.reselect`), `recoup ensemble reselect`, and (slow) 2,000 feedbacks at
concurrency 32 and a kill -9 of the server. The HTTP side on a live server is in tests/test_serving.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest

from ensembles import artifact
from ensembles.reselect import MIN_ROWS, Answer, Row, Rule, correctness, gain_bound, reselect
from framework.app.cli import main
from framework.errors import ConfigError
from framework.serving import feedback
from framework.serving.feedback import COLUMNS, Feedback, FeedbackStore
from framework.serving.generation import encode_prompt
from framework.training.runs import open_run

T, F = True, False
X, Y = Answer("12", True), Answer("21", True)


# == which rows tell what ========================================================================


@pytest.mark.parametrize("row, want", [
    # a reference judges every answer that is known, by strict EM (text and EOS)
    (Row({}, X, Y, "single", None, "12"), (T, F)),
    (Row({}, X, None, "single", None, "21"), (F, None)),  # the ensemble never ran, and was not decoded
    (Row({}, Answer("12", False), Y, "ensemble", None, "12"), (F, F)),  # no EOS: not an answer
    # a verdict is on the served answer; it carries over to the other part's only if that answer is the same
    (Row({}, X, None, "single", T, None), (T, None)),
    (Row({}, X, Y, "single", F, None), (F, None)),
    (Row({}, X, X, "single", F, None), (F, F)),
    (Row({}, X, Y, "ensemble", T, None), (None, T)),  # an escalated verdict says nothing of the 1x answer
    (Row({}, Y, Y, "ensemble", T, None), (T, T)),
    (Row({}, Answer("21", False), Y, "ensemble", T, None), (None, T)),
])
def test_what_a_feedback_row_tells_about_each_part(row, want):
    assert correctness(row) == want


def test_the_gain_bound_is_an_exact_one_sided_sign_test():
    n = np.zeros(100, bool)
    new = n.copy()
    new[:3] = True  # 3 rows better, none worse: p = 1/8 under "no better": not enough
    gain, lower, b, c = gain_bound(new, n)
    assert (gain, b, c) == (0.03, 3, 0) and lower < 0
    new[:24] = True
    gain, lower, _, _ = gain_bound(new, n)  # 24 to 0: the lower bound uses p >= 0.05 ** (1 / 24)
    assert lower == pytest.approx(24 * (2 * 0.05 ** (1 / 24) - 1) / 100) and lower > 0
    assert gain_bound(n, n)[:2] == (0.0, 0.0)
    worse = n.copy()
    worse[:10] = True
    assert gain_bound(n, worse)[1] < 0


def _rows(n: int, cut: float = 0.2) -> list[Row]:
    """n escalated rows with references: the 1x answer is wrong exactly where min_prob < cut, the
    ensemble's always right; margin ranks the rows the other way round (useless)."""
    out = []
    for i in range(n):
        p = (i + 0.5) / n
        sig = {"min_prob": p, "mean_logprob": np.log(p), "margin": 1 - p}
        out.append(Row(sig, X if p < cut else Y, Y, "ensemble", None, "21"))
    return out


def test_reselect_switches_only_on_enough_rows_and_a_bound_above_zero():
    current = Rule("min_prob", -np.inf)
    r = reselect(_rows(240), current, k=2, max_cost=1.5)
    assert r["switch"] and r["chosen"]["signal"] == "min_prob" and 0.19 < float(r["chosen"]["tau"]) < 0.21
    assert r["rows"]["usable"] == 240 and r["confirm"]["n"] == 120 and r["confirm"]["gain_lower_bound"] > 0
    assert r["chosen"]["strict_em"] == 1.0 and r["current"]["strict_em"] == pytest.approx(0.8)
    assert r["chosen"]["mean_cost"] <= 1.5
    few = reselect(_rows(MIN_ROWS - 2), current, k=2, max_cost=1.5)
    assert not few["switch"] and "fewer than the 200 needed" in few["reason"] and few["chosen"] is None
    assert not reselect(_rows(240), Rule(r["chosen"]["signal"], float(r["chosen"]["tau"])), 2, 1.5)["switch"]
    # a cap that leaves no room to escalate the rows that need it: nothing better fits
    assert not reselect(_rows(240), current, k=2, max_cost=1.05)["switch"]
    # the gain is too small to be sure of: 2 rows in 240 are fixed by escalating
    small = reselect(_rows(240, cut=0.01), current, k=2, max_cost=1.5)
    assert not small["switch"] and "not better" in small["reason"]


# == the store ===================================================================================


def _record(i: int, path: str = "ensemble", prompt_tokens=(1, 50), sig=None, first="12", answer="21",
            temperature=0.0, stop="[]") -> tuple:
    sig = sig or {"min_prob": 0.5, "mean_logprob": -1.0, "margin": 0.1}
    values = {"id": f"cmpl-{i}", "idx": 0, "model": "c", "created": 1000.0 + i, "prompt": "1+1=",
              "prompt_tokens": json.dumps(list(prompt_tokens)), "max_tokens": 9, "temperature": temperature,
              "stop": stop, "answer": answer, "finish_reason": "stop", "path": path, "ended": 1,
              "first_answer": first, "first_ended": 1, "signal": "min_prob", "tau": -np.inf, **sig}
    return tuple(values[c] for c in COLUMNS)


def test_the_store_keeps_one_feedback_per_recorded_choice(tmp_path):
    store = FeedbackStore(str(tmp_path / "f.db"))
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.record([_record(1)])
    assert store.add(Feedback("cmpl-1", 0, True, None)) == "ok"
    assert store.add(Feedback("cmpl-1", 0, True, None)) == "again"  # a retry of the same feedback
    assert store.add(Feedback("cmpl-1", 0, None, "21")) == "duplicate"  # another one: the first stands
    assert store.add(Feedback("cmpl-1", 0, False, None)) == "duplicate"
    assert store.add(Feedback("cmpl-2", 0, True, None)) == "unknown"
    assert store.add(Feedback("cmpl-1", 1, True, None)) == "unknown"
    store.close()
    [row] = feedback.read(str(tmp_path / "f.db"), "c")
    assert row["correct"] == 1 and row["tau"] == -np.inf and row["min_prob"] == 0.5
    assert feedback.read(str(tmp_path / "f.db"), "other") == []
    with pytest.raises(ConfigError, match="feedback_db: cannot open"):
        FeedbackStore(str(tmp_path))  # a directory
    with pytest.raises(ConfigError, match="does not exist"):
        feedback.read(str(tmp_path / "none.db"), "c")


# == recoup ensemble reselect ====================================================================


def _reselect(ens: str, db: str) -> dict:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["ensemble", "reselect", ens, "--feedback", db, "--json"]) == 0
    return json.loads(out.getvalue())


def test_reselect_rewrites_the_rule_only_when_feedback_shows_a_better_one(built_cascade, tmp_path, capsys):
    """On the tiny run's cascade (built with tau = -inf: it never escalates), feedback rows made so that
    escalating the least sure 20% fixes them; 10 more rows were answered by the 1x model, whose
    ensemble answers reselect decodes from their recorded prompts."""
    cfg, built, _ = built_cascade
    ens = str(tmp_path / "c")
    shutil.copytree(built, ens)
    store = FeedbackStore(str(tmp_path / "f.db"))
    rows = _rows(240)
    for i, r in enumerate(rows):
        store.record([_record(i, sig=r.signals, first=r.first.text, answer=r.ensemble.text)])
        store.add(Feedback(f"cmpl-{i}", 0, None, r.reference))
    run = open_run(cfg.out_dir)
    for i, prompt in enumerate(run.split("test").prompts[:10], start=1000):  # sure rows, answered alone
        store.record([_record(i, "single", encode_prompt(run.tokenizer, prompt),
                              {"min_prob": 0.99, "mean_logprob": 0.0, "margin": 0.99}, first="12", answer="12")])
        store.add(Feedback(f"cmpl-{i}", 0, True, None))
    store.record([_record(2000, temperature=1.0)])  # sampled: left out
    store.add(Feedback("cmpl-2000", 0, True, None))
    store.close()
    before = open(os.path.join(ens, artifact.MANIFEST)).read()
    few = tmp_path / "few.db"
    shutil.copy(tmp_path / "f.db", few)
    with contextlib.closing(FeedbackStore(str(few))) as s:  # the same rows, two of them with a feedback
        s.db.execute("DELETE FROM feedback WHERE id NOT IN ('cmpl-0', 'cmpl-1')")
    r = _reselect(ens, str(few))
    assert not r["switch"] and not r["written"] and open(os.path.join(ens, artifact.MANIFEST)).read() == before
    r = _reselect(ens, str(tmp_path / "f.db"))
    assert r["rows"]["with_feedback"] == 251 and r["rows"]["sampled_or_stop_strings"] == 1
    assert r["rows"]["ensemble_decoded"] == 10 and r["rows"]["usable"] >= 240
    assert r["switch"] and r["written"] and r["confirm"]["gain_lower_bound"] > 0
    m = artifact.load_manifest(ens)
    c = artifact.cascade_of(m)
    assert (c.signal, c.tau) == (r["chosen"]["signal"], float(r["chosen"]["tau"])) and c.tau > -np.inf
    assert m["cascade"]["chosen_on"] == "feedback" and m["cascade"]["history"][0]["tau"] == "-inf"
    assert m["inference_cost"] == m["cascade"]["mean_cost"] == pytest.approx(1 + 2 * c.escalation_rate)
    assert m["validation"] == json.loads(before)["validation"]  # the build's figures stay, for the build's rule
    capsys.readouterr()
    assert main(["ensemble", "reselect", ens, "--feedback", str(tmp_path / "f.db")]) == 0  # now as text
    text = capsys.readouterr().out  # the same feedback chooses the rule now in force
    assert "kept min_prob <" in text and "(the feedback chooses the rule in force)" in text and "held out (" in text
    assert open(os.path.join(ens, artifact.MANIFEST)).read() == json.dumps(m, indent=2)
    assert main(["ensemble", "reselect", str(tmp_path / "nothing"), "--feedback", str(tmp_path / "f.db")]) == 2


# == slow: 2,000 feedbacks at concurrency 32, and a kill -9 ======================================


def _serve_args(db: str) -> tuple[str, ...]:
    return ("--feedback-db", db, "--batch-buckets", "1,8", "--prompt-buckets", "16", "--new-token-buckets", "8")


@pytest.mark.slow
def test_2000_feedbacks_at_concurrency_32_among_completions_are_all_stored(built_cascade, tmp_path):
    from harness.feedback_load import feedback_load
    from harness.served import recoup_serve

    cfg, ens, _ = built_cascade
    prompts = list(open_run(cfg.out_dir).split("test").prompts)
    db = str(tmp_path / "f.db")
    with recoup_serve([ens], *_serve_args(db), ready_timeout=300) as server:
        r = feedback_load(server.url, db, "c", prompts, n=2000, concurrency=32)
    assert r["statuses"] == {"completion 200": 2000, "feedback 200": 2000}, r
    assert r["acknowledged"] == 2000 == r["completions_recorded"] and not r["lost"] and not r["wrong"], r
    assert r["integrity"] == "ok"


@pytest.mark.slow
def test_the_feedback_db_survives_a_kill_9_of_the_server(trained_run, tmp_path):
    """Completions and feedbacks at concurrency 16; the server is SIGKILLed in the middle. Every feedback it
    acknowledged is in the file with its completion, SQLite's integrity_check passes, and a server
    started again on the same file refuses a second feedback on them (409) and takes new ones."""
    import httpx

    from harness.feedback_load import check, start
    from harness.served import recoup_serve

    cfg, _ = trained_run
    prompts = list(open_run(cfg.out_dir).split("test").prompts)
    db = str(tmp_path / "f.db")
    with recoup_serve([cfg.out_dir], *_serve_args(db), ready_timeout=300) as server:
        load, ledger = start(server.url, "tiny", prompts, n=100_000, concurrency=16)
        clients = threading.Thread(target=asyncio.run, args=(load,))
        clients.start()
        deadline = time.monotonic() + 300
        while len(ledger.acked) < 300:
            assert time.monotonic() < deadline and clients.is_alive(), ledger.statuses
            time.sleep(0.05)
        os.kill(server.proc.pid, signal.SIGKILL)
        clients.join(120)
        assert server.proc.wait(30) == -signal.SIGKILL
    acked = ledger.acked
    assert any(isinstance(status, str) for _, status in ledger.statuses), ledger.statuses  # the kill came mid-load
    r = check(db, dict(acked))
    assert r["acknowledged"] >= 300 and not r["lost"] and not r["wrong"] and not r["without_completion"], r
    assert r["integrity"] == "ok"
    with recoup_serve([cfg.out_dir], *_serve_args(db), ready_timeout=300) as server:
        cid = next(iter(acked))
        assert httpx.post(server.url + "/v1/feedback", json={"id": cid, "reference": "another"}).status_code == 409
        new = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "1+2=", "max_tokens": 4})
        assert httpx.post(server.url + "/v1/feedback", json={"id": new.json()["id"], "correct": True}).status_code \
            == 200
