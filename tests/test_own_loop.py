"""The README's "In your own training loop" example, run as written: recoup's curricula, averages,
stopping rules and selection in a loop that is not recoup's, on a model that is not recoup's."""

import os
import re

import numpy as np

from ensembles.trees import Snapshot, select

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example() -> str:
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## In your own training loop", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_and_its_choice_is_the_best_under_the_budget(capsys):
    ns: dict = {}
    exec(compile(_example(), "README.md", "exec"), ns)
    choice, snapshots, accuracy = ns["choice"], ns["snapshots"], ns["accuracy"]
    limit = int(0.62 * ns["budget"])
    assert choice.tokens <= limit and all(m.tokens <= limit for m in choice.members)
    singles = [accuracy(s.params) for s in snapshots if s.tokens <= limit]
    assert choice.score >= max(singles) and choice.score == accuracy(choice.params)
    assert choice.score > 0.9  # the MLP learned the task
    # the line the README quotes
    assert capsys.readouterr().out.strip() == "soup of 2: val accuracy 0.992 after 16,000 tokens"
    rows = ns["train"]["difficulty"]
    assert len(rows) == 2000 and np.isfinite(rows).all()


def test_select_prefers_fewer_tokens_on_a_tie_and_respects_the_budget():
    trees = [{"w": np.full(2, v, np.float32)} for v in (1.0, 2.0, 3.0, 4.0)]
    snaps = [Snapshot(t, tokens) for t, tokens in zip(trees, (100, 200, 300, 400), strict=True)]
    score = lambda p: -abs(float(p["w"][0]) - 2.0)  # noqa: E731  best at w = 2: snapshot 2, or the average of 1 and 3
    choice = select(snaps, score, budget_tokens=300)
    assert choice.score == 0.0 and choice.method == "single" and choice.tokens == 200
    choice = select(snaps, score, budget_tokens=300, methods=("latest-k", "soup"))
    assert choice.score == 0.0 and choice.method == "soup" and [m.tokens for m in choice.members] == [200]
    only_late = select(snaps, lambda p: float(p["w"][0]), budget_tokens=350)
    assert only_late.tokens == 300  # 400 is over the budget
