"""Exact item scoring with one encoder pass per user.

An item's score is the teacher-forced log-likelihood of its id tokens (EOS included) given the
encoder output: log p(item | input) = sum_t log p(y_t | y_<t, input). The encoder runs once per
user; its output is shared by every candidate via an expanded (not copied) view, and candidates are
scored in chunks so memory stays bounded. With atomic indexing an item is one token, so one decoder
step and a softmax score the whole catalogue.
"""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutput


def item_token_matrix(tokenizer, item_texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder token ids of every item: ([N, T] ids padded with pad id, [N, T] mask). EOS included."""
    enc = tokenizer(item_texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def score_candidates(
    model,
    encoder_hidden: torch.Tensor,
    encoder_mask: torch.Tensor,
    candidates: torch.Tensor,
    item_ids: torch.Tensor,
    item_mask: torch.Tensor,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Log-likelihood of candidate items for each user.

    Args:
        model: a PeaPOD model (its `.t5` decoder and head are used).
        encoder_hidden: [B, S, d] encoder output, one row per user.
        encoder_mask: [B, S] encoder attention mask.
        candidates: [B, C] internal item indices to score for each user.
        item_ids / item_mask: [N, T] token ids of every item (from `item_token_matrix`).
        chunk_size: (user, candidate) pairs decoded per forward pass.
    Returns:
        [B, C] float32 log-likelihoods.
    """
    t5 = model.t5
    device = encoder_hidden.device
    b, c = candidates.shape
    flat_users = torch.arange(b, device=device).repeat_interleave(c)
    flat_items = candidates.reshape(-1)
    out = torch.empty(b * c, dtype=torch.float32, device=device)
    start_id = t5.config.decoder_start_token_id
    for s in range(0, b * c, chunk_size):
        users = flat_users[s : s + chunk_size]
        items = flat_items[s : s + chunk_size]
        # Index on the item matrix's own device: a CPU matrix cannot be indexed with CUDA indices.
        rows = items.to(item_ids.device)
        labels = item_ids[rows].to(device)  # [n, T]
        mask = item_mask[rows].to(device)
        # Trim trailing all-pad columns of this chunk.
        width = int(mask.sum(1).max())
        labels, mask = labels[:, :width], mask[:, :width]
        dec_in = torch.cat([labels.new_full((labels.shape[0], 1), start_id), labels[:, :-1]], dim=1)
        hidden = encoder_hidden[users]
        enc_mask = encoder_mask[users]
        logits = t5(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            attention_mask=enc_mask,
            decoder_input_ids=dec_in,
            decoder_attention_mask=mask,
            use_cache=False,
            return_dict=True,
        ).logits.float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        out[s : s + chunk_size] = (logp * mask).sum(1)
    return out.view(b, c)


@torch.no_grad()
def score_all_items(
    model,
    encoder_hidden: torch.Tensor,
    encoder_mask: torch.Tensor,
    item_ids: torch.Tensor,
    item_mask: torch.Tensor,
    atomic: bool,
    chunk_size: int = 4096,
    decoder_prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Full-catalogue log-likelihoods [B, N].

    For atomic indexing an item is one token: one decoder step's log-softmax scores the whole
    catalogue in one pass (the EOS step after the item token is left out). The step is the first, or
    with `decoder_prefix` = (decoder_input_ids [B, T], read_at [B]) the row's step `read_at` of a
    teacher-forced decoder input (items written before the one scored).
    """
    b = encoder_hidden.shape[0]
    n = item_ids.shape[0]
    if atomic:
        t5 = model.t5
        device = encoder_hidden.device
        if decoder_prefix is None:
            decoder_ids = torch.full((b, 1), t5.config.decoder_start_token_id, dtype=torch.long, device=device)
            read_at = torch.zeros(b, dtype=torch.long, device=device)
        else:
            decoder_ids, read_at = (t.to(device) for t in decoder_prefix)
        logits = t5(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden),
            attention_mask=encoder_mask,
            decoder_input_ids=decoder_ids,
            use_cache=False,
            return_dict=True,
        ).logits[torch.arange(b, device=device), read_at].float()
        first = item_ids[:, 0].to(encoder_hidden.device)  # each item's single token
        return torch.log_softmax(logits, dim=-1)[:, first]
    candidates = torch.arange(n, device=encoder_hidden.device).expand(b, n)
    return score_candidates(model, encoder_hidden, encoder_mask, candidates, item_ids, item_mask, chunk_size)
