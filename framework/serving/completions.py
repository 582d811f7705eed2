"""The OpenAI completions and chat completions APIs, as recoup serves them: request checking and
response bodies. A chat becomes one prompt through the served model's tokenizer: its chat template,
or, without one (the byte tokenizer), the last user message.

Every check names the field and what is allowed, and becomes a 4xx with OpenAI's error body
(`{"error": {"message", "type", "param", "code"}}`), so clients written for that API report it
as they would any other. Differences from OpenAI, all stated in the README: `temperature`
defaults to 0 (greedy: these models answer exact-match questions), `n` is 1, and there is no
streaming, `logprobs` or `echo`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

from framework.data.tokenizer import ChatError
from framework.serving.generation import Completion, Row, ServedModel, encode_prompt

MAX_STOPS = 4  # as OpenAI
MAX_PROMPTS = 64  # prompts in one request (a list); each is one row of a batch
# Accepted and ignored when they ask for what recoup does anyway; anything else is refused by name.
NEUTRAL = {"n": 1, "stream": False, "echo": False, "logprobs": None, "best_of": 1, "top_p": 1,
           "presence_penalty": 0, "frequency_penalty": 0, "suffix": None, "logit_bias": None,
           "stream_options": None}
DEFAULT_MAX_TOKENS = 16  # OpenAI's, for a request without max_tokens (less if the context has no room)
MAX_USER = 256  # characters of the end-user id a client may send
MAX_MESSAGES = 256  # messages in one chat
COMMON = ("model", "max_tokens", "temperature", "seed", "stop", "user")
CHAT_NEUTRAL = {"n": 1, "stream": False, "logprobs": False, "top_logprobs": None, "top_p": 1, "presence_penalty": 0,
                "frequency_penalty": 0, "logit_bias": None, "stream_options": None, "tools": None,
                "tool_choice": None, "parallel_tool_calls": None, "response_format": None}
ROLES = ("system", "developer", "user", "assistant", "tool")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class CompletionRequest(NamedTuple):
    model: ServedModel
    rows: list[Row]
    stops: list[str]
    user: str | None = None  # the end-user id OpenAI clients send; logged with the request's errors
    texts: tuple[str, ...] = ()  # each row's prompt as sent (a chat: its messages as JSON), for --feedback-db


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _check_fields(body: Any, neutral: Mapping[str, Any], known: tuple[str, ...]) -> None:
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    for name, value in body.items():
        if name in neutral:
            if value != neutral[name] and not (value is None or (name == "logit_bias" and value == {})):
                raise APIError(400, f"{name}={value!r} is not supported (recoup serves {name}={neutral[name]!r})",
                               name, "unsupported_parameter")
        elif name not in known:
            raise APIError(400, f"unrecognized request argument supplied: {name}", name, "unknown_parameter")


def _model(body: dict, models: Mapping[str, ServedModel]) -> ServedModel:
    model_id = body.get("model")
    if not isinstance(model_id, str):
        raise APIError(400, "model is required: a string, one of " + ", ".join(models), "model")
    if model_id not in models:
        raise APIError(404, f"the model {model_id!r} does not exist; served: {', '.join(models)}", "model",
                       "model_not_found")
    return models[model_id]


def _unicode(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate ("\ud800") that JSON allows but UTF-8 does not
        raise APIError(400, f"{field} is not valid Unicode text ({e.reason} at {e.start})", field) from None


def parse(body: Any, models: Mapping[str, ServedModel]) -> CompletionRequest:
    """Check a decoded JSON body against the served models and their context lengths (not against
    the compiled shapes: a request past them compiles its own, see `generation.fit`)."""
    _check_fields(body, NEUTRAL, (*COMMON, "prompt"))
    model = _model(body, models)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise APIError(400, "prompt is required: a non-empty string or a non-empty list of strings", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise APIError(400, f"prompt has {len(prompts)} strings; at most {MAX_PROMPTS} per request", "prompt")
    if any(p == "" for p in prompts):
        raise APIError(400, "prompt must not be empty", "prompt")
    for p in prompts:
        _unicode(p, "prompt")
    return _request(body, model, [encode_prompt(model.tokenizer, p) for p in prompts], "prompt")._replace(
        texts=tuple(prompts))


def _messages(value: Any) -> list[dict]:
    """OpenAI's messages as [{"role", "content": str}]: content given as text parts is joined."""
    if not isinstance(value, list) or not value:
        raise APIError(400, "messages is required: a non-empty list of {role, content} objects", "messages")
    if len(value) > MAX_MESSAGES:
        raise APIError(400, f"messages has {len(value)} entries; at most {MAX_MESSAGES} per request", "messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise APIError(400, f"{where} must be an object with a role, one of {', '.join(ROLES)}", "messages")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise APIError(400, f"{where}.content: recoup serves text parts only ({{type: text, text}})",
                               "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise APIError(400, f"{where}.content must be a string or a list of text parts", "messages")
        _unicode(content, "messages")
        out.append({"role": m["role"], "content": content})
    return out


def parse_chat(body: Any, models: Mapping[str, ServedModel]) -> CompletionRequest:
    """A chat completion request: its messages made one prompt by the model's tokenizer (`chat_prompt`),
    then checked as a completion is."""
    _check_fields(body, CHAT_NEUTRAL, (*COMMON, "messages", "max_completion_tokens"))
    model = _model(body, models)
    messages = _messages(body.get("messages"))
    if body.get("max_completion_tokens") is not None:
        if body.get("max_tokens") is not None and body["max_tokens"] != body["max_completion_tokens"]:
            raise APIError(400, "max_tokens and max_completion_tokens differ; give one", "max_completion_tokens")
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    try:
        tokens = model.tokenizer.chat_prompt(messages)
    except ChatError as e:
        raise APIError(400, str(e), "messages") from None
    if not tokens:
        raise APIError(400, "messages make an empty prompt", "messages")
    req = _request(body, model, [tuple(tokens)], "messages", default_max=None)  # OpenAI's chat: up to the context
    return req._replace(texts=(json.dumps(messages, ensure_ascii=False),))


def _request(body: dict, model: ServedModel, prompts: list[tuple[int, ...]], field: str,
             default_max: int | None = DEFAULT_MAX_TOKENS) -> CompletionRequest:
    """The rows of encoded `prompts`, with the fields completions and chats share checked. Without
    max_tokens a row generates `default_max` tokens, or what the context leaves (None, or less room)."""
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not _is_int(max_tokens) or not 1 <= max_tokens <= model.context - 1):
        raise APIError(400, f"max_tokens must be an integer from 1 to {model.context - 1} (the model's context "
                            f"length less one), got {max_tokens!r}", "max_tokens")
    user = body.get("user")
    if user is not None and not (isinstance(user, str) and len(user) <= MAX_USER):
        raise APIError(400, f"user must be a string of at most {MAX_USER} characters", "user")
    temperature = body.get("temperature", 0.0)
    temperature = 0.0 if temperature is None else temperature
    if not _is_number(temperature) or not 0 <= temperature <= 2:
        raise APIError(400, f"temperature must be a number from 0 to 2 (0: greedy), got {temperature!r}",
                       "temperature")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63):
        raise APIError(400, f"seed must be a non-negative integer, got {seed!r}", "seed")
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise APIError(400, f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
    rows = []
    seed = uuid.uuid4().int % 2**63 if seed is None else seed  # unseeded sampling differs between requests
    for i, tokens in enumerate(prompts):
        if len(tokens) >= model.context:
            raise APIError(400, f"this model's maximum context length is {model.context} tokens; "
                                f"{field}{'' if len(prompts) == 1 else f'[{i}]'} is {len(tokens)} (BOS included), "
                                "leaving no room to generate", field, "context_length_exceeded")
        room = model.context - len(tokens)
        wanted = (room if default_max is None else min(default_max, room)) if max_tokens is None else max_tokens
        if len(tokens) + wanted > model.context:
            raise APIError(400, f"this model's maximum context length is {model.context} tokens; the prompt "
                                f"({len(tokens)}) plus max_tokens ({wanted}) is more", "max_tokens",
                           "context_length_exceeded")
        rows.append(Row(tokens, wanted, float(temperature), (seed + i) % 2**63))
    return CompletionRequest(model, rows, stops, user)


def chat_response(req: CompletionRequest, completions: list[Completion]) -> dict[str, Any]:
    """OpenAI's chat.completion body for the one answer of a chat."""
    out = response(req, completions)
    return {**out, "id": "chatcmpl-" + out["id"].removeprefix("cmpl-"), "object": "chat.completion",
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason":
                         c.finish_reason, "logprobs": None, **_route(c)} for i, c in enumerate(completions)]}


def response(req: CompletionRequest, completions: list[Completion]) -> dict[str, Any]:
    prompt_tokens = sum(len(r.prompt) for r in req.rows)
    completion_tokens = sum(c.completion_tokens for c in completions)
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": req.model.id,
        "choices": [{"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None, **_route(c)}
                    for i, c in enumerate(completions)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def _route(c: Completion) -> dict[str, Any]:
    """A cascade's extra field in each choice (OpenAI's clients keep unknown fields and ignore them): the
    path that answered, and the 1x model's confidence under the rule's signal. Nothing for other models."""
    if c.route is None:
        return {}
    return {"recoup": {"path": c.route.path, "signal": c.route.signal,
                       "confidence": c.route.confidence[c.route.signal]}}
