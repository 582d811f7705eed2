"""Fair tuning (harness.tuning, recipe experiments.fair_tuning) without training: the plateau rule,
the budget ladder, and the export of a tuned task into experiments/tuned.json and the "Fair tuning"
section of docs/results.md."""

import json
import os

import pytest

from experiments import fair_tuning
from harness import report, tuning
from harness.tuning_report import BEGIN, END


def rows(pairs):
    return [{"budget": b, "val_em": [m, m], "mean": m} for b, m in pairs]


@pytest.mark.parametrize("means, expected", [
    ([0.05, 0.26, 0.67, 0.89, 0.99, 0.993, 0.996, 0.997], 500),  # every step after 500 adds < 0.5 points
    ([0.05, 0.26, 0.67, 0.89, 0.99, 0.993, 0.999, 0.999], 700),  # 600 -> 700 still adds 0.6
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], None),  # never flat: not in the ladder
    ([0.99, 0.98, 0.99, 0.992, 0.99, 0.99, 0.99, 0.99], 300),  # after a dip, 200 -> 300 adds a point
])
def test_the_plateau_is_the_smallest_budget_from_which_every_step_adds_under_half_a_point(means, expected):
    assert report.plateau(rows(zip(range(100, 900, 100), means, strict=True))) == expected


def test_the_ladder_steps_by_a_quarter_around_its_centre():
    assert tuning.ladder_budgets(800_000, 2, 1) == [512_000, 640_000, 800_000, 1_000_000]


def sweep(objective, base=0.9):
    return {"trials": {"COMPLETE": 5, "PRUNED": 3, "FAIL": 0, "RUNNING": 0}, "total_tokens": 4_000_000,
            "wall_s": 600.0, "best": {"objective": objective, "params": {}}, "base": {"objective": base}}


def tuned_state():
    ladder0 = rows([(400_000, 0.9), (500_000, 0.99), (640_000, 0.992), (800_000, 0.993), (1_000_000, 0.993)])
    anytime = {"optim.peak_lr": 1e-3, "batch_size": 8, "optim.grokfast_lambda": 2.0}
    return {
        "task": "addition", "b0": 800_000, "budget": 500_000, "plain0": sweep(0.99, base=0.94),
        "ladder0": {"rows": ladder0, "plateau": 500_000, "tokens": 7_000_000},
        "plain": sweep(0.995), "anytime": sweep(0.97, base=None),
        "confirm_plain": {"winner": {"params": {"optim.peak_lr": 5e-4, "batch_size": 8}, "mean": 0.996},
                          "tokens": 3_000_000},
        "confirm_anytime": {"winner": {"params": anytime, "mean": 0.98}, "tokens": 3_000_000},
        "ladder": {"rows": rows([(400_000, 0.95), (500_000, 0.996)]), "tokens": 2_000_000},
        "cooldown": {"rows": [{"fraction": 0.2, "shape": "1-sqrt", "val_em": [0.99, 0.98, 0.97], "mean": 0.98}],
                     "fraction": 0.2, "shape": "1-sqrt", "tokens": 1_000_000},
        "ablate": {"rows": [{"lever": "optim.grokfast_lambda", "on": 2.0, "off": 0.0, "values_off": [0.9] * 3,
                             "gain": 0.08, "gain_per_seed": [0.07, 0.08, 0.09]}], "tokens": 1_500_000},
    }


def test_export_writes_the_winners_and_a_report_section_that_a_rerun_replaces(tmp_path, capsys):
    out = tmp_path / "tuning"
    (out / "addition").mkdir(parents=True)
    (out / "addition" / "tuned.json").write_text(json.dumps(tuned_state()))
    (out / "byo").mkdir()
    (out / "byo" / "tuned.json").write_text(json.dumps({"task": "byo", "b0": 700_000}))  # not tuned to the end
    results = tmp_path / "results.md"
    results.write_text("# Results\n\n<!-- flagship:begin -->\nflagship\n<!-- flagship:end -->\n\n## Older\n")
    path = str(tmp_path / "tuned.json")
    exported = fair_tuning.export(str(out), path, results_path=str(results))
    assert set(exported) == {"addition"} and "byo: not tuned to the end yet" in capsys.readouterr().out
    t = json.load(open(path))["addition"]
    assert (t["b0"], t["budget"], t["cooldown"]) == (800_000, 500_000, {"fraction": 0.2, "shape": "1-sqrt"})
    assert t["anytime"]["optim.grokfast_lambda"] == 2.0 and t["sweeps"]["plain0"]["base_objective"] == 0.94
    assert sum(t["tokens"].values()) == 3 * 4_000_000 + 7_000_000 + 2 * 3_000_000 + 2_000_000 + 1_000_000 + 1_500_000
    text = results.read_text()
    assert text.index("<!-- flagship:end -->") < text.index(BEGIN) < text.index("## Older")
    assert "| 500k **(B)** | 0.990 |" in text and "| 400k | 0.900 |" in text and "+9.0 pts" in text
    assert "| `optim.grokfast_lambda` | 2.0 | 0.0 | +8.0 pts | +7.0, +8.0, +9.0 |" in text
    assert "the last 20% of the stop's tokens, `1-sqrt`" in text
    fair_tuning.export(str(out), path, results_path=str(results))  # again: replaced, not added
    assert results.read_text() == text and text.count(BEGIN) == text.count(END) == 1
    assert os.path.isfile(path)
    with open(path) as f:  # a task tuned in another directory keeps its entry: exports merge
        other = {**json.load(f), "multihop": {"budget": 1}}
    with open(path, "w") as f:
        json.dump(other, f)
    assert set(fair_tuning.export(str(out), path)) == {"addition", "multihop"}
    assert json.load(open(path))["multihop"] == {"budget": 1}
