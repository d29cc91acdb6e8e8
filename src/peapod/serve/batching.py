"""Micro-batching for the HTTP server: concurrent requests share one model call.

Requests queue up; a worker takes up to `max_batch` of them (waiting at most `max_wait_s` for more
after the first arrives), runs the batch function once in a thread, and hands each caller its result.
While a batch runs, new requests queue, so under load batches fill up by themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class BatcherClosed(RuntimeError):
    """The batcher is not running (not started yet, or stopped)."""


class MicroBatcher:
    """Collects single requests into batches for `batch_fn(list[request]) -> list[result]`.

    A result that is an Exception instance is raised to that caller alone, so one bad request does not
    fail its batch-mates. If `batch_fn` raises, or returns the wrong number of results, every caller of
    that batch gets the error. Counters: `batches_run`, `requests_served` (requests answered, errors
    included), `largest_batch`, `batch_errors` (batches whose function raised).
    """

    def __init__(self, batch_fn: Callable[[list[Any]], list[Any]], max_batch: int = 32, max_wait_s: float = 0.005):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.batch_fn = batch_fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self._in_flight: list[tuple[Any, asyncio.Future]] = []
        self.batches_run = 0
        self.requests_served = 0
        self.largest_batch = 0
        self.batch_errors = 0

    @property
    def running(self) -> bool:
        return self.worker is not None and not self.worker.done()

    def stats(self) -> dict:
        return {
            "batches_run": self.batches_run,
            "requests_served": self.requests_served,
            "largest_batch": self.largest_batch,
            "batch_errors": self.batch_errors,
            "queued": self.queue.qsize() if self.queue is not None else 0,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_s * 1000.0,
        }

    async def start(self) -> None:
        if self.running:
            return
        self.queue = asyncio.Queue()
        self.worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; callers still waiting (queued or in the running batch) get BatcherClosed."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
        pending = list(self._in_flight)
        self._in_flight = []
        while self.queue is not None and not self.queue.empty():
            pending.append(self.queue.get_nowait())
        for _, future in pending:
            if not future.done():
                future.set_exception(BatcherClosed("the server is shutting down"))

    async def submit(self, request: Any) -> Any:
        if not self.running:
            raise BatcherClosed("micro-batcher is not running (call start() first)")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((request, future))
        result = await future
        if isinstance(result, BaseException):
            raise result
        return result

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            batch = [first]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self.queue.empty():  # take what is already waiting without yielding
                    batch.append(self.queue.get_nowait())
                    continue
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            # Callers that gave up (cancelled futures, e.g. a client disconnected) are not computed.
            batch = [(r, f) for r, f in batch if not f.done()]
            if not batch:
                continue
            self._in_flight = batch
            requests = [r for r, _ in batch]
            try:
                results = await asyncio.to_thread(self.batch_fn, requests)
                if not isinstance(results, list) or len(results) != len(batch):
                    got = len(results) if isinstance(results, list) else type(results).__name__
                    raise RuntimeError(f"batch function returned {got} results for {len(batch)} requests")
            except Exception as e:  # the whole batch failed: every caller sees the error
                self.batch_errors += 1
                results = [e] * len(batch)
            self._in_flight = []
            self.batches_run += 1
            self.requests_served += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
