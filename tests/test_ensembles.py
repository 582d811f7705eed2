"""Selection under budgets, ensemble artifacts and `recoup ensemble build / eval`."""

import json
import os

import jax
import pytest

from ensembles import artifact, select
from ensembles.members import Candidate, Member, ParamStore
from framework.app.cli import main
from framework.errors import ConfigError
from framework.training.runs import Run
from tests.conftest import tiny_config

STOPS = (0.25, 0.5, 0.75, 1.0)


@pytest.fixture(scope="session")
def ens_runs(tmp_path_factory):
    """Two seeds of a tiny run with four stops, an EMA and SWA (shared, read-only)."""
    from framework.runner.build import train

    root = tmp_path_factory.mktemp("ens")
    runs = []
    for seed in (0, 1):
        cfg = tiny_config(root / f"seed{seed}", seed=seed, stops=STOPS, ema_half_lives=(4_000,), swa_start=0.25)
        train(cfg, show_progress=False)
        runs.append(cfg)
    return runs


def _m(run, tokens, step=1):
    return Member(run, step, tokens, tokens / 100)


def test_training_tokens_count_every_run_a_candidate_draws_from():
    c = Candidate("logits", (_m("a", 30), _m("a", 60, 2), _m("b", 25)), (1, 1, 1), "logits")
    assert c.training_tokens == 60 + 25
    assert c.inference_cost == 3
    assert Candidate("latest-k", c.members, (1, 1, 1), "weights").inference_cost == 1


def test_greedy_soup_keeps_only_members_that_do_not_lower_the_score():
    a, b, c = _m("r", 1, 1), _m("r", 2, 2), _m("r", 3, 3)
    good = {(a,): 0.5, (a, b): 0.4, (a, c): 0.55}  # b hurts, c helps
    soup, score = select.greedy_soup([a, b, c], lambda cand: good[cand.members])
    assert soup.members == (a, c) and score == 0.55


def test_recovery_is_the_share_of_the_gap_won_back():
    assert artifact.recovery(0.9, 0.8, 1.0) == pytest.approx(0.5)
    assert artifact.recovery(0.7, 0.8, 1.0) == pytest.approx(-0.5)
    assert artifact.recovery(0.9, 0.8, None) is None  # no full-budget checkpoint
    assert artifact.recovery(0.9, 0.8, 0.8) is None  # no gap to recover


@pytest.mark.parametrize("spec, tokens", [("0.62", 620), (0.5, 500), ("1", 1000), ("500k", 500_000), ("2000", 2000)])
def test_budget_is_a_fraction_of_the_plan_or_a_token_count(spec, tokens):
    assert select.parse_budget(spec, 1000) == tokens


def test_selection_respects_both_budgets_and_never_reads_the_test_split(ens_runs, monkeypatch):
    read = []
    original = Run.split
    monkeypatch.setattr(Run, "split", lambda self, name: read.append(name) or original(self, name))
    dirs = [c.out_dir for c in ens_runs]
    budget = int(0.75 * ens_runs[0].budget_tokens)  # three checkpoints per run: enough for a vote
    for max_cost in (1, 3):
        sel = select.select(dirs, budget, max_cost, log=lambda _: None)
        assert sel.scored, "no candidate was scored"
        for c, _ in sel.scored:
            assert c.training_tokens <= budget and c.inference_cost <= max_cost, c.describe()
            assert all(m.tokens <= budget for m in c.members)
        methods = {c.method for c, _ in sel.scored}
        assert {"single", "latest-k", "ema", "swa", "soup"} <= methods
        assert ({"logits", "vote"} & methods) == (set() if max_cost == 1 else {"logits", "vote"})
        assert sel.val_em == max(s for _, s in sel.scored)
    assert set(read) == {"validation"}


@pytest.mark.parametrize("method", ["auto", "cascade"])
def test_cascades_fit_the_mean_cost_cap_and_never_read_the_test_split(ens_runs, monkeypatch, method):
    read = []
    original = Run.split
    monkeypatch.setattr(Run, "split", lambda self, name: read.append(name) or original(self, name))
    dirs = [c.out_dir for c in ens_runs]
    budget = int(0.75 * ens_runs[0].budget_tokens)
    sel = select.select(dirs, budget, 1.5, method, log=lambda _: None)
    cascades = [(c, s) for c, s in sel.scored if c.method == "cascade"]
    assert cascades, "no cascade was scored"
    assert {c.k for c, _ in cascades} == {2, 3}  # every k that fits some escalation rate: 3 latest checkpoints
    for c, _ in cascades:
        assert c.training_tokens <= budget and c.inference_cost <= 1.5 + 1e-9, c.describe()
        assert c.first.one_model and c.inference_cost == pytest.approx(1 + c.k * c.escalation_rate)
    # the ensembles behind cascades were scored too (cost 2 and 3), but only what fits 1.5 may be chosen
    assert sel.best.inference_cost <= 1.5 + 1e-9
    assert (sel.best.method == "cascade") if method == "cascade" else (sel.val_em == max(
        s for c, s in sel.scored if c.inference_cost <= 1.5 + 1e-9))
    assert set(read) == {"validation"}


def test_seed_ensembles_stop_each_run_early_enough_to_fit_the_budget(ens_runs):
    dirs = [c.out_dir for c in ens_runs]
    budget = ens_runs[0].budget_tokens  # two runs of half the budget each fit
    cands = select.candidates(ParamStore(), dirs, budget, 2, ["logits"])
    across = [c for c in cands if len({m.run for m in c.members}) == 2]
    assert across and all(c.training_tokens <= budget for c in across)
    assert all(m.fraction <= 0.5 for c in across for m in c.members)


def test_build_writes_a_manifest_that_round_trips_and_evaluates_to_the_same_em(ens_runs, tmp_path):
    run = ens_runs[0].out_dir
    m = artifact.build([run], int(0.75 * ens_runs[0].budget_tokens), 1, str(tmp_path / "ens"), "latest-k",
                       log=lambda _: None)
    loaded = artifact.load_manifest(str(tmp_path / "ens"))
    assert loaded["members"] == json.loads(json.dumps(m["members"]))
    c = artifact.candidate_of(loaded)
    assert c.method == "latest-k" and c.combine == "weights" and len(c.members) >= 2
    assert sum(x["weight"] for x in loaded["members"]) == pytest.approx(1.0)
    assert {"single_at_budget", "single_full"} <= set(loaded["baselines"])
    assert loaded["recoup_version"] and loaded["budgets"]["max_cost"] == 1
    again = artifact.evaluate_ensemble(str(tmp_path / "ens"), "test")
    for key in ("em", "strict_em", "f1", "teacher_forced_strict_em"):
        assert again[key] == pytest.approx(loaded["test"][key]), key


def test_output_ensemble_manifest_evaluates_from_its_members(ens_runs, tmp_path):
    m = artifact.build([ens_runs[0].out_dir], ens_runs[0].budget_tokens, 2, str(tmp_path / "lg"), "logits",
                       log=lambda _: None)
    assert m["combine"] == "logits" and m["inference_cost"] == 2
    again = artifact.evaluate_ensemble(str(tmp_path / "lg"), "test")
    assert again["em"] == pytest.approx(m["test"]["em"])


def test_recoup_eval_and_ensemble_eval_agree_on_a_single_member(ens_runs, tmp_path, capsys):
    run = ens_runs[0].out_dir
    first = artifact.run_members(run)[0]
    out = str(tmp_path / "one")
    assert main(["ensemble", "build", run, "--budget", str(first.tokens), "--method", "single", "--out", out,
                 "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert [x["step"] for x in built["members"]] == [first.step]
    assert main(["eval", run, "--step", str(first.step), "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert main(["ensemble", "eval", out, "--json"]) == 0
    ens = json.loads(capsys.readouterr().out)
    assert set(single) <= set(ens)
    for key in ("em", "strict_em", "f1", "n", "teacher_forced_strict_em", "em_by_difficulty"):
        assert ens[key] == single[key], key


def test_members_of_different_models_are_a_clear_error(ens_runs, tmp_path):
    import dataclasses

    from framework.config import PRESETS
    from framework.runner.build import train

    wide = tiny_config(tmp_path / "wide", model=dataclasses.replace(PRESETS["tiny"], d_model=48, n_heads=2),
                       preset=None)
    train(wide, show_progress=False)
    with pytest.raises(ConfigError, match="members must share one model config"):
        select.select([ens_runs[0].out_dir, wide.out_dir], wide.budget_tokens, 1, log=lambda _: None)


@pytest.mark.parametrize("args, message", [
    (["--budget", "0.5", "--method", "magic"], "method: unknown method 'magic'"),
    (["--budget", "0.5", "--max-cost", "0"], "max-cost: 0 must be >= 1"),
    (["--budget", "10"], "budget: no checkpoint has at most 10 tokens"),
    (["--budget", "0.5", "--method", "vote", "--max-cost", "2"], "needs --max-cost of at least 3"),
    (["--budget", "soon"], "budget: 'soon' is not a token count"),
])
def test_ensemble_build_bad_input_is_one_clear_line(ens_runs, tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["ensemble", "build", ens_runs[0].out_dir, "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_ensemble_eval_of_a_non_ensemble_is_a_clear_error(ens_runs, capsys):
    assert main(["ensemble", "eval", ens_runs[0].out_dir]) == 2
    assert "has no manifest.json, so it is not a recoup ensemble" in capsys.readouterr().err


def test_param_store_keeps_only_the_most_recently_used_trees(ens_runs):
    store = ParamStore(max_trees=2)
    members = artifact.run_members(ens_runs[0].out_dir)[:3]
    first = store.params(members[0])
    store.params(members[1])
    assert store.params(members[0]) is first  # kept, and now the most recent
    store.params(members[2])  # evicts members[1], the least recently used
    assert store.params(members[0]) is first
    assert len(store._params) == 2 and members[1] not in store._params


def test_param_store_builds_the_data_of_runs_that_share_it_once(ens_runs, monkeypatch):
    from ensembles import members as members_module

    a, b = (cfg.out_dir for cfg in ens_runs)
    assert ens_runs[0].data == ens_runs[1].data  # two seeds of one task: the same splits
    built = []
    real = members_module.prepare_with_record  # the real splits and record: each run checks them against its own
    monkeypatch.setattr(members_module, "prepare_with_record", lambda data: built.append(data) or real(data))
    store = ParamStore()
    assert store.run(a).split("test") is store.run(b).split("test")
    assert len(built) == 1


def test_a_swa_that_has_not_started_is_no_candidate(ens_runs):
    run = ens_runs[0].out_dir  # SWA from 25% of the budget: not started at the first (25%) checkpoint
    first = artifact.run_members(run)[0]
    cands = select.candidates(ParamStore(), [run], first.tokens, 1, ["ema", "swa"])
    assert [c.members[0].average for c in cands] == ["ema-4000"]


def test_the_cli_method_names_mirror_selection():
    from framework.app import cli

    assert cli.ENSEMBLE_METHODS == select.METHODS  # the CLI checks them before importing jax


def test_param_store_bounds_the_bytes_it_keeps(ens_runs):
    members = artifact.run_members(ens_runs[0].out_dir)[:3]
    one = sum(x.nbytes for x in jax.tree.leaves(ParamStore().params(members[0])))
    store = ParamStore(max_bytes=2 * one)  # room for two trees
    for m in members:
        store.params(m)
    assert list(store._params) == members[1:]


def test_validation_em_that_training_logged_is_read_not_recomputed(ens_runs, monkeypatch):
    from ensembles import members
    from framework.evaluation import evaluate

    store, run_dir = ParamStore(), ens_runs[0].out_dir
    run = store.run(run_dir)
    for m in members.run_members(run_dir):
        meta = store.metadata(run_dir, m.step)
        single = Candidate("single", (m,), (1.0,), "weights")
        again = evaluate.teacher_forced(run.graphdef, store.params(m), run.split("validation"), run.cfg.eval_batch_size)
        assert members.logged_val_em(store, single) == again["strict_em"] == meta["val_em"]
        assert again["loss"] == meta["val_loss"]  # the same weights, split and batching: bit for bit
        for name, logged in meta.get("average_val_em", {}).items():
            avg = Candidate("ema", (Member(run_dir, m.step, m.tokens, m.fraction, name),), (1.0,), "weights")
            model = members.weights_model(store, avg)
            assert logged == evaluate.teacher_forced(*model, run.split("validation"), run.cfg.eval_batch_size)[
                "strict_em"]
            assert members.logged_val_em(store, avg) == logged
    two = Candidate("latest-k", tuple(members.run_members(run_dir)[-2:]), (1.0, 1.0), "weights")
    assert members.logged_val_em(store, two) is None  # never scored by training: computed
    monkeypatch.setattr(evaluate, "teacher_forced", lambda *a, **k: pytest.fail("recomputed a logged figure"))
    last = members.run_members(run_dir)[-1]
    assert members.strict_em(store, Candidate("single", (last,), (1.0,), "weights"), "validation") == \
        store.metadata(run_dir, last.step)["val_em"]


def test_recovery_comes_with_its_uncertainty_and_a_gap_in_the_noise_says_so():
    from ensembles.artifact import describe_recovery, recovery_interval

    noisy = recovery_interval(0.030, 0.000, 0.010, n=300)  # the "recovery: 300.0%"
    assert noisy["within_noise"] and describe_recovery(noisy).startswith("within noise")
    clear = recovery_interval(0.60, 0.40, 0.90, n=2000)
    assert not clear["within_noise"] and abs(clear["recovery"] - 0.4) < 1e-12
    assert 0.02 < clear["half_width"] < 0.1  # about 6 points at n = 2000
    assert describe_recovery(clear).startswith("40.0% ± ")
    assert recovery_interval(0.5, 0.4, 0.9, n=200)["half_width"] > clear["half_width"]  # fewer prompts, wider
    assert describe_recovery(None).startswith("n/a")


def test_report_refuses_runs_of_different_data(tmp_path):
    from framework.app.report import write_report
    from framework.config import DataConfig
    from framework.run_dirs import CONFIG_FILE

    dirs = []
    for name, data in (("a", DataConfig(task="addition", max_digits=3)), ("b", DataConfig(task="multihop"))):
        cfg = tiny_config(tmp_path / name, data=data)
        os.makedirs(cfg.out_dir)
        with open(os.path.join(cfg.out_dir, CONFIG_FILE), "w") as f:
            f.write(cfg.dumps())
        dirs.append(cfg.out_dir)
    with pytest.raises(ConfigError, match="other data than .*a report averages runs of one task"):
        write_report(dirs, str(tmp_path / "report"))
    assert not (tmp_path / "report").exists()
