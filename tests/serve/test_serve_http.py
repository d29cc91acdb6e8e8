"""Serving over HTTP: `peapod serve` started in a subprocess on a free loopback port, on the shared tiny run."""

from __future__ import annotations

import threading

import pytest
from serve_run import running_server, user_with_history

from peapod.serve.recommender import MAX_HISTORY


@pytest.fixture(scope="module")
def server(served_run, tmp_path_factory):
    import httpx

    log = tmp_path_factory.mktemp("serverlog") / "server.log"
    with running_server(served_run, log, "--max-wait-ms", "20") as base, httpx.Client(base_url=base, timeout=60) as client:
        yield client


def test_http_endpoints(server, rec):
    health = server.get("/health").json()
    assert health["status"] == "ok" and health["catalogue_size"] == rec.dataset.n_items and health["indexing"] == "p5-sequential"
    assert health["model"]["variant"] == "peapod" and set(health["batching"]["endpoints"]) == {"recommend", "rank", "explain"}

    user = user_with_history(rec)
    r = server.post("/recommend", json={"user": user, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"] == user and body["cold_start"] is False
    assert [x["item"] for x in body["items"]] == [i for i, _ in rec.recommend(user, k=5)]
    assert [x["score"] for x in body["items"]] == pytest.approx([s for _, s in rec.recommend(user, k=5)], abs=1e-4)

    history = rec.dataset.item_ids[:4]
    r = server.post("/recommend", json={"history": history, "k": 3, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cold_start"] is True and len(body["items"]) == 3
    assert all(isinstance(x["explanation"], str) for x in body["items"]) and not set(history) & {x["item"] for x in body["items"]}
    r = server.post("/recommend", json={"user": "brand-new", "history": history, "k": 3, "exclude_history": False})
    assert r.status_code == 200 and r.json()["cold_start"] is True

    cands = rec.dataset.item_ids[200:220]
    r = server.post("/rank", json={"user": user, "candidates": cands})
    assert r.status_code == 200, r.text
    ranked = r.json()["items"]
    assert sorted(x["item"] for x in ranked) == sorted(cands)
    assert [x["item"] for x in ranked] == [i for i, _ in rec.rank(user, cands)]

    r = server.post("/explain", json={"user": user, "item": cands[0]})
    assert r.status_code == 200, r.text
    assert r.json()["explanation"] == rec.explain(user, cands[0])

    assert server.get("/docs").status_code == 200
    paths = server.get("/openapi.json").json()["paths"]
    assert {"/recommend", "/rank", "/explain", "/health"} <= set(paths)


def test_http_errors(server, rec):
    user = rec.dataset.user_ids[0]
    item = rec.dataset.item_ids[0]
    r = server.post("/recommend", json={"user": "no-such-user"})
    assert r.status_code == 404 and "no-such-user" in r.json()["detail"]
    assert server.post("/explain", json={"user": user, "item": "no-such-item"}).status_code == 404
    assert server.post("/rank", json={"user": user, "candidates": [item, "no-such-item"]}).status_code == 404
    assert server.post("/recommend", json={"history": [item, "no-such-item"]}).status_code == 404
    assert server.post("/explain", json={"user": "no-such-user", "item": item}).status_code == 404
    bad = [
        ("/recommend", b"{not json"),
        ("/recommend", {}),
        ("/recommend", {"user": user, "k": 0}),
        ("/recommend", {"user": user, "k": 101}),
        ("/recommend", {"user": user, "k": "ten"}),
        ("/recommend", {"history": [item] * (MAX_HISTORY + 1)}),
        ("/recommend", {"history": []}),
        ("/recommend", {"user": user, "unknown_field": 1}),
        ("/rank", {"user": user, "candidates": []}),
        ("/rank", {"user": user, "candidates": [item, item]}),
        ("/explain", {"user": user}),
    ]
    for path, body in bad:
        r = server.post(path, content=body, headers={"content-type": "application/json"}) if isinstance(body, bytes) else server.post(path, json=body)
        assert r.status_code == 422, (path, body, r.status_code, r.text)


def test_http_concurrent_requests_are_micro_batched(server, rec):
    before = server.get("/health").json()["batching"]["endpoints"]["recommend"]
    users = rec.dataset.user_ids[:16]
    results: list = [None] * len(users)

    def call(j: int) -> None:
        import httpx

        with httpx.Client(base_url=str(server.base_url), timeout=120) as c:
            results[j] = c.post("/recommend", json={"user": users[j], "k": 10})

    threads = [threading.Thread(target=call, args=(j,)) for j in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert all(r is not None and r.status_code == 200 for r in results), [getattr(r, "text", None) for r in results]
    for u, r in zip(users, results):
        assert [x["item"] for x in r.json()["items"]] == [i for i, _ in rec.recommend(u, k=10)]
    after = server.get("/health").json()["batching"]
    served = after["endpoints"]["recommend"]["requests_served"] - before["requests_served"]
    batches = after["endpoints"]["recommend"]["batches_run"] - before["batches_run"]
    assert served == len(users) and batches < served
    assert after["batches_run"] < after["requests_served"]
