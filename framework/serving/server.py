"""`recoup serve`: ensembles and checkpoints over the OpenAI completions and chat APIs (FastAPI + uvicorn).

    recoup serve runs/demo-ens runs/demo/addition/cosine-seed0 --port 8000
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \
         -d '{"model": "demo-ens", "prompt": "12345678+87654321=", "max_tokens": 12}'

Endpoints: POST /v1/completions, POST /v1/chat/completions (a chat made one prompt by the model's
tokenizer: its chat template, else the last user message), POST /v1/feedback (with --feedback-db:
a verdict or reference answer on a served completion, `feedback`), GET /v1/models, GET /health
(503 while loading and compiling, 200 when ready), GET /metrics (Prometheus text; a cascade's
escalations and mean cost too). Requests are micro-batched (`batcher`) and padded
to the compiled buckets (`generation`), so after start-up no request inside them compiles (one past
them compiles its shape once: buckets are not limits). A client that
disconnects before its answer is ready has its rows that still wait dropped, none computed; its
request is counted in /metrics with status 499 (nginx's "client closed request"), never a 5xx.

One process, one worker: JAX owns the accelerator and the compiled programs in this process, and
batching across requests only works where the requests meet. More workers would each load every
model, compile every bucket and compete for one device's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from framework.errors import ConfigError
from framework.serving import completions, feedback, generation
from framework.serving.batcher import MicroBatcher, QueueFull
from framework.serving.completions import APIError
from framework.serving.generation import Buckets, ServedModel

API_KEY_ENV = "RECOUP_API_KEY"
DEFAULT_BUCKETS = Buckets()
# metric labels; anything else is "other"
KNOWN = ("/v1/completions", "/v1/chat/completions", "/v1/feedback", "/v1/models", "/health", "/metrics")
CLIENT_GONE = 499  # the status counted for a request whose client disconnected; nobody reads it
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, max_batch: int, compilations: Callable[[], int]):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("recoup_requests_total", "HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram("recoup_request_latency_seconds", "Request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("recoup_batch_size", "Rows per forward pass", registry=r,
                                    buckets=[b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= max_batch])
        self.tokens = Counter("recoup_generated_tokens_total", "Tokens generated", ["model"], registry=r)
        self.compilations = Gauge("recoup_compilations", "XLA compilations in this process", registry=r)
        self.compilations.set_function(compilations)
        self.waiting = Gauge("recoup_queue_rows", "Rows waiting for a batch", registry=r)
        # a cascade's rows by the path that answered them; its mean cost is 1 + k * escalated / rows
        self.cascade_rows = Counter("recoup_cascade_rows_total", "Rows a cascade answered, by path (single: its 1x "
                                    "model's answer stood; ensemble: escalated)", ["model", "path"], registry=r)
        self.escalations = Counter("recoup_cascade_escalations_total", "Rows a cascade escalated to its ensemble",
                                   ["model"], registry=r)
        self.mean_cost = Gauge("recoup_cascade_mean_cost", "A cascade's mean forward passes per row so far, "
                               "relative to one model: 1 + k * escalated / rows", ["model"], registry=r)
        self.feedback = Counter("recoup_feedback_total", "Feedback recorded, by kind", ["kind"], registry=r)
        self.feedback_errors = Counter("recoup_feedback_db_errors_total", "Completions that could not be recorded "
                                       "in --feedback-db (answered all the same)", registry=r)
        self._cascade_counts: dict[str, tuple[int, int]] = {}  # model -> (rows, escalated), for the mean cost

    def count_routes(self, model: ServedModel, done: list[generation.Completion]) -> None:
        """A cascade's batch: its rows by path, its escalations and its mean cost so far."""
        up = sum(c.route.path == "ensemble" for c in done)
        self.cascade_rows.labels(model.id, "single").inc(len(done) - up)
        self.cascade_rows.labels(model.id, "ensemble").inc(up)
        self.escalations.labels(model.id).inc(up)
        rows, escalated = self._cascade_counts.get(model.id, (0, 0))
        self._cascade_counts[model.id] = rows, escalated = rows + len(done), escalated + up  # one thread writes
        self.mean_cost.labels(model.id).set(1 + len(model.cascade.fallback.weights) * escalated / rows)


class State:
    """What the routes share: the models once loaded, the batcher, the metrics and readiness."""

    def __init__(self, paths: Sequence[str], buckets: Buckets, max_wait_ms: float, api_key: str | None,
                 max_queue: int, feedback_db: str | None = None, log=print):
        check_servable(paths)
        self.paths, self.buckets, self.api_key, self.log = list(paths), buckets.validate(), api_key, log
        self.feedback = feedback.FeedbackStore(feedback_db) if feedback_db else None
        self.models: dict[str, ServedModel] = {}
        self.ready = threading.Event()
        self.failed: str | None = None
        self.compilations = generation.CompileCounter()  # from here on: loading and warming up count
        self.metrics = Metrics(buckets.batch[-1], self.compilations)
        self.batcher = MicroBatcher(self._run_batch, buckets.batch[-1], max_wait_ms, max_queue, self._on_batch)
        self.metrics.waiting.set_function(lambda: self.batcher.waiting)

    def load(self) -> None:
        """Load every model and compile every bucket (on a thread: /health answers 503 meanwhile)."""
        try:
            t = time.perf_counter()
            models = load_models(self.paths)
            for m in models.values():
                generation.warm_up(m, self.buckets, self.log)
            self.models = models
            self.ready.set()
            self.log(f"ready: {', '.join(models)} ({time.perf_counter() - t:.0f} s to load and compile)")
        except Exception as e:  # noqa: BLE001 - reported by /health and the log; the process stays up
            self.failed = f"{type(e).__name__}: {e}"
            self.log(f"recoup serve: loading failed: {self.failed}")

    def _run_batch(self, model_id: str, rows: list[generation.Row]) -> list[generation.Completion]:
        model = self.models[model_id]
        done = generation.generate(model, rows, self.buckets)
        if model.cascade is not None:
            self.metrics.count_routes(model, done)
        return done

    def _on_batch(self, model_id: str, rows: int, seconds: float) -> None:
        self.metrics.batch_size.observe(rows)

    async def record(self, completion_id: str, req, done: list[generation.Completion]) -> None:
        """With --feedback-db: what was served, committed before the answer goes, so feedback on it can
        follow at once. A database error does not spoil the answer; feedback on it will be a 404."""
        if self.feedback is None:
            return
        rows = feedback.completion_rows(completion_id, req, done, time.time())
        try:
            await self.feedback.run(self.feedback.record, rows)
        except sqlite3.Error as e:
            self.metrics.feedback_errors.inc()
            self.log(f"recoup serve: could not record {completion_id} in {self.feedback.path}: {e}")

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and secrets.compare_digest(given[7:].encode(), self.api_key.encode())):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", None,
                           "invalid_api_key", "authentication_error")

    def check_ready(self) -> None:
        if self.failed:
            raise APIError(503, f"the server failed to load its models: {self.failed}", None, None, "server_error")
        if not self.ready.is_set():
            raise APIError(503, "the server is loading and compiling its models; retry shortly (see /health)",
                           None, "loading", "server_error")

    def check_feedback_on(self) -> None:
        if self.feedback is None:
            raise APIError(404, "feedback is off: start recoup serve with --feedback-db PATH", None,
                           "feedback_disabled")

    async def take_feedback(self, raw: bytes) -> dict:
        """POST /v1/feedback's body, read (with feedback on) -> its response; an APIError for what cannot
        be recorded."""
        fb = feedback.parse_feedback(feedback.read_json(raw))
        result = await self.feedback.run(self.feedback.add, fb)
        if result == "unknown":
            raise APIError(404, f"no completion {fb.id!r} with a choice {fb.index} was recorded in this server's "
                                "--feedback-db", "id", "completion_not_found")
        if result == "duplicate":
            raise APIError(409, f"completion {fb.id!r} choice {fb.index} already has another feedback; the first "
                                "one stands", "id", "duplicate_feedback")
        if result == "again":  # a retry of a stored feedback: the same answer as the first time, counted once
            return {"object": "feedback", "id": fb.id, "index": fb.index, "status": "already recorded"}
        self.metrics.feedback.labels("reference" if fb.reference is not None else
                                     "correct" if fb.correct else "wrong").inc()
        return {"object": "feedback", "id": fb.id, "index": fb.index, "status": "recorded"}


def check_servable(paths: Sequence[str]) -> None:
    """What cannot be served is a clear error before anything loads: each path an ensemble or a run
    directory, each served under a name (its directory's) that no other path has."""
    ids: dict[str, str] = {}
    for path in paths:
        if not os.path.isdir(path):
            raise ConfigError("model", f"{path} is not a directory (an ensemble or a run directory)")
        if not any(os.path.isfile(os.path.join(path, f)) for f in ("manifest.json", "config.json")):
            raise ConfigError("model", f"{path} is neither a recoup ensemble (no manifest.json) nor a run "
                                       "directory (no config.json)")
        name = generation.served_id(path)
        if name in ids:
            raise ConfigError("model", f"{path} and {ids[name]} would both be served as {name!r}; serve them "
                                       "from directories with different names")
        ids[name] = path


def load_models(paths: Sequence[str]) -> dict[str, ServedModel]:
    models = [generation.load(path) for path in paths]
    return {m.id: m for m in models}


T = TypeVar("T")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """`await work`, unless the client disconnects first: then `work` is cancelled and None returned.

    The route does not notice a disconnect by itself (nothing reads from the client while it awaits
    the batcher); once the body is read, a disconnect is the only message the ASGI server sends, so
    awaiting `request.receive()` beside the work is what hears it. Cancelling `batcher.submit`
    drops the request's rows that still wait; a batch already running finishes and is thrown away.
    """
    answer = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(request.receive())
    try:
        await asyncio.wait((answer, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this request is cancelled itself (the server stopping)
        gone.cancel()
        if not answer.done():
            answer.cancel()
    return answer.result() if answer.done() else None


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 once it passes `limit` bytes (by its Content-Length, before
    reading, or while reading a chunked one)."""
    declared = request.headers.get("content-length", "")
    too_large = APIError(413, f"the request body is larger than {limit} bytes", None, "request_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(paths: Sequence[str], buckets: Buckets = DEFAULT_BUCKETS, max_wait_ms: float = 5.0,
               api_key: str | None = None, max_queue: int = 4096, feedback_db: str | None = None,
               log=print) -> FastAPI:
    state = State(paths, buckets, max_wait_ms, api_key, max_queue, feedback_db, log)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher.start()
        threading.Thread(target=state.load, name="recoup-load", daemon=True).start()
        yield
        await state.batcher.stop()
        if state.feedback is not None:
            state.feedback.close()

    app = FastAPI(title="recoup", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.recoup = state

    def error(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):  # an unknown route or method: OpenAI's body too
        if e.status_code in (404, 405):
            return error(APIError(e.status_code, f"no route {request.method} {request.url.path}: recoup serves POST "
                                                 "/v1/completions, /v1/chat/completions and /v1/feedback, GET "
                                                 "/v1/models, /health and /metrics", None, "unknown_url"))
        return error(APIError(e.status_code, str(e.detail)))

    @app.middleware("http")
    async def count(request: Request, call_next):
        t = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as e:  # noqa: BLE001 - never a bare 500 page: an OpenAI-style body, and logged
            user = getattr(request.state, "user", None)  # the client's end-user id, when it sent one
            log(f"recoup serve: {request.url.path}{f' (user {user!r})' if user else ''}: {type(e).__name__}: {e}")
            response = error(APIError(500, f"internal error: {type(e).__name__}", kind="server_error"))
        endpoint = request.url.path if request.url.path in KNOWN else "other"
        state.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        state.metrics.latency.labels(endpoint).observe(time.perf_counter() - t)
        return response

    async def complete(request: Request, parse, respond):
        try:
            state.check_key(request)
            state.check_ready()
            try:
                raw = await request.body()
            except ClientDisconnect:  # gone before its body was read: nothing to answer
                return Response(status_code=CLIENT_GONE)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise APIError(400, f"the request body is not valid JSON ({e})") from None
            req = parse(body, state.models)
            request.state.user = req.user
            try:
                done = await unless_disconnected(request, state.batcher.submit(req.model.id, req.rows))
            except QueueFull as e:
                raise APIError(429, str(e), None, "queue_full", "rate_limit_error") from None
            if done is None:
                return Response(status_code=CLIENT_GONE)
            done = [generation.apply_stop(c, req.stops) for c in done]
            state.metrics.tokens.labels(req.model.id).inc(sum(c.completion_tokens for c in done))
            body = respond(req, done)
            await state.record(body["id"], req, done)
            return body
        except APIError as e:
            return error(e)

    @app.post("/v1/completions")
    async def create_completion(request: Request):
        return await complete(request, completions.parse, completions.response)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(request: Request):
        return await complete(request, completions.parse_chat, completions.chat_response)

    @app.post("/v1/feedback")
    async def create_feedback(request: Request):
        try:
            state.check_key(request)
            state.check_feedback_on()  # before reading a body that nothing would take
            try:
                raw = await read_body(request, feedback.MAX_BODY_BYTES)
            except ClientDisconnect:
                return Response(status_code=CLIENT_GONE)
            return await state.take_feedback(raw)
        except APIError as e:
            return error(e)

    @app.get("/v1/models")
    async def list_models(request: Request):
        try:
            state.check_key(request)
            state.check_ready()
        except APIError as e:
            return error(e)
        return {"object": "list", "data": [
            {"id": m.id, "object": "model", "created": int(os.path.getmtime(m.path)), "owned_by": "recoup",
             "combine": m.combine, "context_length": m.context, **m.info} for m in state.models.values()]}

    @app.get("/health")
    async def health():
        if state.failed:
            return JSONResponse({"status": "failed", "error": state.failed}, status_code=503)
        if not state.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "models": list(state.models)}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(paths: Sequence[str], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          buckets: Buckets = DEFAULT_BUCKETS, max_wait_ms: float = 5.0, max_queue: int = 4096,
          feedback_db: str | None = None) -> None:
    import uvicorn

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    with socket.socket() as s:  # a port in use is one line, not uvicorn's traceback after loading
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError("port", f"cannot listen on {host}:{port} ({e.strerror}); is another server there? "
                                      "Choose another --port") from None
    app = create_app(paths, buckets, max_wait_ms, api_key, max_queue, feedback_db)
    print(f"recoup serve: http://{host}:{port}/v1 ({'API key required' if api_key else 'no API key'}"
          f"{f'; feedback recorded in {feedback_db}' if feedback_db else ''}); "
          "loading and compiling, /health says when ready", flush=True)
    uvicorn.run(app, host=host, port=port, workers=1, log_level="warning")

