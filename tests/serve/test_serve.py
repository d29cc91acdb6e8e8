"""Serving: the `peapod.Recommender` Python API, the micro-batcher and the CLI, on one tiny trained run
(tests/serve_run.py: fixtures `served_run`, `rec`) that the HTTP tests (test_serve_http.py) share.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import pytest
from serve_run import user_with_history

import peapod
from peapod.serve.batching import BatcherClosed, MicroBatcher
from peapod.serve.recommender import (
    MAX_CANDIDATES,
    MAX_HISTORY,
    Recommender,
    UnknownItem,
    UnknownUser,
)


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
    user = user_with_history(rec)
    history = set(rec.user_history(user))
    items = rec.recommend(user, k=10)
    assert len(items) == 10 and len({i for i, _ in items}) == 10
    assert not history & {i for i, _ in items}
    scores = [s for _, s in items]
    assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    assert all(rec.predictor.item_index(i) is not None for i, _ in items)
    # exact: the list is the top of the full-catalogue scores
    p = rec.predictor
    from peapod.infer.predictor import Request

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
    user = user_with_history(rec)
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
    user = user_with_history(rec)
    candidates = rec.dataset.item_ids[100:130]
    ranked = rec.rank(user, candidates)
    assert sorted(i for i, _ in ranked) == sorted(candidates)
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    new = rec.rank(None, candidates, history=rec.dataset.item_ids[:3])
    assert sorted(i for i, _ in new) == sorted(candidates)


def test_explain(rec):
    user = user_with_history(rec)
    text = rec.explain(user, rec.dataset.item_ids[0])
    assert isinstance(text, str) and text.strip()
    words = text.split()  # served decoding repeats no bigram: no word comes three times in a row
    assert not any(a == b == c for a, b, c in zip(words, words[1:], words[2:]))
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
    assert res == [1, 1] and errors == 1  # the batch failed as a whole; each request alone got its answer

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
def test_cli_recommend_and_explain(served_run, rec):
    from typer.testing import CliRunner

    from peapod.cli import app

    runner = CliRunner()
    user = user_with_history(rec)
    r = runner.invoke(app, ["recommend", str(served_run), "--user", user, "-k", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["user"] == user and not out["cold_start"] and len(out["items"]) == 4
    assert [x["item"] for x in out["items"]] == [i for i, _ in rec.recommend(user, k=4)]
    hist = ",".join(rec.dataset.item_ids[:3])
    r = runner.invoke(app, ["recommend", str(served_run), "--history", hist, "-k", "3", "--explain", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["cold_start"] and all("explanation" in x for x in out["items"])
    r = runner.invoke(app, ["explain", str(served_run), "--user", user, "--item", rec.dataset.item_ids[0], "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["explanation"] == rec.explain(user, rec.dataset.item_ids[0])
    for args in (
        ["recommend", str(served_run), "--user", "no-such-user"],
        ["explain", str(served_run), "--user", user, "--item", "no-such-item"],
        ["recommend", str(served_run), "--user", user, "-k", "0"],
    ):
        r = runner.invoke(app, args + ["--device", "cpu"])
        assert r.exit_code == 2, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
