"""`recoup report` renders from a small fixture of runs: points, Pareto front, what to ship, a PNG."""

import json

import pytest

from framework.app import report


def _row(kind, tokens, em, cost=1):
    return {"kind": kind, "fraction": tokens / 100, "tokens": tokens, "em": em, "em_sd": 0.0, "inference_cost": cost}


def test_pareto_keeps_only_rows_nothing_beats_on_both_axes():
    rows = [_row("single", 50, 0.5), _row("average", 50, 0.6), _row("single", 70, 0.55), _row("single", 100, 0.9),
            _row("output", 60, 0.7, 3)]
    assert [(r["kind"], r["tokens"]) for r in report.pareto(rows)] == [("average", 50), ("output", 60), ("single", 100)]


def test_what_to_ship_trades_em_for_tokens_at_each_price_within_the_cost_cap():
    rows = [_row("single", 1_000_000, 0.9), _row("average", 600_000, 0.85), _row("output", 600_000, 0.89, 3)]
    cheap, dear = report.what_to_ship(rows, [0.0, 50.0], max_cost=1)
    assert cheap["kind"] == "single" and dear["kind"] == "average"  # 85 - 30 > 90 - 50
    assert report.what_to_ship(rows, [50.0], max_cost=3)[0]["kind"] == "output"


def test_report_renders_from_a_fixture_of_runs(trained_run, tmp_path, capsys):
    from framework.app.cli import main

    cfg, _ = trained_run
    cool = tmp_path / "cool"
    assert main(["cooldown", cfg.out_dir, "--from", "0.5", "--tokens", "0.1", "--out", str(cool), "--no-progress"]) == 0
    out = tmp_path / "rep"
    assert main(["report", cfg.out_dir, str(cool), "--out", str(out), "--max-cost", "2.5", "--prices", "1,100"]) == 0
    capsys.readouterr()
    result = json.loads((out / "report.json").read_text())
    kinds = {(p["kind"], p["fraction"]) for p in result["points"]}
    assert {("single", 0.5), ("single", 1.0), ("average", 1.0), ("output", 1.0), ("cascade", 1.0),
            ("cooldown", 0.5)} <= kinds
    assert all(0.0 <= p["em"] <= 1.0 for p in result["points"])
    costs = {p["kind"]: p["inference_cost"] for p in result["points"] if p["fraction"] == 1.0}
    assert costs["output"] <= 2 and 1 <= costs["cascade"] <= 2.5  # a fractional cap: int(C) members, a mean <= C
    assert {s["max_cost"] for s in result["what_to_ship"]} == {1, 2.5}
    text = (out / "report.md").read_text()
    assert "## What to ship" in text and "| cooldown" in text
    png = (out / "em_vs_tokens.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_report_of_a_non_run_is_a_clear_error(tmp_path, capsys):
    from framework.app.cli import main

    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "no run directory" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind", report.KINDS)
def test_every_kind_has_a_style(kind):
    assert kind in report.STYLE
