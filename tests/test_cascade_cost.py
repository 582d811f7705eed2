"""experiments.cascade_cost: the per-seed cache (kept apart from the runs with --scored) and the target's
paired gap; the scoring itself is ensembles' (tests/test_cascade.py)."""

from __future__ import annotations

import json
import os

import pytest

from experiments import cascade_cost


def _rows(cascade_em: float, best3_em: float) -> list[dict]:
    row = lambda kind, em, cost: {"kind": kind, "test_em": em, "val_em": em, "cost": cost}  # noqa: E731
    return [row("1x", 0.9, 1.0), row("cascade <= 1.3", cascade_em, 1.2), row("best <= 3x", best3_em, 3.0)]


def test_a_kept_seed_is_reused_where_the_runs_are_gone(tmp_path, monkeypatch):
    scored = tmp_path / "scores"
    (scored / "addition").mkdir(parents=True)
    (scored / "addition" / "seed0.json").write_text(json.dumps(
        {"budget_tokens": 1000, "dirs": {"anytime": "/elsewhere/anytime-seed0"}}))
    calls = []
    monkeypatch.setattr(cascade_cost, "score_seed", lambda run_dir, budget, log: calls.append(run_dir) or _rows(1, 1))
    runs = str(tmp_path / "runs")
    first = cascade_cost.seed_rows(runs, "addition", 0, 0.62, log=lambda _: None, scored=str(scored))
    assert calls == [os.path.join(runs, "addition", "anytime-seed0")] and first["budget"] == 620
    for d in (scored, tmp_path / "runs"):  # cached beside the runs and kept apart from them
        assert json.loads((d / "addition" / "cascade-0.62-seed0.json").read_text()) == first
    again = cascade_cost.seed_rows(str(tmp_path / "gone"), "addition", 0, 0.62, log=lambda _: None,
                                   scored=str(scored))
    assert again == first and len(calls) == 1
    cascade_cost.seed_rows(runs, "addition", 0, 0.5, log=lambda _: None, scored=str(scored))  # another stop
    assert len(calls) == 2


def test_the_target_is_the_mean_paired_gap_over_seeds():
    seeds = [{"seed": s, "budget": 620, "seconds": 1.0, "rows": _rows(c, b)}
             for s, (c, b) in enumerate([(0.95, 0.93), (0.90, 0.93), (0.97, 0.94)])]
    t = cascade_cost.summarize({"addition": seeds})["addition"]
    assert t["target"]["gap"] == pytest.approx(0.02 / 3)  # +2, -3, +3 points and t["target"]["met"]
    assert t["kinds"]["cascade <= 1.3"]["test_em"] == pytest.approx(0.94) and t["seeds"] == [0, 1, 2]
    worse = cascade_cost.summarize({"addition": seeds[1:2]})["addition"]
    assert not worse["target"]["met"]


def test_main_scores_only_the_seeds_left_each_in_a_process_of_its_own(tmp_path, monkeypatch, capsys):
    """main: kept seeds are read here; the rest go to run_pairs (one fresh process per seed: scoring
    three seeds in one process held 6.7 GB), in order, and a bad --jobs is refused first."""
    scored = tmp_path / "scores" / "addition"
    scored.mkdir(parents=True)
    for s in (0, 1, 2):
        (scored / f"seed{s}.json").write_text(json.dumps({"budget_tokens": 1000, "dirs": {"anytime": f"a-seed{s}"}}))
    kept = {"version": cascade_cost.VERSION, "seed": 1, "budget": 620, "seconds": 1.0, "rows": _rows(0.9, 0.9)}
    (scored / "cascade-0.62-seed1.json").write_text(json.dumps(kept))
    sent = []

    def fake_pairs(pairs, work, jobs, t0):
        sent.append((list(pairs), work.keywords, jobs))
        return [{**kept, "seed": s, "rows": _rows(0.95, 0.9)} for _, s in pairs]

    monkeypatch.setattr(cascade_cost, "run_pairs", fake_pairs)
    cascade_cost.main(["--flagship", str(tmp_path / "runs"), "--tasks", "addition", "--seeds", "0,1,2",
                       "--scored", str(tmp_path / "scores"), "--docs", "", "--jobs", "2"])
    assert sent == [([("addition", 0), ("addition", 2)], {"flagship": str(tmp_path / "runs"), "stop": 0.62,
                                                          "scored": str(tmp_path / "scores")}, 2)]
    assert "+3.3 ± " in capsys.readouterr().out  # seeds 0 and 2: +5 points, seed 1 (kept): 0
    with pytest.raises(SystemExit, match="--jobs must be at least 1"):
        cascade_cost.main(["--jobs", "0", "--docs", ""])
