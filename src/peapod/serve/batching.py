"""Micro-batching for the HTTP server: concurrent requests share one model call.

Requests queue up; a worker takes up to `max_batch` of them (waiting at most `max_wait_s` for more
after the first arrives), runs the batch function once in a thread, and hands each caller its result.
While a batch runs, new requests queue, so under load batches fill up by themselves.

Limits, so that load cannot pile up without bound: the queue holds at most `max_queue` requests (a
request beyond that gets `Busy` at once), a caller waits at most `timeout_s` (then `TimedOut`, and
its request is dropped if it has not started), and a batch holds at most `max_cost` units of work
(`cost(request)`, e.g. explanations to generate), so one heavy batch cannot hold the model for long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class BatcherClosed(RuntimeError):
    """The batcher is not running (not started yet, or stopped)."""


class Busy(RuntimeError):
    """The queue is full: the caller should retry later."""


class TimedOut(RuntimeError):
    """The request was not answered within the batcher's deadline."""


class MicroBatcher:
    """Collects single requests into batches for `batch_fn(list[request]) -> list[result]`.

    A result that is an Exception instance is raised to that caller alone, so one bad request does not
    fail its batch-mates. If `batch_fn` raises, or returns the wrong number of results, each request of
    the batch is run again alone, so only the requests that fail alone get an error. Counters:
    `batches_run`, `requests_served` (requests answered, errors included), `largest_batch`,
    `batch_errors` (batches whose function raised), `rejected` (queue full), `timed_out`.
    """

    def __init__(
        self,
        batch_fn: Callable[[list[Any]], list[Any]],
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        *,
        max_queue: int = 100,
        timeout_s: float | None = 120.0,
        cost: Callable[[Any], int] | None = None,
        max_cost: int | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_queue < 1 or (timeout_s is not None and timeout_s <= 0) or (max_cost is not None and max_cost < 1):
            raise ValueError("max_queue and max_cost must be >= 1 and timeout_s > 0")
        self.batch_fn = batch_fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.cost = cost or (lambda _: 1)
        self.max_cost = max_cost
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self._in_flight: list[tuple[Any, asyncio.Future]] = []
        self._carry: tuple[Any, asyncio.Future] | None = None  # taken from the queue, did not fit the last batch
        self.batches_run = 0
        self.requests_served = 0
        self.largest_batch = 0
        self.batch_errors = 0
        self.rejected = 0
        self.timed_out = 0

    @property
    def running(self) -> bool:
        return self.worker is not None and not self.worker.done()

    def stats(self) -> dict:
        return {
            "batches_run": self.batches_run,
            "requests_served": self.requests_served,
            "largest_batch": self.largest_batch,
            "batch_errors": self.batch_errors,
            "rejected": self.rejected,
            "timed_out": self.timed_out,
            "queued": self.queue.qsize() if self.queue is not None else 0,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_s * 1000.0,
            "max_queue": self.max_queue,
            "timeout_s": self.timeout_s,
            "max_cost": self.max_cost,
        }

    async def start(self) -> None:
        if self.running:
            return
        self.queue = asyncio.Queue(maxsize=self.max_queue)
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
        pending = list(self._in_flight) + ([self._carry] if self._carry else [])
        self._in_flight, self._carry = [], None
        while self.queue is not None and not self.queue.empty():
            pending.append(self.queue.get_nowait())
        for _, future in pending:
            if not future.done():
                future.set_exception(BatcherClosed("the server is shutting down"))

    async def submit(self, request: Any) -> Any:
        if not self.running:
            raise BatcherClosed("micro-batcher is not running (call start() first)")
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((request, future))
        except asyncio.QueueFull:
            self.rejected += 1
            raise Busy(f"the server is busy ({self.max_queue} requests queued); retry later") from None
        try:
            # A caller that is cancelled (its client went away) or times out cancels the future, and the
            # worker skips a cancelled request that has not started.
            result = await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            self.timed_out += 1
            raise TimedOut(f"no answer within {self.timeout_s:g} s") from None
        if isinstance(result, BaseException):
            raise result
        return result

    def _next_batch_fits(self, batch: list, cost: int, item) -> bool:
        if self.max_cost is None or not batch:
            return True
        return cost + self.cost(item[0]) <= self.max_cost

    def _compute(self, requests: list) -> list:
        """`batch_fn` on the batch; if it fails as a whole, on each request alone."""
        try:
            results = self.batch_fn(requests)
            if not isinstance(results, list) or len(results) != len(requests):
                got = len(results) if isinstance(results, list) else type(results).__name__
                raise RuntimeError(f"batch function returned {got} results for {len(requests)} requests")
            return results
        except Exception as e:
            self.batch_errors += 1
            if len(requests) == 1:
                return [e]
        alone = []
        for r in requests:
            try:
                result = self.batch_fn([r])
                alone.append(result[0] if isinstance(result, list) and len(result) == 1 else
                             RuntimeError(f"batch function returned {result!r} for one request"))
            except Exception as e:
                alone.append(e)
        return alone

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first, self._carry = self._carry or await self.queue.get(), None
            if first[1].done():  # its caller gave up while it was queued (cancelled, or past its deadline)
                continue
            batch, cost = [first], self.cost(first[0])
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self.queue.empty():  # take what is already waiting without yielding
                    item = self.queue.get_nowait()
                else:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), timeout)
                    except asyncio.TimeoutError:
                        break
                if item[1].done():
                    continue
                if not self._next_batch_fits(batch, cost, item):
                    self._carry = item  # it opens the next batch
                    break
                batch.append(item)
                cost += self.cost(item[0])
            # Callers that gave up while the batch was gathered are not computed either.
            batch = [(r, f) for r, f in batch if not f.done()]
            if not batch:
                continue
            self._in_flight = batch
            results = await asyncio.to_thread(self._compute, [r for r, _ in batch])
            self._in_flight = []
            self.batches_run += 1
            self.requests_served += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
