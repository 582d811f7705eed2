"""Difficulty scorers and percentiles."""

import doctest

import datasets
import numpy as np
import pytest

from curricula import scorers
from framework.errors import ConfigError

DS = datasets.Dataset.from_dict({
    "prompt": ["1+1=", "12+34=", "123+4=", "9+9="],
    "answer": ["2", "64", "721", "81"],
    "difficulty": [1, 2, 3, 1],
    "level": [0.5, 2.5, 1.5, 0.5],
})


@pytest.mark.parametrize(
    "scorer, expected",
    [
        (scorers.from_column("level"), [0.5, 2.5, 1.5, 0.5]),
        (scorers.prompt_length(), [4.0, 6.0, 6.0, 4.0]),
        (scorers.answer_length(), [1.0, 2.0, 3.0, 2.0]),
    ],
)
def test_scores_become_a_column(scorer, expected):
    out = scorers.score_dataset(DS, scorer, column="score")
    assert out["score"] == expected
    assert out["prompt"] == DS["prompt"]  # nothing else changes


def test_percentiles_are_an_empirical_cdf_with_shared_ties():
    p = scorers.percentiles([5, 1, 3, 3, 1, 9, 7, 3])
    assert p.tolist() == [0.75, 0.25, 0.625, 0.625, 0.25, 1.0, 0.875, 0.625]
    assert (p > 0).all() and p.max() == 1.0
    # Selecting "percentile <= f" takes whole tie groups, easiest first.
    assert sorted(np.flatnonzero(p <= 0.5).tolist()) == [1, 4]


def test_score_dataset_as_percentile_replaces_the_column():
    out = scorers.score_dataset(DS, scorers.answer_length(), column="difficulty", as_percentile=True)
    assert out["difficulty"] == [0.25, 0.75, 1.0, 0.75]


def test_missing_column_names_the_columns_found():
    with pytest.raises(ConfigError, match="'hardness' not found.*prompt, answer, difficulty, level"):
        scorers.score_dataset(DS, scorers.from_column("hardness"))


def test_a_scorer_returning_the_wrong_count_is_an_error():
    with pytest.raises(ConfigError, match="returned 1 scores for 4 examples"):
        scorers.score_dataset(DS, lambda batch: [0.0])


def test_model_loss_scores_are_the_checkpoints_answer_losses(trained_run):
    from framework.evaluation import evaluate
    from framework.training.runs import open_run

    cfg, stops = trained_run
    run = open_run(cfg.out_dir)
    test = run.split("test")
    ds = datasets.Dataset.from_dict({"prompt": test.prompts, "answer": test.answers,
                                     "difficulty": test.difficulty.tolist()})
    scored = scorers.score_dataset(ds, scorers.model_loss(cfg.out_dir, stops[0]["step"]), column="loss",
                                   batch_size=40)
    expected = evaluate.teacher_forced(run.graphdef, run.params(stops[0]["step"]), test, 64)["example_loss"]
    np.testing.assert_allclose(scored["loss"], expected, rtol=1e-4)


def test_docstring_examples_hold():
    assert doctest.testmod(scorers).failed == 0
