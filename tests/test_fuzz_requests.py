"""Property-based fuzzing of completion, chat and feedback requests: any JSON body ends in a request or a
4xx naming a field."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from framework.data.tokenizer import BYTE
from framework.serving.completions import APIError, CompletionRequest, parse, parse_chat
from framework.serving.feedback import parse_feedback
from framework.serving.generation import ServedModel
from tests.conftest import fuzz

MODEL = ServedModel("m", ".", "weights", None, None, None, context=64, info={}, tokenizer=BYTE)
MODELS = {"m": MODEL}
FIELDS = ["model", "prompt", "max_tokens", "temperature", "seed", "stop", "n", "stream", "echo", "logprobs",
          "top_p", "user", "suffix", "logit_bias", "frobnicate"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
plausible = {  # values near the valid ones, so that many bodies get far into the checks
    "model": st.sampled_from(["m", "x", ""]) | json_values,
    "prompt": st.text(max_size=40) | st.lists(st.text(max_size=20), max_size=5) | json_values,
    "max_tokens": st.integers(-3, 70) | json_values,
    "temperature": st.floats(-1, 3) | st.just(float("nan")) | json_values,
    "seed": st.integers(-5, 2**64) | json_values,
    "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=6) | json_values,
}
valid = st.fixed_dictionaries(
    {"model": st.just("m"), "prompt": st.text(min_size=1, max_size=20)
     | st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=4)},
    optional={"max_tokens": st.integers(1, 16), "temperature": st.floats(0, 2), "seed": st.integers(0, 2**62),
              "stop": st.text(min_size=1, max_size=3), "n": st.just(1), "stream": st.just(False)})
one_field_off = st.tuples(valid, st.sampled_from(FIELDS), st.one_of(*plausible.values(), json_values)).map(
    lambda t: {**t[0], t[1]: t[2]})
bodies = (valid | one_field_off | json_values
          | st.fixed_dictionaries({}, optional={f: plausible.get(f, json_values) for f in FIELDS}))


def _request_or_4xx(parse_fn, body, fields):
    """The request `parse_fn` makes of `body`, or None after checking its error: a 4xx naming a known
    field (or one the body has), with a serializable OpenAI error body."""
    try:
        return parse_fn(body, MODELS)
    except APIError as e:
        assert 400 <= e.status < 500 and e.message
        assert e.param is None or e.param in fields or (isinstance(body, dict) and e.param in body), e.param
        json.dumps(e.body())
        return None


@fuzz(400)
@given(bodies)
def test_any_body_is_a_request_or_a_4xx_that_names_the_problem(body):
    req = _request_or_4xx(parse, body, FIELDS)
    if req is None:
        return
    assert isinstance(req, CompletionRequest) and req.rows
    for row in req.rows:
        assert 1 <= row.max_tokens and len(row.prompt) + row.max_tokens <= MODEL.context
        assert 0 <= row.temperature <= 2 and 0 <= row.seed < 2**63


@fuzz(200)
@given(st.binary(max_size=200))
def test_any_bytes_are_json_or_a_clear_400(raw):
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # the server answers 400 "not valid JSON" (tests/test_serving.py)
    try:
        parse(body, MODELS)
    except APIError as e:
        assert 400 <= e.status < 500


CHAT_FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "seed", "stop", "n",
               "stream", "logprobs", "tools", "user", "frobnicate"]
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "robot"]),
                                           "content": st.text(max_size=20) | json_values}), max_size=4)
valid_chat = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": st.lists(st.fixed_dictionaries(
        {"role": st.just("user"), "content": st.text(min_size=1, max_size=20)}), min_size=1, max_size=3)},
    optional={"max_completion_tokens": st.integers(1, 16), "temperature": st.floats(0, 2)})
chat_bodies = (valid_chat | json_values
               | st.tuples(valid_chat, st.sampled_from(CHAT_FIELDS), messages | json_values).map(
                   lambda t: {**t[0], t[1]: t[2]}))


@fuzz(300)
@given(chat_bodies)
def test_any_chat_body_is_a_request_or_a_4xx_that_names_the_problem(body):
    req = _request_or_4xx(parse_chat, body, CHAT_FIELDS)
    if req is None:
        return
    assert isinstance(req, CompletionRequest) and len(req.rows) == 1
    row = req.rows[0]
    assert 1 <= row.max_tokens and len(row.prompt) + row.max_tokens <= MODEL.context


FEEDBACK_FIELDS = ["id", "index", "correct", "reference", "frobnicate"]
valid_feedback = st.fixed_dictionaries({"id": st.text(min_size=1, max_size=40)}, optional={
    "index": st.integers(0, 63)}).flatmap(lambda d: st.sampled_from([
        {**d, "correct": True}, {**d, "correct": False}]) | st.text(max_size=30).map(lambda t: {**d, "reference": t}))
feedback_bodies = (valid_feedback | json_values
                   | st.tuples(valid_feedback, st.sampled_from(FEEDBACK_FIELDS), json_values).map(
                       lambda t: {**t[0], t[1]: t[2]})
                   | st.fixed_dictionaries({}, optional={f: json_values for f in FEEDBACK_FIELDS}))


@fuzz(300)
@given(feedback_bodies)
def test_any_feedback_body_is_a_feedback_or_a_4xx_that_names_the_problem(body):
    """POST /v1/feedback's checks (the store's 404 and 409 are tests/test_serving.py's)."""
    try:
        fb = parse_feedback(body)
    except APIError as e:
        assert 400 <= e.status < 500 and e.message
        assert e.param is None or e.param in FEEDBACK_FIELDS or (isinstance(body, dict) and e.param in body), e.param
        json.dumps(e.body())
        return
    assert isinstance(fb.id, str) and 0 < len(fb.id) <= 128 and 0 <= fb.index < 64
    assert (fb.correct is None) != (fb.reference is None)
    assert fb.correct in (None, True, False) and (fb.reference is None or len(fb.reference) <= 4096)
    if fb.reference is not None:
        fb.reference.encode("utf-8")  # valid Unicode: SQLite stores it as UTF-8
