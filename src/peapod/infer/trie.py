"""Constrained decoding over the item catalogue with a tensorised prefix trie.

Every item is a fixed decoder token sequence (its id tokens followed by EOS,
without the decoder start token). Generation is restricted to those sequences
by masking, at every step, all tokens that would leave the trie. The trie is
built once, in Python, and stored as flat tensors, so decoding needs no Python
dictionary lookups per generated token:

* nodes are numbered ``0 .. num_nodes-1``, the root is ``0``;
* edges are sorted by ``key = parent * vocab_size + token``; following an edge
  is a ``torch.searchsorted`` in ``edge_key``;
* because that sort orders edges by parent first, the same arrays are also a
  CSR layout over nodes: the edges leaving node ``v`` are
  ``node_ptr[v] : node_ptr[v + 1]`` and their tokens are ``edge_token[...]``.

Banned items (e.g. items already in a user's history) are handled exactly: the
items are numbered in lexicographic order of their token sequences, so the
items below any edge form a contiguous range ``[edge_lo, edge_hi)`` of that
order, and an edge is allowed only if at least one item in its range is not
banned (a per-row prefix sum over the banned flags answers that in O(1) per
edge). Hence a prefix is never entered if every item below it is banned, and
decoding can always finish on an allowed item unless *all* items are banned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["ItemTrie"]


@dataclass(frozen=True, eq=False)
class ItemTrie:
    """Prefix trie over item token sequences, as tensors (all int64, same device).

    Attributes:
        vocab_size: size V of the decoder vocabulary (width of the masks).
        eos_token_id: the token every item sequence ends with; also the
            fallback token allowed in rows that have nothing else allowed.
        num_items: number of items I.
        num_nodes: number of trie nodes (root included).
        max_length: length of the longest item sequence (EOS included).
        edge_key: ``[E]`` sorted ``parent * V + token`` of every edge.
        edge_child: ``[E]`` node reached through the edge.
        edge_item: ``[E]`` item index completed by the edge (its EOS edge), else -1.
        edge_token: ``[E]`` token of the edge (= ``edge_key % V``); in CSR order.
        edge_lo: ``[E]`` first lexicographic item position below the edge.
        edge_hi: ``[E]`` one past the last lexicographic item position below it.
        node_ptr: ``[num_nodes + 1]`` CSR offsets: node v owns edges
            ``node_ptr[v]:node_ptr[v+1]``.
        node_item: ``[num_nodes]`` item index whose sequence ends at the node, else -1.
        item_order: ``[I]`` item index at each lexicographic position
            (so ``banned[:, item_order]`` is the banned matrix in trie order).
    """

    vocab_size: int
    eos_token_id: int
    num_items: int
    num_nodes: int
    max_length: int
    edge_key: torch.Tensor
    edge_child: torch.Tensor
    edge_item: torch.Tensor
    edge_token: torch.Tensor
    edge_lo: torch.Tensor
    edge_hi: torch.Tensor
    node_ptr: torch.Tensor
    node_item: torch.Tensor
    item_order: torch.Tensor

    # ------------------------------------------------------------------ build

    @classmethod
    def build(
        cls,
        sequences: Sequence[Sequence[int]],
        vocab_size: int,
        eos_token_id: int | None = None,
    ) -> ItemTrie:
        """Build the trie; item ``i`` is ``sequences[i]``.

        Args:
            sequences: per item, its decoder token ids ending with EOS (no
                decoder start token). Sequences must be distinct and EOS may
                only appear as the last token, so that no item is a prefix of
                another.
            vocab_size: decoder vocabulary size V (all tokens must be < V).
            eos_token_id: the EOS id; inferred from the common last token
                when omitted.

        Raises:
            ValueError: on an empty catalogue, empty/duplicate sequences,
                out-of-range tokens or misplaced EOS.
        """
        seqs = [tuple(int(t) for t in s) for s in sequences]
        if not seqs:
            raise ValueError("the item catalogue is empty")
        if vocab_size <= 0:
            raise ValueError("vocab_size must be positive")
        if any(len(s) == 0 for s in seqs):
            raise ValueError("every item sequence needs at least its EOS token")
        if eos_token_id is None:
            eos_token_id = seqs[0][-1]
        for i, s in enumerate(seqs):
            if s[-1] != eos_token_id:
                raise ValueError(f"item {i} does not end with EOS {eos_token_id}: {s}")
            if eos_token_id in s[:-1]:
                raise ValueError(f"item {i} contains EOS before its end: {s}")
            if min(s) < 0 or max(s) >= vocab_size:
                raise ValueError(f"item {i} has a token outside [0, {vocab_size}): {s}")
        if len(set(seqs)) != len(seqs):
            raise ValueError("item sequences must be distinct")

        # Inserting the items in lexicographic order makes the items below any
        # edge contiguous in that order, which is what the banned-item ranges need.
        order = sorted(range(len(seqs)), key=seqs.__getitem__)
        edge_of: dict[tuple[int, int], int] = {}  # (parent, token) -> edge, build time only
        parent: list[int] = []
        token: list[int] = []
        child: list[int] = []
        item: list[int] = []
        lo: list[int] = []
        hi: list[int] = []
        node_item = [-1]
        for pos, item_idx in enumerate(order):
            node = 0
            edge = -1
            for tok in seqs[item_idx]:
                edge = edge_of.get((node, tok), -1)
                if edge < 0:
                    edge = len(parent)
                    edge_of[(node, tok)] = edge
                    parent.append(node)
                    token.append(tok)
                    child.append(len(node_item))
                    node_item.append(-1)
                    item.append(-1)
                    lo.append(pos)
                    hi.append(pos + 1)
                else:
                    hi[edge] = pos + 1
                node = child[edge]
            item[edge] = item_idx
            node_item[node] = item_idx

        num_nodes = len(node_item)
        parent_t = torch.tensor(parent, dtype=torch.long)
        token_t = torch.tensor(token, dtype=torch.long)
        key = parent_t * vocab_size + token_t
        perm = torch.argsort(key)
        counts = torch.bincount(parent_t, minlength=num_nodes)
        node_ptr = torch.zeros(num_nodes + 1, dtype=torch.long)
        node_ptr[1:] = torch.cumsum(counts, 0)
        return cls(
            vocab_size=int(vocab_size),
            eos_token_id=int(eos_token_id),
            num_items=len(seqs),
            num_nodes=num_nodes,
            max_length=max(len(s) for s in seqs),
            edge_key=key[perm].contiguous(),
            edge_child=torch.tensor(child, dtype=torch.long)[perm].contiguous(),
            edge_item=torch.tensor(item, dtype=torch.long)[perm].contiguous(),
            edge_token=token_t[perm].contiguous(),
            edge_lo=torch.tensor(lo, dtype=torch.long)[perm].contiguous(),
            edge_hi=torch.tensor(hi, dtype=torch.long)[perm].contiguous(),
            node_ptr=node_ptr,
            node_item=torch.tensor(node_item, dtype=torch.long),
            item_order=torch.tensor(order, dtype=torch.long),
        )

    # ----------------------------------------------------------------- basics

    @property
    def device(self) -> torch.device:
        return self.edge_key.device

    def to(self, device: torch.device | str) -> ItemTrie:
        """A copy with every tensor on ``device`` (``self`` if already there)."""
        device = torch.device(device)
        if self.device == device:
            return self
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    def sequences(self) -> list[tuple[int, ...]]:
        """Token sequence of every item, in item order (rebuilt from the tensors)."""
        out: list[tuple[int, ...]] = [()] * self.num_items
        parent_of_child = {}
        for e in range(self.edge_key.numel()):
            parent_of_child[int(self.edge_child[e])] = (
                int(self.edge_key[e]) // self.vocab_size,
                int(self.edge_token[e]),
            )
        for node, item in enumerate(self.node_item.tolist()):
            if item < 0:
                continue
            toks = []
            while node != 0:
                node, tok = parent_of_child[node]
                toks.append(tok)
            out[item] = tuple(reversed(toks))
        return out

    def lookup(self) -> dict[tuple[int, ...], int]:
        """``{token sequence: item index}``, for dict-based decoding."""
        return {seq: i for i, seq in enumerate(self.sequences())}

    # ------------------------------------------------------------------- walk

    def _step(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Follow one edge per row: ``[B]`` nodes x ``[B]`` tokens -> ``[B]`` children (-1 if none)."""
        in_range = (nodes >= 0) & (tokens >= 0) & (tokens < self.vocab_size)
        # Out-of-range tokens would alias another node's key, hence in_range.
        key = nodes.clamp(min=0) * self.vocab_size + tokens.clamp(0, self.vocab_size - 1)
        pos = torch.searchsorted(self.edge_key, key).clamp(max=self.edge_key.numel() - 1)
        found = in_range & (self.edge_key[pos] == key)
        return torch.where(found, self.edge_child[pos], torch.full_like(nodes, -1))

    def walk(self, prefix_tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Node reached by each row's prefix.

        Args:
            prefix_tokens: long ``[B, t]`` decoder tokens *after* the decoder
                start token (``t`` may be 0).
            lengths: optional long ``[B]``; row b only consumes its first
                ``lengths[b]`` tokens (for right-padded rows).

        Returns:
            long ``[B]``: the node id, or -1 if the prefix left the trie
            (including any token after an item's EOS). ``t`` loop iterations.
        """
        prefix_tokens = prefix_tokens.to(device=self.device, dtype=torch.long)
        batch, steps = prefix_tokens.shape
        nodes = torch.zeros(batch, dtype=torch.long, device=self.device)
        for j in range(steps):
            nxt = self._step(nodes, prefix_tokens[:, j])
            nodes = nxt if lengths is None else torch.where(lengths.to(self.device) > j, nxt, nodes)
        return nodes

    # ------------------------------------------------------------------- mask

    def banned_prefix_counts(self, banned_items: torch.Tensor) -> torch.Tensor:
        """Per-row prefix sums of banned flags in lexicographic item order.

        Args:
            banned_items: bool ``[B, I]``, True where item i is banned for row b.

        Returns:
            int32 ``[B, I + 1]``: ``out[b, p]`` = number of banned items among
            lexicographic positions ``< p``.
        """
        if banned_items.dim() != 2 or banned_items.shape[1] != self.num_items:
            raise ValueError(f"banned_items must be [B, {self.num_items}], got {tuple(banned_items.shape)}")
        banned_sorted = banned_items.to(self.device, dtype=torch.bool)[:, self.item_order]
        # int32 halves the memory of this [B, I+1] table; counts never exceed I.
        out = torch.zeros(banned_sorted.shape[0], self.num_items + 1, dtype=torch.int32, device=self.device)
        out[:, 1:] = torch.cumsum(banned_sorted, dim=1, dtype=torch.int32)
        return out

    def allowed_mask(self, nodes: torch.Tensor, banned_items: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens each row may generate next.

        Args:
            nodes: long ``[B]`` trie nodes (from :meth:`walk`), -1 for rows
                that already left the trie.
            banned_items: optional bool ``[B, I]``; an edge is disallowed when
                every item below it is banned for that row (in particular the
                EOS edge completing a banned item).

        Returns:
            bool ``[B, V]``. Rows whose node is -1, or a leaf (after EOS), or
            whose every continuation is banned allow only ``eos_token_id``, so
            that no row is all ``-inf`` (which would make beam search / sampling
            produce NaNs); such a row ends immediately and decodes to no item.
        """
        counts = None if banned_items is None else self.banned_prefix_counts(banned_items)
        return self.allowed_mask_from_counts(nodes, counts)

    def allowed_mask_from_counts(self, nodes: torch.Tensor, banned_counts: torch.Tensor | None) -> torch.Tensor:
        """:meth:`allowed_mask` with precomputed :meth:`banned_prefix_counts` ``[B, I+1]`` (or None)."""
        nodes = nodes.to(device=self.device, dtype=torch.long)
        batch = nodes.shape[0]
        valid = nodes >= 0
        safe = nodes.clamp(min=0)
        start = self.node_ptr[safe]
        n_edges = torch.where(valid, self.node_ptr[safe + 1] - start, torch.zeros_like(start))
        # Flatten the CSR slices of all rows: one entry per (row, outgoing edge).
        row = torch.repeat_interleave(torch.arange(batch, device=self.device), n_edges)
        first_of_row = torch.cumsum(n_edges, 0) - n_edges
        within = torch.arange(row.numel(), device=self.device) - first_of_row[row]
        edge = start[row] + within
        if banned_counts is not None:
            lo = self.edge_lo[edge]
            hi = self.edge_hi[edge]
            n_banned = banned_counts[row, hi] - banned_counts[row, lo]
            keep = n_banned < hi - lo
            row = row[keep]
            edge = edge[keep]
        mask = torch.zeros(batch, self.vocab_size, dtype=torch.bool, device=self.device)
        mask[row, self.edge_token[edge]] = True
        dead = ~mask.any(dim=1)
        mask[:, self.eos_token_id] |= dead
        return mask
