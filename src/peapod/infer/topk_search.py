"""Exact top-k items of the whole catalogue by best-first search over the item prefix tree.

An item's score is its teacher-forced log-likelihood, a sum of next-token log-probabilities along its
path in the prefix tree (`prefix_scoring.PrefixTree`). Every term is <= 0, so the log-probability of
a prefix bounds the score of every item below it. Best-first search (A* with that bound) therefore
finalizes items in exact descending score order: an item is accepted only when it is at the top of
the frontier, i.e. no unexpanded prefix can still lead to a better item. The first k accepted items
are the exact top k of the full catalogue ranking, the same list as sorting `score_items_tree` over
all N items, while decoding only the few prefixes whose probability beats the k-th best item (tens to
hundreds of tree nodes instead of all of them).

Consequences for evaluation: the target's rank is exact whenever it is < k, and "not in the top k"
otherwise, so HR@c / NDCG@c are exact for every cut-off c <= k.

Decoding is incremental: each expanded node runs one decoder position that attends to its ancestors'
cached self-attention keys/values and to the user's cross-attention keys/values, computed once per
user. As in `prefix_scoring`, only the attention arithmetic is re-implemented; every projection,
norm, feed-forward block, relative-position bucket and the LM head are the model's own modules.

Ties: among siblings of equal score the one with the lower token id comes first; across the frontier
items pop before prefixes of equal score.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch
from transformers.models.t5.modeling_t5 import T5Attention

from peapod.infer.prefix_scoring import PrefixTree

__all__ = ["TreeChildren", "search_top_k"]

_ITEM, _NODE = 0, 1  # heap entry kinds; items pop first on equal scores


@dataclass(frozen=True)
class TreeChildren:
    """Outgoing edges of every prefix-tree node (CSR): node v owns `ptr[v]:ptr[v+1]`.

    token: [E] next token; kind: [E] `_ITEM` when the token is the EOS completing an item, else
    `_NODE`; target: [E] the item completed or the node reached.
    """

    ptr: list[int]
    token: torch.Tensor
    kind: torch.Tensor
    target: torch.Tensor

    @classmethod
    def build(cls, tree: PrefixTree) -> TreeChildren:
        e = tree.edge_node.numel()
        child = torch.full((e,), -1, dtype=torch.long)
        item = torch.full((e,), -1, dtype=torch.long)
        valid = tree.item_valid
        lengths = valid.sum(1)
        width = valid.shape[1]
        for j in range(width):
            rows = valid[:, j]
            edges = tree.item_edges[rows, j]
            last = lengths[rows] == j + 1
            if j + 1 < width:
                nxt = tree.item_nodes[rows, j + 1]
                child[edges[~last]] = nxt[~last]
            items = torch.nonzero(rows).squeeze(1)
            item[edges[last]] = items[last]
        counts = torch.bincount(tree.edge_node, minlength=tree.num_nodes)
        ptr = torch.zeros(tree.num_nodes + 1, dtype=torch.long)
        ptr[1:] = torch.cumsum(counts, 0)
        is_item = item >= 0
        kind = torch.where(is_item, torch.full_like(item, _ITEM), torch.full_like(item, _NODE))
        return cls(ptr.tolist(), tree.edge_token.clone(), kind, torch.where(is_item, item, child))


class _IncrementalDecoder:
    """Decoder states of expanded tree nodes for a batch of users, with per-user key/value caches."""

    def __init__(self, t5, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor, tree: PrefixTree, capacity: int = 64):
        self.t5 = t5
        cfg = t5.config
        self.h, self.dk = cfg.num_heads, cfg.d_kv
        self.device = encoder_hidden.device
        dtype = encoder_hidden.dtype
        b = encoder_hidden.shape[0]
        self.blocks = list(t5.decoder.block)
        self.cross = []
        for block in self.blocks:
            att = block.layer[1].EncDecAttention
            k = att.k(encoder_hidden).view(b, -1, self.h, self.dk).transpose(1, 2)
            v = att.v(encoder_hidden).view(b, -1, self.h, self.dk).transpose(1, 2)
            self.cross.append((k, v))
        bias = torch.zeros(encoder_mask.shape, dtype=dtype, device=self.device)
        self.enc_bias = bias.masked_fill(encoder_mask == 0, torch.finfo(dtype).min).view(b, 1, 1, -1)
        self.tree_token = tree.node_token.to(self.device)
        self.tree_depth = tree.node_depth.to(self.device)
        self.tree_anc = tree.ancestors.to(self.device)
        self.slot_of = torch.full((b, tree.num_nodes), -1, dtype=torch.long, device=self.device)
        self.used = [0] * b
        self.capacity = capacity
        shape = (b, capacity, self.h, self.dk)
        self.k_cache = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in self.blocks]
        self.v_cache = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in self.blocks]
        # Self-attention bias of a node at depth t for its ancestor column j (depth j): T5's causal
        # relative-position bias of (j - t) for j <= t, -inf beyond. One [D, H, D] table for all steps.
        first = self.blocks[0].layer[0].SelfAttention
        d = tree.ancestors.shape[1]
        rel = torch.arange(d).view(1, d) - torch.arange(d).view(d, 1)  # [t, j]
        buckets = T5Attention._relative_position_bucket(
            rel, bidirectional=False, num_buckets=first.relative_attention_num_buckets,
            max_distance=first.relative_attention_max_distance,
        ).to(self.device)
        table = first.relative_attention_bias(buckets).permute(0, 2, 1)  # [t, H, j]
        self.bias_table = table.masked_fill((rel > 0).to(self.device).unsqueeze(1), float("-inf"))
        pad = torch.full_like(self.bias_table[0], float("-inf"))
        pad[:, 0] = 0.0
        self.pad_bias = pad  # padding rows attend to the root slot only

    def _grow(self, need: int) -> None:
        if need <= self.capacity:
            return
        new = max(need, 2 * self.capacity)
        for caches in (self.k_cache, self.v_cache):
            for i, c in enumerate(caches):
                grown = torch.zeros((c.shape[0], new, *c.shape[2:]), dtype=c.dtype, device=c.device)
                grown[:, : self.capacity] = c
                caches[i] = grown
        self.capacity = new

    @torch.no_grad()
    def expand(self, users: list[int], nodes: list[list[int]]) -> torch.Tensor:
        """Log-probabilities of the next token after each node: [len(users), max n, V] (padding rows junk).

        Every node's parent must have been expanded before (its ancestors' keys/values are cached).
        """
        dev = self.device
        u = len(users)
        n = max(len(x) for x in nodes)
        node_t = torch.zeros(u, n, dtype=torch.long)
        real = torch.zeros(u, n, dtype=torch.bool)
        slots = torch.zeros(u, n, dtype=torch.long)
        self._grow(max(self.used[b] + len(x) for b, x in zip(users, nodes)))
        for i, (b, x) in enumerate(zip(users, nodes)):
            k = len(x)
            node_t[i, :k] = torch.tensor(x, dtype=torch.long)
            real[i, :k] = True
            slots[i, :k] = torch.arange(self.used[b], self.used[b] + k)
            self.used[b] += k
        users_t = torch.tensor(users, dtype=torch.long, device=dev)
        node_t, real, slots = node_t.to(dev), real.to(dev), slots.to(dev)
        bidx = users_t.view(u, 1).expand(u, n)
        # Register the new nodes' slots first: a node attends to itself.
        self.slot_of[bidx[real], node_t[real]] = slots[real]
        anc = self.tree_anc[node_t]  # [u, n, D] global node ids
        anc_slots = self.slot_of[bidx.unsqueeze(-1).expand_as(anc), anc].clamp(min=0)
        bias = torch.where(real.view(u, n, 1, 1), self.bias_table[self.tree_depth[node_t]], self.pad_bias)  # [u, n, H, D]
        cache_b = users_t.view(u, 1, 1).expand_as(anc_slots)

        hidden = self.t5.decoder.embed_tokens(self.tree_token[node_t])
        for layer, block in enumerate(self.blocks):
            sa = block.layer[0]
            att = sa.SelfAttention
            x = sa.layer_norm(hidden)
            q = att.q(x).view(u, n, self.h, self.dk)
            k = att.k(x).view(u, n, self.h, self.dk)
            v = att.v(x).view(u, n, self.h, self.dk)
            self.k_cache[layer][bidx[real], slots[real]] = k[real]
            self.v_cache[layer][bidx[real], slots[real]] = v[real]
            k_anc = self.k_cache[layer][cache_b, anc_slots]  # [u, n, D, H, dk]
            v_anc = self.v_cache[layer][cache_b, anc_slots]
            scores = torch.einsum("bmhk,bmdhk->bmhd", q, k_anc) + bias
            probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            out = torch.einsum("bmhd,bmdhk->bmhk", probs, v_anc).reshape(u, n, self.h * self.dk)
            hidden = hidden + att.o(out)
            ca = block.layer[1]
            att = ca.EncDecAttention
            x = ca.layer_norm(hidden)
            q = att.q(x).view(u, n, self.h, self.dk).transpose(1, 2)
            ck, cv = self.cross[layer]
            scores = torch.matmul(q, ck[users_t].transpose(-1, -2)) + self.enc_bias[users_t]
            probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            out = torch.matmul(probs, cv[users_t]).transpose(1, 2).reshape(u, n, self.h * self.dk)
            hidden = hidden + att.o(out)
            hidden = block.layer[-1](hidden)
        hidden = self.t5.decoder.final_layer_norm(hidden)
        cfg = self.t5.config
        if getattr(cfg, "scale_decoder_outputs", False):
            hidden = hidden * (cfg.d_model**-0.5)
        return torch.log_softmax(self.t5.lm_head(hidden).float(), dim=-1)


@torch.no_grad()
def search_top_k(
    model,
    encoder_hidden: torch.Tensor,
    encoder_mask: torch.Tensor,
    tree: PrefixTree,
    children: TreeChildren,
    k: int,
    banned: list[set[int]] | None = None,
    expand_per_round: int = 16,
) -> tuple[list[list[int]], list[list[float]], int]:
    """The exact k best items (highest log-likelihood first) for each user.

    Args:
        model: a PeaPOD model; encoder_hidden / encoder_mask: [B, S, d] / [B, S] encoder output.
        tree / children: the catalogue's prefix tree and its child lists.
        k: list length (shorter only when fewer than k items are allowed).
        banned: per user, items never returned (e.g. the history); they are skipped, not counted.
        expand_per_round: prefixes per user decoded in one batched step; more means fewer, larger
            steps (results are identical for any value).
    Returns:
        (items, scores, expanded): per user the item indices and their log-likelihoods, and the
        total number of tree nodes decoded.
    """
    b = encoder_hidden.shape[0]
    banned = banned if banned is not None else [set() for _ in range(b)]
    if len(banned) != b:
        raise ValueError(f"{len(banned)} banned sets for {b} users")
    dec = _IncrementalDecoder(model.t5, encoder_hidden, encoder_mask, tree)
    # Heap entries: (-score, kind, id, successor). A node's children are sorted once when it is
    # expanded and enter the heap one at a time: popping a child pushes its next sibling (the
    # `successor`, a (sibling list, position) pair, or None once pushed), so the heap holds O(pops)
    # entries instead of every child of every expanded node.
    heaps: list[list[tuple]] = [[(-0.0, _NODE, 0, None)] for _ in range(b)]
    siblings: list[list[tuple[list[float], list[int], list[int]]]] = [[] for _ in range(b)]
    items: list[list[int]] = [[] for _ in range(b)]
    scores: list[list[float]] = [[] for _ in range(b)]
    ptr, tokens, kinds_t, targets_t = children.ptr, children.token, children.kind, children.target

    def pop(u: int) -> tuple:
        entry = heapq.heappop(heaps[u])
        if entry[3] is not None:
            lst, pos = entry[3]
            neg, kinds, ids = siblings[u][lst]
            nxt = (lst, pos + 1) if pos + 1 < len(ids) else None
            heapq.heappush(heaps[u], (neg[pos], kinds[pos], ids[pos], nxt))
            entry = entry[:3] + (None,)
        return entry

    expanded = 0
    while True:
        users, batch, prefix = [], [], []
        for u in range(b):
            heap = heaps[u]
            # Accept items at the top: nothing left in the frontier can beat them.
            while heap and heap[0][1] == _ITEM and len(items[u]) < k:
                neg, _, it, _ = pop(u)
                if it not in banned[u]:
                    items[u].append(it)
                    scores[u].append(-neg)
            if len(items[u]) >= k or not heap:
                continue
            picked, held = [], []
            while heap and len(picked) < expand_per_round:
                entry = pop(u)
                (picked if entry[1] == _NODE else held).append(entry)
            for entry in held:
                heapq.heappush(heap, entry)
            users.append(u)
            batch.append([e[2] for e in picked])
            prefix.append([-e[0] for e in picked])
        if not users:
            break
        logp = dec.expand(users, batch).cpu()
        # All children of all expanded nodes at once: score, sort within each node, then split.
        pair_i, pair_j, pair_node, pair_prefix = [], [], [], []
        for i, nodes in enumerate(batch):
            for j, node in enumerate(nodes):
                pair_i.append(i)
                pair_j.append(j)
                pair_node.append(node)
                pair_prefix.append(prefix[i][j])
        expanded += len(pair_node)
        lo = torch.tensor([ptr[v] for v in pair_node], dtype=torch.long)
        counts = torch.tensor([ptr[v + 1] - ptr[v] for v in pair_node], dtype=torch.long)
        seg = torch.repeat_interleave(torch.arange(len(pair_node)), counts)
        first = torch.cumsum(counts, 0) - counts
        edges = lo[seg] + torch.arange(seg.numel()) - first[seg]
        lp = logp[torch.tensor(pair_i)[seg], torch.tensor(pair_j)[seg], tokens[edges]].double()
        lp = lp + torch.tensor(pair_prefix, dtype=torch.float64)[seg]
        order = torch.sort(lp, descending=True, stable=True).indices
        order = order[torch.sort(seg[order], stable=True).indices]  # by node, best child first
        neg_all = (-lp[order]).tolist()
        kinds_all = kinds_t[edges[order]].tolist()
        ids_all = targets_t[edges[order]].tolist()
        pos = 0
        for p, n_children in enumerate(counts.tolist()):
            if n_children == 0:
                continue
            u = users[pair_i[p]]
            neg = neg_all[pos : pos + n_children]
            kinds = kinds_all[pos : pos + n_children]
            ids = ids_all[pos : pos + n_children]
            pos += n_children
            siblings[u].append((neg, kinds, ids))
            nxt = (len(siblings[u]) - 1, 1) if n_children > 1 else None
            heapq.heappush(heaps[u], (neg[0], kinds[0], ids[0], nxt))
    return items, scores, expanded
