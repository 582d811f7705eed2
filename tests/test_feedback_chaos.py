"""The checks of `python -m experiments.chaos feedback` (harness/feedback_chaos.py): on hand-made files
and ledgers, what passes and each way of failing; the section it writes; and (slow) two SIGKILLs of a
served cascade, restarted on the same --feedback-db each time."""

from __future__ import annotations

import random

import pytest

from harness.feedback_chaos import PROBES, DbState, compare, failures, probes, settle

A = {"id": "cmpl-a", "correct": True}  # acknowledged
B = {"id": "cmpl-b", "reference": "21"}  # in doubt, and in the file
C = {"id": "cmpl-c", "correct": False}  # in doubt, not in the file
STORED = {("cmpl-a", 0): (1, None), ("cmpl-b", 0): (None, "21")}
RECORDED = {"cmpl-a", "cmpl-b", "cmpl-c", "cmpl-x"}  # cmpl-x: recorded, its answer never reached a client


def _compare(feedback=STORED, rows=None, completions=RECORDED, integrity="ok", answered=("cmpl-a", "cmpl-b", "cmpl-c")):
    db = DbState(dict(feedback), len(feedback) if rows is None else rows, set(completions), integrity)
    return compare(db, {"cmpl-a": A}, {"cmpl-b": B, "cmpl-c": C}, answered)


def test_a_file_holding_what_was_acknowledged_passes_whether_or_not_it_has_the_ones_in_doubt():
    c = _compare()
    assert failures(c) == [] and c["in_doubt_stored"] == 1 and c["recorded_never_answered"] == 1
    assert failures(_compare({("cmpl-a", 0): (1, None)})) == []  # the one in doubt not committed: fine too


@pytest.mark.parametrize("case, words", [
    ({"feedback": {("cmpl-b", 0): (None, "21")}}, "1 acknowledged feedback missing (e.g. cmpl-a)"),
    ({"feedback": {**STORED, ("cmpl-a", 0): (0, None)}}, "1 feedback stored with another value (e.g. cmpl-a)"),
    ({"feedback": {**STORED, ("cmpl-b", 0): (None, "12")}}, "another value (e.g. cmpl-b)"),  # in doubt, but changed
    ({"feedback": {**STORED, ("cmpl-a", 1): (1, None)}}, "1 feedback stored that no client posted"),
    ({"feedback": {**STORED, ("cmpl-z", 0): (1, None)}, "completions": RECORDED | {"cmpl-z"}}, "no client posted"),
    ({"rows": 3}, "1 feedback rows stored twice"),
    ({"answered": ("cmpl-a", "cmpl-d")}, "1 completions answered but not recorded (e.g. cmpl-d)"),
    ({"completions": {"cmpl-b"}, "answered": ()}, "1 feedback without its completion"),
    ({"integrity": "*** in database main ***; Page 7: btreeInitPage() returns error code 11"},
     "integrity_check: *** in database main ***"),
])
def test_each_way_the_file_can_be_wrong_is_a_failure(case, words):
    found = failures(_compare(**case))
    assert any(words in line for line in found), found


def test_the_probes_after_a_restart_and_the_statuses_they_must_get():
    db = DbState(STORED, 2, RECORDED, "ok")
    known = {f"cmpl-k{i}": {"id": f"cmpl-k{i}", "correct": True} for i in range(30)} | {"cmpl-a": A}
    held = {"cmpl-h": {"id": "cmpl-h", "reference": "5"}}
    sent = probes(db, held, {"cmpl-b": B, "cmpl-c": C}, known, random.Random(0), n_second=20, n_unknown=5)
    kinds = [p.kind for p in sent]
    assert {k: kinds.count(k) for k in PROBES} == {"held back": 1, "in doubt, stored": 1, "in doubt, not stored": 1,
                                                  "second feedback": 20, "unknown id": 5, "unknown choice": 5}
    assert [p.body for p in sent[:3]] == [held["cmpl-h"], B, C]  # posted again as they were
    for p in sent:
        if p.kind == "second feedback":  # another value than the first: the first must stand
            assert p.body["id"] in known and p.body != known[p.body["id"]]
        if p.kind == "unknown id":
            assert p.body["id"] not in known and p.body["id"].startswith("cmpl-")
        if p.kind == "unknown choice":
            assert p.body["id"] in known and p.body["index"] == 1
    assert [p.kind for p in probes(db, {}, {}, {}, random.Random(0))] == ["unknown id"] * 5  # nothing known yet


def test_settling_the_probes_counts_them_and_keeps_what_is_now_stored():
    db = DbState(STORED, 2, RECORDED, "ok")
    held = {"cmpl-h": {"id": "cmpl-h", "reference": "5"}, "cmpl-g": {"id": "cmpl-g", "correct": True}}
    sent = probes(db, held, {"cmpl-b": B, "cmpl-c": C}, {"cmpl-a": A}, random.Random(0), n_second=1, n_unknown=1)
    assert [p.kind for p in sent] == ["held back", "held back", "in doubt, stored", "in doubt, not stored",
                                      "second feedback", "unknown id", "unknown choice"]
    tally, wrong, stored = settle(sent, [200, 200, 200, 200, 409, 404, 404])
    assert wrong == [] and stored == {"cmpl-h": held["cmpl-h"], "cmpl-g": held["cmpl-g"], "cmpl-b": B, "cmpl-c": C}
    assert tally == {("held back", 200): 2, ("in doubt, stored", 200): 1, ("in doubt, not stored", 200): 1,
                     ("second feedback", 409): 1, ("unknown id", 404): 1, ("unknown choice", 404): 1}
    tally, wrong, stored = settle(sent, [404, 200, 409, 409, 200, 404, 404])  # a retry refused: wrong too
    assert len(wrong) == 4 and wrong[0].startswith("held back {'id': 'cmpl-h'") and wrong[0].endswith("404, not 200")
    assert "cmpl-h" not in stored and set(stored) == {"cmpl-g", "cmpl-b", "cmpl-c"}


def _round(answered: int, orphans_so_far: int, probes: dict[str, int]) -> dict:
    return {"kill_after_s": 1.5, "answered": answered, "acked": answered - 3, "in_doubt": 1, "in_doubt_stored": 0,
            "held": 2, "recorded_never_answered": orphans_so_far, "integrity": "ok", "ready_s": 20.0,
            "probes": probes}


def test_the_section_counts_each_round_and_sums_them():
    from experiments.chaos_feedback import section

    ok = {"held back: 200": 2, "in doubt, not stored: 200": 1, "second feedback: 409": 20, "unknown id: 404": 5,
          "unknown choice: 404": 5}
    r = {"rounds": [_round(100, 1, ok), _round(50, 3, {**ok, "held back: 404": 1})],
         "final": {"lost": [], "wrong": [], "stored_twice": 0, "never_posted": [], "answered_not_recorded": [],
                   "integrity": "ok"},
         "feedback_stored": 150, "completions_answered": 150, "seconds": 99.0, "failures": [], "seed": 0,
         "max_kill_s": 5.0, "concurrency": 32}
    text = section(r)
    rows = [line for line in text.splitlines() if line.startswith(("| 1 ", "| 2 ", "| all "))]
    assert rows[0] == "| 1 | 1.50 | 100 | 97 | 1 (0 stored) | 1 | 2 / 2 | 1 / 1 | 20 / 20 | 10 / 10 | ok | 20 |"
    assert rows[1] == "| 2 | 1.50 | 50 | 47 | 1 (0 stored) | 2 | 2 / 3 | 1 / 1 | 20 / 20 | 10 / 10 | ok | 20 |"
    assert rows[2] == "| all |  | 150 | 144 | 2 (0 stored) | 3 | 4 / 5 | 2 / 2 | 40 / 40 | 20 / 20 |  |  |"
    assert "--rounds 2 --seed 0" in text and "Verdict: **passed**." in text
    assert "Verdict: **FAILED**: round 2: x." in section({**r, "failures": ["round 2: x"]})


@pytest.mark.slow
def test_two_kills_of_a_served_cascade_lose_no_acknowledged_feedback(built_cascade, tmp_path):
    """`python -m experiments.chaos feedback --feedback-rounds 2`, on the test session's cascade."""
    from framework.training.runs import open_run
    from harness.feedback_chaos import kill_rounds

    cfg, ens, _ = built_cascade
    prompts = list(open_run(cfg.out_dir).split("test").prompts)
    serve = ("--batch-buckets", "1,8", "--prompt-buckets", "16", "--new-token-buckets", "8")
    r = kill_rounds(ens, serve, str(tmp_path / "f.db"), prompts, rounds=2, seed=1, max_kill_s=3.0,
                    concurrency=16, log_dir=str(tmp_path))
    assert r["failures"] == [], r["failures"]
    assert len(r["rounds"]) == 2 and all(x["exit"] == -9 and x["answered"] > 0 for x in r["rounds"]), r["rounds"]
    assert all(x["probes"]["unknown id: 404"] == 5 for x in r["rounds"]), r["rounds"]
    assert r["feedback_stored"] == r["completions_answered"] > 0 and r["final"]["integrity"] == "ok"
