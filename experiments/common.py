"""The flagship tasks' configs before tuning (the runs themselves are run by `harness.studies`)."""

from __future__ import annotations

import dataclasses
import os

from experiments import byo_task
from experiments.curriculum_vs_uniform import base_config
from framework.config import DataConfig, RunConfig

BYO_BUDGET = 700_000  # counted tokens: the byo task's budget before issue 19 (chosen on validation EM of seed 0)
TASKS = ("addition", "multihop", "byo")


def task_config(task: str, out_dir: str, data_dir: str) -> RunConfig:
    """A task's recipe before tuning: the demo's for addition, its multihop twin, and for byo the
    demo's model, batch and schedule on the multiplication file the experiment writes into `data_dir`."""
    if task != "byo":
        return base_config(task, out_dir)
    path = os.path.join(data_dir, "multiply.jsonl")
    if not os.path.isfile(path):
        byo_task.write(path)
    cfg = base_config("addition", out_dir)
    return dataclasses.replace(cfg, budget_tokens=BYO_BUDGET, data=DataConfig(
        task=None, data_path=path, prompt_col=byo_task.PROMPT_COL, answer_col=byo_task.ANSWER_COL,
        difficulty_col=byo_task.DIFFICULTY_COL, val_size=500, test_size=2_000,
        split_by="shuffle"))  # the split the byo figures were measured on (the file never changes)
