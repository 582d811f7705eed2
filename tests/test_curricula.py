"""Curricula: percentile selection, each built-in's pool, state through checkpoints, resume, errors."""

import json
import os

import jax
import numpy as np
import pytest

from curricula import build, pacing, registry
from framework.app.cli import main
from framework.checkpoints import store as checkpoints
from framework.errors import ConfigError
from framework.runner.build import train
from framework.runner.check import check
from tests.conftest import crash_then_resume, logged_lines, tiny_config
from tests.test_data import _split

# Ten examples, difficulty 1,1,2,2,...,5,5 and prompt lengths growing with the index.
SPLIT = _split([(f"{'9' * (i + 1)}+1=", "1") for i in range(10)])
object.__setattr__(SPLIT, "difficulty", np.repeat(np.arange(1, 6), 2).astype(np.float64))


def _drawn(sampler, steps=30, tokens=0):
    state, seen = sampler.init(), set()
    for _ in range(steps):
        idx, state = sampler.next(state, tokens)
        seen |= set(idx.tolist())
    return seen


def _make(name, fraction, **args):
    return registry.CURRICULA[name](SPLIT, batch_size=4, seed=0, budget_tokens=1000,
                                    pacing=pacing.constant(fraction), **args)


@pytest.mark.parametrize(
    "name, fraction, expected",
    [
        ("easy-to-hard", 0.4, {0, 1, 2, 3}),  # difficulties 1 and 2 are the easiest 40%
        ("easy-to-hard", 0.01, {0, 1}),  # never empty: at least the easiest tie group
        ("easy-to-hard", 1.0, set(range(10))),
        ("hard-to-easy", 0.4, {6, 7, 8, 9}),
        ("seqlen-warmup", 0.3, {0, 1, 2}),  # the three shortest prompts
        ("uniform", 0.1, set(range(10))),  # pacing is ignored
    ],
)
def test_each_curriculum_draws_from_the_right_pool(name, fraction, expected):
    assert _drawn(_make(name, fraction)) == expected


def test_replay_mix_keeps_a_share_of_every_batch_from_all_the_data():
    sampler = _make("replay-mix", 0.2, share=0.5)
    state, replayed, paced = sampler.init(), set(), set()
    for _ in range(40):
        idx, state = sampler.next(state, 0)
        replayed |= set(idx[:2].tolist())
        paced |= set(idx[2:].tolist())
    assert paced == {0, 1} and replayed == set(range(10))


def test_self_paced_excludes_examples_whose_loss_is_high():
    sampler = _make("self-paced", 0.5)
    state = sampler.init()
    assert _drawn(sampler) == set(range(10))  # nothing observed yet: all eligible
    state = sampler.observe(state, np.arange(10), np.arange(10, dtype=np.float32))  # loss = index
    pool = set()
    for _ in range(30):
        idx, state = sampler.next(state, 0)
        pool |= set(idx.tolist())
    assert pool == {0, 1, 2, 3, 4}  # losses <= the median
    assert sampler.info(state, 0)["self_paced_threshold"] == pytest.approx(4.5)


@pytest.mark.parametrize("name, args", [("self-paced", {}), ("replay-mix", {"base": "self-paced"}),
                                        ("easy-to-hard", {})])
def test_curriculum_state_round_trips_through_a_checkpoint(tmp_path, name, args):
    sampler = _make(name, 0.5, **args)
    state = sampler.init()
    for _ in range(3):
        idx, state = sampler.next(state, 0)
        if sampler.observe:
            state = sampler.observe(state, idx, np.linspace(0, 1, len(idx), dtype=np.float32))
    os.makedirs(tmp_path / "run")
    mgr = checkpoints.open_manager(str(tmp_path / "run"))
    checkpoints.save(mgr, 1, params={"w": np.zeros(2)}, opt_state={"m": np.zeros(2)}, sampler_state=state,
                     progress={}, metadata={})
    checkpoints.seal_finished(mgr)
    restored = checkpoints.restore(mgr, 1, sampler=sampler.init()).sampler
    mgr.close()
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), state, restored)))
    assert np.array_equal(sampler.next(state, 0)[0], sampler.next(restored, 0)[0])


def test_a_resumed_loss_driven_curriculum_draws_the_same_batches(tmp_path):
    common = dict(curriculum="replay-mix", curriculum_args={"base": "self-paced", "share": 0.25},
                  pacing="linear", pacing_args={"start": 0.3, "ramp": 0.8}, log_every=3)
    straight = tiny_config(tmp_path / "straight", **common)
    train(straight, show_progress=False)
    broken = tiny_config(tmp_path / "broken", **common)
    crash_then_resume(broken)

    assert logged_lines(straight.out_dir) == logged_lines(broken.out_dir)
    a, b = (checkpoints.list_checkpoints(c.out_dir)[-1] for c in (straight, broken))
    assert a["tokens"] == b["tokens"] and a["val_loss"] == b["val_loss"]


def half_the_budget_then_all(tokens_seen, budget_tokens, floor=0.25):
    """A custom pacing function, imported by path in the tests below."""
    return np.where(tokens_seen < budget_tokens / 2, floor, 1.0)


def test_a_custom_pacing_function_by_import_path():
    pace = build.build_pacing("tests.test_curricula:half_the_budget_then_all", {"floor": 0.4}, 1000)
    assert float(pace(np.float32(100))) == pytest.approx(0.4) and float(pace(np.float32(600))) == 1.0


@pytest.mark.parametrize(
    "kind, name, args, match",
    [
        ("pacing", "no_such_module_xyz:f", {}, "cannot import module 'no_such_module_xyz'"),
        ("pacing", "curricula.pacing:nope", {}, "has no attribute 'nope'"),
        ("pacing", "tests.test_curricula:half_the_budget_then_all", {"bogus": 1}, "cannot take these arguments"),
        ("pacing", "linear", {"slope": 2}, "cannot take these arguments"),
        ("pacing", "tests.test_curricula:half_the_budget_then_all", {"floor": 0.0}, r"fraction must be in \(0, 1\]"),
        ("curriculum", "curricula.pacing:constant", {}, "cannot take these arguments"),
        ("curriculum", "easy-to-hard", {"share": 0.5}, "cannot take these arguments"),
        ("curriculum", "curricula.samplers:nothing", {}, "has no attribute"),
    ],
)
def test_import_path_and_signature_errors_fail_at_start_up(kind, name, args, match):
    with pytest.raises(ConfigError, match=match):
        if kind == "pacing":
            build.build_pacing(name, args, 1000)
        else:
            build.sampler_factory(name, args, "constant", {}, 1000)


def test_unknown_names_list_the_built_ins(tmp_path):
    with pytest.raises(ConfigError, match="easy-to-hard, hard-to-easy"):
        check(tiny_config(tmp_path, curriculum="easiest-first"))
    with pytest.raises(ConfigError, match="constant, linear, root, geometric, steps"):
        check(tiny_config(tmp_path, pacing="cosine"))


def test_cli_curriculum_logs_its_pacing_fraction(tmp_path, capsys):
    out = str(tmp_path / "cli")
    argv = ["train", "--task", "addition", "--preset", "tiny", "--max-digits", "3", "--n-examples", "2000",
            "--val-size", "50", "--test-size", "50", "--batch-size", "32", "--budget-tokens", "12k",
            "--curriculum", "easy-to-hard", "--pacing", "linear", "--pacing-arg", "start=0.3",
            "--pacing-arg", "ramp=0.5", "--out", out, "--no-progress"]
    assert main(argv) == 0
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lines = [json.loads(ln) for ln in f if '"train"' in ln]
    fractions = [ln["pacing_fraction"] for ln in lines]
    assert fractions[0] < 0.7 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert lines[0]["difficulty_max"] <= 2  # 3-digit addition: the easiest third early on
    saved = json.load(open(os.path.join(out, "config.json")))
    assert saved["pacing_args"] == {"start": 0.3, "ramp": 0.5}


def test_rescore_replaces_the_train_difficulty_raw_or_as_percentiles():
    raw = build.rescore(SPLIT, "prompt-length", {}, as_percentile=False)
    assert raw.difficulty.tolist() == [float(4 + i) for i in range(10)]  # "9+1=", "99+1=", ...
    pct = build.rescore(SPLIT, "prompt-length", {}, as_percentile=True)
    assert pct.difficulty.tolist() == [(i + 1) / 10 for i in range(10)]
    assert raw.prompts == SPLIT.prompts and np.array_equal(raw.tokens, SPLIT.tokens)


@pytest.mark.parametrize(
    "scorer, args, match",
    [
        ("column", {}, "missing a required argument: 'name'"),
        ("no_such_module_xyz:score", {}, "cannot import module"),
        ("model-loss", {"run_dir": "/nonexistent/run"}, "no run directory"),
    ],
)
def test_scorer_errors_name_the_problem(scorer, args, match):
    with pytest.raises(ConfigError, match=match):
        build.rescore(SPLIT, scorer, args, as_percentile=False)


def test_transfer_scoring_drives_a_curriculum_end_to_end(trained_run, tmp_path):
    src, stops = trained_run
    cfg = tiny_config(tmp_path / "transfer", scorer="model-loss",
                      scorer_args={"run_dir": src.out_dir, "step": stops[0]["step"]}, scorer_percentile=True,
                      curriculum="easy-to-hard", pacing="linear", pacing_args={"start": 0.2, "ramp": 0.5})
    result = train(cfg, show_progress=False)
    assert result[-1]["fraction"] == 1.0
    with open(os.path.join(cfg.out_dir, "metrics.jsonl")) as f:
        first = next(json.loads(ln) for ln in f if '"train"' in ln)
    assert first["difficulty_max"] <= 0.7  # percentiles of the earlier model's losses, easy ones first


def test_the_custom_curriculum_example_runs_from_the_cli(tmp_path):
    out = str(tmp_path / "carries")
    argv = ["train", "--task", "addition", "--preset", "tiny", "--max-digits", "3", "--n-examples", "2000",
            "--val-size", "50", "--test-size", "50", "--batch-size", "32", "--budget-tokens", "8k",
            "--scorer", "experiments.custom_curriculum:carries",
            "--curriculum", "experiments.custom_curriculum:fewest_carries_first", "--curriculum-arg", "replay=0.25",
            "--pacing", "experiments.custom_curriculum:warm_then_all", "--pacing-arg", "knee=0.5",
            "--out", out, "--no-progress"]
    assert main(argv) == 0
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lines = [json.loads(ln) for ln in f if '"train"' in ln]
    assert lines[0]["pacing_fraction"] == pytest.approx(0.3) and lines[-1]["pacing_fraction"] == 1.0
    assert lines[-1]["difficulty_max"] == 3  # 3-digit sums: at most three carries, reached once all is open


def test_carries_scorer_counts_carries_of_lsb_first_sums():
    from experiments.custom_curriculum import carries

    # 5+5 (one carry), 999+1 (three), 123+456 (none); prompts are LSB-first and zero-padded.
    assert carries()({"prompt": ["500+500=", "999+100=", "321+654="]}) == [1.0, 3.0, 0.0]


def test_a_named_curriculum_draws_the_same_rows_of_a_dataset_as_of_an_encoded_split():
    """curricula.for_datasets: a user's own datasets.Dataset with a difficulty column gets the very
    sampler recoup's trainer uses (same draws for the same difficulty and lengths)."""
    import datasets

    from curricula.for_datasets import dataset_sampler

    ds = datasets.Dataset.from_dict({"prompt": SPLIT.prompts, "answer": SPLIT.answers,
                                     "difficulty": SPLIT.difficulty.tolist()})
    for name in ("easy-to-hard", "seqlen-warmup"):
        ours = dataset_sampler(ds, name, batch_size=4, seed=3, budget_tokens=1000, pacing="linear")
        theirs = build.sampler_factory(name, {}, "linear", {}, 1000)(SPLIT, 4, 3)
        a, b = ours.init(), theirs.init()
        for t in (0, 300, 900):
            (i, a), (j, b) = ours.next(a, t), theirs.next(b, t)
            assert i.tolist() == j.tolist()


def test_a_dataset_without_the_difficulty_column_is_named():
    import datasets

    from curricula.for_datasets import dataset_sampler

    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "hardness": ["x", "y"]})
    with pytest.raises(ConfigError, match="no column 'difficulty'.*allowed: text, hardness"):
        dataset_sampler(ds, "easy-to-hard", batch_size=1, seed=0, budget_tokens=10)
    with pytest.raises(ConfigError, match="must hold numbers"):
        dataset_sampler(ds, "easy-to-hard", batch_size=1, seed=0, budget_tokens=10, difficulty_col="hardness")


def test_the_readme_custom_curriculum_runs_as_written_from_the_directory_of_its_file(tmp_path):
    """The README's example saved as mymod.py: `recoup train --curriculum mymod:...` finds it in the
    current directory with no PYTHONPATH (issue 21), and `recoup cooldown` of that run asks for
    --trust-imports, as the README says."""
    import re
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    section = readme.split("Writing your own, in your own file", 1)[1]
    (tmp_path / "mymod.py").write_text(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    recoup = os.path.join(os.path.dirname(sys.executable), "recoup")  # the console script: cwd is not on its path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    train = [recoup, "train", "--task", "addition", "--max-digits", "3", "--n-examples", "2000", "--val-size", "50",
             "--test-size", "50", "--preset", "tiny", "--batch-size", "32", "--budget-tokens", "12k", "--stops",
             "0.5,1.0", "--curriculum", "mymod:fewest_first", "--curriculum-arg", "replay=0.25",
             "--pacing", "mymod:warm_then_all", "--out", "run", "--no-progress"]
    done = subprocess.run(train, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    cool = [recoup, "cooldown", "run", "--from", "0.5", "--tokens", "0.1", "--no-progress"]
    refused = subprocess.run(cool, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "--trust-imports" in refused.stderr
    assert "--trust-imports" in readme.split("Writing your own, in your own file", 1)[1].split("\n## ", 1)[0]
