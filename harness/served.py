"""`recoup serve` in its own process on a free loopback port, for tests, benchmarks and chaos checks."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import NamedTuple


class Served(NamedTuple):
    url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen
    ready_s: float  # seconds from start to /health 200 (loading and compiling)


@contextlib.contextmanager
def recoup_serve(paths: list[str], *args: str, log_path: str | None = None, ready_timeout: float = 600.0,
                 env: dict[str, str] | None = None) -> Iterator[Served]:
    """`recoup serve PATHS ARGS` in its own process on a free loopback port, yielded once /health
    answers 200 and terminated on exit. Its output goes to `log_path` (default: a temporary file),
    never to a pipe that nobody reads while it serves; it is shown if the server exits or never
    becomes ready. `env`: the server's environment (default: this process's)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log_path, "w+") if log_path else tempfile.TemporaryFile("w+") as log:
        argv = [sys.executable, "-m", "framework.app.cli", "serve", *paths, "--port", str(port), *args]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            t = time.perf_counter()
            while True:
                if proc.poll() is not None or time.perf_counter() - t > ready_timeout:
                    log.seek(0)
                    raise SystemExit(f"recoup serve {'exited' if proc.poll() is not None else 'never became ready'}"
                                     f": {log.read()}")
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        break
                except httpx.ConnectError:
                    pass
                time.sleep(0.2)
            yield Served(url, proc, time.perf_counter() - t)
        finally:
            proc.terminate()
            proc.wait(30)
