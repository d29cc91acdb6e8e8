"""Serving: the `peapod.Recommender` Python API, the micro-batcher, the CLI and the real HTTP server.

One tiny trainer run (configs/tiny.yaml: the embedded demo-toys data, 20 steps) is shared by every test of the module; the
HTTP tests start `peapod serve` in a subprocess on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import peapod
from peapod.serve.batching import BatcherClosed, MicroBatcher
from peapod.serve.recommender import MAX_CANDIDATES, MAX_HISTORY, Recommender, UnknownItem, UnknownUser

REPO = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT_S = 180


# ---- one tiny trained run ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from peapod.train.config import load_config
    from peapod.train.trainer import train

    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        ["model.cf_iterations=3", "train.max_steps=20", "train.epochs=1", "train.val_max_users=30", "train.batch_size=8",
         "train.checkpoint_every=1000"],
    )
    out = tmp_path_factory.mktemp("serverun") / "run"
    train(cfg, out, quiet=True)
    return out


@pytest.fixture(scope="module")
def rec(run_dir) -> Recommender:
    return peapod.Recommender.load(run_dir, device="cpu")


def _user_with_history(rec: Recommender, min_len: int = 6) -> str:
    return next(u for u, s in zip(rec.dataset.user_ids, rec.dataset.sequences) if len(s) >= min_len)


# ---- Python API ----------------------------------------------------------------------------------
def test_import_peapod_stays_light():
    code = "import sys, peapod; assert 'torch' not in sys.modules and 'transformers' not in sys.modules; print(peapod.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert peapod.Recommender is Recommender and issubclass(peapod.UnknownUser, KeyError)


def test_info(rec):
    info = rec.info()
    from peapod.data import load_dataset

    demo = load_dataset("demo-toys")
    assert info["catalogue_size"] == demo.n_items and info["users"] == demo.n_users and info["dataset"] == "demo-toys"
    assert info["variant"] == "peapod" and info["indexing"] == "p5-sequential"
    assert info["model"]["backbone"] == "tiny" and info["max_history"] == 10
    assert info["limits"] == {"k": [1, 100], "history": [1, MAX_HISTORY], "candidates": [1, MAX_CANDIDATES]}


def test_recommend_known_user(rec):
    user = _user_with_history(rec)
    history = set(rec.user_history(user))
    items = rec.recommend(user, k=10)
    assert len(items) == 10 and len({i for i, _ in items}) == 10
    assert not history & {i for i, _ in items}
    scores = [s for _, s in items]
    assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    assert all(rec.predictor.item_index(i) is not None for i, _ in items)
    # exact: the list is the top of the full-catalogue scores
    p = rec.predictor
    from peapod.evaluate.inference import Request

    hist = [p.item_index(i) for i in rec.user_history(user)]
    full = p.score_all_items([Request("sequential", hist, p.user_index(user))], exclude=[hist])[0]
    assert [p.bundle.item_ids[j] for j in full.topk(10).indices.tolist()] == [i for i, _ in items]
    # without exclusion the history may come back, and the list is still k long
    assert len(rec.recommend(user, k=25, exclude_history=False)) == 25


def test_recommend_by_history_for_new_user(rec):
    history = rec.dataset.item_ids[:5]
    anonymous = rec.recommend(history=history, k=7)
    named = rec.recommend("someone-new", k=7, history=history)
    assert len(anonymous) == 7 and not set(history) & {i for i, _ in anonymous}
    assert [i for i, _ in anonymous] == [i for i, _ in named]  # an unknown id is served like no id


def test_cold_start_fold_in_overlaps_known_user(rec):
    """A training user served only from its items (CF fold-in, no id) gets a list overlapping its own."""
    user = _user_with_history(rec)
    history = rec.user_history(user)
    as_known = [i for i, _ in rec.recommend(user, k=10, exclude_history=True)]
    as_new = [i for i, _ in rec.recommend(history=history, k=10, exclude_history=True)]
    assert len(set(as_known) & set(as_new)) >= 1
    # the folded-in CF vector of those items is close to the user's own
    import torch

    p = rec.predictor
    folded = p.model.fold_in([[p.item_index(i) for i in history]])[0]
    own = p.model.cf_users[p.user_index(user)]
    others = p.model.cf_users
    cos = torch.nn.functional.cosine_similarity(folded[None], others).detach()
    assert cos[p.user_index(user)] >= torch.quantile(cos, 0.9)
    assert torch.isfinite(own).all()


def test_rank(rec):
    user = _user_with_history(rec)
    candidates = rec.dataset.item_ids[100:130]
    ranked = rec.rank(user, candidates)
    assert sorted(i for i, _ in ranked) == sorted(candidates)
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    new = rec.rank(None, candidates, history=rec.dataset.item_ids[:3])
    assert sorted(i for i, _ in new) == sorted(candidates)


def test_explain(rec):
    user = _user_with_history(rec)
    text = rec.explain(user, rec.dataset.item_ids[0])
    assert isinstance(text, str) and text.strip()
    assert isinstance(rec.explain(None, rec.dataset.item_ids[0], history=rec.dataset.item_ids[1:4]), str)


def test_batch_versions_equal_single_versions(rec):
    users = rec.dataset.user_ids[:3]
    histories = [None, None, rec.dataset.item_ids[10:14]]
    batch = rec.recommend_batch(users, k=[5, 8, 3], histories=histories)
    for u, h, got in zip(users, histories, batch):
        want = rec.recommend(u, k=len(got), history=h)
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)
    with_text = rec.recommend_batch(users[:2], k=2, explain=True)
    assert all(len(x) == 3 and isinstance(x[2], str) for row in with_text for x in row)
    cands = [rec.dataset.item_ids[:10], rec.dataset.item_ids[5:25], rec.dataset.item_ids[40:41]]
    for u, c, got in zip(users, cands, rec.rank_batch(users, cands)):
        want = rec.rank(u, c)
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)
    items = rec.dataset.item_ids[:3]
    assert rec.explain_batch(users, items) == [rec.explain(u, i) for u, i in zip(users, items)]


def test_errors_and_bounds(rec):
    user = rec.dataset.user_ids[0]
    item = rec.dataset.item_ids[0]
    with pytest.raises(UnknownUser, match="'no-such-user'"):
        rec.recommend("no-such-user")
    with pytest.raises(KeyError):
        rec.explain("no-such-user", item)
    with pytest.raises(UnknownItem, match="'no-such-item'"):
        rec.recommend(history=[item, "no-such-item"])
    with pytest.raises(UnknownItem):
        rec.explain(user, "no-such-item")
    with pytest.raises(UnknownItem):
        rec.rank(user, [item, "no-such-item"])
    for k in (0, 101, -1):
        with pytest.raises(ValueError, match="k must be"):
            rec.recommend(user, k=k)
    with pytest.raises(ValueError, match="history"):
        rec.recommend(history=[])
    with pytest.raises(ValueError, match="history"):
        rec.recommend(history=[item] * (MAX_HISTORY + 1))
    with pytest.raises(ValueError, match="candidates"):
        rec.rank(user, [])
    with pytest.raises(ValueError, match="candidates"):
        rec.rank(user, [item] * (MAX_CANDIDATES + 1))  # the length is checked first (the demo has fewer items)
    with pytest.raises(ValueError, match="distinct"):
        rec.rank(user, [item, item])
    with pytest.raises(ValueError, match="user id, a history"):
        rec.recommend(None)
    # a batch keeps going around a bad request when asked to
    out = rec.recommend_batch([user, "no-such-user"], k=3, return_exceptions=True)
    assert len(out[0]) == 3 and isinstance(out[1], UnknownUser)
    assert str(out[1]).startswith("unknown user 'no-such-user'")


# ---- micro-batcher -------------------------------------------------------------------------------
def test_micro_batcher_batches_and_isolates_errors():
    calls = []

    def fn(reqs):
        calls.append(list(reqs))
        time.sleep(0.02)
        return [ValueError(f"bad {r}") if r < 0 else r * 10 for r in reqs]

    async def main():
        b = MicroBatcher(fn, max_batch=8, max_wait_s=0.01)
        await b.start()
        results = await asyncio.gather(*(b.submit(r) for r in [1, 2, -3, 4, 5, 6, 7, 8, 9, 10]), return_exceptions=True)
        stats = b.stats()
        await b.stop()
        return results, stats

    results, stats = asyncio.run(main())
    assert results[:2] == [10, 20] and results[3:] == [40, 50, 60, 70, 80, 90, 100]
    assert isinstance(results[2], ValueError) and str(results[2]) == "bad -3"
    assert stats["requests_served"] == 10 and stats["batches_run"] < 10 and stats["largest_batch"] <= 8
    assert sum(len(c) for c in calls) == 10


def test_micro_batcher_failures():
    async def wrong_count():
        b = MicroBatcher(lambda reqs: [1], max_batch=4, max_wait_s=0.01)
        await b.start()
        res = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        await b.stop()
        return res, b.batch_errors

    res, errors = asyncio.run(wrong_count())
    assert all(isinstance(r, RuntimeError) for r in res) and errors == 1

    async def stopped():
        gate = threading.Event()
        b = MicroBatcher(lambda reqs: (gate.wait(5), reqs)[1], max_batch=1, max_wait_s=0)
        with pytest.raises(BatcherClosed):
            await b.submit(0)
        await b.start()
        tasks = [asyncio.create_task(b.submit(i)) for i in range(3)]
        await asyncio.sleep(0.05)
        await b.stop()
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    assert all(isinstance(r, BatcherClosed) for r in asyncio.run(stopped()))


# ---- CLI -----------------------------------------------------------------------------------------
def test_cli_recommend_and_explain(run_dir, rec):
    from typer.testing import CliRunner

    from peapod.cli import app

    runner = CliRunner()
    user = _user_with_history(rec)
    r = runner.invoke(app, ["recommend", str(run_dir), "--user", user, "-k", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["user"] == user and not out["cold_start"] and len(out["items"]) == 4
    assert [x["item"] for x in out["items"]] == [i for i, _ in rec.recommend(user, k=4)]
    hist = ",".join(rec.dataset.item_ids[:3])
    r = runner.invoke(app, ["recommend", str(run_dir), "--history", hist, "-k", "3", "--explain", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["cold_start"] and all("explanation" in x for x in out["items"])
    r = runner.invoke(app, ["explain", str(run_dir), "--user", user, "--item", rec.dataset.item_ids[0], "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["explanation"] == rec.explain(user, rec.dataset.item_ids[0])
    for args in (
        ["recommend", str(run_dir), "--user", "no-such-user"],
        ["explain", str(run_dir), "--user", user, "--item", "no-such-item"],
        ["recommend", str(run_dir), "--user", user, "-k", "0"],
    ):
        r = runner.invoke(app, args + ["--device", "cpu"])
        assert r.exit_code == 2, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")


# ---- the real HTTP server ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    import httpx

    port = _free_port()
    log = tmp_path_factory.mktemp("serverlog") / "server.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "peapod.cli", "serve", str(run_dir), "--host", "127.0.0.1", "--port", str(port),
             "--device", "cpu", "--max-wait-ms", "20", "--log-level", "warning"],
            stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer /health within {SERVER_START_TIMEOUT_S}s:\n{log.read_text()}")
            time.sleep(0.3)
        with httpx.Client(base_url=base, timeout=60) as client:
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def test_http_endpoints(server, rec):
    health = server.get("/health").json()
    assert health["status"] == "ok" and health["catalogue_size"] == rec.dataset.n_items and health["indexing"] == "p5-sequential"
    assert health["model"]["variant"] == "peapod" and set(health["batching"]["endpoints"]) == {"recommend", "rank", "explain"}

    user = _user_with_history(rec)
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
