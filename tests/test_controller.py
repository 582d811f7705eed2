"""The controller: a stopping rule fires, the run cools down, the best on validation ships."""

import json
import os

from framework.app.cli import main
from framework.checkpoints.store import list_checkpoints
from framework.runner import controller

TINY = ["--task", "addition", "--preset", "tiny", "--max-digits", "3", "--n-examples", "3000", "--val-size", "100",
        "--test-size", "100", "--budget-tokens", "24k", "--batch-size", "32", "--every-tokens", "4k",
        "--ema-half-life", "2k", "--no-progress"]


def test_a_fired_rule_cools_down_and_ships_the_best_on_validation(tmp_path, capsys):
    out = str(tmp_path / "run")
    # min_delta 1.0 is never met: the rule fires at its second evaluation, and restores the first
    assert main(["train", *TINY, "--out", out, "--stop-rule", "patience:patience=1,min_delta=1",
                 "--cooldown-on-stop", "0.1"]) == 0
    stopped = controller.stopping_checkpoint(out)
    assert stopped is not None and stopped["tokens"] < 24_000
    branch = controller.branch_point(out, stopped)
    assert branch["step"] == stopped.get("restored_best_step", stopped["step"]) and branch["kind"] != "stopped"
    (cooled_dir,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path) if "-cooldown" in d]
    with open(os.path.join(cooled_dir, controller.SHIPPED_FILE)) as f:
        shipped = json.load(f)
    cooled = list_checkpoints(cooled_dir)[-1]
    assert shipped["tokens"] == cooled["tokens"]  # the cooldown's tokens count, whatever ships
    assert 0 < cooled["tokens"] - branch["tokens"] <= 2_400  # 10% of the budget more, never past it
    assert shipped["stopped_at"] == branch["tokens"]
    assert {c["average"] for c in shipped["considered"]} == {None, "ema-2000"}
    assert shipped["val_em"] == max(c["val_em"] for c in shipped["considered"])
    assert "ships" in capsys.readouterr().out


def test_no_rule_fired_means_nothing_to_cool_down(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--budget-tokens", "8k", "--out", out, "--stop-rule", "patience:patience=50",
                 "--cooldown-on-stop", "0.1"]) == 0
    assert controller.stopping_checkpoint(out) is None
    assert "nothing to cool down" in capsys.readouterr().out
    assert not [d for d in os.listdir(tmp_path) if "-cooldown" in d]


def test_cooldown_on_stop_needs_a_rule_and_some_tokens(tmp_path, capsys):
    assert main(["train", *TINY, "--out", str(tmp_path / "a"), "--cooldown-on-stop", "0.1"]) == 2
    assert "cooldown-on-stop" in capsys.readouterr().err
    assert main(["train", *TINY, "--out", str(tmp_path / "b"), "--stop-rule", "patience", "--cooldown-on-stop",
                 "0"]) == 2
    assert "gives no tokens" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
