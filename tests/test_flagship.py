"""The flagship experiment: its bring-your-own data file, its bookkeeping, and one tiny end-to-end seed."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from experiments import byo_task, early_stop_recovery, fair_tuning
from framework.config import DataConfig
from harness import flagship, flagship_report, studies
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_byo_file_is_deterministic_distinct_and_read_like_any_user_file(tmp_path):
    from framework.data.encoding import prepare

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
    assert studies.same_run(dataclasses.replace(cfg, out_dir="x"), cfg)
    assert studies.same_run(cfg, dataclasses.replace(cfg, train_until=0.62))
    assert not studies.same_run(dataclasses.replace(cfg, train_until=0.62), cfg)
    assert not studies.same_run(dataclasses.replace(cfg, seed=1), cfg)


def _seed(seed, full, anytime62, anytime5, oracle62, ctrl_frac, ctrl_test):
    r = lambda v, test, frac: {  # noqa: E731
        "variant": v, "val_em": test, "test_em": test, "fraction": frac, "tokens": frac * 100, "flops": frac * 1e9,
        "inference_cost": 1, "what": v}
    rows = [r("full", full, 1.0), r("plain-0.62", full - 0.3, 0.62), r("plain-0.5", full - 0.5, 0.5),
            r("oracle-0.62", oracle62, 0.62), r("anytime-0.62", anytime62, 0.62), r("anytime-0.5", anytime5, 0.5),
            r("anytime-1.0", full + 0.01, 1.0), {**r("controller-8", ctrl_test, ctrl_frac), "stopped_at": 60}]
    curve = [{"tokens": t, "fraction": t / 100, "test_em": em} for t, em in ((40, 0.5), (60, 0.97), (80, 0.99))]
    return {"task": "addition", "seed": seed, "budget_tokens": 100, "seconds": 1.0, "train_seconds": 1.0,
            "today": (200, 0.95), "tuned": {"b0": 200, "budget": 100}, "rows": rows, "curve": curve}


def test_targets_are_judged_on_paired_test_differences():
    seeds = [_seed(0, 0.90, 0.91, 0.85, 0.92, 0.65, 0.895), _seed(1, 0.92, 0.93, 0.90, 0.93, 0.6, 0.90)]
    rows = flagship_report.aggregate(seeds)
    by = {r["variant"]: r for r in rows}
    assert by["anytime-0.62"]["delta_vs_full"] == pytest.approx(0.01)
    t = flagship_report.targets(seeds, rows)
    h = {x["stop"]: x for x in t["headline"]}
    assert h[0.62]["met"] and h[0.62]["delta"]["mean"] == pytest.approx(0.01)
    assert not h[0.5]["met"]  # 0.85 and 0.90 against 0.90 and 0.92
    o = {x["stop"]: x for x in t["oracle"]}
    assert o[0.62]["met"] and o[0.62]["delta"]["mean"] == pytest.approx(-0.005)  # within the 1-point slack
    assert o[1.0]["met"]  # the oracle for the whole budget is the plain recipe itself
    ctrl = t["controller"]["prices"][0]
    assert ctrl["tokens_saved"] == pytest.approx(0.375) and ctrl["em_lost"] == pytest.approx(0.0125)
    assert not t["controller"]["met"]  # 1.25 points lost > 1
    assert t["today"]["per_seed"] == [0.3, 0.3] and t["today"]["reached"] == 2  # 60 of 200 tokens


def test_docs_section_is_replaced_in_place_and_keeps_the_rest(tmp_path):
    seeds = [_seed(s, 0.9, 0.91, 0.85, 0.92, 0.7, 0.9) for s in (0, 1)]
    plan = early_stop_recovery.QUICK
    summary = flagship_report.summarize(seeds, plan, command="python -m experiments.early_stop_recovery", wall_s=60)
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
    assert "| anytime-0.62 | 0.910 | 0.910 |" in first  # the per-seed table
    assert "| oracle planned for the stop |" in first  # the table along the budget
    assert "kept" in first and (tmp_path / "flagship_em_vs_tokens.png").stat().st_size > 10_000


@pytest.mark.slow  # in make chaos (pytest -m slow): keeps make test under CI's 10 minutes
def test_one_tiny_seed_end_to_end(tmp_path, monkeypatch):
    """Every run, cooldown and variant of one (task, seed), on the tiny model: rows for each, cached."""
    tiny = lambda task, out_dir, data_dir: tiny_config(out_dir)  # noqa: E731
    monkeypatch.setattr(fair_tuning, "task_config", tiny)
    tuned = {"addition": {"b0": 24_000, "budget": 24_000, "plain": {"optim.peak_lr": 3e-3},
                          "anytime": {"optim.peak_lr": 3e-3, "optim.optimizer": "schedule-free"},
                          "cooldown": {"fraction": 0.2, "shape": "1-sqrt"}}}
    plan = early_stop_recovery.QUICK._replace(every=0.25, prices=(8, 1000))
    result = flagship.run_seed("addition", 0, str(tmp_path), plan, tuned, log=lambda _: None)
    rows = {r["variant"]: r for r in result["rows"]}
    stops = early_stop_recovery.STOPS
    expected = {"full", "oracle-0.62", "cooldown-0.62", "controller-8", "controller-1000",
                *(f"plain-{f}" for f in stops[:-1]), *(f"anytime-{f}" for f in stops),
                *(f"anytime-ckpt-{f}" for f in stops)}
    assert set(rows) == expected
    assert rows["full"]["fraction"] == pytest.approx(1.0, abs=0.02)
    for f in stops[:-1]:
        assert rows[f"anytime-{f}"]["fraction"] <= f and rows[f"plain-{f}"]["fraction"] <= f
    assert 0.58 < rows["cooldown-0.62"]["fraction"] <= 0.62  # from 0.496 to 0.62: in the budget
    # recoup's model at a stop is the best on validation of what it may ship there
    for f in stops:
        assert rows[f"anytime-{f}"]["val_em"] >= rows[f"anytime-ckpt-{f}"]["val_em"]
    assert rows["anytime-0.62"]["val_em"] >= rows["cooldown-0.62"]["val_em"]
    assert all(0.0 <= r["test_em"] <= 1.0 and r["flops"] > 0 for r in rows.values())
    assert [c["tokens"] for c in result["curve"]] == sorted(c["tokens"] for c in result["curve"])
    again = flagship.run_seed("addition", 0, str(tmp_path), plan, tuned, log=lambda _: None)
    assert again == result  # scored seeds are cached, runs reused


def test_scored_seeds_are_kept_apart_from_the_runs_and_reused_without_them(tmp_path, monkeypatch):
    """--scored DIR: a seed scored once is written there too, and read back where the runs are gone."""
    tiny = lambda task, out_dir, data_dir: tiny_config(out_dir)  # noqa: E731
    monkeypatch.setattr(fair_tuning, "task_config", tiny)
    tuned = {"addition": {"b0": 24_000, "budget": 24_000, "plain": {}, "anytime": {},
                          "cooldown": {"fraction": 0.2, "shape": "1-sqrt"}}}
    plan = early_stop_recovery.QUICK
    trained = []
    monkeypatch.setattr(flagship, "ensure_trained", lambda cfg, log: trained.append(cfg.out_dir) or 1.0)
    monkeypatch.setattr(flagship, "cooldown_configs", lambda *a: {})
    monkeypatch.setattr(flagship, "score_seed", lambda *a: ([{"variant": "full", "test_em": 0.5}], []))
    runs, scored = str(tmp_path / "runs"), str(tmp_path / "scores")
    first = flagship.run_seed("addition", 0, runs, plan, tuned, log=lambda _: None, scored=scored)
    assert trained and first["rows"] == [{"variant": "full", "test_em": 0.5}]
    with open(os.path.join(scored, "addition", "seed0.json")) as f:
        assert json.load(f) == first
    trained.clear()
    again = flagship.run_seed("addition", 0, str(tmp_path / "gone"), plan, tuned, log=lambda _: None, scored=scored)
    assert again == first and not trained  # nothing trained or scored: the kept seed is the result
    other = {"addition": {**tuned["addition"], "plain": {"optim.peak_lr": 1e-3}}}  # another recipe: not reused
    flagship.run_seed("addition", 0, str(tmp_path / "gone"), plan, other, log=lambda _: None, scored=scored)
    assert trained


def _pair_worker(task, seed):
    """A stand-in for one (task, seed): fails for seed 13, else says who ran it."""
    if seed == 13:
        raise ValueError(f"{task} seed {seed} failed")
    return {"task": task, "seed": seed, "pid": os.getpid()}


def test_pairs_run_in_other_processes_keep_their_order_and_raise_a_failure():
    pairs = [("addition", 0), ("multihop", 1), ("byo", 2)]
    got = studies.run_pairs(pairs, _pair_worker, jobs=2, t0=0.0)
    assert [(g["task"], g["seed"]) for g in got] == pairs
    assert os.getpid() not in {g["pid"] for g in got}
    assert len({g["pid"] for g in got}) == len(pairs)  # a fresh process each: memory does not pile up
    with pytest.raises(ValueError, match="byo seed 13 failed"):
        studies.run_pairs([("addition", 0), ("byo", 13)], _pair_worker, jobs=2, t0=0.0)


def test_jobs_below_one_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(SystemExit, match="--jobs must be at least 1"):
        early_stop_recovery.main(["--jobs", "0", "--out", str(tmp_path)])
    assert not os.listdir(tmp_path)


def test_worker_output_is_prefixed_line_by_line_even_when_written_in_pieces():
    import io

    out = io.StringIO()
    stream = studies.PrefixedLines("[byo seed 3] ", out)
    stream.write("  periodic 0.10: step 25")
    assert out.getvalue() == ""  # half a line waits for its end
    stream.write(", val EM 0.000\n  stop 0.25\nsaved")
    stream.flush()
    assert out.getvalue().splitlines() == ["[byo seed 3] periodic 0.10: step 25, val EM 0.000",
                                           "[byo seed 3] stop 0.25", "[byo seed 3] saved"]


def test_a_task_can_train_its_oracles_on_fewer_seeds(tmp_path):
    tuned = early_stop_recovery.load_tuned()
    plan = early_stop_recovery.FULL
    assert plan.oracle_seeds_of("multihop") == (0, 1, 2) and plan.oracle_seeds_of("addition") == (0, 1, 2, 3, 4)
    oracles = lambda task, seed, p=plan: sorted(  # noqa: E731
        n for n in flagship.run_configs(task, seed, str(tmp_path), p, tuned) if n.startswith("oracle"))
    assert oracles("multihop", 2) == ["oracle-0.38", "oracle-0.5", "oracle-0.62", "oracle-0.75"]
    assert oracles("multihop", 3) == [] and len(oracles("addition", 3)) == 4
    narrowed = plan._replace(seeds=(0, 3), oracle_seeds=(0, 3))  # --seeds 0,3: still only multihop's own
    assert narrowed.oracle_seeds_of("multihop") == (0,) and narrowed.oracle_seeds_of("byo") == (0, 3)


COMPILE_TWICE = """
import json, os, sys
from harness.studies import share_compilations
cache = share_compilations(sys.argv[1])
from framework.runner.build import train
from tests.conftest import tiny_config
counts = []
for name in ("a", "b"):
    train(tiny_config(os.path.join(sys.argv[1], name)), show_progress=False)
    counts.append(len(os.listdir(cache)))
print(json.dumps(counts))
"""


def test_a_study_keeps_compiled_programs_and_reuses_them_bit_for_bit(tmp_path):
    """share_compilations: the first run fills OUT/.jax-cache, the same run again compiles nothing new and
    logs the same losses (a fresh process: jax reads the cache directory before its first compilation)."""
    out = subprocess.run([sys.executable, "-c", COMPILE_TWICE, str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = json.loads(out.stdout.strip().splitlines()[-1])
    assert first > 0 and second == first  # every program of the second run was read back

    def losses(name):
        with open(tmp_path / name / "metrics.jsonl") as f:
            return [(e["step"], e["loss"]) for e in map(json.loads, f) if e["event"] == "train"]

    assert losses("a") == losses("b") and losses("a")
