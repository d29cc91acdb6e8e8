"""Exact item log-likelihoods with shared prefixes and one cross-attention key/value pass per user.

`scoring.score_candidates` decodes every (user, item) pair as its own sequence: the decoder runs
T positions per item and transformers recomputes the cross-attention keys/values of the whole
encoder output for every pair. Both are redundant:

* items share prefixes (every `item_…` starts with the same `▁item_` token, then digit pieces), so the
  decoder state after a prefix is the same for every item below it. The item token sequences form a
  prefix tree; each tree node (a proper prefix, the root being the decoder start token) is decoded
  once, and the log-probability of an item is the sum, along its path, of the next-token
  log-probabilities read off the nodes' output distributions. EOS is included, exactly as in
  `score_candidates`.
* the cross-attention keys/values depend only on the user's encoder output, so they are computed once
  per user and every tree node attends to them with one batched matrix product.

Self-attention over a tree ("tree attention"): a node at depth t attends to its ancestors (depths
0..t, itself included) with T5's causal relative-position bias of (depth(ancestor) - t): exactly the
keys, values and biases it would see as position t of its own item's teacher-forced sequence. The
result is the same number as the teacher-forced forward pass up to float rounding (tested against
`score_candidates`), at a fraction of the cost: one decoder position per tree node instead of
`len(item)` positions per item, and no per-pair key/value projections of the encoder output.

Only the attention arithmetic is re-implemented here; layer norms, feed-forward blocks, projections,
the relative-position buckets, embeddings and the LM head are the model's own modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.models.t5.modeling_t5 import T5Attention

__all__ = ["PrefixTree", "score_items_tree"]


@dataclass(frozen=True)
class PrefixTree:
    """The decoder positions needed to score a set of items, as tensors.

    Node 0 is the root (input: the decoder start token, depth 0). A node at depth t stands for a
    prefix of t item tokens; its decoder input is the last of them.

    Attributes:
        node_token: [M] decoder input token of each node.
        node_depth: [M] depth (= decoder position) of each node.
        ancestors: [M, D] ancestors of each node, root first, the node itself at column depth;
            columns beyond depth repeat the node (masked out by `ancestor_valid`).
        ancestor_valid: [M, D] bool.
        item_nodes: [N, L] for each item, the node whose output predicts its j-th token.
        item_tokens: [N, L] the item's j-th token (EOS included).
        item_valid: [N, L] bool, False on padding.
        edge_node / edge_token: [E] every distinct (node, next token) pair of the items' paths, sorted
            by node: the log-probabilities that are read off the nodes' output distributions.
        item_edges: [N, L] the edge of each item position (0 on padding).
    """

    node_token: torch.Tensor
    node_depth: torch.Tensor
    ancestors: torch.Tensor
    ancestor_valid: torch.Tensor
    item_nodes: torch.Tensor
    item_tokens: torch.Tensor
    item_valid: torch.Tensor
    edge_node: torch.Tensor
    edge_token: torch.Tensor
    item_edges: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return int(self.node_token.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.item_nodes.shape[0])

    @classmethod
    def build(cls, item_ids: torch.Tensor, item_mask: torch.Tensor, decoder_start_token_id: int) -> PrefixTree:
        """The tree over the token rows of `item_token_matrix` ([N, T] ids and mask, EOS included)."""
        ids = item_ids.tolist()
        lengths = item_mask.sum(1).tolist()
        width = int(max(lengths)) if lengths else 0
        index: dict[tuple[int, ...], int] = {(): 0}
        tokens, depth, parent = [int(decoder_start_token_id)], [0], [-1]
        n = len(ids)
        item_nodes = torch.zeros(n, max(width, 1), dtype=torch.long)
        item_tokens = torch.zeros(n, max(width, 1), dtype=torch.long)
        item_valid = torch.zeros(n, max(width, 1), dtype=torch.bool)
        for i, (row, length) in enumerate(zip(ids, lengths)):
            seq = row[: int(length)]
            for j, tok in enumerate(seq):
                prefix = tuple(seq[:j])
                node = index.get(prefix)
                if node is None:  # prefixes are visited root first, so the parent exists
                    node = len(tokens)
                    index[prefix] = node
                    tokens.append(seq[j - 1])
                    depth.append(j)
                    parent.append(index[prefix[:-1]])
                item_nodes[i, j] = node
                item_tokens[i, j] = tok
                item_valid[i, j] = True
        m = len(tokens)
        d = max(width, 1)
        anc = torch.arange(m).unsqueeze(1).repeat(1, d)
        for v in range(m):
            u = v
            while u >= 0:
                anc[v, depth[u]] = u
                u = parent[u]
        depth_t = torch.tensor(depth, dtype=torch.long)
        valid = torch.arange(d).unsqueeze(0) <= depth_t.unsqueeze(1)
        return cls(
            torch.tensor(tokens, dtype=torch.long), depth_t, anc, valid, item_nodes, item_tokens, item_valid,
            *_edges(item_nodes, item_tokens, item_valid),
        )

    def subtree(self, items: torch.Tensor) -> PrefixTree:
        """The tree of only `items` ([C] item indices; repeats allowed): their paths' nodes, renumbered.

        Item rows follow `items` (row c scores items[c]).
        """
        nodes = self.item_nodes[items]
        valid = self.item_valid[items]
        used = torch.unique(nodes[valid])  # sorted; contains 0 (the root) and is closed under parents
        local = torch.full((self.num_nodes,), -1, dtype=torch.long)
        local[used] = torch.arange(used.numel())
        item_nodes = torch.where(valid, local[nodes], torch.zeros_like(nodes))
        item_tokens = self.item_tokens[items]
        return PrefixTree(
            self.node_token[used], self.node_depth[used], local[self.ancestors[used]], self.ancestor_valid[used],
            item_nodes, item_tokens, valid, *_edges(item_nodes, item_tokens, valid),
        )


def _edges(item_nodes: torch.Tensor, item_tokens: torch.Tensor, item_valid: torch.Tensor):
    """(edge_node [E], edge_token [E], item_edges [N, L]): distinct (node, token) pairs, sorted by node."""
    width = int(item_tokens.max()) + 1 if item_tokens.numel() else 1
    keys = item_nodes * width + item_tokens
    uniq, inverse = torch.unique(keys[item_valid], sorted=True, return_inverse=True)
    item_edges = torch.zeros_like(item_nodes)
    item_edges[item_valid] = inverse
    return uniq // width, uniq % width, item_edges


def _stack_trees(trees: list[PrefixTree], device) -> dict[str, torch.Tensor]:
    """Pad per-user trees to a common node count: [B, M] / [B, M, D] / [B, C, L] tensors."""
    m = max(t.num_nodes for t in trees)
    d = max(t.ancestors.shape[1] for t in trees)
    c = max(t.num_items for t in trees)
    ln = max(t.item_nodes.shape[1] for t in trees)
    b = len(trees)
    out = {
        "node_token": torch.zeros(b, m, dtype=torch.long),
        "node_depth": torch.zeros(b, m, dtype=torch.long),
        "ancestors": torch.arange(m).view(1, m, 1).repeat(b, 1, d),
        "ancestor_valid": torch.zeros(b, m, d, dtype=torch.bool),
        "item_nodes": torch.zeros(b, c, ln, dtype=torch.long),
        "item_tokens": torch.zeros(b, c, ln, dtype=torch.long),
        "item_valid": torch.zeros(b, c, ln, dtype=torch.bool),
        # Padding edges point past the last node, so a per-node range search never selects them.
        "edge_node": torch.full((b, max(t.edge_node.numel() for t in trees)), m, dtype=torch.long),
        "edge_token": torch.zeros(b, max(t.edge_node.numel() for t in trees), dtype=torch.long),
        "item_edges": torch.zeros(b, c, ln, dtype=torch.long),
    }
    out["ancestor_valid"][:, :, 0] = True  # padding nodes attend to themselves only
    for i, t in enumerate(trees):
        k, dd = t.num_nodes, t.ancestors.shape[1]
        out["node_token"][i, :k] = t.node_token
        out["node_depth"][i, :k] = t.node_depth
        out["ancestors"][i, :k, :dd] = t.ancestors
        out["ancestor_valid"][i, :k] = False
        out["ancestor_valid"][i, :k, :dd] = t.ancestor_valid
        nc, nl = t.item_nodes.shape
        out["item_nodes"][i, :nc, :nl] = t.item_nodes
        out["item_tokens"][i, :nc, :nl] = t.item_tokens
        out["item_valid"][i, :nc, :nl] = t.item_valid
        out["item_edges"][i, :nc, :nl] = t.item_edges
        out["edge_node"][i, : t.edge_node.numel()] = t.edge_node
        out["edge_token"][i, : t.edge_node.numel()] = t.edge_token
    return {k: v.to(device) for k, v in out.items()}


def _tree_tensors(tree: PrefixTree, device) -> dict[str, torch.Tensor]:
    """One tree shared by every user: tensors with a batch dimension of 1."""
    names = (
        "node_token", "node_depth", "ancestors", "ancestor_valid", "item_nodes", "item_tokens", "item_valid",
        "edge_node", "edge_token", "item_edges",
    )
    return {k: getattr(tree, k).unsqueeze(0).to(device) for k in names}


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [b, M, ...] gathered at index [b, M, D] along dim 1 -> [b, M, D, ...] (b may be 1 for both)."""
    b = index.shape[0]
    batch = torch.arange(b, device=index.device).view(b, 1, 1)
    if x.shape[0] != b:  # the tree is per user but x is still shared (cannot happen) or vice versa
        x = x.expand(b, *x.shape[1:])
    return x[batch, index]


@torch.no_grad()
def _decode_tree(t5, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor, tree: dict[str, torch.Tensor]) -> torch.Tensor:
    """Final decoder hidden states of every tree node: [B, M, d] (LM-head input, scaled as T5 does)."""
    dec = t5.decoder
    cfg = t5.config
    h_heads, dk = cfg.num_heads, cfg.d_kv
    b = encoder_hidden.shape[0]
    token, depth = tree["node_token"], tree["node_depth"]
    anc, anc_valid = tree["ancestors"], tree["ancestor_valid"]
    tb, m, d = anc.shape  # tb = 1 (shared tree) or B

    hidden = dec.embed_tokens(token)  # [tb, M, d_model]
    # Relative-position bias of the first self-attention layer, shared by all layers (as in T5Stack).
    first = dec.block[0].layer[0].SelfAttention
    rel = _gather_rows(depth.unsqueeze(-1), anc).squeeze(-1) - depth.unsqueeze(-1)  # [tb, M, D], <= 0 where valid
    buckets = T5Attention._relative_position_bucket(
        rel, bidirectional=False, num_buckets=first.relative_attention_num_buckets,
        max_distance=first.relative_attention_max_distance,
    )
    bias = first.relative_attention_bias(buckets).permute(0, 1, 3, 2)  # [tb, M, H, D]
    bias = bias.masked_fill(~anc_valid.unsqueeze(2), float("-inf"))
    enc_bias = torch.zeros(encoder_mask.shape, dtype=hidden.dtype, device=hidden.device)
    enc_bias = enc_bias.masked_fill(encoder_mask == 0, torch.finfo(hidden.dtype).min).view(b, 1, 1, -1)

    for block in dec.block:
        # --- self-attention over ancestors
        sa = block.layer[0]
        att = sa.SelfAttention
        x = sa.layer_norm(hidden)
        bb = x.shape[0]
        q = att.q(x).view(bb, m, h_heads, dk)
        k = att.k(x).view(bb, m, h_heads, dk)
        v = att.v(x).view(bb, m, h_heads, dk)
        idx = anc if anc.shape[0] == bb else anc.expand(bb, m, d)
        k_anc, v_anc = _gather_rows(k, idx), _gather_rows(v, idx)  # [bb, M, D, H, dk]
        bias_b = bias if bias.shape[0] == bb else bias.expand(bb, *bias.shape[1:])
        scores = torch.einsum("bmhk,bmdhk->bmhd", q, k_anc) + bias_b  # T5 does not scale q.k
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.einsum("bmhd,bmdhk->bmhk", probs, v_anc).reshape(bb, m, h_heads * dk)
        hidden = hidden + att.o(out)
        # --- cross-attention: keys/values once per user, every node attends with one matmul
        ca = block.layer[1]
        att = ca.EncDecAttention
        x = ca.layer_norm(hidden)
        q = att.q(x).view(x.shape[0], m, h_heads, dk).transpose(1, 2)  # [bb, H, M, dk]
        k = att.k(encoder_hidden).view(b, -1, h_heads, dk).transpose(1, 2)  # [B, H, S, dk]
        v = att.v(encoder_hidden).view(b, -1, h_heads, dk).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) + enc_bias  # broadcasts a shared tree over users
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, m, h_heads * dk)
        hidden = hidden + att.o(out)  # now [B, M, d]
        # --- feed-forward (the model's own module)
        hidden = block.layer[-1](hidden)
    hidden = dec.final_layer_norm(hidden)
    if getattr(cfg, "scale_decoder_outputs", False):
        hidden = hidden * (cfg.d_model**-0.5)
    return hidden


@torch.no_grad()
def _item_logprobs(t5, hidden: torch.Tensor, tree: dict[str, torch.Tensor], rows_per_chunk: int) -> torch.Tensor:
    """Sum over each item's path of log p(token | node): [B, C].

    Every node needs its full logit row for the log-normalizer; the rows are produced and reduced
    `rows_per_chunk` nodes at a time (they stay in cache), and the edges leaving those nodes (a
    contiguous range, edges being sorted by node) read their logits from the same chunk.
    """
    b, m, _ = hidden.shape
    edge_node, edge_token = tree["edge_node"], tree["edge_token"]  # [tb, E]
    edge_lp = torch.zeros(b, edge_node.shape[1], dtype=torch.float32, device=hidden.device)
    starts = torch.arange(0, m + rows_per_chunk, rows_per_chunk, device=hidden.device).clamp(max=m)
    shared_bounds = None
    for i in range(b):
        t = i if edge_node.shape[0] == b else 0
        if t or shared_bounds is None:
            bounds = torch.searchsorted(edge_node[t], starts).tolist()
            if edge_node.shape[0] != b:
                shared_bounds = bounds
        else:
            bounds = shared_bounds
        for k, s in enumerate(range(0, m, rows_per_chunk)):
            logits = t5.lm_head(hidden[i, s : s + rows_per_chunk]).float()
            lse = torch.logsumexp(logits, dim=-1)
            lo, hi = bounds[k], bounds[k + 1]
            rows = edge_node[t, lo:hi] - s
            edge_lp[i, lo:hi] = logits[rows, edge_token[t, lo:hi]] - lse[rows]
    item_edges, valid = tree["item_edges"], tree["item_valid"]
    if item_edges.shape[0] != b:
        item_edges, valid = item_edges.expand(b, *item_edges.shape[1:]), valid.expand(b, *valid.shape[1:])
    c, ln = item_edges.shape[1], item_edges.shape[2]
    picked = edge_lp.gather(1, item_edges.reshape(b, c * ln)).view(b, c, ln)
    return (picked * valid).sum(-1)


@torch.no_grad()
def score_items_tree(
    model,
    encoder_hidden: torch.Tensor,
    encoder_mask: torch.Tensor,
    tree: PrefixTree,
    candidates: torch.Tensor | None = None,
    max_nodes: int = 32768,
    rows_per_chunk: int = 1024,
) -> torch.Tensor:
    """Exact log-likelihoods of items for each user, as `scoring.score_candidates` computes them.

    Args:
        model: a PeaPOD model (its `.t5` decoder and LM head are used).
        encoder_hidden / encoder_mask: [B, S, d] / [B, S] encoder output, one row per user.
        tree: `PrefixTree.build` over the whole catalogue.
        candidates: [B, C] item indices per user; None scores the whole catalogue ([B, N]).
        max_nodes: decoder positions (users x tree nodes) per forward pass, bounds memory.
        rows_per_chunk: LM-head rows (tree nodes) whose logits are materialized at once.
    Returns:
        [B, C] (or [B, N]) float32 log-likelihoods.
    """
    t5 = model.t5
    device = encoder_hidden.device
    b = encoder_hidden.shape[0]
    if b == 0:
        width = tree.num_items if candidates is None else candidates.shape[1]
        return torch.empty(0, width, dtype=torch.float32, device=device)
    if candidates is None:
        shared = _tree_tensors(tree, device)
        per = max(1, max_nodes // tree.num_nodes)
        out = []
        for s in range(0, b, per):
            hid = _decode_tree(t5, encoder_hidden[s : s + per], encoder_mask[s : s + per], shared)
            out.append(_item_logprobs(t5, hid, shared, rows_per_chunk))
        return torch.cat(out, 0)
    candidates = candidates.to("cpu")
    trees = [tree.subtree(candidates[i]) for i in range(b)]
    out, s = [], 0
    while s < b:  # group users so that a pass holds at most max_nodes padded positions
        e, widest = s, 0
        while e < b and (e == s or max(widest, trees[e].num_nodes) * (e - s + 1) <= max_nodes):
            widest = max(widest, trees[e].num_nodes)
            e += 1
        stacked = _stack_trees(trees[s:e], device)
        hid = _decode_tree(t5, encoder_hidden[s:e], encoder_mask[s:e], stacked)
        out.append(_item_logprobs(t5, hid, stacked, rows_per_chunk))
        s = e
    return torch.cat(out, 0)
