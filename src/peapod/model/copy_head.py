"""Copying from an explanation's retrieved sentence: a pointer-generator mixture over T5's output.

A model whose explanation inputs hold a retrieved training sentence (`ModelConfig.explanation_context:
retrieved`) writes each token either from its vocabulary or by pointing at a token of that sentence
(See et al., "Get To The Point", ACL 2017):

    p(w) = g * softmax(logits)(w) + (1 - g) * sum over context positions s holding token w of a_s

where a is a single-head attention of the decoder state over the encoder states at the context's
positions, and g = sigmoid(gate(decoder state)). A small decoder trained from scratch for minutes does not
learn to copy through its cross-attention; a pointer gives it copying from the first step, so it can spend
its steps on what to keep and what to change. Rows without context positions (item tasks, an empty
retrieval) get g = 1: the plain softmax.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NO_SOURCE = -1  # a position that cannot be copied (prompts, ids, EOS, padding, item-task rows)


def copy_sources(input_ids: torch.Tensor, attention_mask: torch.Tensor, whole_word_ids: torch.Tensor, task_ids: torch.Tensor,
                 explanation_task: int, special_ids: tuple[int, ...], prompt_length: int) -> torch.Tensor:
    """[B, prompt_length + T] token id each encoder position offers for copying, or NO_SOURCE.

    Copyable: an explanation row's words outside the user/item id spans (whole-word id 0) that are not
    special tokens, i.e. its context sentence. The soft prompts in front copy nothing.
    """
    allowed = attention_mask.bool() & (whole_word_ids == 0) & (task_ids == explanation_task)[:, None]
    for t in special_ids:
        allowed &= input_ids != t
    source = torch.where(allowed, input_ids, torch.full_like(input_ids, NO_SOURCE))
    return torch.cat([source.new_full((source.shape[0], prompt_length), NO_SOURCE), source], dim=1)


class CopyHead(nn.Module):
    """The pointer and its gate. `forward` turns vocabulary logits into log-probabilities of the mixture."""

    def __init__(self, d_model: int):
        super().__init__()
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.gate = nn.Linear(d_model, 1)

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor, memory: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [B, T, V] of the mixture.

        Args:
            hidden: [B, T, d] decoder states (as the LM head reads them).
            logits: [B, T, V] the LM head's vocabulary logits.
            memory: [B, S, d] encoder states.
            source: [B, S] token id offered at each encoder position, or NO_SOURCE.
        """
        allowed = source != NO_SOURCE  # [B, S]
        has = allowed.any(1)[:, None, None]  # [B, 1, 1]
        scores = self.query(hidden) @ memory.transpose(1, 2) / math.sqrt(memory.shape[-1])  # [B, T, S]
        attention = torch.softmax(scores.float().masked_fill(~allowed[:, None, :], -1e9), dim=-1) * has
        index = source.clamp_min(0)[:, None, :].expand(-1, hidden.shape[1], -1)
        copied = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device).scatter_add_(2, index, attention)
        g = torch.where(has, torch.sigmoid(self.gate(hidden).float()), torch.ones((), device=hidden.device))
        p = g * torch.softmax(logits.float(), dim=-1) + (1.0 - g) * copied
        return p.clamp_min(1e-12).log()
