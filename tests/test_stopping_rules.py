"""Stopping rules: table-driven on hand-made evaluation sequences, JSON state, and the budget rule
on synthetic learning curves with a known optimum."""

import json
import math

import numpy as np
import pytest

from framework.errors import ConfigError
from framework.stopping import registry
from framework.stopping import rules as sr
from framework.stopping.budget_rule import budget_rule, fit_curve


def _obs(i, em, loss=1.0, grad=None, correct=None, budget=1000, every=100):
    return sr.Observation(step=i, tokens=(i + 1) * every, fraction=(i + 1) * every / budget, val_em=em,
                          val_loss=loss, grad_norm=grad, correct=correct)


def run_rule(rule, observations, through_json=True):
    """Feed evaluations until the rule fires; the state goes through JSON between calls, as it
    does through a checkpoint. Returns (index it fired at or None, final state, reason)."""
    state = rule.init()
    for i, obs in enumerate(observations):
        if through_json:
            state = json.loads(json.dumps(state))
        state, d = rule.update(state, obs)
        if d.stop:
            return i, state, d.reason
    return None, state, ""


@pytest.mark.parametrize("kwargs, ems, fires_at, best_step", [
    ({"patience": 2}, [0.1, 0.2, 0.3, 0.3, 0.3], 4, 2),                 # two evaluations without a gain
    ({"patience": 2}, [0.1, 0.2, 0.2, 0.25, 0.25, 0.24], 5, 3),          # a gain resets the count
    ({"patience": 2, "min_delta": 0.1}, [0.1, 0.15, 0.19, 0.5], 2, 0),   # gains under min_delta do not count
    ({"patience": 2}, [0.1, 0.2, 0.2, 0.2], 3, 1),
    ({"patience": 2, "baseline": 0.5}, [0.1, 0.2, 0.2, 0.2], 2, 1),  # gains below baseline do not reset wait
    ({"patience": 2, "baseline": 0.5}, [0.1, 0.2, 0.6, 0.6, 0.6], 4, 2),  # passing it does
    ({"patience": 1, "start": 0.35}, [0.5, 0.4, 0.3, 0.3, 0.2], 4, 3),   # before 35% nothing counts
    ({"patience": 3}, [0.1, 0.2, 0.3, 0.4], None, 3),                     # never fires while improving
])
def test_patience_follows_keras_early_stopping(kwargs, ems, fires_at, best_step):
    rule = sr.patience(**kwargs)
    at, state, reason = run_rule(rule, [_obs(i, e) for i, e in enumerate(ems)])
    assert at == fires_at
    assert rule.best_step(state) == best_step
    if at is not None:
        assert reason.startswith("patience: val_em did not improve")


def test_patience_on_loss_minimizes_and_restore_best_can_be_off():
    rule = sr.patience(metric="val_loss", patience=1, restore_best=False)
    at, state, _ = run_rule(rule, [_obs(i, 0.0, loss=x) for i, x in enumerate([3.0, 2.0, 2.5])])
    assert at == 2 and state["best"] == 2.0 and rule.best_step(state) is None


def test_moving_average_is_not_fooled_by_one_noisy_evaluation():
    ems = [0.1, 0.3, 0.2, 0.4, 0.35, 0.5, 0.45, 0.45, 0.45, 0.45]
    assert run_rule(sr.patience(patience=1), [_obs(i, e) for i, e in enumerate(ems)])[0] == 2
    at, _, reason = run_rule(sr.moving_average(window=3, patience=2), [_obs(i, e) for i, e in enumerate(ems)])
    assert at == 9 and reason.startswith("moving average of 3")


def test_grad_norm_plateau_fires_once_the_norm_stops_moving():
    norms = [2.0, 1.5, 1.0, 0.8, 0.79, 0.79, 0.78, 0.78]
    rule = sr.grad_norm_plateau(window=1, rel_tol=0.05, patience=2, start=0.0)
    at, _, reason = run_rule(rule, [_obs(i, 0.5, grad=g) for i, g in enumerate(norms)])
    assert at == 5 and "grad-norm plateau" in reason


@pytest.mark.parametrize("gained, lost, p", [(0, 0, 1.0), (5, 0, 1 / 32), (3, 1, 5 / 16), (0, 4, 1.0)])
def test_sign_test_p_values(gained, lost, p):
    assert sr.sign_test_p(gained, lost) == pytest.approx(p)


def test_paired_test_needs_a_significant_gain_to_move_the_best():
    base = [0] * 40
    better = [1] * 10 + [0] * 30  # ten examples fixed, none broken: p = 2^-10
    noisy = [1] * 11 + [0] * 29   # one more than `better`: p = 0.5
    obs = [_obs(0, 0.0, correct=base), _obs(1, 0.25, correct=better), _obs(2, 0.275, correct=noisy),
           _obs(3, 0.25, correct=better)]
    rule = sr.paired_test(alpha=0.05, patience=2)
    at, state, reason = run_rule(rule, obs)
    assert at == 3 and rule.best_step(state) == 1 and "no evaluation in 2 beat step 1" in reason


def test_any_and_all_and_restore_best_from_whichever_rule_keeps_it():
    ems = [0.1, 0.3, 0.3, 0.3, 0.3]
    fast, slow = sr.patience(patience=1), sr.moving_average(window=1, patience=3)
    at_any, state, reason = run_rule(sr.any_of(slow, fast), [_obs(i, e) for i, e in enumerate(ems)])
    assert at_any == 2 and reason.startswith("patience")
    assert sr.any_of(slow, fast).best_step(state) == 1  # moving-average keeps no best; patience does
    at_all, _, reason = run_rule(sr.all_of(slow, fast), [_obs(i, e) for i, e in enumerate(ems)])
    assert at_all == 4 and "moving average" in reason and "patience" in reason


def test_build_from_specs_and_clear_errors():
    rule = registry.build([{"rule": "patience", "patience": 2}, {"rule": "grad-norm"}], "any")
    assert rule.name == "patience | grad-norm"
    assert registry.build([]) is None
    for specs, match in [([{"rule": "magic"}], "unknown rule 'magic'.*patience, moving-average"),
                         ([{"rule": "patience", "patients": 2}], "unexpected keyword argument 'patients'"),
                         ([{"rule": "patience", "patience": 0}], "stop_rules.patience: 0 must be an integer >= 1"),
                         ([{"rule": "patience", "metric": "f1"}], "stop_rules.metric: unknown value 'f1'"),
                         (["patience"], "must be a mapping with a 'rule' key")]:
        with pytest.raises(ConfigError, match=match):
            registry.build(specs)
    with pytest.raises(ConfigError, match="stop_combine"):
        registry.build([{"rule": "patience"}, {"rule": "patience"}], "most")


# == the budget rule ==========================================================================


def test_curve_fit_recovers_a_known_curve():
    t = np.linspace(0.1, 2.0, 12) * 1e6
    em = 0.95 - 0.2 * (t / 1e6) ** -0.7
    fit = fit_curve(t, em, curve="power")
    assert fit.params == pytest.approx((0.95, 0.2, 0.7), rel=1e-3)
    em = 0.98 / (1 + np.exp(-3.0 * (np.log(t / 1e6) - np.log(0.6))))
    assert fit_curve(t, em, curve="logistic").params == pytest.approx((0.98, 3.0, np.log(0.6)), rel=1e-3)


@pytest.mark.parametrize("a, b, c, price", [(0.95, 0.2, 0.7, 5.0), (0.99, 0.4, 1.0, 10.0), (0.9, 0.1, 0.5, 2.0)])
def test_budget_rule_stops_within_one_evaluation_of_the_known_optimum(a, b, c, price):
    # The optimum: the first t where the slope 100 * b * c * t^-(c+1) falls below the price.
    t_star = (100 * b * c / price) ** (1 / (c + 1)) * 1e6
    budget, every = 4_000_000, 50_000
    obs = []
    for i in range(budget // every):
        t = (i + 1) * every
        obs.append(sr.Observation(i, t, t / budget, a - b * (t / 1e6) ** -c, 1.0))
    rule = budget_rule(price=price, start=0.0, curve="power")
    at, state, reason = run_rule(rule, obs)
    assert at is not None, f"never stopped (optimum at {t_star:,.0f} tokens)"
    stopped = obs[at].tokens
    assert abs(stopped - t_star) <= every, (stopped, t_star)
    assert reason.startswith("budget: the fitted power curve gains") and "predicts EM" in reason
    fit = rule.report(state)["budget_fit"]
    assert fit["em_at_budget"] == pytest.approx(a - b * (budget / 1e6) ** -c, abs=1e-3)
    assert math.isfinite(fit["gain_se"])


@pytest.mark.parametrize("a, k, m, price", [(0.99, 4.0, np.log(1.2), 20.0), (0.95, 2.5, np.log(0.8), 5.0)])
def test_budget_rule_on_an_emerging_skill_waits_through_the_flat_start_and_stops_near_the_optimum(a, k, m, price):
    """A logistic in log-tokens: EM ~0 for a long time, then a jump, then a plateau (like addition)."""
    budget, every = 4_000_000, 50_000
    ts = np.arange(1, budget // every + 1) * every

    def em(t):
        return a / (1 + np.exp(-k * (np.log(t / 1e6) - m)))

    slope = 100 * (em(ts * 1.0001) - em(ts * 0.9999)) / (0.0002 * ts / 1e6)
    peak = int(np.argmax(slope))
    t_star = ts[peak + int(np.argmax(slope[peak:] < price))]  # the first point past the peak below the price
    obs = [sr.Observation(i, int(t), t / budget, float(em(t)), 1.0) for i, t in enumerate(ts)]
    at, state, reason = run_rule(budget_rule(price=price, start=0.0), obs)
    assert at is not None and abs(obs[at].tokens - t_star) <= 2 * every, (obs[at].tokens, t_star)
    assert "logistic" in reason


def test_budget_rule_fits_the_better_of_the_model_and_its_averages():
    rule = budget_rule(price=1.0, min_points=3, start=0.0)
    s = rule.init()
    for i, (em, avg) in enumerate([(0.1, 0.2), (0.2, 0.15), (0.3, None)]):
        s, _ = rule.update(s, sr.Observation(i, (i + 1) * 1000, 0.1 * (i + 1), em, 1.0, average_em=avg))
    assert s["ems"] == [0.2, 0.2, 0.3]


# == in the trainer ===========================================================================


def _rule_run(out_dir, **kw):
    from tests.conftest import tiny_config

    # Tiny runs stay at val EM ~0: patience on EM fires two evaluations after the first one.
    return tiny_config(out_dir, **{"every_tokens": 3_000, "stop_rules": ({"rule": "patience", "patience": 2},), **kw})


@pytest.fixture(scope="module")
def rule_run(tmp_path_factory):
    """`_rule_run` trained once, and the checkpoints `train` returned (read-only: copy it to change it)."""
    from framework.runner.build import train

    cfg = _rule_run(tmp_path_factory.mktemp("rule") / "r")
    return cfg, train(cfg, show_progress=False)


def test_a_firing_rule_stops_the_run_records_why_and_restores_the_best_weights(rule_run, tmp_path):
    import shutil

    import jax

    from framework.checkpoints import store as checkpoints
    from framework.training.runs import open_run

    cfg, stops = rule_run
    last = stops[-1]
    assert last["kind"] == "stopped" and last["reason"].startswith("patience: val_em did not improve")
    assert last["tokens"] < cfg.budget_tokens
    best = last["restored_best_step"]
    assert best == stops[0]["step"]  # EM never rose above the first evaluation's
    run = open_run(cfg.out_dir)
    same = jax.tree.map(lambda a, b: bool((a == b).all()), run.params(best), run.params(last["step"]))
    assert all(jax.tree.leaves(same))
    with open(f"{cfg.out_dir}/metrics.jsonl") as f:
        assert sum('"kind": "stopped"' in line for line in f) == 1
    assert checkpoints.list_checkpoints(cfg.out_dir) == stops
    # Replaying the same rule over the logs reproduces the live decision, per-example data included.
    from framework.stopping import tune

    evals = tune.load_evaluations(cfg.out_dir)
    assert all(len(e.correct) == cfg.data.val_size for e in evals)
    outcome = tune.replay(list(cfg.stop_rules), "any", evals)
    assert outcome.tokens == last["tokens"] and outcome.reason == last["reason"]
    # A torn last line (a run killed mid-write) is left out; a damaged line before it is named (in a copy).
    copy = str(shutil.copytree(cfg.out_dir, tmp_path / "r"))
    with open(f"{copy}/metrics.jsonl", "a") as f:
        f.write('{"event": "eval", "st')
    assert tune.load_evaluations(copy) == evals
    with open(f"{copy}/metrics.jsonl", "a") as f:
        f.write('\n{"event": "train"}\n')
    with pytest.raises(ConfigError, match="is not JSON"):
        tune.load_evaluations(copy)


def test_rule_state_survives_a_crash_and_the_resumed_run_stops_at_the_same_step(rule_run, tmp_path):
    from tests.conftest import crash_then_resume

    _, a = rule_run
    broken = _rule_run(tmp_path / "broken")
    crash_then_resume(broken, after_fraction=0.2)  # between the first evaluations and the stop
    from framework.checkpoints import store as checkpoints

    b = checkpoints.list_checkpoints(broken.out_dir)
    keys = ("step", "tokens", "kind", "reason", "restored_best_step")
    assert [{k: c.get(k) for k in keys} for c in a] == [{k: c.get(k) for k in keys} for c in b]


def test_cli_stop_rule_flags(tmp_path, capsys):
    from framework.app.cli import main

    base = ["train", "--task", "addition", "--preset", "tiny", "--max-digits", "2", "--n-examples", "600",
            "--val-size", "50", "--test-size", "50", "--budget-tokens", "8k", "--batch-size", "16",
            "--every-tokens", "1k", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "bad"), "--stop-rule", "magic:x=1"]) == 2
    assert "stop_rules: unknown rule 'magic'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main([*base, "--out", str(tmp_path / "ok"), "--stop-rule", "patience:patience=1,min_delta=0.5",
                 "--stop-rule", "budget:price=1000", "--stop-combine", "all"]) == 0
    import json

    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert cfg["stop_rules"] == [{"rule": "patience", "patience": 1, "min_delta": 0.5},
                                 {"rule": "budget", "price": 1000}]
    assert cfg["stop_combine"] == "all"


# == cooldown =================================================================================


def test_cooldown_branches_from_a_stop_decays_to_zero_and_counts_its_tokens(trained_run, tmp_path, capsys):
    import json

    from framework.app.cli import main
    from framework.checkpoints import store as checkpoints

    cfg, stops = trained_run
    half = next(c for c in stops if c["fraction"] == 0.5)
    out = tmp_path / "cool"
    assert main(["cooldown", cfg.out_dir, "--from", "0.5", "--tokens", "0.1", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    cool = checkpoints.list_checkpoints(str(out))
    assert len(cool) == 1
    extra = int(0.1 * cfg.budget_tokens)
    assert half["tokens"] < cool[0]["tokens"] <= half["tokens"] + extra  # the source's count continues
    assert cool[0]["step"] > half["step"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [x["lr"] for x in lines if x["event"] == "train"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["optim"]["schedule"] == "cooldown" and saved["optim"]["decay_start"] == half["tokens"]
    from framework.training import schedules

    start_lr = float(schedules.build(cfg.optim, cfg.budget_tokens)(half["tokens"]))
    assert saved["optim"]["peak_lr"] == pytest.approx(start_lr)  # it starts where the source was
    assert len(lrs) >= 2 and lrs == sorted(lrs, reverse=True) and lrs[0] < start_lr  # and decays
    for line in (x for x in lines if x["event"] == "train"):  # linearly to 0 at the end
        assert line["lr"] <= start_lr * (1 - (line["tokens"] - half["tokens"] - 2_000) / extra) + 1e-9
    assert saved["branch_from"].endswith(f"checkpoints/{half['step']}")


def test_cooldown_bad_input_is_one_clear_line(trained_run, tmp_path, capsys):
    from framework.app.cli import main

    cfg, _ = trained_run
    for args, message in [(["--from", "0.1", "--tokens", "0.05"], "from: no checkpoint"),
                          (["--from", "half", "--tokens", "0.05"], "from: 'half' is not a budget fraction"),
                          (["--from", "0.5", "--tokens", "0"], "tokens: '0' gives no tokens"),
                          (["--from", "0.5", "--tokens", "2.0"], "tokens: '2.0' gives 2 tokens, fewer than one batch"),
                          (["--from", "0.5", "--tokens", "1.5"], "tokens: '1.5' is neither a share of the budget"),
                          (["--from", "0.7", "--tokens", "0.05"], "from: no checkpoint")]:
        assert main(["cooldown", cfg.out_dir, *args, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


# == offline tuning ===========================================================================


def _fake_run(tmp_path, name, ems, every=100_000, budget=1_000_000):
    """A run directory whose metrics.jsonl holds a hand-made learning curve."""
    import dataclasses

    from tests.conftest import tiny_config

    d = tmp_path / name
    d.mkdir()
    cfg = dataclasses.replace(tiny_config(d), budget_tokens=budget)
    (d / "config.json").write_text(cfg.dumps())
    lines = []
    for i, em in enumerate(ems):
        lines.append({"event": "train", "step": i * 10 + 5, "grad_norm": 1.0 / (i + 1)})
        lines.append({"event": "eval", "kind": "periodic", "step": (i + 1) * 10, "tokens": (i + 1) * every,
                      "val_em": em, "val_loss": 1 - em})
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(d)


def test_tune_stopping_picks_the_rule_that_pays_and_replay_is_deterministic(tmp_path):
    from framework.stopping import tune

    curve = [0.1, 0.5, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]  # flat from 40% of the budget
    runs = [_fake_run(tmp_path, f"r{i}", curve) for i in range(2)]
    result = tune.tune(runs, price=5.0)
    best = result["best"]
    assert best["rules"] and best["mean_em_lost"] == 0.0  # stops on the plateau, loses nothing...
    assert best["mean_tokens_saved_frac"] >= 0.4  # ...and saves at least 40% of the tokens
    assert tune.tune(runs, price=5.0) == result
    free = tune.tune(runs, price=0.0)["best"]  # tokens cost nothing: stopping cannot beat the full run
    assert free["mean_j"] == pytest.approx(90.0)


def test_tune_stopping_cli(tmp_path, capsys):
    from framework.app.cli import main

    run = _fake_run(tmp_path, "r", [0.2, 0.6, 0.7, 0.7, 0.7, 0.7])
    assert main(["tune-stopping", run, "--price", "10"]) == 0
    out = capsys.readouterr().out
    assert "best:" in out and "saves" in out
    assert main(["tune-stopping", run, "--price", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["best"]["mean_tokens_saved_frac"] > 0
    assert main(["tune-stopping", str(tmp_path / "nope"), "--price", "1"]) == 2
    assert "no run directory" in capsys.readouterr().err


def test_restore_best_applies_when_a_hook_rather_than_the_rule_stops_the_run(tmp_path):
    import jax

    from framework.runner.build import train
    from framework.stopping.points import StopTraining
    from framework.training.runs import open_run

    # A rule that never fires and whose "best" is surely the first evaluation: the highest loss.
    rule = {"rule": "patience", "patience": 50, "metric": "val_loss", "mode": "max"}
    cfg = _rule_run(tmp_path / "h", stop_rules=(rule,))

    def stop_late(event):
        if event.kind == "eval" and event.tokens > 0.5 * cfg.budget_tokens:
            raise StopTraining("operator asked to stop")

    stops = train(cfg, hooks=[stop_late], show_progress=False)
    last = stops[-1]
    assert last["reason"] == "operator asked to stop" and last["restored_best_step"] == stops[0]["step"]
    run = open_run(cfg.out_dir)
    same = jax.tree.map(lambda a, b: bool((a == b).all()), run.params(stops[0]["step"]), run.params(last["step"]))
    assert all(jax.tree.leaves(same))
