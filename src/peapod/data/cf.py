"""Collaborative-filtering user embeddings: implicit-feedback ALS (Hu, Koren & Volinsky 2008) in torch.

The user factors are the PeaPOD composer's inputs; neighbours are the k most cosine-similar users.
ALS gives a closed-form fold-in: a new user's factor is one regularized least-squares solve against the
item factors, the same solve that produced every training user's factor in the last ALS sweep. So a
training user folded in from its own training items gets back its trained factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ALSConfig:
    dim: int = 64
    reg: float = 0.1
    alpha: float = 10.0  # confidence of an observed interaction: c = 1 + alpha
    iterations: int = 15
    seed: int = 0


def _padded(lists: list[list[int]], rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """[len(rows), max_len] index matrix and its validity mask for the chosen rows of `lists`."""
    width = max(1, max(len(lists[r]) for r in rows))
    idx = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=bool)
    for j, r in enumerate(rows):
        n = len(lists[r])
        idx[j, :n] = lists[r]
        mask[j, :n] = True
    return torch.from_numpy(idx), torch.from_numpy(mask)


def _chunk_rows(lengths: np.ndarray, order: np.ndarray, d: int, chunk: int, budget: int):
    """Consecutive slices of `order` (rows sorted by length) whose [b, d, d] systems and [b, width, d]
    gathered factors stay within `budget` float64 elements."""
    start = 0
    while start < len(order):
        size = max(1, min(chunk, budget // (2 * d * d + 2 * int(lengths[order[start]]) * d)))
        width = int(lengths[order[min(start + size, len(order)) - 1]])  # the longest row of the slice
        size = max(1, min(size, budget // (2 * d * d + 2 * width * d)))
        yield order[start : start + size]
        start += size


def _woodbury_solve(gram_inv: torch.Tensor, y: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Solve (G + alpha Y^T Y) x = b for each row through the Woodbury identity, with G^-1 shared:
    x = G^-1 b - G^-1 Y^T (I / alpha + Y G^-1 Y^T)^-1 Y G^-1 b. A row's n x n system replaces its d x d
    one, so rows with few interactions (n << d) cost O(n d^2) instead of O(d^3). Zero (padding) rows of
    Y contribute nothing. y: [B, n, d]; b: [B, d]; returns [B, d]."""
    gy = y @ gram_inv  # [B, n, d] = Y G^-1 (G symmetric)
    gb = b @ gram_inv  # [B, d]
    n = y.shape[1]
    small = torch.eye(n, dtype=y.dtype) / alpha + gy @ y.transpose(1, 2)  # [B, n, n]
    z = torch.linalg.solve(small, (gy @ b.unsqueeze(-1)))  # [B, n, 1]; Y G^-1 b = gy b (G^-1 symmetric)
    return gb - (gy.transpose(1, 2) @ z).squeeze(-1)


def solve_factors(
    lists: list[list[int]], other: torch.Tensor, reg: float, alpha: float, chunk: int = 2048, budget_mb: int = 256,
    woodbury_min_dim: int = 256,
) -> torch.Tensor:
    """One ALS half-step: for each row r, argmin_x sum_j c_rj (p_rj - x.y_j)^2 + reg |x|^2.

    Args:
        lists: per row, the column indices it interacted with (p_rj = 1, c_rj = 1 + alpha there).
        other: [n_cols, d] the fixed factors of the other side.
        chunk, budget_mb: rows solved together, at most `chunk` and few enough that their systems
            take about `budget_mb` MB (at d = 512 one system alone is 2 MB).
        woodbury_min_dim: from this d on, rows with at most d / 2 interactions are solved through the
            Woodbury identity (exact up to rounding, and far cheaper for large d: at d = 512 nearly
            every user); the others, and every row below it, as d x d systems.

    Returns:
        [len(lists), d] the solved factors (float32).
    """
    d = other.shape[1]
    gram = other.T @ other + reg * torch.eye(d, dtype=other.dtype)  # Y^T Y + reg I, shared by all rows
    out = torch.zeros(len(lists), d, dtype=other.dtype)
    # Sort by length so each chunk pads little.
    lengths = np.array([len(x) for x in lists])
    order = np.argsort(lengths, kind="stable")
    gram_inv = None
    for rows in _chunk_rows(lengths, order, d, chunk, budget_mb * 2**20 // 8):
        idx, mask = _padded(lists, rows)
        y = other[idx] * mask.unsqueeze(-1).to(other.dtype)  # [b, n, d], zero rows for padding
        b = (1.0 + alpha) * y.sum(1)
        if alpha > 0 and d >= woodbury_min_dim and 2 * y.shape[1] <= d:
            if gram_inv is None:
                gram_inv = torch.cholesky_inverse(torch.linalg.cholesky(gram))
            out[torch.from_numpy(rows)] = _woodbury_solve(gram_inv, y, b, alpha)
            continue
        a = gram + alpha * torch.einsum("bnd,bne->bde", y, y)
        out[torch.from_numpy(rows)] = torch.linalg.solve(a, b.unsqueeze(-1)).squeeze(-1)
    return out


def train_als(
    user_items: list[list[int]], n_items: int, config: ALSConfig = ALSConfig()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ALS on (training) interactions.

    Args:
        user_items: per user, the item indices of its training interactions (duplicates are ignored).
    Returns:
        (user_factors [n_users, dim], item_factors [n_items, dim]); users are solved last, so each
        user factor is exactly `fold_in` of its items.
    """
    gen = torch.Generator().manual_seed(config.seed)
    users = [sorted(set(items)) for items in user_items]
    item_users: list[list[int]] = [[] for _ in range(n_items)]
    for u, items in enumerate(users):
        for i in items:
            item_users[i].append(u)
    item_f = torch.randn(n_items, config.dim, generator=gen, dtype=torch.float64) * 0.01
    for _ in range(config.iterations):
        user_f = solve_factors(users, item_f, config.reg, config.alpha)
        item_f = solve_factors(item_users, user_f, config.reg, config.alpha)
    user_f = solve_factors(users, item_f, config.reg, config.alpha)
    return user_f.float(), item_f.float()


def fold_in(items: list[list[int]], item_factors: torch.Tensor, config: ALSConfig) -> torch.Tensor:
    """CF factors of users given only their item lists: [len(items), dim]. No retraining."""
    users = [sorted(set(x)) for x in items]
    return solve_factors(users, item_factors.double(), config.reg, config.alpha).float()


def nearest_neighbors(
    queries: torch.Tensor, keys: torch.Tensor, k: int, exclude_self: bool = False, chunk: int = 4096,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices of the k keys most cosine-similar to each query: [n_queries, k], most similar first.

    With `exclude_self`, queries are the keys themselves and row i never returns i; `exclude`
    [n_queries] names one key per query that it never returns (e.g. the user a prefix vector was
    folded in from). Chunked matrix products keep memory at chunk x n_keys.
    """
    if exclude_self:
        if exclude is not None:
            raise ValueError("give exclude_self or exclude, not both")
        exclude = torch.arange(queries.shape[0])  # row i never returns key i
    excluding = exclude is not None
    if k >= keys.shape[0] + (0 if not excluding else -1) + 1:
        raise ValueError(f"k={k} neighbours asked for, but only {keys.shape[0] - int(excluding)} candidates exist")
    if excluding and exclude.shape != (queries.shape[0],):
        raise ValueError(f"exclude must hold one key index per query ({queries.shape[0]}), got shape {tuple(exclude.shape)}")
    qn = torch.nn.functional.normalize(queries.float(), dim=1)
    kn = torch.nn.functional.normalize(keys.float(), dim=1)
    out = torch.empty(queries.shape[0], k, dtype=torch.long)
    for start in range(0, queries.shape[0], chunk):
        sim = qn[start : start + chunk] @ kn.T
        if excluding:
            sim[torch.arange(sim.shape[0]), exclude[start : start + chunk].long()] = float("-inf")
        out[start : start + chunk] = sim.topk(k, dim=1).indices
    return out
