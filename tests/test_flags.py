"""`recoup train`'s flags are generated from the config dataclasses (framework.app.flags)."""

import dataclasses

import pytest

from framework.app import flags
from framework.app.cli import build_parser
from framework.app.train_commands import TRAIN_FLAGS, config_from_args
from framework.config import DataConfig, ModelConfig, OptimConfig, RunConfig


def test_every_config_field_is_a_flag_with_its_comment_as_help():
    for section, cls in flags.SECTIONS:
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            if key in flags.NOT_FLAGS:
                continue
            [flag] = [x for x in TRAIN_FLAGS.values() if (x.section, x.field) == (section, f.name)]
            assert len(flag.help) > 15, (key, flag.help)  # a field without a comment would give "" here


def test_a_new_field_becomes_a_flag_without_writing_it_anywhere_else(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Optim(OptimConfig):
        # the new field's
        # explanation
        label_smoothing: float = 0.0  # in [0, 1)

    monkeypatch.setattr(flags, "SECTIONS", (("optim", Optim),))
    flag = flags.train_flags()["label_smoothing"]
    assert (flag.section, flag.field, flag.parse("0.1")) == ("optim", "label_smoothing", 0.1)
    assert flag.help == "the new field's explanation in [0, 1) (default 0.0)"


def test_comments_above_and_beside_a_field_are_its_help():
    comments = flags.field_comments(RunConfig)
    assert comments["batch_size"] == "sequences per training step"
    assert comments["rollback_lr_factor"].startswith("rollback:")  # not the comment block above nonfinite
    assert comments["nonfinite"].startswith("A non-finite loss or gradient")
    assert flags.field_comments(DataConfig)["kb_relations"].endswith("(1..12)")
    assert set(flags.field_comments(ModelConfig)) == {f.name for f in dataclasses.fields(ModelConfig)}


def test_help_lists_a_registry_names_and_the_default():
    assert "(adamw|schedule-free|muon|module:attr) (default adamw)" in TRAIN_FLAGS["optimizer"].help
    assert "|module:attr)" in TRAIN_FLAGS["curriculum"].help
    assert TRAIN_FLAGS["d_model"].help.endswith("(default: the preset's)")
    help_text = build_parser().parse_args  # argparse formats every help string (a stray % would raise)
    with pytest.raises(SystemExit):
        help_text(["train", "--help"])


@pytest.mark.parametrize("argv, section, field, value", [
    (["--lr", "1e-3"], "optim", "peak_lr", 1e-3),
    (["--d-model", "64", "--n-heads", "2"], "model", "d_model", 64),
    (["--decay-start", "40k"], "optim", "decay_start", 40_000),
    (["--every-tokens", "2.5k"], "run", "every_tokens", 2_500),
    (["--keep-latest", "3", "--keep-best", "0"], "run", "keep_latest", 3),
    (["--keep-latest", "all"], "run", "keep_latest", None),  # a resumed run that deleted may stop deleting
    (["--stop-rule", "patience:patience=3", "--stop-rule", "budget:price=2"], "run", "stop_rules",
     ({"rule": "patience", "patience": 3}, {"rule": "budget", "price": 2})),
    (["--pacing-arg", "start=0.2", "--pacing-arg", "ramp=0.5"], "run", "pacing_args", {"start": 0.2, "ramp": 0.5}),
    (["--scorer-percentile"], "run", "scorer_percentile", True),
    (["--no-scorer-percentile"], "run", "scorer_percentile", False),
    (["--no-tensorboard"], "run", "tensorboard", False),
    (["--tensorboard"], "run", "tensorboard", True),
    (["--data-seed", "7"], "data", "seed", 7),
])
def test_flags_set_their_fields(argv, section, field, value):
    args = build_parser().parse_args(["train", "--out", "x", "--budget-tokens", "100k", *argv])
    cfg = config_from_args(args)
    assert getattr(cfg if section == "run" else getattr(cfg, section), field) == value
