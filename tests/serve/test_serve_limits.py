"""What the server refuses, and how: the micro-batcher's queue bound, deadline, cost cap and retry of a
failed batch; the app's body limit, API key, 503/504/500 answers; `peapod serve --api-key` end to end."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from serve_run import running_server, user_with_history

from peapod.serve.app import BodyLimit, ServeLimits, create_app
from peapod.serve.batching import Busy, MicroBatcher, TimedOut

TWO_MB = b"[" + b"1," * 1_000_000 + b"1]"


# ---- the micro-batcher ---------------------------------------------------------------------------
def test_a_failed_batch_is_retried_alone_so_only_the_bad_request_fails():
    calls = []

    def fn(reqs):
        calls.append(list(reqs))
        if -1 in reqs:
            raise RuntimeError("model fault")
        return [r * 10 for r in reqs]

    async def main():
        b = MicroBatcher(fn, max_batch=8, max_wait_s=0.05)
        await b.start()
        res = await asyncio.gather(*(b.submit(r) for r in (1, -1, 2)), return_exceptions=True)
        await b.stop()
        return res, b.batch_errors

    res, errors = asyncio.run(main())
    assert res[0] == 10 and res[2] == 20 and isinstance(res[1], RuntimeError)
    assert calls[0] == [1, -1, 2] and sorted(map(tuple, calls[1:])) == [(-1,), (1,), (2,)] and errors == 1


def test_a_full_queue_refuses_at_once_and_a_late_answer_times_out():
    gate = threading.Event()

    async def main():
        b = MicroBatcher(lambda reqs: (gate.wait(10), reqs)[1], max_batch=1, max_wait_s=0, max_queue=2, timeout_s=0.5)
        await b.start()
        first = asyncio.create_task(b.submit(0))  # taken by the worker, blocked in the model
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Busy, match="busy"):
            await b.submit(3)
        out = await asyncio.gather(first, *queued, return_exceptions=True)
        gate.set()
        stats = b.stats()
        await b.stop()
        return out, stats

    out, stats = asyncio.run(main())
    assert all(isinstance(r, TimedOut) for r in out)
    assert stats["rejected"] == 1 and stats["timed_out"] == 3


def test_cancelled_requests_are_skipped_and_costly_batches_are_split():
    seen = []

    def fn(reqs):
        seen.append(list(reqs))
        time.sleep(0.05)
        return list(reqs)

    async def main():
        b = MicroBatcher(fn, max_batch=8, max_wait_s=0.02, cost=lambda r: r, max_cost=5)
        await b.start()
        blocker = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0.03)  # the worker is in the model with [1]
        gone = asyncio.create_task(b.submit(99))  # its client goes away before it is computed
        kept = [asyncio.create_task(b.submit(r)) for r in (3, 2, 4)]
        await asyncio.sleep(0)
        gone.cancel()
        res = await asyncio.gather(blocker, *kept)
        await b.stop()
        return res

    assert asyncio.run(main()) == [1, 3, 2, 4]
    assert all(99 not in batch for batch in seen)
    assert all(sum(batch) <= 5 or len(batch) == 1 for batch in seen) and [3, 2] in seen and [4] in seen


# ---- the app -------------------------------------------------------------------------------------
class FakeRecommender:
    """The Recommender surface the app calls; `gate` holds recommend calls, `fault` makes them fail."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.fault: Exception | None = None

    def recommend_batch(self, users, k, exclude, *, histories, explain, return_exceptions):
        self.gate.wait(10)
        if self.fault is not None:
            raise self.fault
        return [[("a", -1.0)] for _ in users]

    def known_user(self, user):
        return True

    def info(self):
        return {k: None for k in ("model", "variant", "indexing", "catalogue_size", "users", "dataset", "max_history", "device")} | {"limits": {}}


def _client(rec, **kw):
    from fastapi.testclient import TestClient

    return TestClient(create_app(rec, max_wait_s=0, **kw))


def test_body_limit_api_key_and_server_faults():
    rec = FakeRecommender()
    with _client(rec, api_key="s3cret", limits=ServeLimits(max_body_bytes=1000)) as client:
        key = {"Authorization": "Bearer s3cret"}
        assert client.get("/health").status_code == 200  # open without the key
        assert client.post("/recommend", json={"user": "u"}).status_code == 401
        wrong = client.post("/recommend", json={"user": "u"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert client.post("/recommend", json={"user": "u"}, headers=key).status_code == 200
        big = client.post("/recommend", content=TWO_MB, headers={**key, "content-type": "application/json"})
        assert big.status_code == 413 and "1000 bytes" in big.json()["detail"]
        rec.fault = ValueError("shapes do not match")  # a fault of the model, not of the request
        r = client.post("/recommend", json={"user": "u"}, headers=key)
        assert r.status_code == 500 and "ValueError" in r.json()["detail"]


def test_a_full_queue_answers_503_with_retry_after():
    rec = FakeRecommender()
    rec.gate.clear()
    answers: list = []
    with _client(rec, limits=ServeLimits(max_queue=1)) as client:
        batcher = client.app.state.batchers["recommend"]

        def call():
            answers.append(client.post("/recommend", json={"user": "u"}).status_code)

        def wait_for(condition):
            deadline = time.monotonic() + 30
            while not condition():
                assert time.monotonic() < deadline, "the batcher never reached the expected state"
                time.sleep(0.01)

        threads = [threading.Thread(target=call) for _ in range(2)]
        threads[0].start()
        wait_for(lambda: batcher._in_flight)  # the first request is in the model
        threads[1].start()
        wait_for(lambda: batcher.queue.qsize() == 1)  # the second waits in the queue
        r = client.post("/recommend", json={"user": "u"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        rec.gate.set()
        for t in threads:
            t.join(timeout=30)
    assert answers == [200, 200]


def test_a_chunked_body_is_cut_off_at_the_limit():
    reached = []

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            reached.append(1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main():
        chunks = [{"type": "http.request", "body": b"x" * 400, "more_body": True} for _ in range(10)]
        sent = []

        async def receive():
            return chunks.pop(0)

        async def send(message):
            sent.append(message)

        await BodyLimit(app, max_bytes=1000)({"type": "http", "headers": []}, receive, send)
        return sent, len(chunks)

    sent, left = asyncio.run(main())
    assert sent[0]["status"] == 413 and left == 7  # refused after the third chunk; the rest never read
    assert len(reached) == 2


# ---- end to end ----------------------------------------------------------------------------------
def test_cli_serve_with_an_api_key(served_run, rec, tmp_path):
    import httpx

    with running_server(served_run, tmp_path / "server.log", "--api-key", "K") as base:
        assert httpx.get(f"{base}/health").json()["auth"] == "bearer"
        user = user_with_history(rec)
        assert httpx.post(f"{base}/recommend", json={"user": user}).status_code == 401
        ok = httpx.post(f"{base}/recommend", json={"user": user, "k": 3}, headers={"Authorization": "Bearer K"}, timeout=120)
        assert ok.status_code == 200 and len(ok.json()["items"]) == 3
        big = httpx.post(f"{base}/recommend", content=TWO_MB,
                         headers={"Authorization": "Bearer K", "content-type": "application/json"}, timeout=60)
        assert big.status_code == 413


def test_serving_beyond_loopback_without_a_key_warns(monkeypatch, caplog):
    import uvicorn

    from peapod.serve.app import is_loopback, serve

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    with caplog.at_level("WARNING", logger="peapod.serve"):
        serve(FakeRecommender(), host="127.0.0.1")
        serve(FakeRecommender(), host="0.0.0.0", api_key="K")
        assert not caplog.records
        serve(FakeRecommender(), host="0.0.0.0")
    assert "without an API key" in caplog.text
