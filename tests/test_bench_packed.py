"""The packed-rows training benchmark (harness/bench_training.py, `--packed`, issue 23 item 6): its
hand-written step computes what recoup's train step computes on packed text rows (positions and
segments included), and the benchmark runs both loops end to end at a tiny size. No timing is asserted
(that is `make bench`'s job, on a quiet machine)."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

from framework.data import text
from framework.models.protocol import build
from framework.training import optimizers
from framework.training.step import make_train_step
from harness.bench_text import write_corpus
from harness.bench_training import (
    PACKED_SECTION,
    hand_written_packed_step,
    packed_benchmark,
    packed_section,
    text_config,
)
from tests.conftest import tiny_config

LR = 3e-3


def test_the_hand_written_packed_step_matches_recoups_step_on_the_same_batches(tmp_path):
    corpus = str(tmp_path / "corpus")
    write_corpus(corpus, 0.05)
    cfg = text_config(tiny_config(tmp_path / "unused"), corpus, str(tmp_path / "run"), "tiny", seq_len=128,
                      batch_size=4)
    data = text.prepare(cfg.data)
    batches = text.packed_batches(data.stream, cfg.batch_size)
    state, drawn = batches.init(), []
    for _ in range(4):
        b, _, state = batches.draw(state, 0)
        drawn.append(b)
    # rows holding several documents: positions restart inside them, so a plain causal call would differ
    assert all(np.asarray(b.segment_ids).max() >= 2 for b in drawn)
    assert all((np.diff(np.asarray(b.positions), axis=1) < 0).any() for b in drawn)

    # the same optimizer at a fixed rate on both sides, so the losses after the first step compare too
    opt = optimizers.build(cfg.optim, cfg.batch_size)
    hand, hand_params, hand_state = hand_written_packed_step(cfg, opt.make(LR))

    graphdef, params = nnx.split(build(cfg.model, cfg.seed), nnx.Param)
    ours, opt_state = make_train_step(graphdef, opt, lambda tokens: LR, dropout=False), opt.init(params)

    hand_losses, our_losses = [], []
    for b in drawn:
        hand_params, hand_state, loss = hand(hand_params, hand_state, b.inputs, b.targets, b.loss_mask,
                                             b.positions, b.segment_ids)
        hand_losses.append(float(loss))
        params, opt_state, metrics = ours(params, opt_state, b, np.float32(0), jax.random.key(0))
        our_losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(hand_losses, our_losses, rtol=0, atol=1e-5)
    assert our_losses[-1] < our_losses[0]  # it trains: the updates, not only the forward pass, agree


@pytest.mark.slow  # ~25 s on 2 shared cores: two `train` runs' compilation
def test_the_packed_benchmark_runs_both_loops_at_a_tiny_size(tmp_path):
    r = packed_benchmark(tiny_config(tmp_path / "unused"), preset="tiny", seq_len=128, batch_size=4,
                         tokens=30 * 4 * 128, hand_steps=3, repeats=2, corpus_mb=0.05)
    assert len(r["hand"]) == len(r["recoup"]) == 2  # one round each way round
    assert all(math.isfinite(x) and x > 0 for x in r["hand"] + r["recoup"])
    assert math.isclose(r["ratio"], (r["recoup"][0] + r["recoup"][1]) / (r["hand"][0] + r["hand"][1]))
    costs = r["step_costs"]  # the same model call and loss: recoup's extras are a small share of the work
    assert 1.0 <= costs["recoup"]["flops"] / costs["hand"]["flops"] < 1.05
    section = packed_section(r)
    assert section.startswith(PACKED_SECTION + "\n") and "| recoup `train` / hand-written loop" in section
    assert "| compiled step, recoup / hand-written: FLOPs" in section
