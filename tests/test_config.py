"""Config validation (pure Python, before jax) and its parsers."""

import dataclasses
import json

import pytest

from curricula.registry import CURRICULA, PACINGS, SCORERS
from framework import config
from framework.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from framework.data.registry import HOP_ANSWERS, OPERAND_FORMATS, TASKS
from framework.errors import ConfigError
from framework.parsing import parse_stops, parse_tokens
from framework.runner.check import check
from framework.training.registry import DECAY_SHAPES, OPTIMIZERS, SCHEDULES


def test_every_registered_name_imports_to_a_callable():
    # A registry holds "module:attr" strings, so a typo there would only surface when that name is built.
    for registry in (TASKS, OPERAND_FORMATS, HOP_ANSWERS, SCHEDULES, DECAY_SHAPES, OPTIMIZERS,
                     CURRICULA, PACINGS, SCORERS):
        assert len(registry) >= 2, registry
        for name in registry:
            assert callable(registry[name]), (registry, name)


def test_config_holds_no_copy_of_a_registry():
    # Each name list is written once, in its registry: config.py validates structure, the run check names.
    registries = (TASKS, OPERAND_FORMATS, HOP_ANSWERS, SCHEDULES, DECAY_SHAPES, OPTIMIZERS, CURRICULA, PACINGS,
                  SCORERS)
    copies = [(attr, list(reg)) for attr, value in vars(config).items() if isinstance(value, tuple | list | set)
              for reg in registries if len(set(value) & set(reg)) >= 2]
    assert not copies


def test_unknown_names_fail_in_the_run_check_naming_the_field_and_the_registry():
    for cfg, field, allowed in [
        (_run(data=DataConfig(task="nope")), "task", ["addition", "multihop"]),
        (_run(optim=OptimConfig(optimizer="sgd")), "optim.optimizer", list(OPTIMIZERS)),
        (_run(curriculum="nope"), "curriculum", list(CURRICULA)),
    ]:
        cfg.validate()  # structure only: the names are the registries' to check
        with pytest.raises(ConfigError) as err:
            check(cfg)
        assert err.value.field == field and err.value.allowed == allowed


def _run(**kw):
    return RunConfig(out_dir="x", budget_tokens=1000, **kw)


@pytest.mark.parametrize(
    "cfg, field, allowed",
    [
        (_run(data=DataConfig(task="nope")), "task", "addition, multihop"),
        (_run(data=DataConfig(task=None)), "task", None),
        (_run(data=DataConfig(operand_format="roman")), "data.operand_format", "lsb-first, padded, natural"),
        (_run(data=DataConfig(max_digits=0)), "data.max_digits", None),
        (_run(data=DataConfig(hop_answer="last")), "data.hop_answer", "chain, final"),
        (_run(data=DataConfig(kb_relations=13)), "data.kb_relations", None),
        (_run(data=DataConfig(kb_entities=1)), "data.kb_entities", None),
        (_run(ema_half_lives=(0,)), "ema_half_lives", None),
        (_run(ema_half_lives=(5, 5)), "ema_half_lives", None),
        (_run(swa_start=1.0), "swa_start", None),
        (_run(model=ModelConfig(mlp="relu")), "model.mlp", "gated, gelu"),
        (_run(model=ModelConfig(n_heads=3)), "model.n_heads", None),
        (_run(model=ModelConfig(dropout=1.0)), "model.dropout", None),
        (_run(optim=OptimConfig(schedule="step")), "optim.schedule", "cosine, wsd, constant, cooldown"),
        (_run(optim=OptimConfig(peak_lr=0)), "optim.peak_lr", None),
        (_run(optim=OptimConfig(schedule="wsd", warmup_frac=0.5, decay_frac=0.6)), "optim.decay_frac", None),
        (_run(stops=(0.5, 0.0)), "stops", None),
        (_run(stops=(float("nan"),)), "stops", None),
        (_run(stops=()), "stops", None),
        (RunConfig(out_dir="x", budget_tokens=0), "budget_tokens", None),
        (RunConfig(out_dir="x", budget_tokens=-3), "budget_tokens", None),
        (RunConfig(out_dir="x", budget_tokens=1.5), "budget_tokens", None),
        (_run(every_tokens=0), "every_tokens", None),
        (_run(batch_size=0), "batch_size", None),
        (_run(optim=OptimConfig(optimizer="sgd")), "optim.optimizer", "adamw, schedule-free, muon"),
        (_run(optim=OptimConfig(optimizer="schedule-free", b1=0.0)), "optim.b1", None),
        (_run(optim=OptimConfig(decay_shape="cosine")), "optim.decay_shape", "linear, 1-sqrt"),
        (_run(optim=OptimConfig(b2_batch=0)), "optim.b2_batch", None),
        (_run(optim=OptimConfig(grokfast_lambda=-1.0)), "optim.grokfast_lambda", None),
        (_run(optim=OptimConfig(grokfast_alpha=1.0)), "optim.grokfast_alpha", None),
        (_run(batch_warmup=1.0), "batch_warmup", None),
        (_run(preset="tiny"), "preset", None),  # the label says tiny, the model is small
        (_run(every_tokens=2_000), "every_tokens", None),  # more than the 1,000-token budget
        (_run(ema_half_lives=(500, 5_000)), "ema_half_lives", None),
        (_run(batch_warmup=0.2, batch_size=100), "batch_warmup", None),
    ],
)
def test_invalid_fields_are_named(cfg, field, allowed):
    with pytest.raises(ConfigError) as err:
        check(cfg)  # validate(), then the names against their registries
    assert err.value.field == field
    if allowed:
        assert f"(allowed: {allowed})" in str(err.value)


def test_default_config_is_valid_and_round_trips_through_json():
    cfg = _run(stops=(0.5, 1.0), every_tokens=100)
    cfg.validate()
    import json

    assert RunConfig.from_dict(json.loads(cfg.dumps())) == cfg


def test_unknown_field_in_a_saved_config_is_named():
    d = _run().to_dict()
    d["optim"]["momentum"] = 0.9
    with pytest.raises(ConfigError, match="optim.momentum"):
        RunConfig.from_dict(d)


@pytest.mark.parametrize("text, tokens", [("2500000", 2_500_000), ("2.5M", 2_500_000), ("500k", 500_000),
                                          ("1e6", 1_000_000), ("3B", 3_000_000_000), (" 12k ", 12_000)])
def test_parse_tokens(text, tokens):
    assert parse_tokens(text) == tokens


@pytest.mark.parametrize("text", ["", "lots", "-5", "1.2.3M", "5 tokens"])
def test_parse_tokens_rejects(text):
    with pytest.raises(ConfigError, match="budget_tokens"):
        parse_tokens(text)


def test_parse_stops_sorts_dedupes_and_ends_at_the_budget():
    assert parse_stops("0.62, 0.25,0.62") == (0.25, 0.62, 1.0)
    with pytest.raises(ConfigError, match="stops"):
        parse_stops("half")


def test_presets_are_valid():
    for name, model in config.PRESETS.items():
        dataclasses.replace(_run(), model=model, preset=name).validate()


@pytest.mark.parametrize("spec, minimum, tokens, message", [
    ("0.05", 1, 50, None), ("1", 1, 1000, None), ("40k", 1, 40_000, None), ("400", 32, 400, None),
    ("0", 1, None, "gives no tokens"), ("-0.1", 1, None, "gives no tokens"),
    ("1.5", 1, None, "neither a share of the budget"), ("2.0", 32, None, r"fewer than one batch \(32\)"),
    ("0.01", 32, None, "gives 10 tokens, fewer than one batch"),
])
def test_a_share_or_a_count_means_one_thing(spec, minimum, tokens, message):
    from framework.parsing import parse_share_or_tokens

    if message is None:
        assert parse_share_or_tokens(spec, 1000, "tokens", minimum) == tokens
    else:
        with pytest.raises(ConfigError, match=message):
            parse_share_or_tokens(spec, 1000, "tokens", minimum)


def test_the_cli_drops_the_preset_label_when_a_flag_changes_the_shape():
    from framework.app.cli import build_parser
    from framework.app.train_commands import config_from_args

    args = build_parser().parse_args(["train", "--out", "x", "--budget-tokens", "10k", "--preset", "tiny",
                                      "--d-model", "64"])
    cfg = config_from_args(args)
    assert cfg.preset is None and cfg.model.d_model == 64 and cfg.model.n_layers == 2  # the rest is tiny's
    args = build_parser().parse_args(["train", "--out", "x", "--budget-tokens", "10k", "--preset", "tiny",
                                      "--dropout", "0.1"])
    assert config_from_args(args).preset == "tiny"  # dropout is no shape: still the tiny model


def test_split_by_is_checked_and_runs_made_before_it_keep_their_shuffle_split():
    with pytest.raises(ConfigError) as err:
        DataConfig(task=None, data_path="x.jsonl", split_by="random").validate()
    assert err.value.field == "data.split_by" and "hash" in str(err.value) and "shuffle" in str(err.value)
    with pytest.raises(ConfigError, match="data.split_cuts"):
        DataConfig(task=None, data_path="x.jsonl", split_cuts=(5, 2)).validate()
    on_file = RunConfig(out_dir="r", budget_tokens=10_000, data=DataConfig(task=None, data_path="x.jsonl"))
    for cfg in (on_file, RunConfig(out_dir="r", budget_tokens=10_000)):
        old = cfg.to_dict()
        del old["data"]["split_by"], old["data"]["split_cuts"]  # a config.json written before December 2026
        # a file keeps its shuffle split; a built-in task's config reads as today's (same run: reused, resumable)
        expected = "shuffle" if cfg is on_file else "hash"
        assert RunConfig.from_dict(old).data.split_by == expected
    assert RunConfig.from_dict(old) == cfg
    new = RunConfig(out_dir="r", budget_tokens=10_000,
                    data=DataConfig(task=None, data_path="x.jsonl", split_cuts=(2, 5)))
    assert RunConfig.from_dict(json.loads(new.dumps())) == new  # cuts come back as a tuple
