"""Personalized prompt composers: user CF embeddings -> [batch, L, d_model] soft prompts.

Both composers take the user's CF query vector and, for `neighbors`, the indices of its k most
similar training users. Serving a user unseen in training passes a folded-in query vector and its
neighbours computed on the fly (see `peapod.data.cf`).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class NeighborComposer(nn.Module):
    """PeaPOD as published (paper v2): attention from the user over its k nearest CF neighbours.

    The user's CF embedding is the query; the CF embeddings of its neighbours are keys and values.
    Multi-head scaled dot-product attention gives one context vector, which a linear layer maps to
    L prompt vectors.
    """

    def __init__(self, cf_dim: int, d_model: int, prompt_length: int, n_heads: int):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.prompt_length = prompt_length
        self.d_model = d_model
        self.query = nn.Linear(cf_dim, d_model)
        self.key = nn.Linear(cf_dim, d_model)
        self.value = nn.Linear(cf_dim, d_model)
        self.project = nn.Linear(d_model, prompt_length * d_model)

    def attention(self, query_emb: torch.Tensor, neighbor_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: query_emb [B, c]; neighbor_emb [B, k, c].
        Returns: context [B, d_model] and attention weights [B, heads, k] (each row sums to 1)."""
        b, k, _ = neighbor_emb.shape
        h, hd = self.n_heads, self.d_model // self.n_heads
        q = self.query(query_emb).view(b, h, 1, hd)
        kk = self.key(neighbor_emb).view(b, k, h, hd).transpose(1, 2)  # [B, h, k, hd]
        v = self.value(neighbor_emb).view(b, k, h, hd).transpose(1, 2)
        weights = torch.softmax((q @ kk.transpose(-1, -2)) / math.sqrt(hd), dim=-1)  # [B, h, 1, k]
        context = (weights @ v).reshape(b, self.d_model)
        return context, weights.squeeze(2)

    def forward(self, query_emb: torch.Tensor, neighbor_emb: torch.Tensor) -> torch.Tensor:
        """[B, c], [B, k, c] -> user prompts [B, L, d_model]."""
        context, _ = self.attention(query_emb, neighbor_emb)
        return self.project(context).view(-1, self.prompt_length, self.d_model)


class PoolComposer(nn.Module):
    """PeaPOD paper v1: a shared pool of M learnable prompts, weighted by the user's interests.

    A projection of the user's CF embedding attends over M learnable keys (one per prompt); the user
    prompt is the attention-weighted sum of the M prompts, each of shape [L, d_model].
    """

    def __init__(self, cf_dim: int, d_model: int, prompt_length: int, pool_size: int):
        super().__init__()
        self.query = nn.Linear(cf_dim, d_model)
        self.keys = nn.Parameter(torch.randn(pool_size, d_model) / math.sqrt(d_model))
        self.prompts = nn.Parameter(torch.empty(pool_size, prompt_length, d_model).uniform_(-0.1, 0.1))

    def weights(self, query_emb: torch.Tensor) -> torch.Tensor:
        """[B, c] -> [B, M] prompt weights (rows sum to 1)."""
        q = self.query(query_emb)
        return torch.softmax(q @ self.keys.T / math.sqrt(q.shape[-1]), dim=-1)

    def forward(self, query_emb: torch.Tensor, neighbor_emb: torch.Tensor | None = None) -> torch.Tensor:
        """[B, c] -> user prompts [B, L, d_model]. `neighbor_emb` is ignored (same interface)."""
        return torch.einsum("bm,mld->bld", self.weights(query_emb), self.prompts)
