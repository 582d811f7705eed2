"""What the serving tests (tests/test_serving.py, tests/test_feedback.py) share: a live uvicorn server
in this process, and a cascade made from two built ensembles without a selection pass."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time

import httpx
import numpy as np


class LiveServer:
    """uvicorn on 127.0.0.1 and a free port, in a thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def wait_ready(self, timeout=420.0):
        """Until /health says ok. A failed load ends the wait at once with its error; the timeout is long
        because warming up several models takes minutes on a loaded 2-core machine (256 s was measured
        for test_serving's five with four other processes running), and only a hang should reach it."""
        deadline = time.monotonic() + timeout
        while (r := httpx.get(self.url + "/health")).status_code != 200:
            assert r.json().get("status") != "failed", f"the server failed to load: {r.json().get('error')}"
            assert time.monotonic() < deadline, f"the server was not ready after {timeout:.0f} s"
            time.sleep(0.1)

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def hand_made_cascade(first_dir: str, fallback_dir: str, out_dir: str, signal: str = "min_prob",
                      escalate: float = 0.4) -> float:
    """A cascade directory whose 1x model is the weight average `first_dir` saved and whose ensemble
    is the log-prob average `fallback_dir` describes, escalating about `escalate` of the test split:
    tau falls midway between two neighbouring confidences of the 1x model there, so that no test
    prompt sits on the threshold (served and offline confidences agree to ~1e-7, not bit for bit).
    Returns tau. The selection `recoup ensemble build --method cascade` makes is tested elsewhere;
    this is the artifact it writes, with a rule chosen here."""
    from ensembles import artifact, cascade
    from ensembles.members import ParamStore

    first, fallback = artifact.load_manifest(first_dir), artifact.load_manifest(fallback_dir)
    assert first["combine"] == "weights" and fallback["combine"] == "logits"
    store = ParamStore()
    run = store.run(first["members"][0]["run"])
    _, conf = cascade.decode_first(run.graphdef, artifact.saved_average(first_dir, run), run.split("test"),
                                   run.cfg.eval_batch_size)
    values = np.unique(cascade.SIGNALS[signal](conf))
    j = int(escalate * len(values))
    tau = float((values[j - 1] + values[j]) / 2)
    k = len(fallback["members"])
    manifest = {**first, "method": "cascade", "combine": "cascade",
                "members": [{**m, "part": "first"} for m in first["members"]]
                + [{**m, "part": "fallback"} for m in fallback["members"]],
                "budgets": {**first["budgets"], "max_cost": 1 + k / 2},
                "cascade": {"signal": signal, "tau": tau, "k": k, "escalation_rate": escalate,
                            "mean_cost": 1 + k * escalate,
                            "first": {"method": first["method"], "combine": "weights"},
                            "fallback": {"method": fallback["method"], "combine": "logits"}}}
    os.makedirs(out_dir)
    shutil.copytree(os.path.join(first_dir, "params"), os.path.join(out_dir, "params"))
    shutil.copy(os.path.join(first_dir, artifact.PARAMS_SEAL), os.path.join(out_dir, artifact.PARAMS_SEAL))
    with open(os.path.join(out_dir, artifact.MANIFEST), "w") as f:
        json.dump(manifest, f)
    return tau
