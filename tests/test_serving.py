"""`recoup serve`: a real server on a loopback port, real HTTP clients (httpx, and the openai package)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import threading
import time

import httpx
import numpy as np
import pytest

from ensembles import artifact
from ensembles.members import COMBINERS, ParamStore
from framework.serving import generation
from framework.serving.generation import Buckets
from harness.served import recoup_serve
from tests.conftest import tiny_config
from tests.serving_support import LiveServer, hand_made_cascade

BUCKETS = Buckets(batch=(1, 4), prompt=(32,), new=(4, 16))  # 4 shapes: each costs ~1.5 s per model to compile


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny run, a latest-k weight average, a 3-member log-prob ensemble and vote of it, and a cascade
    of the two (tests/test_feedback.py), all served, with a --feedback-db."""
    from framework.runner.build import train
    from framework.serving.server import create_app

    root = tmp_path_factory.mktemp("serve")
    # trained long enough that answers differ from prompt to prompt (at 24k tokens most are "11")
    cfg = tiny_config(root / "tiny-run", stops=(0.25, 0.5, 0.75, 1.0), budget_tokens=120_000)
    train(cfg, show_progress=False)
    avg = artifact.build([cfg.out_dir], cfg.budget_tokens, 1, str(root / "avg"), "latest-k", log=lambda _: None)
    ens = artifact.build([cfg.out_dir], cfg.budget_tokens, 3, str(root / "ens3"), "logits", log=lambda _: None)
    vote = artifact.build([cfg.out_dir], cfg.budget_tokens, 3, str(root / "vote3"), "vote", log=lambda _: None)
    assert avg["combine"] == "weights" and ens["combine"] == "logits" and len(ens["members"]) >= 2
    assert vote["combine"] == "vote" and len(vote["members"]) == 3
    hand_made_cascade(str(root / "avg"), str(root / "ens3"), str(root / "casc"))
    app = create_app([cfg.out_dir, *(str(root / name) for name in ("avg", "ens3", "vote3", "casc"))], BUCKETS,
                     max_wait_ms=20, feedback_db=str(root / "feedback.db"), log=lambda _: None)
    with LiveServer(app) as server:
        server.wait_ready()
        yield server, cfg, root


def _complete(url, **body):
    r = httpx.post(url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _eval_decodes(ens_dir):
    """What `recoup ensemble eval` decodes for the test split (its greedy answers), and max_new."""
    manifest = artifact.load_manifest(ens_dir)
    c = artifact.candidate_of(manifest)
    store = ParamStore()
    run = store.run(c.members[0].run)
    split = run.split("test")
    decoded = COMBINERS[c.combine].decode(COMBINERS[c.combine].prepare(store, c), split, run.cfg.eval_batch_size)
    return split.prompts, decoded, int(split.answer_lens.max()) + 1 + 4


@pytest.mark.parametrize("name", ["avg", "ens3", "vote3"])
def test_answers_equal_ensemble_eval_decodes(served, name):
    server, _, root = served
    prompts, decoded, max_new = _eval_decodes(str(root / name))
    n = 12
    body = _complete(server.url, model=name, prompt=list(prompts[:n]), max_tokens=max_new)
    assert body["object"] == "text_completion" and body["model"] == name
    texts = [c["text"] for c in body["choices"]]
    assert texts == decoded.texts[:n]
    assert len(set(texts)) > 3, texts  # the model answers differently to different prompts
    for c, ended in zip(body["choices"], decoded.ended[:n], strict=True):
        assert c["finish_reason"] == ("stop" if ended else "length") and c["logprobs"] is None
    usage = body["usage"]
    assert usage["prompt_tokens"] == sum(len(p.encode()) + 1 for p in prompts[:n])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > usage["prompt_tokens"]


@pytest.mark.parametrize("temperature", [0, 0.9])
def test_batched_answers_equal_one_by_one(served, temperature):
    server, _, root = served
    prompts, _, _ = _eval_decodes(str(root / "avg"))
    prompts = list(prompts[:8])
    one = [_complete(server.url, model="ens3", prompt=p, max_tokens=10, temperature=temperature, seed=7)
           ["choices"][0]["text"] for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # concurrent requests share batches
        together = list(pool.map(lambda p: _complete(server.url, model="ens3", prompt=p, max_tokens=10,
                                                     temperature=temperature, seed=7)["choices"][0]["text"], prompts))
    assert together == one
    if temperature:  # a seed makes sampling repeatable, and the draw is not the greedy answer everywhere
        greedy = [_complete(server.url, model="ens3", prompt=p, max_tokens=10)["choices"][0]["text"] for p in prompts]
        assert greedy != one


def _compilations(url: str) -> float:
    line = next(ln for ln in httpx.get(url + "/metrics").text.splitlines() if ln.startswith("recoup_compilations "))
    return float(line.split()[1])


def test_no_request_compiles_after_warm_up(served):
    server, _, _ = served
    before = _compilations(server.url)
    assert before > 0  # warming up compiled the buckets, and the server's counter saw it
    for model in ("tiny-run", "avg", "ens3", "vote3", "casc"):  # a cascade's escalated rows too
        for prompt in ("1+2=", "123+456=", ["7+8=", "99+1=", "5+5="], "12345678901234567890+1="):
            for max_tokens, temperature in ((1, 0), (4, 0.5), (16, 0), (9, 1.5)):
                _complete(server.url, model=model, prompt=prompt, max_tokens=max_tokens, temperature=temperature,
                          stop="0")
    assert _compilations(server.url) == before
    metrics = httpx.get(server.url + "/metrics").text
    assert 'recoup_requests_total{endpoint="/v1/completions",status="200"}' in metrics
    assert "recoup_batch_size_bucket" in metrics and "recoup_generated_tokens_total" in metrics
    assert "recoup_request_latency_seconds_bucket" in metrics


BAD = [  # (raw body or JSON object, status, words the message must contain)
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"model": "nope", "prompt": "1+1="}, 404, "does not exist"),
    ({"prompt": "1+1="}, 400, "model is required"),
    ({"model": "avg"}, 400, "prompt is required"),
    ({"model": "avg", "prompt": ""}, 400, "must not be empty"),
    ({"model": "avg", "prompt": []}, 400, "prompt"),
    ({"model": "avg", "prompt": ["1+1=", 5]}, 400, "prompt"),
    (b'{"model": "avg", "prompt": "1+\\ud800="}', 400, "not valid Unicode"),
    (b'{"model": "avg", "prompt": "1+1=", "temperature": NaN}', 400, "temperature"),
    ({"model": "avg", "prompt": "9" * 2000}, 400, "maximum context length is 1024"),
    ({"model": "avg", "prompt": "1+1=", "max_tokens": 0}, 400, "max_tokens must be an integer from 1 to 1023"),
    ({"model": "avg", "prompt": "1+1=", "max_tokens": 1024}, 400, "max_tokens"),
    ({"model": "avg", "prompt": "1+1=", "max_tokens": "5"}, 400, "max_tokens"),
    ({"model": "avg", "prompt": "1+1=", "max_tokens": True}, 400, "max_tokens"),
    ({"model": "avg", "prompt": "1+1=", "temperature": -1}, 400, "temperature"),
    ({"model": "avg", "prompt": "1+1=", "temperature": "hot"}, 400, "temperature"),
    ({"model": "avg", "prompt": "1+1=", "seed": -3}, 400, "seed"),
    ({"model": "avg", "prompt": "1+1=", "stop": 5}, 400, "stop"),
    ({"model": "avg", "prompt": "1+1=", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "avg", "prompt": "1+1=", "n": 2}, 400, "n=2 is not supported"),
    ({"model": "avg", "prompt": "1+1=", "stream": True}, 400, "stream"),
    ({"model": "avg", "prompt": "1+1=", "frobnicate": 1}, 400, "unrecognized request argument supplied: frobnicate"),
]


@pytest.mark.parametrize("body,status,words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_is_a_4xx_with_an_openai_error_body(served, body, status, words):
    server, _, _ = served
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    r = httpx.post(server.url + "/v1/completions", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["type"] == "invalid_request_error"
    assert httpx.get(server.url + "/health").status_code == 200  # the server is still up


def test_a_request_past_the_compiled_buckets_is_served_and_agrees_with_one_inside_them(served):
    """Buckets are what is compiled ahead, not a limit (issue 21): max_tokens 40 > the largest new-token
    bucket (16) and a 40-token prompt > the prompt bucket (32) compile their own shapes once."""
    server, _, _ = served
    short = _complete(server.url, model="avg", prompt="12+34=", max_tokens=16)["choices"][0]
    long = _complete(server.url, model="avg", prompt="12+34=", max_tokens=40, user="client-7")["choices"][0]
    if short["finish_reason"] == "stop":  # EOS before 16 tokens: the longer budget changes nothing
        assert long["text"] == short["text"] and long["finish_reason"] == "stop"
    else:
        assert long["text"].startswith(short["text"])
    assert _complete(server.url, model="avg", prompt="1" * 39 + "=", max_tokens=2)["choices"][0]["text"] is not None
    no_limit = _complete(server.url, model="avg", prompt="12+34=")  # OpenAI's default 16
    assert no_limit["usage"]["completion_tokens"] <= 16


@pytest.mark.parametrize("method, path", [("POST", "/v1/embeddings"), ("GET", "/v1/completions"),
                                          ("GET", "/nope")])
def test_an_unknown_route_gets_an_openai_error_body(served, method, path):
    server, _, _ = served
    r = httpx.request(method, server.url + path, json={"model": "avg"}, timeout=30)
    assert r.status_code in (404, 405)
    err = r.json()["error"]
    assert "recoup serves POST /v1/completions" in err["message"] and err["code"] == "unknown_url"


def test_models_lists_every_served_model(served):
    server, _, _ = served
    data = httpx.get(server.url + "/v1/models").json()["data"]
    by_id = {m["id"]: m for m in data}
    assert set(by_id) == {"tiny-run", "avg", "ens3", "vote3", "casc"}
    assert by_id["casc"]["combine"] == "cascade" and by_id["casc"]["cascade"]["signal"] == "min_prob"
    assert by_id["ens3"]["combine"] == "logits" and by_id["ens3"]["inference_cost"] >= 2
    assert by_id["avg"]["combine"] == "weights" and by_id["tiny-run"]["kind"] == "checkpoint"


def test_32_concurrent_clients_get_answers_and_no_errors(served):
    server, _, root = served
    prompts, decoded, _ = _eval_decodes(str(root / "avg"))
    expected = dict(zip(prompts, decoded.texts, strict=True))

    def client(i):
        with httpx.Client(base_url=server.url, timeout=120) as c:
            out = []
            for j in range(4):
                p = prompts[(i * 4 + j) % len(prompts)]
                r = c.post("/v1/completions", json={"model": "avg", "prompt": p, "max_tokens": 9})
                out.append((p, r.status_code, r.json()["choices"][0]["text"] if r.status_code == 200 else r.text))
            return out

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = [x for xs in pool.map(client, range(32)) for x in xs]
    assert len(results) == 128 and all(status == 200 for _, status, _ in results)
    assert all(text == expected[p] for p, _, text in results)


async def _until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_a_client_that_disconnects_does_not_wedge_the_server(served):
    """Two clients go mid-request, held there by a gate on the batch runner: one while its row is
    being generated, one while its rows wait in the queue. The server hears both go (499) without
    waiting for the batch, computes none of the waiting rows, and answers the next request."""
    from harness.load import served_statuses

    server, _, _ = served
    batcher = server.app.state.recoup.batcher
    body = {"model": "avg", "prompt": "1+2=", "max_tokens": 4}
    expected = _complete(server.url, **body)["choices"]
    computed, generating, release = [], threading.Event(), threading.Event()
    run_batch = batcher.run_batch

    def gated(model, rows):
        computed.append(len(rows))
        generating.set()
        release.wait(60)
        return run_batch(model, rows)

    def gone() -> int:
        return served_statuses(httpx.get(server.url + "/metrics").text)[499]

    async def go_mid_request():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            first = asyncio.ensure_future(c.post("/v1/completions", json=body))
            await _until(generating.is_set, "the first row to be generating")
            second = asyncio.ensure_future(c.post("/v1/completions", json={**body, "prompt": ["3+4="] * 3}))
            await _until(lambda: batcher.waiting == 3, "the second request's rows to wait")
            first.cancel()  # httpx closes both connections
            second.cancel()
            await asyncio.gather(first, second, return_exceptions=True)
        await _until(lambda: gone() == before + 2, "the server to hear both go (499) while the batch is held")

    before = gone()
    batcher.run_batch = gated
    try:
        asyncio.run(go_mid_request())
        release.set()
        asyncio.run(_until(lambda: batcher.waiting == 0, "the queue to drain"))
    finally:
        release.set()
        batcher.run_batch = run_batch
    assert computed == [1]  # the generating row was finished and thrown away; the 3 waiting rows never ran
    assert _complete(server.url, **body)["choices"] == expected
    metrics = httpx.get(server.url + "/metrics").text
    assert "recoup_queue_rows 0.0" in metrics


def test_load_with_faults_gets_no_5xx_and_does_not_wedge(served):
    """experiments/chaos_serving.py, small: 200 requests from 32 concurrent clients (greedy, sampled,
    stop strings, invalid bodies, clients that go as soon as their body is sent). Its memory check
    is left to the experiment: here the server shares the test process."""
    from harness.load import chaos

    server, _, root = served
    prompts, _, _ = _eval_decodes(str(root / "avg"))
    r = chaos(server.url, ["avg", "ens3"], prompts, n_requests=200, concurrency=32)
    assert r["client_5xx"] == r["server_5xx"] == 0 and not r["transport_errors"] and not r["wrong"], r
    assert r["server_finished"] == 200 and r["rows_waiting_after"] == 0 and r["fresh_answers_ok"], r
    assert r["disconnects_made"] == r["disconnects"] > 0 and r["disconnects_seen"] > 0, r
    assert r["statuses"].get(400, 0) + r["statuses"].get(404, 0) == r["kinds"]["invalid"]


def test_health_is_503_until_loaded_and_the_api_key_is_checked(trained_run, monkeypatch):
    from framework.serving.server import create_app

    cfg, _ = trained_run
    gate = threading.Event()
    real = generation.warm_up
    monkeypatch.setattr(generation, "warm_up", lambda *a, **k: gate.wait(60) and real(*a, **k))
    app = create_app([cfg.out_dir], Buckets((1,), (16,), (4,)), api_key="s3cret", log=lambda _: None)
    with LiveServer(app) as server:
        assert httpx.get(server.url + "/health").status_code == 503
        r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "1+1="},
                       headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
        gate.set()
        server.wait_ready()
        body = {"model": "tiny", "prompt": "1+1=", "max_tokens": 4}
        assert httpx.post(server.url + "/v1/completions", json=body).status_code == 401
        wrong = httpx.post(server.url + "/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        ok = httpx.post(server.url + "/v1/completions", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and len(ok.json()["choices"]) == 1
        assert httpx.get(server.url + "/v1/models").status_code == 401
        feedback = {"id": ok.json()["id"], "correct": True}  # the key first; then: this server has no --feedback-db
        for headers, code in (({}, "invalid_api_key"), ({"Authorization": "Bearer nope"}, "invalid_api_key"),
                              ({"Authorization": "Bearer s3cret"}, "feedback_disabled")):
            r = httpx.post(server.url + "/v1/feedback", json=feedback, headers=headers)
            assert r.status_code == (404 if code == "feedback_disabled" else 401) and r.json()["error"]["code"] == code


def test_recoup_serve_answers_the_openai_client(trained_run):
    """The CLI in its own process, on loopback, answering the official `openai` package unchanged."""
    import openai

    cfg, _ = trained_run
    env = {**os.environ, "RECOUP_API_KEY": "k3y", "JAX_PLATFORMS": "cpu"}
    with recoup_serve([cfg.out_dir], "--batch-buckets", "1,2", "--prompt-buckets", "16", "--new-token-buckets", "8",
                      ready_timeout=180, env=env) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="k3y")
        out = client.completions.create(model="tiny", prompt=["1+2=", "3+4="], max_tokens=6, temperature=0)
        assert [c.index for c in out.choices] == [0, 1] and out.usage.prompt_tokens == 10
        assert [m.id for m in client.models.list().data] == ["tiny"]
        # A chat, to a byte-tokenizer model (no template): its last user message is the prompt.
        chat = client.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "add"},
                                                                     {"role": "user", "content": "1+2="}],
                                              max_tokens=6, temperature=0)
        assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
        assert chat.choices[0].message.content == out.choices[0].text and chat.usage.prompt_tokens == 5
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="other", prompt="1+2=", max_tokens=4)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="wrong").completions.create(model="tiny", prompt="1")


# == a cascade, and feedback on what was served (issue 24) =====================================


def _metric(url: str, series: str) -> float:
    """One series of /metrics (its name and labels exactly as exposed), 0 if it is not there yet."""
    lines = httpx.get(url + "/metrics").text.splitlines()
    return next((float(ln.split()[-1]) for ln in lines if ln.startswith(series + " ")), 0.0)


def test_a_cascade_serves_the_offline_cascades_answers_and_counts_its_escalations(served):
    """The 1x model answers every row; the rows whose confidence is below tau are answered again by the
    ensemble, batched; the answers are `ensembles.cascade`'s offline ones for the same prompts."""
    from ensembles import cascade

    server, _, root = served
    ens = str(root / "casc")
    c = artifact.cascade_of(artifact.load_manifest(ens))
    store = ParamStore()
    run = store.run(c.first.members[0].run)
    split, bs = run.split("test"), run.cfg.eval_batch_size
    first = run.graphdef, artifact.saved_average(ens, run)
    offline, up = cascade.decode(store, c, split, bs, first)
    _, conf = cascade.decode_first(*first, split, bs)
    max_new, prompts = int(split.answer_lens.max()) + 1 + 4, list(split.prompts)
    rows = {p: f'recoup_cascade_rows_total{{model="casc",path="{p}"}}' for p in ("single", "ensemble")}
    before = {p: _metric(server.url, s) for p, s in rows.items()}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # 4 requests at once: their rows share batches
        bodies = list(pool.map(lambda i: _complete(server.url, model="casc", prompt=prompts[i:i + 10],
                                                   max_tokens=max_new), range(0, len(prompts), 10)))
    choices = [ch for body in bodies for ch in body["choices"]]
    assert [ch["text"] for ch in choices] == offline.texts
    assert [ch["finish_reason"] == "stop" for ch in choices] == offline.ended
    assert [ch["recoup"]["path"] for ch in choices] == ["ensemble" if u else "single" for u in up]
    np.testing.assert_allclose([ch["recoup"]["confidence"] for ch in choices], cascade.SIGNALS[c.signal](conf),
                               rtol=1e-5)
    assert 0 < up.sum() < len(up) and len(set(offline.texts)) > 3
    changed = feedback_rows(root, "SELECT COUNT(*) FROM completions WHERE path = 'ensemble' AND answer != "
                                  f"first_answer AND id IN ({','.join('?' * len(bodies))})", [b["id"] for b in bodies])
    assert changed[0][0] > 0, "the ensemble should change some escalated answer for this test to bite"
    after = {p: _metric(server.url, s) for p, s in rows.items()}
    assert after["ensemble"] - before["ensemble"] == up.sum()
    assert after["single"] - before["single"] == len(up) - up.sum()
    assert _metric(server.url, 'recoup_cascade_escalations_total{model="casc"}') == after["ensemble"]
    assert _metric(server.url, 'recoup_cascade_mean_cost{model="casc"}') == pytest.approx(
        1 + c.k * after["ensemble"] / (after["single"] + after["ensemble"]))


def feedback_rows(root, sql: str, args=()) -> list[tuple]:
    import sqlite3

    db = sqlite3.connect(str(root / "feedback.db"))
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_feedback_needs_only_the_id_and_finds_what_was_served(served):
    from ensembles.cascade import SIGNALS
    from framework.serving import feedback

    server, _, root = served
    body = _complete(server.url, model="casc", prompt=["12+34=", "5+6="], max_tokens=8)
    chat = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": "casc", "messages": [{"role": "user", "content": "7+8="}], "max_tokens": 8}).json()
    plain = _complete(server.url, model="avg", prompt="1+2=", max_tokens=4)
    posts = ({"id": body["id"], "correct": False}, {"id": body["id"], "index": 1, "reference": "11"},
             {"id": chat["id"], "correct": True}, {"id": plain["id"], "reference": "3"})
    for fb in posts:
        r = httpx.post(server.url + "/v1/feedback", json=fb)
        assert r.status_code == 200 and r.json()["status"] == "recorded", r.text
    by = {(r["id"], r["idx"]): r for r in feedback.read(str(root / "feedback.db"), "casc")}
    for i, prompt in enumerate(("12+34=", "5+6=")):
        row, served_choice = by[body["id"], i], body["choices"][i]
        assert (row["prompt"], row["answer"], row["path"]) == (prompt, served_choice["text"],
                                                               served_choice["recoup"]["path"])
        assert all(isinstance(row[s], float) for s in SIGNALS) and row[row["signal"]] == pytest.approx(
            served_choice["recoup"]["confidence"])
        assert row["first_answer"] is not None and row["max_tokens"] == 8 and row["temperature"] == 0
    assert by[body["id"], 0]["correct"] == 0 and by[body["id"], 1]["reference"] == "11"
    assert json.loads(by[chat["id"], 0]["prompt"]) == [{"role": "user", "content": "7+8="}]
    [other] = feedback.read(str(root / "feedback.db"), "avg")  # every model's completions are recorded
    assert other["path"] == "weights" and other["reference"] == "3" and other["min_prob"] is None


BAD_FEEDBACK = [  # (body: an object, where "ID" is a real completion's id, or raw bytes; status; words)
    ({"id": "cmpl-no-such-thing", "correct": True}, 404, "no completion 'cmpl-no-such-thing'"),
    ({"id": "ID", "index": 1, "correct": True}, 404, "with a choice 1"),
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"id": "ID"}, 400, "give one of correct"),
    ({"id": "ID", "correct": True, "reference": "3"}, 400, "give one of correct"),
    ({"id": "ID", "correct": "yes"}, 400, "correct must be true or false"),
    ({"id": "ID", "correct": 1}, 400, "correct must be true or false"),
    ({"id": 5, "correct": True}, 400, "id is required"),
    ({"id": "ID", "index": -1, "correct": True}, 400, "index must be"),
    ({"id": "ID", "reference": ["3"]}, 400, "reference must be a string"),
    ({"id": "ID", "reference": "3" * 5000}, 400, "reference must be a string of at most 4096"),
    ({"id": "ID", "correct": True, "score": 1}, 400, "unrecognized request argument supplied: score"),
    (b'{"id": "ID", "reference": "' + b"3" * 70_000 + b'"}', 413, "larger than 65536 bytes"),
]


@pytest.mark.parametrize("body, status, words", BAD_FEEDBACK, ids=[str(i) for i in range(len(BAD_FEEDBACK))])
def test_bad_feedback_is_a_4xx_with_an_openai_error_body(served, body, status, words):
    server, _, _ = served
    cid = _complete(server.url, model="avg", prompt="1+2=", max_tokens=4)["id"]
    body = body.replace(b"ID", cid.encode()) if isinstance(body, bytes) else {
        k: cid if v == "ID" else v for k, v in body.items()}
    r = httpx.post(server.url + "/v1/feedback", timeout=30, **(
        {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else
        {"json": body}))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["type"] == "invalid_request_error"


def test_a_second_feedback_is_409_its_retry_200_and_a_chunked_oversized_body_413(served):
    server, _, _ = served
    cid = _complete(server.url, model="avg", prompt="1+2=", max_tokens=4)["id"]
    longest = {"id": cid, "reference": "\U0001F600" * 4096}  # the longest reference, sent as 49 kB of JSON escapes
    assert httpx.post(server.url + "/v1/feedback", content=json.dumps(longest).encode(),
                      headers={"content-type": "application/json"}).status_code == 200
    retry = httpx.post(server.url + "/v1/feedback", json=longest)  # its answer lost, say: the same body again
    assert retry.status_code == 200 and retry.json()["status"] == "already recorded"
    again = httpx.post(server.url + "/v1/feedback", json={"id": cid, "correct": True})
    assert again.status_code == 409 and again.json()["error"]["code"] == "duplicate_feedback"
    chunks = (b'{"id": "x", "reference": "', *[b"9" * 4096] * 20, b'"}')  # no Content-Length: read up to the limit
    big = httpx.post(server.url + "/v1/feedback", content=iter(chunks), headers={"content-type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    assert httpx.get(server.url + "/health").status_code == 200


def test_feedback_posted_among_completions_is_all_stored(served):
    """Small; tests/test_feedback.py posts 2,000 at concurrency 32 (slow)."""
    from harness.feedback_load import feedback_load

    server, _, root = served
    prompts, _, _ = _eval_decodes(str(root / "avg"))
    r = feedback_load(server.url, str(root / "feedback.db"), "casc", prompts, n=48, concurrency=16)
    assert r["statuses"] == {"completion 200": 48, "feedback 200": 48}, r
    assert r["acknowledged"] == 48 and not r["lost"] and not r["wrong"] and not r["without_completion"], r
    assert r["integrity"] == "ok"


def test_the_openai_client_reads_a_cascades_answers(served):
    import openai

    server, _, _ = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    out = client.completions.create(model="casc", prompt=["12+34=", "5+6="], max_tokens=8, temperature=0)
    assert [c.index for c in out.choices] == [0, 1] and all(isinstance(c.text, str) for c in out.choices)
    assert {c.model_extra["recoup"]["path"] for c in out.choices} <= {"single", "ensemble"}
    chat = client.chat.completions.create(model="casc", messages=[{"role": "user", "content": "12+34="}],
                                          max_tokens=8, temperature=0)
    assert chat.choices[0].message.content == out.choices[0].text
    route, again = chat.choices[0].model_extra["recoup"], out.choices[0].model_extra["recoup"]
    # the same row in another batch: the same answer, its confidence equal to float32 rounding
    assert (route["path"], route["signal"]) == (again["path"], again["signal"])
    assert route["confidence"] == pytest.approx(again["confidence"], rel=1e-5)
