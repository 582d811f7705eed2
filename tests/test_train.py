"""End-to-end training on the tiny preset: stopping points, checkpoints, resume, compilation."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from framework.checkpoints import store as checkpoints
from framework.config import PRESETS
from framework.data import encoding as data
from framework.errors import ConfigError
from framework.models.transformer import build_model
from framework.runner.build import train
from framework.stopping.points import StopTraining, stop_points
from framework.training.optimizers import build as build_optimizer
from framework.training.runs import open_run
from tests.conftest import Crash, crash_then_resume, logged_lines, tiny_config


def _final_params(run_dir):
    run = open_run(run_dir)
    return run.params()


def _train_lines(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def test_two_step_run(tmp_path):
    cfg = tiny_config(tmp_path / "two", batch_size=8, log_every=1, stops=(0.5, 1.0))
    # Budget = the counted tokens of exactly the first two batches the sampler draws.
    train_split = data.prepare(cfg.data)["train"]
    sampler = data.uniform_sampler(len(train_split), cfg.batch_size, cfg.seed)
    state, budget = sampler.init(), 0
    for _ in range(2):
        idx, state = sampler.next(state, budget)
        budget += data.counted_tokens(data.make_batch(train_split, idx), train_split.tokenizer.pad)
    stops = train(dataclasses.replace(cfg, budget_tokens=budget), show_progress=False)
    assert stops[-1]["step"] == 2 and stops[-1]["tokens"] == budget
    lines = [ln for ln in _train_lines(cfg.out_dir) if ln["event"] == "train"]
    assert [ln["step"] for ln in lines] == [1, 2]
    for key in ("tokens", "answer_tokens", "loss", "lr", "tokens_per_s", "difficulty_mean", "difficulty_max"):
        assert key in lines[0]
    assert np.isfinite(lines[-1]["loss"])


def test_stopping_points_never_exceed_their_token_threshold(trained_run):
    cfg, stops = trained_run
    assert [s["fraction"] for s in stops] == [0.5, 1.0]
    for s in stops:
        assert s["tokens"] <= s["fraction"] * cfg.budget_tokens
        # ...and are the last step that fits: one more batch (>= 32 * 5 tokens) would not.
        assert s["tokens"] > s["fraction"] * cfg.budget_tokens - 32 * 16
        for key in ("tokens", "fraction", "step", "val_em", "val_loss", "wall_s"):
            assert key in s
    assert stops[0]["step"] < stops[1]["step"]


def test_stop_points_schedule():
    pts = stop_points(1000, (0.25, 0.5), every_tokens=300)
    assert [(p.tokens, p.kind) for p in pts] == [
        (250, "stop"), (300, "periodic"), (500, "stop"), (600, "periodic"), (900, "periodic"), (1000, "stop")
    ]
    until = stop_points(1000, (0.25, 0.5, 0.75), every_tokens=300, until=0.62)  # ends at 0.62, a stop of its own
    assert [(p.tokens, p.fraction, p.kind) for p in until] == [
        (250, 0.25, "stop"), (300, 0.3, "periodic"), (500, 0.5, "stop"), (600, 0.6, "periodic"), (620, 0.62, "stop")]


def test_checkpoint_round_trip_gives_equal_state(tmp_path):
    model = build_model(PRESETS["tiny"], seed=1)
    _, params = nnx.split(model, nnx.Param)
    opt_state = build_optimizer(tiny_config(tmp_path).optim, 32).init(params)
    sampler_state = data.EpochState(np.asarray(3, np.int64), np.asarray(17, np.int64))
    os.makedirs(tmp_path / "run")
    mgr = checkpoints.open_manager(str(tmp_path / "run"))
    checkpoints.save(mgr, 5, params=params, opt_state=opt_state, sampler_state=sampler_state,
                     progress={"step": 5, "tokens": 123}, metadata={"tokens": 123, "val_em": 0.5})
    checkpoints.seal_finished(mgr)
    abstract = jax.tree.map(np.zeros_like, (params, opt_state, sampler_state))
    r = checkpoints.restore(mgr, 5, params=abstract[0], opt_state=abstract[1], sampler=abstract[2],
                            progress=None)
    mgr.close()
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                        (params, opt_state, sampler_state), (r.params, r.opt_state, r.sampler))
    assert all(jax.tree.leaves(same))
    assert r.progress == {"step": 5, "tokens": 123}


def test_resume_continues_exactly_where_the_run_was(tmp_path):
    # Dropout on, and a periodic cadence, so RNG and sampler state both matter.
    model = dataclasses.replace(PRESETS["tiny"], dropout=0.1)
    common = dict(model=model, every_tokens=5_000, log_every=3)
    straight = tiny_config(tmp_path / "straight", **common)
    train(straight, show_progress=False)
    broken = tiny_config(tmp_path / "broken", **common)
    done_before = crash_then_resume(broken)
    assert done_before[-1]["fraction"] <= 0.6

    a, b = _final_params(straight.out_dir), _final_params(broken.out_dir)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
    assert logged_lines(straight.out_dir) == logged_lines(broken.out_dir)
    assert [c["step"] for c in checkpoints.list_checkpoints(straight.out_dir)] == [
        c["step"] for c in checkpoints.list_checkpoints(broken.out_dir)
    ]


def test_resume_refuses_a_different_config(trained_run, tmp_path):
    cfg, _ = trained_run
    with pytest.raises(ConfigError, match="budget_tokens.*differs"):
        train(dataclasses.replace(cfg, budget_tokens=cfg.budget_tokens * 2), resume=True, show_progress=False)


def test_resume_compares_every_config_field_but_the_listed_ones(tmp_path):
    """A field added to RunConfig later is checked on resume without anyone listing it."""
    import copy

    from framework.config import RunConfig
    from framework.training.train import RESUME_MAY_DIFFER, _prepare_run_dir

    cfg = tiny_config(str(tmp_path / "run"))
    _prepare_run_dir(cfg, resume=False)
    assert set(RESUME_MAY_DIFFER) <= {f.name for f in dataclasses.fields(RunConfig)}
    for field in dataclasses.fields(RunConfig):
        if field.name == "out_dir":  # where the saved config is read from
            continue
        changed = copy.copy(cfg)
        object.__setattr__(changed, field.name, "something else")
        if field.name in RESUME_MAY_DIFFER:
            _prepare_run_dir(changed, resume=True)
        else:
            with pytest.raises(ConfigError, match=f"{field.name}: differs"):
                _prepare_run_dir(changed, resume=True)


def test_a_new_run_never_overwrites_checkpoints(trained_run):
    cfg, _ = trained_run
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(cfg, show_progress=False)


def _easy_first_sampler(train_split, batch_size, seed):
    """A toy curriculum: draw only difficulty <= 1 + 4 * (tokens / budget), uniformly."""
    budget = 24_000  # tiny_config's

    def init():
        return (np.asarray(0, np.int64),)

    def next_(state, tokens_seen):
        limit = 1 + 4 * tokens_seen / budget
        pool = np.flatnonzero(train_split.difficulty <= limit)
        rng = np.random.default_rng([seed, int(state[0])])
        return rng.choice(pool, batch_size), (np.asarray(int(state[0]) + 1, np.int64),)

    return data.Sampler(init, next_)


@pytest.mark.parametrize("sampler_fn", [None, _easy_first_sampler], ids=["uniform", "paced"])
def test_train_step_compiles_once(tmp_path, sampler_fn):
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *a, **k: compiles.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
    )
    seen = {}

    def record(event):
        if event.kind == "eval":
            seen.setdefault("first_eval", len(compiles))
        seen["last"] = len(compiles)

    cfg = tiny_config(tmp_path / "c", stops=(0.3, 0.6, 1.0))
    train(cfg, hooks=[record], sampler_fn=sampler_fn, show_progress=False)
    # After the first stopping point (train step and evaluation both compiled), nothing compiles,
    # however what the sampler draws changes with the tokens seen.
    assert seen["last"] == seen["first_eval"]
    if sampler_fn is not None:
        lines = [ln for ln in _train_lines(cfg.out_dir) if ln["event"] == "train"]
        assert lines[0]["difficulty_max"] == 1 and lines[-1]["difficulty_max"] == 3


def test_stopping_rule_hook_saves_a_stopped_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path / "s")

    def rule(event):
        if event.kind == "step" and event.step == 7:
            raise StopTraining("test rule fired")

    stops = train(cfg, hooks=[rule], show_progress=False)
    assert stops[-1]["kind"] == "stopped" and stops[-1]["step"] == 7
    assert stops[-1]["reason"] == "test rule fired"


def test_a_rule_firing_at_an_evaluation_saves_one_stopped_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path / "e", stops=(0.3, 0.6, 1.0))

    def rule(event):
        if event.kind == "eval" and event.info["fraction"] == 0.6:
            raise StopTraining("val EM plateaued")

    stops = train(cfg, hooks=[rule], show_progress=False)
    assert [s["kind"] for s in stops] == ["stop", "stopped"]
    assert stops[-1]["tokens"] <= 0.6 * cfg.budget_tokens and stops[-1]["reason"] == "val EM plateaued"
    # A stopped run is finished: resuming it trains nothing more.
    assert train(cfg, resume=True, show_progress=False) == stops


def test_init_from_loads_weights_with_a_fresh_counter(trained_run, tmp_path):
    src, stops = trained_run
    path = os.path.join(src.out_dir, "checkpoints", str(stops[0]["step"]))
    # A 0.001 stop is below one batch, so it is taken at step 0, before any update: its
    # validation loss must be the source checkpoint's.
    cfg = tiny_config(tmp_path / "ft", init_from=path, budget_tokens=2_000, stops=(0.001, 1.0))
    new = train(cfg, show_progress=False)
    assert new[0]["step"] == 0 and new[0]["tokens"] == 0
    assert new[0]["val_loss"] == pytest.approx(stops[0]["val_loss"], rel=1e-5)
    assert new[-1]["tokens"] <= 2_000


def test_init_from_rejects_a_different_model(trained_run, tmp_path):
    src, _ = trained_run
    cfg = tiny_config(tmp_path / "x", init_from=src.out_dir, model=PRESETS["small"], preset="small")
    with pytest.raises(ConfigError, match="init_from"):
        train(cfg, show_progress=False)


def test_resume_before_the_first_checkpoint_starts_over_without_duplicate_logs(tmp_path):
    cfg = tiny_config(tmp_path / "early", log_every=2)

    def crash_early(event):
        if event.kind == "step" and event.step == 6:  # the first stop (0.5) is ~37 steps away
            raise Crash()

    with pytest.raises(Crash):
        train(cfg, hooks=[crash_early], show_progress=False)
    assert checkpoints.list_checkpoints(cfg.out_dir) == []
    train(cfg, resume=True, show_progress=False)
    steps = [ln["step"] for ln in _train_lines(cfg.out_dir) if ln["event"] == "train"]
    assert steps == sorted(set(steps)) and steps[:3] == [2, 4, 6]


def test_a_batch_crossing_a_stop_and_a_periodic_point_keeps_the_stop_label(tmp_path):
    # The periodic point sits 10 tokens after the 0.5 stop: one batch crosses both.
    cfg = tiny_config(tmp_path / "both", every_tokens=12_010)
    stops = train(cfg, show_progress=False)
    first = stops[0]
    assert first["fraction"] == 0.5 and first["kind"] == "stop"
    assert first["fractions"] == [0.5, pytest.approx(12_010 / 24_000)]
    assert first["tokens"] <= 12_000


def test_a_budget_below_one_batch_is_a_config_error_and_writes_nothing(tmp_path):
    cfg = tiny_config(tmp_path / "small_budget", budget_tokens=100)
    with pytest.raises(ConfigError, match="budget_tokens.*less than one batch"):
        train(cfg, show_progress=False)
    assert not os.path.exists(cfg.out_dir)


def test_init_from_accepts_another_dropout_and_checks_shapes_without_jax(trained_run, tmp_path):
    from framework.run_dirs import resolve_init_from

    src, stops = trained_run
    cfg = tiny_config(tmp_path / "ft", init_from=src.out_dir, model=dataclasses.replace(PRESETS["tiny"], dropout=0.2))
    assert resolve_init_from(cfg) == (os.path.normpath(src.out_dir), None)
    with pytest.raises(ConfigError, match="init_from.*no checkpoint 123"):
        resolve_init_from(dataclasses.replace(cfg, init_from=os.path.join(src.out_dir, "checkpoints", "123")))


def test_train_until_ends_early_on_the_full_budget_schedule(trained_run, tmp_path):
    """A run planned for the budget but ended at 0.5 equals the full run's 0.5 checkpoint, bit for bit:
    the schedule still plans for budget_tokens, and nothing is trained past the end."""
    cfg, stops = trained_run
    short = train(dataclasses.replace(cfg, out_dir=str(tmp_path / "half"), train_until=0.5), show_progress=False)
    assert [(s["fraction"], s["step"]) for s in short] == [(0.5, stops[0]["step"])]
    full_half = open_run(cfg.out_dir).params(stops[0]["step"])
    mine = open_run(str(tmp_path / "half")).params(short[0]["step"])
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(full_half), jax.tree.leaves(mine), strict=True))
    lines = _train_lines(str(tmp_path / "half"))
    assert max(ln["tokens"] for ln in lines) == short[0]["tokens"]


def test_train_until_must_be_a_budget_fraction(tmp_path):
    for bad in (0, 1.5, "half", float("nan")):
        with pytest.raises(ConfigError, match="train_until"):
            tiny_config(tmp_path, train_until=bad).validate()


def test_progress_off_a_terminal_is_whole_lines(capsys):
    """Piped to a file, progress is plain lines (issue 21): no carriage returns to run into the
    evaluation lines, and the evaluation lines themselves go to stdout whole."""
    from framework.training.progress import PlainProgress, progress

    bar = progress(1000, 0, "run", enabled=True)  # pytest's stderr is no terminal
    assert isinstance(bar, PlainProgress)
    bar.every_s = 0.0
    bar.set_postfix(loss="0.5000")
    bar.update(250)
    bar.write("  stop 0.25: step 10")
    out, err = capsys.readouterr()
    assert out == "  stop 0.25: step 10\n" and "\r" not in err
    assert err.startswith("run: 250/1,000 tokens (25%), ") and err.rstrip().endswith("loss 0.5000")
    quiet = progress(1000, 0, "run", enabled=False)
    quiet.every_s = 0.0
    quiet.update(10)
    assert capsys.readouterr().err == ""
