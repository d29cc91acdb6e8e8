"""Collaborative filtering: ALS, fold-in of unseen users, nearest neighbours, and the prompts they give.

Everything runs on CPU with the `tiny` preset and a small seeded synthetic dataset (model_fixtures.py, registered in conftest.py).
"""

from __future__ import annotations

import pytest
import torch
from model_fixtures import CF_DIM, N_USERS, K

from peapod.data import cf


# ---- fold-in --------------------------------------------------------------------------------
def test_fold_in_reproduces_trained_factor_and_prompt(models, ds):
    model, _ = models("peapod", "neighbors")
    users = list(range(N_USERS))
    folded = model.fold_in([ds.train_items(u) for u in users])
    assert folded.shape == (N_USERS, CF_DIM)
    cos = torch.nn.functional.cosine_similarity(folded, model.cf_users, dim=1)
    assert cos.min() >= 0.99
    # Fold-in is the last ALS half-step, so it is in fact (numerically) the same vector.
    torch.testing.assert_close(folded, model.cf_users, atol=1e-4, rtol=1e-3)
    t = torch.tensor(users)
    with torch.no_grad():
        via_fold = model.user_prompts(cf_query=folded, neighbors=model.neighbor_index[t])
        trained = model.user_prompts(users=t)
    torch.testing.assert_close(via_fold, trained, atol=1e-4, rtol=0)
    # A different user's items give a different vector.
    other = model.fold_in([ds.train_items(1)])
    assert torch.nn.functional.cosine_similarity(other, model.cf_users[:1]).item() < 0.99
    # The functional API agrees with the method.
    torch.testing.assert_close(cf.fold_in([ds.train_items(0)], model.cf_items, model.config.als()), folded[:1])


def test_neighbors_of_folded_user(models, ds):
    model, _ = models("peapod", "neighbors")
    users = list(range(N_USERS))
    folded = model.fold_in([ds.train_items(u) for u in users])
    found = model.neighbors_of(folded)
    assert found.shape == (N_USERS, K)
    self_first = 0
    overlaps = []
    for u in users:
        row = found[u].tolist()
        # The folded query finds the user itself (up to an exact twin with identical training items).
        assert u in row[:2], (u, row)
        self_first += row[0] == u
        rest = [v for v in row if v != u]
        overlaps.append(len(set(rest) & set(model.neighbor_index[u, : K - 1].tolist())) / (K - 1))
    assert self_first >= 0.9 * N_USERS
    assert sum(overlaps) / len(overlaps) >= 0.9
    assert min(overlaps) >= 0.5
    # Without an explicit neighbour list, user_prompts finds neighbours itself (self included here).
    with torch.no_grad():
        auto = model.user_prompts(cf_query=folded[:3])
        explicit = model.user_prompts(cf_query=folded[:3], neighbors=found[:3])
    assert torch.equal(auto, explicit)


def test_cf_functions_directly():
    lists = [[0, 1, 2], [0, 1], [3, 4, 5], [4, 5], [0, 2], [3, 5]]
    config = cf.ALSConfig(dim=4, iterations=10, seed=0)
    uf, itf = cf.train_als(lists, 6, config)
    assert uf.shape == (6, 4) and itf.shape == (6, 4) and uf.dtype == torch.float32
    torch.testing.assert_close(cf.fold_in(lists, itf, config), uf, atol=1e-4, rtol=1e-3)
    nb = cf.nearest_neighbors(uf, uf, 2, exclude_self=True)
    for u in range(6):
        assert u not in nb[u].tolist()
    # The two item groups {0,1,2} and {3,4,5} make two clusters of users.
    group = [0, 0, 1, 1, 0, 1]
    assert all(group[int(nb[u, 0])] == group[u] for u in range(6))
    assert cf.nearest_neighbors(uf, uf, 1)[:, 0].tolist() == list(range(6))
    with pytest.raises(ValueError):
        cf.nearest_neighbors(uf, uf, 6, exclude_self=True)
    cf.nearest_neighbors(uf, uf, 5, exclude_self=True)
    cf.nearest_neighbors(uf, uf, 6)
    with pytest.raises(ValueError):
        cf.nearest_neighbors(uf, uf, 7)


def test_woodbury_and_memory_bounded_chunks_give_the_exact_als_solution():
    gen = torch.Generator().manual_seed(0)
    other = torch.randn(40, 16, generator=gen, dtype=torch.float64)
    lists = [sorted(set(torch.randint(0, 40, (n,), generator=gen).tolist())) for n in (1, 2, 3, 5, 8, 30, 35)]
    direct = cf.solve_factors(lists, other, 0.1, 10.0)  # d = 16 < 256: plain d x d solves
    woodbury = cf.solve_factors(lists, other, 0.1, 10.0, woodbury_min_dim=1)  # rows with <= 8 items via Woodbury
    tiny_chunks = cf.solve_factors(lists, other, 0.1, 10.0, budget_mb=0)  # one row per chunk
    torch.testing.assert_close(woodbury, direct, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(tiny_chunks, direct, atol=1e-12, rtol=1e-12)
    for r, items in enumerate(lists):  # the normal equations hold: (G + alpha Y_r^T Y_r) x = (1 + alpha) sum y
        y = other[items]
        a = other.T @ other + 0.1 * torch.eye(16, dtype=torch.float64) + 10.0 * y.T @ y
        torch.testing.assert_close(a @ woodbury[r], 11.0 * y.sum(0), atol=1e-8, rtol=1e-8)
