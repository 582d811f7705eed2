"""Micro-batching: rows from concurrent requests are gathered into one forward pass.

A request puts its rows (one per prompt) on a queue and awaits them. One task takes the first
waiting row, keeps gathering for at most `max_wait_ms` or until `max_batch` rows wait, groups
them by model and runs each group on a single worker thread, so JAX never blocks the event loop
and never runs two batches at once. A row whose request has gone (a client that disconnected)
is dropped before it is computed; a failing batch fails only its own rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple


class QueueFull(Exception):
    """More rows wait than the server accepts; the request should be retried later."""


class _Pending(NamedTuple):
    model: str
    row: Any
    future: asyncio.Future


class MicroBatcher:
    def __init__(self, run_batch: Callable[[str, list[Any]], Sequence[Any]], max_batch: int, max_wait_ms: float,
                 max_queue: int = 4096, on_batch: Callable[[str, int, float], None] | None = None):
        """`run_batch(model, rows) -> results` runs on the worker thread; `on_batch(model, rows, seconds)`
        is called after each batch (metrics)."""
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait_ms / 1000
        self.max_queue, self.on_batch = max_queue, on_batch
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recoup-jax")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        return self.queue.qsize()

    async def submit(self, model: str, rows: Sequence[Any]) -> list[Any]:
        """The results of `rows`, in order. Raises QueueFull when too many rows already wait."""
        if self.queue.qsize() + len(rows) > self.max_queue:
            raise QueueFull(f"{self.queue.qsize()} rows are waiting (at most {self.max_queue}); retry later")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in rows]
        for row, fut in zip(rows, futures, strict=True):
            self.queue.put_nowait(_Pending(model, row, fut))
        try:
            return list(await asyncio.gather(*futures))
        finally:  # a cancelled request (client gone): its rows that wait are skipped
            for fut in futures:
                fut.cancel()

    async def _gather(self) -> list[_Pending]:
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                batch.append(self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left))
            except (asyncio.QueueEmpty, TimeoutError):
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [p for p in await self._gather() if not p.future.done()]
            by_model: dict[str, list[_Pending]] = {}
            for p in batch:
                by_model.setdefault(p.model, []).append(p)
            for model, group in by_model.items():
                t = time.perf_counter()
                try:
                    results = await loop.run_in_executor(self.executor, self.run_batch, model, [p.row for p in group])
                except Exception as e:  # noqa: BLE001 - the rows' requests get the error; the loop goes on
                    for p in group:
                        if not p.future.done():
                            p.future.set_exception(e)
                    continue
                if self.on_batch is not None:
                    self.on_batch(model, len(group), time.perf_counter() - t)
                for p, r in zip(group, results, strict=True):
                    if not p.future.done():
                        p.future.set_result(r)
