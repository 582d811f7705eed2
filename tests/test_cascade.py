"""Cascades (ensembles/cascade.py): a 1x model answers, a log-prob ensemble answers again where the
1x model is unsure; the signal and threshold are chosen on validation under a mean-cost cap."""

import math

import numpy as np
import pytest

from ensembles import artifact, cascade, output, select
from ensembles.cascade import SIGNALS, Threshold
from ensembles.members import COMBINERS, ParamStore, weights_model
from framework.app.cli import main
from framework.errors import ConfigError
from framework.evaluation import evaluate
from framework.evaluation.evaluate import Decoded

INF = math.inf
T, F = True, False


# == the threshold search, on hand-made arrays ==================================================


@pytest.mark.parametrize("conf, first, fallback, k, cap, want", [
    # sorted: 0.2 (F->T), 0.5 (F->T), 0.7 (T->F), 0.9 (T->T); escalating j rows costs 1 + 2j/4
    ([0.9, 0.2, 0.5, 0.7], [T, F, F, T], [T, T, T, F], 2, 1.5, Threshold(0.5, 0.75, 0.25, 1.5)),
    ([0.9, 0.2, 0.5, 0.7], [T, F, F, T], [T, T, T, F], 2, 2.4, Threshold(0.7, 1.0, 0.5, 2.0)),
    ([0.9, 0.2, 0.5, 0.7], [T, F, F, T], [T, T, T, F], 2, 3, Threshold(0.7, 1.0, 0.5, 2.0)),  # more is worse
    ([0.9, 0.2, 0.5, 0.7], [T, F, F, T], [T, T, T, F], 2, 1.49, Threshold(-INF, 0.5, 0.0, 1.0)),  # none fits
    # equal confidences escalate together: no cut between the two 0.5s
    ([0.5, 0.5, 0.9], [F, F, T], [T, T, T], 1, 1.5, Threshold(-INF, 1 / 3, 0.0, 1.0)),
    ([0.5, 0.5, 0.9], [F, F, T], [T, T, T], 1, 1.7, Threshold(0.9, 1.0, 2 / 3, 1 + 2 / 3)),
    ([0.1, 0.2], [T, T], [T, T], 2, 3, Threshold(-INF, 1.0, 0.0, 1.0)),  # an EM tie goes to the lower cost
    ([0.1, 0.2], [F, F], [T, T], 2, 3, Threshold(INF, 1.0, 1.0, 3.0)),  # everything escalated: +inf
    ([0.1, 0.2], [F, F], [T, T], 2, 2.99, Threshold(0.2, 0.5, 0.5, 2.0)),
])
def test_search_finds_the_best_em_under_the_cap(conf, first, fallback, k, cap, want):
    got = cascade.search(conf, first, fallback, k, cap)
    assert got.tau == want.tau
    assert got.strict_em == pytest.approx(want.strict_em) and got.escalation_rate == pytest.approx(want.escalation_rate)
    assert got.mean_cost == pytest.approx(want.mean_cost)


def test_a_cap_met_exactly_holds_despite_rounding():
    # 1 + 3 * (1 / 10) is 1.3000000000000003 in floating point
    got = cascade.search(np.arange(10.0), [F] * 10, [T] * 10, k=3, max_cost=1.3)
    assert got.escalation_rate == 0.1 and got.tau == 1.0 and cascade.fits(got.mean_cost, 1.3)


def test_search_agrees_with_trying_every_threshold_by_hand():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, k = int(rng.integers(1, 12)), int(rng.integers(2, 5))
        conf = rng.integers(0, 5, n) / 4  # ties on purpose
        first, fallback = rng.random(n) < 0.5, rng.random(n) < 0.6
        cap = 1 + k * rng.random()
        best = None
        for tau in [-INF, *sorted(set(conf)), INF]:
            up = cascade.escalated(conf, tau)
            em = np.where(up, fallback, first).mean()
            cost = 1 + k * up.mean()
            if cost <= cap + 1e-12 and (best is None or (em, -cost) > (best[0], -best[1])):
                best = (em, cost)
        got = cascade.search(conf, first, fallback, k, cap)
        assert (got.strict_em, got.mean_cost) == pytest.approx(best)
        up = cascade.escalated(conf, got.tau)  # the threshold reproduces what the search counted
        assert np.where(up, fallback, first).mean() == pytest.approx(got.strict_em)
        assert up.mean() == pytest.approx(got.escalation_rate)


def test_choose_takes_the_best_signal_then_the_cheaper_then_the_first():
    first, fallback = [T, F, F, T], [T, T, T, F]
    good, useless = [0.9, 0.2, 0.5, 0.7], [0.1, 0.9, 0.8, 0.2]  # `useless` ranks the wrong rows unsure
    assert cascade.choose({"a": useless, "b": good}, first, fallback, 2, 2.0)[0] == "b"
    same = [0.9, 0.2, 0.5, 0.7]
    assert cascade.choose({"a": same, "b": same}, first, fallback, 2, 2.0)[0] == "a"
    # both reach EM 1; "b" separates the two fixable rows from the rest with one escalation fewer
    cheap = [0.9, 0.1, 0.1, 0.7]
    name, t = cascade.choose({"a": [0.9, 0.2, 0.5, 0.3], "b": cheap}, [T, F, F, T], [T, T, T, T], 2, 3.0)
    assert name == "b" and t.escalation_rate == 0.5


def test_answer_replaces_only_the_escalated_rows():
    first = Decoded(["1", "2", "3"], [T, T, F])
    calls = []

    def fallback(rows):
        calls.append(rows.tolist())
        return Decoded([f"e{i}" for i in rows], [T] * len(rows))

    got, up = cascade.answer(first, [0.9, 0.1, 0.5], 0.6, fallback)
    assert got == Decoded(["1", "e1", "e2"], [T, T, T]) and up.tolist() == [F, T, T] and calls == [[1, 2]]
    assert cascade.answer(first, [0.9, 0.1, 0.5], -INF, fallback)[0] == first and len(calls) == 1  # never called
    assert cascade.answer(first, [0.9, 0.1, 0.5], INF, fallback)[0] == Decoded(["e0", "e1", "e2"], [T, T, T])


def test_signals_read_the_answers_confidence():
    conf = evaluate.Confidence(np.array([-1.0, -3.0]), np.array([-0.5, -2.0]), np.array([0.3, 0.9]),
                               np.array([2, 3]))
    np.testing.assert_allclose(SIGNALS["min_prob"](conf), np.exp([-0.5, -2.0]))
    np.testing.assert_allclose(SIGNALS["mean_logprob"](conf), [-0.5, -1.0])
    np.testing.assert_allclose(SIGNALS["margin"](conf), [0.3, 0.9])


# == on the tiny run =============================================================================


@pytest.fixture
def built(built_cascade):
    return built_cascade


def test_a_built_cascade_keeps_its_mean_validation_cost_under_the_cap_and_records_its_rule(built):
    _, out, m = built
    rule = m["cascade"]
    assert m["method"] == m["combine"] == "cascade" and m["budgets"]["max_cost"] == 1.5
    assert rule["signal"] in SIGNALS and rule["k"] == 2
    assert rule["mean_cost"] == pytest.approx(1 + rule["k"] * rule["escalation_rate"]) and rule["mean_cost"] <= 1.5
    assert m["inference_cost"] == rule["mean_cost"] == m["validation"]["mean_cost"]
    assert m["validation"]["strict_em"] >= m["validation"]["first_strict_em"]  # tau = -inf is always a choice
    assert {x["part"] for x in m["members"]} == {"first", "fallback"}
    assert sum(x["part"] == "fallback" for x in m["members"]) == rule["k"]
    for key in ("em", "strict_em", "escalation_rate", "mean_cost"):
        assert key in m["test"], key
    assert m["test"]["mean_cost"] == pytest.approx(1 + rule["k"] * m["test"]["escalation_rate"])
    loaded = artifact.load_manifest(out)
    c = artifact.cascade_of(loaded)
    assert (c.signal, c.k, c.escalation_rate) == (rule["signal"], rule["k"], rule["escalation_rate"])
    with pytest.raises(ConfigError, match="is a cascade"):  # serving and export read candidates: a clear refusal
        artifact.candidate_of(loaded)


def test_evaluating_a_cascade_reproduces_what_build_saw(built):
    _, out, m = built
    val = artifact.evaluate_ensemble(out, "validation")
    assert val["strict_em"] == m["validation"]["strict_em"]
    assert val["escalation_rate"] == m["cascade"]["escalation_rate"] and val["mean_cost"] <= 1.5 + 1e-9
    test = artifact.evaluate_ensemble(out, "test")
    for key in ("em", "strict_em", "f1", "escalation_rate", "mean_cost"):
        assert test[key] == m["test"][key], key
    assert test["inference_cost"] == m["inference_cost"]


def test_tau_at_the_infinities_is_exactly_the_ensemble_or_the_first_model(built):
    _, out, _ = built
    c = artifact.cascade_of(artifact.load_manifest(out))
    store = ParamStore()
    run = store.run(c.first.members[0].run)
    split, bs = run.split("test"), run.cfg.eval_batch_size
    alone = evaluate.decode_split(*weights_model(store, c.first), split, bs)
    ensemble = output.decode_split_ensemble(*COMBINERS["logits"].prepare(store, c.fallback), split, bs)
    assert alone != ensemble, "the two parts should disagree somewhere for this test to bite"
    for tau, want, rate in ((INF, ensemble, 1.0), (-INF, alone, 0.0)):
        got, up = cascade.decode(store, cascade.Cascade(c.first, c.fallback, c.signal, tau, 0.0), split, bs)
        assert got == want and up.mean() == rate
    rows = np.array([5, 0, 17])  # a subset decodes each row as it decodes among all of them
    some = output.decode_split_ensemble(*COMBINERS["logits"].prepare(store, c.fallback), split, bs, rows=rows)
    assert some == Decoded([ensemble.texts[i] for i in rows], [ensemble.ended[i] for i in rows])


@pytest.mark.parametrize("args, message", [
    (["--method", "logits", "--max-cost", "2.5"], "max-cost: 2.5 is fractional"),
    (["--method", "single", "--max-cost", "1.3"], "max-cost: 1.3 is fractional"),
    (["--method", "cascade"], "max-cost: --method cascade needs --max-cost above 1"),
    (["--max-cost", "nan"], "max-cost: nan must be >= 1"),
    (["--max-cost", "cheap"], "max-cost: 'cheap' must be a number >= 1"),
])
def test_a_fractional_cap_outside_cascades_is_one_clear_line(trained_run, tmp_path, capsys, args, message):
    cfg, _ = trained_run
    assert main(["ensemble", "build", cfg.out_dir, "--budget", "1.0", "--out", str(tmp_path / "no"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("cap, method, message", [
    (1.5, "vote", "1.5 is fractional"), (2.0000001, "latest-k", "is fractional"), (1, "cascade", "above 1"),
    (True, "auto", "must be a number"), (math.inf, "auto", "must be a number"),
])
def test_selection_checks_the_cap_for_library_callers(cap, method, message):
    with pytest.raises(ConfigError, match=message) as e:
        select.check_max_cost(cap, method)
    assert e.value.field == "max_cost"
    select.check_max_cost(1.3, "auto")  # a fraction is fine where a cascade may be chosen
    select.check_max_cost(2, "logits")
