"""The model and decoding: causality, padding invariance, and greedy decoding = teacher forcing."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from framework.config import PRESETS
from framework.data.encoding import make_batch
from framework.data.tokenizer import BYTE, EOS
from framework.evaluation import evaluate
from framework.models.transformer import build_model, causal_mask, forward
from framework.training.runs import open_run
from tests.test_data import _split as make_split


def _forward(model, tokens):
    return forward(model, tokens)


def test_attention_is_causal():
    model = build_model(PRESETS["tiny"], 0)
    a = jnp.array([[5, 6, 7, 8, 9, 10]])
    b = a.at[0, 4:].set(42)
    la, lb = _forward(model, a), _forward(model, b)
    np.testing.assert_allclose(la[0, :4], lb[0, :4], atol=1e-6)
    assert not np.allclose(la[0, 4:], lb[0, 4:])


def test_left_padding_with_offset_positions_gives_the_same_logits():
    model = build_model(PRESETS["tiny"], 0)
    seq = jnp.array([[1, 20, 21, 22, 23]])
    ref = _forward(model, seq)[0]
    padded = jnp.array([[0, 0, 0, 1, 20, 21, 22, 23]])
    valid = padded != 0
    positions = jnp.maximum(jnp.cumsum(valid, 1) - 1, 0)
    mask = causal_mask(8) & valid[:, None, :]
    out = model(padded, positions, mask)[0][0, 3:]
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_greedy_decoding_agrees_with_teacher_forcing(trained_run):
    """Decoded token j equals the teacher-forced argmax at answer position j, for as long as
    the decode has matched the reference: the invariant behind teacher-forced strict EM."""
    cfg, _ = trained_run
    run = open_run(cfg.out_dir)
    split = run.split("test")
    params = run.params()
    model = nnx.merge(run.graphdef, params)
    n = len(split)
    batch = make_batch(split, np.arange(n))
    logits = _forward(model, jnp.asarray(batch.inputs))
    argmax = np.asarray(jnp.argmax(logits, -1))
    decoded = np.asarray(
        evaluate.greedy_decode(run.graphdef, params, evaluate.left_padded_prompts(split.prompts, BYTE),
                               int(split.answer_lens.max()) + 2, BYTE.ends)
    )
    checked = 0
    for i in range(n):
        start, length = split.prompt_lens[i], split.answer_lens[i] + 1  # answer + EOS
        tf = argmax[i, start : start + length]
        ref = batch.targets[i, start : start + length]
        for j in range(length):
            assert decoded[i, j] == tf[j], f"example {i}, answer token {j}"
            checked += 1
            if tf[j] != ref[j]:
                break
    assert checked >= n
    tf_result = evaluate.teacher_forced(run.graphdef, params, split, 64)
    dec_result = evaluate.score(evaluate.decode_split(run.graphdef, params, split, 64), split)
    assert tf_result["strict_em"] == dec_result["strict_em"]


def test_decode_stops_and_pads_after_eos():
    model = build_model(PRESETS["tiny"], 0)
    graphdef, params = nnx.split(model, nnx.Param)
    # Make EOS likely (a large EOS output embedding), then check what follows it.
    emb = params["embed"]["embedding"]
    params["embed"]["embedding"] = nnx.Param(emb[...].at[EOS].set(100.0))
    out = evaluate.greedy_decode(graphdef, params, evaluate.left_padded_prompts(["1+1=", "22+3="], BYTE), 5, BYTE.ends)
    for row in out.tolist():
        assert EOS in row
        assert all(t == 0 for t in row[row.index(EOS) + 1 :])  # PAD after the first EOS


def test_decode_compiles_once_per_shape():
    model = build_model(PRESETS["tiny"], 0)
    graphdef, params = nnx.split(model, nnx.Param)
    prompts = evaluate.left_padded_prompts(["1+1=", "22+3="], BYTE)
    evaluate.greedy_decode(graphdef, params, prompts, 4, BYTE.ends)
    before = evaluate.greedy_decode._cache_size()
    evaluate.greedy_decode(graphdef, params, prompts[::-1], 4, BYTE.ends)
    assert evaluate.greedy_decode._cache_size() == before


def test_an_answer_without_eos_is_a_miss():
    """Teacher forcing requires EOS after the answer; scoring decoded text must agree."""
    split = make_split([("12+3=", "51"), ("1+1=", "2")])
    both = evaluate.Decoded(texts=["51", "2"], ended=[True, False])
    result = evaluate.score(both, split)
    assert result["strict_em"] == 0.5 and result["em"] == 0.5 and result["f1"] == 1.0


def test_bfloat16_compute_keeps_float32_parameters_and_decodes():
    import dataclasses

    import jax
    import numpy as np
    from flax import nnx

    from framework.config import PRESETS, ModelConfig
    from framework.errors import ConfigError
    from framework.evaluation.evaluate import greedy_decode, left_padded_prompts
    from framework.models.transformer import build_model, forward

    cfg = dataclasses.replace(PRESETS["tiny"], dtype="bfloat16")
    model = build_model(cfg, 0)
    graphdef, params = nnx.split(model, nnx.Param)
    assert {str(x.dtype) for x in jax.tree.leaves(params)} == {"float32"}
    full = forward(build_model(PRESETS["tiny"], 0), np.ones((2, 8), np.int32))
    half = forward(model, np.ones((2, 8), np.int32))
    assert half.dtype == np.float32 and 0 < float(np.max(np.abs(half - full))) < 0.1  # bf16 rounding, same model
    assert model.init_cache(1, 4)[0][0].dtype == jax.numpy.bfloat16
    assert greedy_decode(graphdef, params, left_padded_prompts(["1+2="], BYTE), 4, BYTE.ends).shape == (1, 4)
    with pytest.raises(ConfigError, match="model.dtype"):
        ModelConfig(dtype="float16").validate()
