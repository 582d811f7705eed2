"""The flagship experiment: its bring-your-own data file, its bookkeeping, and one tiny end-to-end seed."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from experiments import byo_task, early_stop_recovery, flagship_report
from framework.config import DataConfig
from tests.conftest import tiny_config


def test_byo_file_is_deterministic_distinct_and_read_like_any_user_file(tmp_path):
    from framework.data import prepare

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    byo_task.write(str(a), n_rows=3_000, seed=0)
    byo_task.write(str(b), n_rows=3_000, seed=0)
    assert a.read_bytes() == b.read_bytes()
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert len({r["question"] for r in rows}) == 3_000
    for r in rows[:500]:  # both sides are written least-significant digit first
        n, k = int(r["question"][:4][::-1]), int(r["question"][5])
        assert r["question"][4] == "*" and r["answer"][::-1] == f"{n * k:05d}" and r["digits"] == len(str(n))
    splits = prepare(DataConfig(task=None, data_path=str(a), prompt_col="question", answer_col="answer",
                                difficulty_col="digits", val_size=100, test_size=200))
    assert (len(splits["validation"]), len(splits["test"])) == (100, 200)
    assert not set(splits["test"].prompts) & set(splits["train"].prompts)


def test_a_saved_run_serves_a_plan_that_trains_less_far(tmp_path):
    cfg = tiny_config(tmp_path / "a")
    assert early_stop_recovery._same_run(dataclasses.replace(cfg, out_dir="x"), cfg)
    assert early_stop_recovery._same_run(cfg, dataclasses.replace(cfg, train_until=0.62))
    assert not early_stop_recovery._same_run(dataclasses.replace(cfg, train_until=0.62), cfg)
    assert not early_stop_recovery._same_run(dataclasses.replace(cfg, seed=1), cfg)


def _seed(seed, full, plain, ema, wsd_avg_val, wsd_avg_test, ctrl_frac, ctrl_test):
    r = lambda v, val, test, frac=0.62, cost=1: {  # noqa: E731
        "variant": v, "val_em": val, "test_em": test, "fraction": frac, "tokens": frac * 100, "flops": frac * 1e9,
        "inference_cost": cost, "what": v}
    curve = [{"fraction": f, "tokens": 100 * f, "single": plain * f, "ema": ema * f, "ema_tokens": 100 * f}
             for f in (0.5, 1.0)]
    return {"task": "addition", "seed": seed, "budget_tokens": 100, "seconds": 1.0, "train_seconds": 1.0,
            "curve": curve,
            "rows": [r("full", 0.9, full, 1.0), r("plain", 0.5, plain), r("ema", 0.6, ema),
                     r("wsd-ema", wsd_avg_val, wsd_avg_test), r("logits-3", 0.55, plain + 0.01, cost=3),
                     r("controller-8", 0.8, ctrl_test, ctrl_frac)]}


def test_targets_are_chosen_on_validation_and_judged_on_test():
    seeds = [_seed(0, 0.90, 0.60, 0.70, 0.80, 0.95, 0.7, 0.895), _seed(1, 0.92, 0.62, 0.72, 0.81, 0.91, 0.6, 0.90)]
    rows = flagship_report.aggregate(seeds)
    by = {r["variant"]: r for r in rows}
    assert by["ema"]["recovery"] == pytest.approx(((0.1 / 0.3) + (0.1 / 0.3)) / 2)
    assert by["wsd-ema"]["delta_vs_full"] == pytest.approx(0.02)
    t = flagship_report.targets(rows)
    assert t["best_1x"]["variant"] == "wsd-ema" and t["best_1x"]["met"]  # highest validation EM
    assert not t["best_3x"]["met"]
    ctrl = t["controller"]["prices"][0]
    assert ctrl["tokens_saved"] == pytest.approx(0.35) and ctrl["em_lost"] == pytest.approx(0.0125)
    assert not t["controller"]["met"]  # 1.25 points lost > 1


def test_docs_section_is_replaced_in_place_and_keeps_the_rest(tmp_path):
    seeds = [_seed(s, 0.9, 0.6, 0.7, 0.8, 0.85, 0.7, 0.9) for s in (0, 1)]
    summary = flagship_report.summarize(seeds, command="python -m experiments.early_stop_recovery", wall_s=60)
    path, readme = tmp_path / "results.md", tmp_path / "README.md"
    path.write_text("# Results\n\nintro\n\n## Older section\n\nkept\n")
    markers = f"{flagship_report.README_BEGIN}\n{flagship_report.README_END}"
    readme.write_text(f"# x\n\n## Headline\n\n{markers}\n\n## Rest\n")
    flagship_report.write_docs(summary, str(path), str(tmp_path), str(readme))
    first, first_readme = path.read_text(), readme.read_text()
    flagship_report.write_docs(summary, str(path), str(tmp_path), str(readme))
    assert path.read_text() == first and first.count(flagship_report.BEGIN) == 1
    assert readme.read_text() == first_readme and "| addition (2) |" in first_readme and "## Rest" in first_readme
    assert first.index("python -m experiments.early_stop_recovery") < first.index("## Older section")
    assert "| ema | 0.700 | 0.700 |" in first  # the per-seed table
    assert "kept" in first and (tmp_path / "flagship_em_vs_tokens.png").stat().st_size > 10_000


def test_one_tiny_seed_end_to_end(tmp_path, monkeypatch):
    """Every run, cooldown and variant of one (task, seed), on the tiny model: rows for each, cached."""
    tiny = lambda task, out_dir, data_dir: tiny_config(out_dir, stops=(0.5, 0.62, 1.0))  # noqa: E731
    monkeypatch.setattr(early_stop_recovery, "task_config", tiny)
    plan = early_stop_recovery.QUICK._replace(ema_half_lives=(0.05,), every=0.125)  # a checkpoint at 0.5
    result = early_stop_recovery.run_seed("addition", 0, str(tmp_path), plan, log=lambda _: None)
    rows = {r["variant"]: r for r in result["rows"]}
    expected = {"full", "plain", "latest-k", "ema", "soup", "logits-3", "wsd-plain", "wsd-ema",
                "wsd-logits-3", "controller-2", "controller-8", "controller-32", *plan.cooldowns}
    assert set(rows) == expected
    assert rows["full"]["fraction"] == pytest.approx(1.0, abs=0.02)
    for v in ("plain", "latest-k", "ema", "soup", "wsd-plain", "wsd-ema", "wsd-cooldown-in-budget"):
        assert rows[v]["fraction"] <= 0.62 and rows[v]["inference_cost"] == 1, v
    assert rows["logits-3"]["inference_cost"] in (2, 3) and rows["wsd-logits-3"]["fraction"] <= 0.62
    assert 0.57 < rows["wsd-cooldown-in-budget"]["fraction"] <= 0.62  # from 0.5 to 0.62
    assert all(0.0 <= r["test_em"] <= 1.0 and r["flops"] > 0 for r in rows.values())
    again = early_stop_recovery.run_seed("addition", 0, str(tmp_path), plan, log=lambda _: None)
    assert again == result  # scored seeds are cached, runs reused


def _pair_worker(task, seed):
    """A stand-in for one (task, seed): fails for seed 13, else says who ran it."""
    if seed == 13:
        raise ValueError(f"{task} seed {seed} failed")
    return {"task": task, "seed": seed, "pid": os.getpid()}


def test_pairs_run_in_other_processes_keep_their_order_and_raise_a_failure():
    pairs = [("addition", 0), ("multihop", 1), ("byo", 2)]
    got = early_stop_recovery.run_pairs(pairs, _pair_worker, jobs=2, t0=0.0)
    assert [(g["task"], g["seed"]) for g in got] == pairs
    assert os.getpid() not in {g["pid"] for g in got}
    with pytest.raises(ValueError, match="byo seed 13 failed"):
        early_stop_recovery.run_pairs([("addition", 0), ("byo", 13)], _pair_worker, jobs=2, t0=0.0)


def test_jobs_below_one_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(SystemExit, match="--jobs must be at least 1"):
        early_stop_recovery.main(["--jobs", "0", "--out", str(tmp_path)])
    assert not os.listdir(tmp_path)


def test_worker_output_is_prefixed_line_by_line_even_when_written_in_pieces():
    import io

    out = io.StringIO()
    stream = early_stop_recovery.PrefixedLines("[byo seed 3] ", out)
    stream.write("  periodic 0.10: step 25")
    assert out.getvalue() == ""  # half a line waits for its end
    stream.write(", val EM 0.000\n  stop 0.25\nsaved")
    stream.flush()
    assert out.getvalue().splitlines() == ["[byo seed 3] periodic 0.10: step 25, val EM 0.000",
                                           "[byo seed 3] stop 0.25", "[byo seed 3] saved"]
