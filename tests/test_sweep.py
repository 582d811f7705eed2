"""`recoup sweep`: the search space, scoring, token accounting, pruning, resuming, and the CLI."""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest

from framework.app.cli import main
from framework.errors import ConfigError
from framework.sweeps.report import (
    intermediate,
    levels_over_seeds,
    objective_value,
    read_evals,
    savings,
    tokens_to_levels,
)
from framework.sweeps.space import apply, base_point, grid, parse_param_flags, parse_space, parse_spec
from framework.sweeps.sweep import run_sweep, trial_dir
from tests.conftest import Crash, tiny_config

BUDGET = 12_000
STOPS = (0.25, 0.5, 1.0)
LRS = "choice:3e-3,1e-2,3e-2"  # the base's 3e-3 among them


def base_config(**overrides):
    return tiny_config("unused", **{"budget_tokens": BUDGET, "stops": STOPS, **overrides})


def quiet(_line):
    pass


# == the space ==================================================================================


@pytest.mark.parametrize("field, spec, kind, low, high, choices", [
    ("optim.peak_lr", "log:1e-4:1e-2", "log", 1e-4, 1e-2, ()),
    ("optim.warmup_frac", "uniform:0:0.3", "uniform", 0.0, 0.3, ()),
    ("batch_size", "int:16:64", "int", 16, 64, ()),
    ("model.d_ff", "logint:32:256", "logint", 32, 256, ()),
    ("optim.schedule", "choice:cosine,wsd", "choice", None, None, ("cosine", "wsd")),
    ("swa_start", "choice:null,0.5,true", "choice", None, None, (None, 0.5, True)),
    ("ema_half_lives", "choice:[2000, 4000],[],[3000]", "choice", None, None, ([2000, 4000], [], [3000])),
    ("curriculum_args", 'choice:{"share": 0.25},{"share": 0.5}', "choice", None, None,
     ({"share": 0.25}, {"share": 0.5})),
])
def test_each_kind_of_spec_parses(field, spec, kind, low, high, choices):
    assert parse_spec(field, spec) == (field, kind, low, high, choices)


@pytest.mark.parametrize("field, spec, names", [
    ("optim.peak_lr", "normal:0:1", ["optim.peak_lr", "choice, log, uniform, int, logint"]),
    ("optim.peak_lr", "log", ["optim.peak_lr", "KIND"]),
    ("optim.peak_lr", "log:0:1e-2", ["optim.peak_lr", "LO > 0"]),
    ("optim.peak_lr", "uniform:0.5:0.1", ["optim.peak_lr", "LO < HI"]),
    ("optim.peak_lr", "uniform:0:nan", ["optim.peak_lr", "finite"]),
    ("batch_size", "int:16:64.5", ["batch_size", "integer bounds"]),
    ("batch_size", "int:16:32:64", ["batch_size", "int:LO:HI"]),
    ("batch_size", "choice:", ["batch_size", "comma-separated values"]),
    ("batch_size", "choice:32,32", ["batch_size", "repeats"]),
    ("optim.nope", "log:1e-4:1e-2", ["optim.nope", "unknown field of the optim section", "peak_lr", "warmup_frac"]),
    ("nope", "int:1:2", ["nope", "unknown field of RunConfig", "batch_size", "budget_tokens"]),
    ("trainer.lr", "int:1:2", ["trainer.lr", "unknown section", "optim"]),
    ("optim", "choice:1", ["optim", "is a section", "optim.peak_lr"]),
    ("out_dir", "choice:a,b", ["out_dir", "run directory"]),
    ("seed", "int:0:3", ["seed", "--seeds"]),
])
def test_bad_specs_and_fields_name_the_param_and_what_is_allowed(field, spec, names):
    with pytest.raises(ConfigError) as e:
        parse_spec(field, spec)
    assert e.value.field == field
    for name in names:
        assert name in str(e.value)


def test_fields_are_checked_against_the_dataclasses_not_a_list():
    """A field that exists now (whatever the other sections grow) is accepted; the lists name them all."""
    for section, cls in (("data", type(base_config().data)), ("optim", type(base_config().optim))):
        for f in dataclasses.fields(cls):
            parse_spec(f"{section}.{f.name}", "choice:1")


def test_param_flags_override_in_order_and_must_be_field_equals_spec():
    assert parse_param_flags(["optim.peak_lr=log:1e-4:1e-2", "optim.peak_lr=choice:1,2"]) == {
        "optim.peak_lr": "choice:1,2"}
    with pytest.raises(ConfigError, match="FIELD=SPEC"):
        parse_param_flags(["optim.peak_lr"])


def test_apply_sets_nested_fields_and_tuples_and_base_point_knows_the_space():
    base = base_config(ema_half_lives=(2_000,))
    cfg = apply(base, {"optim.peak_lr": 1e-2, "batch_size": 16, "ema_half_lives": [1_000, 4_000]})
    assert (cfg.optim.peak_lr, cfg.batch_size, cfg.ema_half_lives) == (1e-2, 16, (1_000, 4_000))
    assert cfg.optim.schedule == base.optim.schedule and cfg.data == base.data
    params = parse_space({"optim.peak_lr": LRS, "ema_half_lives": "choice:[2000],[1000,4000]"})
    assert base_point(base, params) == {"ema_half_lives": "[2000]", "optim.peak_lr": 3e-3}
    assert base_point(base, parse_space({"optim.peak_lr": "log:1e-2:1e-1"})) is None
    assert base_point(base, parse_space({"batch_size": "int:8:64"})) == {"batch_size": 32}


def test_grid_needs_choices_only():
    with pytest.raises(ConfigError, match="grid sampler needs choice") as e:
        grid(parse_space({"optim.peak_lr": "log:1e-4:1e-2", "batch_size": "choice:16,32"}))
    assert e.value.field == "optim.peak_lr"
    with pytest.raises(ConfigError) as e:
        run_sweep(base_config(), {"optim.peak_lr": "log:1e-4:1e-2"}, "/nonexistent/sweep", trials=None,
                  sampler="grid", log=quiet)
    assert e.value.field == "optim.peak_lr"


def test_a_space_whose_low_end_is_no_valid_run_fails_before_anything_trains(tmp_path):
    with pytest.raises(ConfigError, match="low end") as e:
        run_sweep(base_config(), {"batch_size": "uniform:16:64"}, str(tmp_path / "s"), trials=2, log=quiet)
    assert e.value.field == "batch_size"
    assert not os.path.exists(tmp_path / "s")


# == scoring, on eval lines written by hand =====================================================


def _eval(tokens, val_em, kind="stop", fraction=None, **averages):
    line = {"event": "eval", "tokens": tokens, "fraction": fraction or tokens / 1000, "step": tokens // 10,
            "kind": kind, "val_em": val_em, "val_loss": 1.0}
    if averages:
        line["average_val_em"] = averages
    return line


def test_anytime_objective_is_the_mean_of_the_best_single_model_at_each_stop(tmp_path):
    lines = [_eval(250, 0.2, ema_a=0.3, ema_b=0.1), _eval(400, 0.9, kind="periodic", ema_a=0.95),
             _eval(500, 0.5, ema_a=0.4, ema_b=0.6), _eval(1000, 0.8, ema_a=0.7, ema_b=0.75)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"event": "train", "step": 5, "tokens": 50}, *lines]) + "\n" + '{"event": "eval", "tok')  # a torn last line
    evals = read_evals(str(tmp_path))
    assert [e["tokens"] for e in evals] == [250, 400, 500, 1000]
    assert objective_value(evals, "anytime") == pytest.approx((0.3 + 0.6 + 0.8) / 3)  # the periodic line is no stop
    assert objective_value(evals, "final") == 0.8
    stops = [e for e in evals if e["kind"] == "stop"]
    assert intermediate(stops[:2], "anytime") == pytest.approx((0.3 + 0.6) / 2)
    assert intermediate(stops[:2], "final") == 0.5
    # pruned at the 0.5 stop: its `stopped` checkpoint is saved in place of that stop, and counts as it
    pruned = [lines[0], {**lines[2], "kind": "stopped", "reason": "pruned by the sweep at 500 tokens"}]
    assert objective_value(pruned, "anytime") == pytest.approx((0.3 + 0.6) / 2) == intermediate(stops[:2], "anytime")


def test_tokens_to_reach_levels_take_the_first_checkpoint_at_or_over_each_level():
    evals = [_eval(t, em) for t, em in ((100, 0.1), (200, 0.6), (300, 0.55), (400, 0.92), (500, 0.96))]
    levels = (0.5, 0.9, 0.95, 0.99)
    assert tokens_to_levels(evals, levels, "final") == {"0.5": 200, "0.9": 400, "0.95": 500, "0.99": None}
    evals[0]["average_val_em"] = {"ema": 0.97}  # the anytime objective counts the EMAs
    assert tokens_to_levels(evals, levels, "anytime") == {"0.5": 100, "0.9": 100, "0.95": 100, "0.99": None}
    late = [_eval(t, em) for t, em in ((150, 0.4), (250, 0.91), (600, 0.96))]
    assert levels_over_seeds([evals, late], levels, "final") == {"0.5": 250, "0.9": 400, "0.95": 600, "0.99": None}


def test_savings_compare_at_the_highest_level_both_reach():
    winner, base = {"0.5": 100, "0.9": 300, "0.99": None}, {"0.5": 250, "0.9": 500, "0.99": None}
    assert savings(winner, base, total_tokens=10_000) == {"level": 0.9, "winner_tokens": 300, "base_tokens": 500,
                                                          "tokens_saved_per_run": 200, "break_even_runs": 50.0}
    assert savings(winner, {"0.5": 50, "0.9": None}, 10_000)["break_even_runs"] is None  # it saves nothing
    assert savings({"0.5": None}, {"0.5": 10}, 10)["level"] is None


# == sweeps that train ==========================================================================


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """A 3-point grid over the learning rate, through the CLI: a --space file that --param overrides."""
    root = tmp_path_factory.mktemp("sweep")
    config = root / "config.py"
    config.write_text("from tests.conftest import tiny_config\n\n\ndef get_config():\n"
                      f"    return tiny_config('unused', budget_tokens=24_000, stops={STOPS!r})\n")
    space = root / "space.py"
    space.write_text("def get_space():\n    return {'optim.peak_lr': 'choice:1,2'}\n")
    out = str(root / "grid")
    argv = ["sweep", "--config", str(config), "--space", str(space), "--param", f"optim.peak_lr={LRS}",
            "--sampler", "grid", "--budget-tokens", f"{BUDGET}", "--out", out, "--json"]
    assert main(argv) == 0
    return out, argv


def test_a_grid_sweep_scores_every_point_and_counts_every_token(grid_sweep, capsys):
    out, _ = grid_sweep
    results = json.load(open(os.path.join(out, "results.json")))
    trials = results["trials"]
    assert sorted(t["params"]["optim.peak_lr"] for t in trials) == [3e-3, 1e-2, 3e-2]
    for t in trials:
        assert t["state"] == "COMPLETE"
        (run_dir,) = t["run_dirs"]
        evals = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl")) if '"eval"' in x]
        assert t["objective"] == evals[-1]["val_em"]
        assert t["tokens_trained"] == evals[-1]["tokens"] and 0.9 * BUDGET < t["tokens_trained"] <= BUDGET
        assert json.load(open(os.path.join(run_dir, "config.json")))["budget_tokens"] == BUDGET
    summary = results["summary"]
    assert summary["total_tokens"] == sum(t["tokens_trained"] for t in trials)
    assert results["base"]["run_dirs"] == next(t["run_dirs"] for t in trials if t["params"]["optim.peak_lr"] == 3e-3)
    assert summary["best"]["objective"] == max(t["objective"] for t in trials)
    for name in ("em_vs_tokens.png", "summary.md", "sweep.json", "optuna.db"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert len(os.listdir(os.path.join(out, "trials"))) == 3


def test_a_point_tried_again_is_read_back_for_nothing(grid_sweep):
    out, _ = grid_sweep
    before = json.load(open(os.path.join(out, "results.json")))["summary"]["total_tokens"]
    summary = run_sweep(base_config(), {"optim.peak_lr": LRS}, out, trials=4, sampler="grid", log=quiet)
    trials = json.load(open(os.path.join(out, "results.json")))["trials"]
    assert len(trials) == 4 and trials[-1]["tokens_trained"] == 0 and trials[-1]["reused"]
    assert summary["total_tokens"] == before and len(os.listdir(os.path.join(out, "trials"))) == 3


def test_a_rerun_with_another_base_config_or_space_is_refused_naming_it(grid_sweep):
    out, _ = grid_sweep
    with pytest.raises(ConfigError, match="differs from the sweep") as e:
        run_sweep(base_config(budget_tokens=2 * BUDGET), {"optim.peak_lr": LRS}, out, trials=3, sampler="grid",
                  log=quiet)
    assert e.value.field == "base.budget_tokens"
    with pytest.raises(ConfigError) as e:
        run_sweep(base_config(), {"optim.peak_lr": "choice:3e-3,1e-2"}, out, trials=3, sampler="grid", log=quiet)
    assert e.value.field == "space.optim.peak_lr"


def test_pruned_trials_stop_early_and_their_tokens_count_and_a_base_outside_the_space_is_a_reference(tmp_path):
    import optuna

    class PruneTheTinyRate(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.params["optim.peak_lr"] < 1e-5

    out = str(tmp_path / "pruned")
    summary = run_sweep(base_config(), {"optim.peak_lr": "choice:1e-2,1e-6"}, out, trials=None, sampler="grid",
                        pruner=PruneTheTinyRate(), log=quiet)
    results = json.load(open(os.path.join(out, "results.json")))
    by_lr = {t["params"]["optim.peak_lr"]: t for t in results["trials"]}
    pruned, kept = by_lr[1e-6], by_lr[1e-2]
    assert (pruned["state"], kept["state"]) == ("PRUNED", "COMPLETE")
    last = read_evals(pruned["run_dirs"][0])[-1]
    assert last["kind"] == "stopped" and last["reason"].startswith("pruned by the sweep at")
    assert pruned["tokens_trained"] == pruned["pruned_at"] == last["tokens"] <= STOPS[0] * BUDGET
    # the reference run: the base's 3e-3 is not in the space, so it was trained beside the study
    ref_tokens = read_evals(results["base"]["run_dirs"][0])[-1]["tokens"]
    assert results["base"]["number"] is None and summary["reference_tokens"] == ref_tokens > 0.9 * BUDGET
    assert summary["total_tokens"] == ref_tokens + pruned["tokens_trained"] + kept["tokens_trained"]
    # the pruner saw every stopping point of the complete trial, at its planned tokens
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out}/optuna.db")
    complete = next(t for t in study.trials if t.state.name == "COMPLETE")
    assert sorted(complete.intermediate_values) == [round(f * BUDGET) for f in STOPS]


def test_a_sampled_point_that_is_no_valid_run_fails_and_the_sweep_goes_on(tmp_path):
    optim = dataclasses.replace(base_config().optim, schedule="wsd", decay_frac=0.5)
    base, out, lines = base_config(budget_tokens=6_000, optim=optim), str(tmp_path / "invalid"), []
    # warmup 0.05 + decay 0.99 > 1 is no wsd run: the grid's second point fails validation
    summary = run_sweep(base, {"optim.decay_frac": "choice:0.5,0.99"}, out, trials=2, sampler="grid",
                        log=lines.append)
    trials = json.load(open(os.path.join(out, "results.json")))["trials"]
    failed = [t for t in trials if t["state"] == "FAIL"]
    assert failed and summary["trials"]["COMPLETE"] == 2  # the valid point, and once more read back
    for t in failed:
        assert t["params"] == {"optim.decay_frac": 0.99} and "optim.decay_frac" in t["error"]
        assert t["tokens_trained"] == 0 and not os.path.exists(t["run_dirs"][0])
    assert any("not a valid run (optim.decay_frac" in line for line in lines)
    assert len(os.listdir(os.path.join(out, "trials"))) == 1


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow  # in make chaos (pytest -m slow): keeps make test under CI's 10 minutes
def test_a_rerun_trains_only_what_is_missing_and_resumes_a_trial_whose_process_died(tmp_path):
    import optuna
    from optuna.distributions import CategoricalDistribution

    from framework.runner.build import train

    out, space, base = str(tmp_path / "resume"), {"optim.peak_lr": LRS}, base_config()
    run_sweep(base, space, out, trials=2, sampler="random", log=quiet)  # trial 0: the base config
    first = json.load(open(os.path.join(out, "results.json")))["trials"]
    tried = {t["params"]["optim.peak_lr"] for t in first}  # the random point may repeat the base: read back
    assert first[0]["params"]["optim.peak_lr"] == 3e-3 and len(os.listdir(os.path.join(out, "trials"))) == len(tried)
    lr = min({3e-3, 1e-2, 3e-2} - tried)
    # A process that died in the middle of another point: a RUNNING trial, its run half trained.
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out}/optuna.db")
    study.enqueue_trial({"optim.peak_lr": lr})
    dead = study.ask({"optim.peak_lr": CategoricalDistribution([3e-3, 1e-2, 3e-2])})
    cfg = dataclasses.replace(apply(base, {"optim.peak_lr": lr}), seed=0, out_dir="")
    cfg = dataclasses.replace(cfg, out_dir=trial_dir(out, cfg))
    for key, value in (("host", socket.gethostname()), ("pid", _dead_pid()), ("run_dirs", [cfg.out_dir]),
                       ("start_tokens", {cfg.out_dir: 0})):
        dead.set_user_attr(key, value)

    def crash(event):
        if event.kind == "step" and event.tokens > 0.6 * BUDGET:
            raise Crash()

    with pytest.raises(Crash):
        train(cfg, hooks=[crash], show_progress=False)
    checkpointed = read_evals(cfg.out_dir)[-1]["tokens"]  # the 0.5 stop

    lines = []
    summary = run_sweep(base, space, out, trials=3, sampler="random", log=lines.append)
    assert any(f"trial {dead.number} was left running" in line for line in lines)
    trials = json.load(open(os.path.join(out, "results.json")))["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    failed, resumed = trials[2], trials[3]
    assert resumed["params"] == {"optim.peak_lr": lr} and resumed["run_dirs"] == [cfg.out_dir]
    assert trials[:2] == first  # nothing trained again
    final = read_evals(cfg.out_dir)[-1]["tokens"]
    assert failed["tokens_trained"] == checkpointed and resumed["tokens_trained"] == final - checkpointed
    assert summary["total_tokens"] == first[0]["tokens_trained"] + first[1]["tokens_trained"] + final
    assert len(os.listdir(os.path.join(out, "trials"))) == len(tried) + 1


def test_an_interrupted_trial_counts_what_it_trained_and_the_rerun_resumes_its_run(tmp_path):
    import optuna

    class InterruptAtTheSecondStop(optuna.pruners.BasePruner):  # Ctrl-C while the 0.5 stop is evaluated
        calls = 0

        def prune(self, study, trial):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt
            return False

    out, space, base = str(tmp_path / "interrupted"), {"optim.peak_lr": "choice:3e-3"}, base_config()
    with pytest.raises(KeyboardInterrupt):
        run_sweep(base, space, out, trials=1, pruner=InterruptAtTheSecondStop(), log=quiet)
    (run_dir,) = os.listdir(os.path.join(out, "trials"))
    run_dir = os.path.join(out, "trials", run_dir)
    (first_stop,) = read_evals(run_dir)  # the 0.5 stop was being evaluated: its hooks run before its line
    checkpointed = first_stop["tokens"]
    reached = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))][-1]["tokens"]  # a train line
    assert first_stop["fraction"] == 0.25 and checkpointed < reached <= 0.5 * BUDGET
    summary = run_sweep(base, space, out, trials=1, log=quiet)
    failed, resumed = json.load(open(os.path.join(out, "results.json")))["trials"]
    assert (failed["state"], resumed["state"]) == ("FAIL", "COMPLETE") and resumed["run_dirs"] == [run_dir]
    final = read_evals(run_dir)[-1]["tokens"]
    # the stretch from the 0.25 checkpoint to the interruption was trained twice, and is counted twice
    assert failed["tokens_trained"] == reached and resumed["tokens_trained"] == final - checkpointed
    assert summary["total_tokens"] == reached + final - checkpointed


# == the command line ===========================================================================


def test_the_cli_rejects_a_bad_param_naming_it_before_anything_is_written_or_jax_imported(tmp_path):
    demo = os.path.join(os.path.dirname(__file__), "..", "experiments", "demo.py")
    out = str(tmp_path / "s")
    code = ("import sys; from framework.app.cli import main; "
            f"rc = main(['sweep', '--config', {demo!r}, '--param', 'optim.nope=log:1e-4:1e-2', '--trials', '2', "
            f"'--out', {out!r}]); assert rc == 2, rc; assert 'jax' not in sys.modules, 'jax was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("recoup: error: optim.nope: unknown field") and "peak_lr" in proc.stderr
    assert not os.path.exists(out)


@pytest.mark.parametrize("argv, names", [
    (["--param", "optim.peak_lr=log:1e-4:1e-2", "--sampler", "grid"], ["optim.peak_lr", "choice"]),
    (["--param", "optim.peak_lr=log:1e-4:1e-2"], ["trials"]),
    (["--param", "optim.peak_lr=log:1e-4:1e-2", "--trials", "2", "--objective", "best"], ["objective", "anytime"]),
    (["--param", "optim.peak_lr=log:1e-4:1e-2", "--trials", "2", "--levels", "0.5,2"], ["levels"]),
    (["--param", "optim.peak_lr=log:1e-4:1e-2", "--trials", "2", "--seeds", "a"], ["seeds"]),
    (["--space", "no/such/space.py", "--trials", "2"], ["space", "no/such/space.py"]),
])
def test_the_cli_names_each_bad_flag(tmp_path, capsys, argv, names):
    demo = os.path.join(os.path.dirname(__file__), "..", "experiments", "demo.py")
    assert main(["sweep", "--config", demo, "--out", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recoup: error:") and err.count("\n") == 1
    for name in names:
        assert name in err


def test_workers_sharing_a_study_count_each_others_running_trials_and_wait_for_them(tmp_path, monkeypatch):
    import threading

    import optuna
    from optuna.distributions import CategoricalDistribution

    import framework.sweeps.workers as sweep_workers

    monkeypatch.setattr(sweep_workers, "WAIT_POLL_S", 0.05)
    out, space, base = str(tmp_path / "shared"), {"optim.peak_lr": LRS}, base_config()
    run_sweep(base, space, out, trials=1, sampler="random", log=quiet)  # trial 0: the base config
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out}/optuna.db")
    done = study.trials[0]
    # Another worker, alive (this very process), is running a point of the study.
    other = study.ask({"optim.peak_lr": CategoricalDistribution([3e-3, 1e-2, 3e-2])})
    for key, value in (("host", socket.gethostname()), ("pid", os.getpid()), ("run_dirs", []), ("tokens", 0),
                       ("evals", done.user_attrs["evals"]), ("base", False)):
        other.set_user_attr(key, value)

    lines = []

    def the_other_worker_finishes():  # once this worker waits for it (or a minute passed: then the test fails)
        for _ in range(1200):
            if any(line.startswith("waiting") for line in lines):
                break
            threading.Event().wait(0.05)
        study.tell(other.number, 0.5)

    thread = threading.Thread(target=the_other_worker_finishes)
    thread.start()
    run_sweep(base, space, out, trials=3, sampler="random", sampler_seed=1, log=lines.append)
    thread.join()
    trials = json.load(open(os.path.join(out, "results.json")))["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3  # one of its own, not two: the other's counted
    assert sum(line.startswith("trial 2 ") and "training" in line for line in lines) == 1
    assert not any(line.startswith("trial 3 ") for line in lines)
    assert "waiting for 1 trial(s) other workers are running" in lines and trials[1]["objective"] == 0.5
