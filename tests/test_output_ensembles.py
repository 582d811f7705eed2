"""Output ensembles: log-prob averaging (vmapped, one compiled decode) and majority vote.

The reference for averaging is a deliberately naive decoder: no KV cache, no vmap, each member's
full forward pass on the sequence so far, log-probs averaged in numpy.
"""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from ensembles import output
from framework.checkpoints.store import list_checkpoints
from framework.config import PRESETS
from framework.data.encoding import make_batch
from framework.data.tokenizer import BOS, BYTE, EOS, PAD
from framework.errors import ConfigError
from framework.evaluation import evaluate
from framework.models.transformer import build_model, forward
from framework.training.runs import open_run

BATCH = 64  # the batch of every decode and forward pass here, so each function compiles once


@pytest.fixture(scope="module")
def members(trained_run):
    """The tiny run, its test split, and its two stopping points' parameters (0.5 and 1.0)."""
    cfg, _ = trained_run
    run = open_run(cfg.out_dir)
    steps = [c["step"] for c in list_checkpoints(cfg.out_dir)]
    return run, run.split("test"), [run.params(s) for s in steps]


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, inputs):
    return forward(nnx.merge(graphdef, params), inputs)


def _naive_decode(graphdef, params_list, weights, prompts, max_new, confidence=False):
    """Greedy decode by averaged log-probs without cache or vmap: tokens [n, max_new] and the
    summed log-prob (log_softmax of the average) of each row's tokens up to and including EOS;
    with `confidence`, also each row's lowest chosen-token log-prob, smallest top-2 probability
    margin and length over those tokens."""
    rows = [[BOS, *BYTE.encode(p)] for p in prompts]
    width = max(len(r) for r in rows) + max_new
    seqs = np.full((len(rows), width), PAD, np.int32)
    for i, r in enumerate(rows):
        seqs[i, : len(r)] = r
    last = np.array([len(r) - 1 for r in rows])  # right-padded: causal attention ignores what follows
    w = np.asarray(weights, np.float64) / np.sum(weights)
    out, total = np.full((len(rows), max_new), PAD, np.int32), np.zeros(len(rows))
    min_lp, min_margin, length = np.full(len(rows), np.inf), np.full(len(rows), np.inf), np.zeros(len(rows), int)
    done = np.zeros(len(rows), bool)
    for t in range(max_new):
        at = (np.arange(len(rows)), last + t)  # each row's newest position
        lp = sum(wk * _log_softmax(np.asarray(_logits(graphdef, p, seqs), np.float64)[at])
                 for wk, p in zip(w, params_list, strict=True))
        tok = lp.argmax(-1)
        chosen = _log_softmax(lp)[np.arange(len(rows)), tok]
        total += np.where(done, 0.0, chosen)
        top = np.sort(np.exp(_log_softmax(lp)), -1)
        min_lp = np.where(done, min_lp, np.minimum(min_lp, chosen))
        min_margin = np.where(done, min_margin, np.minimum(min_margin, top[:, -1] - top[:, -2]))
        length += ~done
        out[:, t] = np.where(done, PAD, tok)
        done |= tok == EOS
        seqs[np.arange(len(rows)), last + t + 1] = tok
    return (out, total, (min_lp, min_margin, length)) if confidence else (out, total)


def _answer_targets(split, n):
    """Per example, (start, length) of its answer + EOS in the teacher-forced targets."""
    return [(split.prompt_lens[i], split.answer_lens[i] + 1) for i in range(n)]


def _decode_shape(split):
    """64 prompts and `decode_split`'s max_new: one compiled shape shared by these tests."""
    return split.prompts[:BATCH], int(split.answer_lens.max()) + 5


def test_identical_members_decode_and_score_like_one_member(members):
    run, split, params = members
    one = params[-1]
    stacked = output.stack_params([one, one])
    weights = [1.0, 3.0]  # any weights: identical members average to the member itself
    assert output.decode_split_ensemble(run.graphdef, stacked, weights, split, BATCH) == \
        evaluate.decode_split(run.graphdef, one, split, BATCH)
    ens = output.ensemble_teacher_forced(run.graphdef, stacked, weights, split, BATCH)
    single = evaluate.teacher_forced(run.graphdef, one, split, BATCH)
    assert ens["strict_em"] == single["strict_em"]
    np.testing.assert_array_equal(ens["correct"], single["correct"])
    np.testing.assert_allclose(ens["example_loss"], single["example_loss"], rtol=1e-4)


def test_two_members_decode_the_argmax_of_their_averaged_logprobs(members):
    run, split, (early, late) = members
    prompts, max_new = _decode_shape(split)
    padded = evaluate.left_padded_prompts(prompts, BYTE)
    alone = [np.asarray(evaluate.greedy_decode(run.graphdef, p, padded, max_new, BYTE.ends)) for p in (early, late)]
    assert (alone[0] != alone[1]).any(), "the two stopping points should disagree somewhere for this test to bite"
    stacked = output.stack_params([early, late])
    for weights in ([0.5, 0.5], [1.0, 3.0]):
        got = np.asarray(output.ensemble_greedy_decode(run.graphdef, stacked, output.member_weights(weights, 2),
                                                       padded, max_new, BYTE.ends))
        want, _ = _naive_decode(run.graphdef, [early, late], weights, prompts, max_new)
        np.testing.assert_array_equal(got, want)
    assert (got != alone[0]).any() or (got != alone[1]).any()  # not just one member in disguise


def test_two_members_teacher_forced_matches_averaged_logprobs_by_hand(members):
    run, split, (early, late) = members
    n, weights = BATCH, [1.0, 3.0]
    batch = make_batch(split, np.arange(n))
    w = np.asarray(weights) / sum(weights)
    lp = sum(wk * _log_softmax(np.asarray(_logits(run.graphdef, p, batch.inputs), np.float64))
             for wk, p in zip(w, (early, late), strict=True))
    norm = _log_softmax(lp)  # the ensemble's distribution
    correct, loss = np.zeros(n, bool), np.zeros(n)
    for i, (start, length) in enumerate(_answer_targets(split, n)):
        ref = batch.targets[i, start : start + length]
        correct[i] = (lp[i, start : start + length].argmax(-1) == ref).all()
        loss[i] = -norm[i, np.arange(start, start + length), ref].mean()
    got = output.ensemble_teacher_forced(run.graphdef, output.stack_params([early, late]), weights, split, BATCH)
    np.testing.assert_array_equal(got["correct"][:n], correct)
    np.testing.assert_allclose(got["example_loss"][:n], loss, rtol=1e-4)


def test_decode_with_logprob_sums_the_generated_tokens_logprobs(members):
    run, split, params = members
    prompts, max_new = _decode_shape(split)
    tokens, logprob = evaluate.greedy_decode_with_logprob(run.graphdef, params[-1],
                                                          evaluate.left_padded_prompts(prompts, BYTE), max_new,
                                                          BYTE.ends)
    want_tokens, want_logprob = _naive_decode(run.graphdef, [params[-1]], [1.0], prompts, max_new)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_allclose(logprob, want_logprob, rtol=1e-4, atol=1e-4)
    assert (np.asarray(logprob) < 0).all()


def test_decode_with_confidence_reports_its_answers_token_statistics_and_changes_nothing_else(members):
    run, split, params = members
    prompts, max_new = _decode_shape(split)
    padded = evaluate.left_padded_prompts(prompts, BYTE)
    tokens, conf = evaluate.greedy_decode_with_confidence(run.graphdef, params[-1], padded, max_new, BYTE.ends)
    plain = evaluate.greedy_decode(run.graphdef, params[-1], padded, max_new, BYTE.ends)
    _, logprob = evaluate.greedy_decode_with_logprob(run.graphdef, params[-1], padded, max_new, BYTE.ends)
    np.testing.assert_array_equal(tokens, plain)
    np.testing.assert_array_equal(conf.logprob, logprob)  # the same sum, bit for bit
    want_tokens, want_logprob, (min_lp, min_margin, length) = _naive_decode(
        run.graphdef, [params[-1]], [1.0], prompts, max_new, confidence=True)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_array_equal(conf.length, length)
    np.testing.assert_allclose(conf.min_logprob, min_lp, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(conf.min_margin, min_margin, rtol=1e-4, atol=1e-5)
    assert (np.asarray(conf.logprob) >= np.asarray(conf.min_logprob) * np.asarray(conf.length) - 1e-4).all()
    assert len(set(np.round(np.asarray(conf.min_margin), 4))) > 1, "margins should vary for this test to bite"


A, B, C = ("12", True), ("13", True), ("12", False)  # C: the same text as A, never ended


@pytest.mark.parametrize(
    "answers, scores, winner",
    [
        ([A, B, A, B], [-1.0, -0.5, -3.0, -2.0], B),  # 2-2 tie: B's mean -1.25 beats A's -2
        ([A, B, A, B], [-0.1, -0.5, -0.1, -2.0], A),  # 2-2 tie: A's mean -0.1 beats B's -1.25
        ([A, A, B], [-10.0, -10.0, -0.1], A),  # a majority beats a higher score
        ([A, C, C], [-0.1, -5.0, -5.0], C),  # ended or not are different answers
        ([B, A], [-1.0, -1.0], B),  # an exact tie goes to the answer met first
        ([A], [-3.0], A),
    ],
)
def test_majority_on_one_prompt(answers, scores, winner):
    assert output.majority([[a] for a in answers], [[s] for s in scores]) == [winner]


def test_majority_decides_each_prompt_alone():
    answers = [[A, B], [B, B], [A, C]]  # members x prompts
    scores = [[-1.0, -9.0], [-0.1, -9.0], [-1.0, -0.1]]
    assert output.majority(answers, scores) == [A, B]
    with pytest.raises(ValueError, match="members, prompts"):
        output.majority(answers, scores[:2])


def test_vote_follows_the_majority_of_members(members):
    run, split, (early, late) = members
    single = evaluate.decode_split(run.graphdef, late, split, BATCH)
    assert output.vote(run.graphdef, [late, late, late], split, BATCH) == single
    assert output.vote(run.graphdef, [early, late, late], split, BATCH) == single  # late's answers always have 2 votes


def test_stack_params_names_the_mismatching_leaf():
    def params(**changes):
        return nnx.split(build_model(PRESETS["tiny"].__class__(**{**PRESETS["tiny"].__dict__, **changes}), 0),
                         nnx.Param)[1]

    stacked = output.stack_params([params(), params()])
    assert jax.tree.leaves(stacked)[0].shape[0] == 2
    with pytest.raises(ConfigError, match=r"blocks\.0\.mlp\.down\.kernel is float32\[128, 32\] in member 1 "
                                          r"but float32\[64, 32\] in member 0"):
        output.stack_params([params(), params(d_ff=128)])
    with pytest.raises(ConfigError, match=r"blocks\.2"):
        output.stack_params([params(), params(n_layers=3)])
    with pytest.raises(ConfigError, match="at least one member"):
        output.stack_params([])


def test_weights_are_checked(members):
    run, split, params = members
    stacked = output.stack_params(params)
    for bad in ([1.0], [1.0, -1.0], [0.0, 0.0]):
        with pytest.raises(ConfigError, match="weights"):
            output.ensemble_teacher_forced(run.graphdef, stacked, bad, split, BATCH)


def test_ensemble_decode_compiles_once_per_shape(members):
    run, split, params = members
    stacked = output.stack_params(params)
    prompts, max_new = _decode_shape(split)
    prompts = evaluate.left_padded_prompts(prompts, BYTE)
    decode = functools.partial(output.ensemble_greedy_decode, run.graphdef, stacked)
    decode(output.member_weights(None, 2), prompts, max_new, BYTE.ends)
    before = output.ensemble_greedy_decode._cache_size()
    decode(output.member_weights([1, 2], 2), prompts[::-1], max_new, BYTE.ends)
    assert output.ensemble_greedy_decode._cache_size() == before
