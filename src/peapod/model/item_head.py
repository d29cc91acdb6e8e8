"""The item side of the LM head: CF-initialized item token embeddings and a softmax over items only.

With atomic indexing every item is one vocabulary token, and T5 ties the output head to the input
embeddings, so an item token's embedding is both how the item is read and how it is scored.

* `init_item_embeddings` starts those embeddings from the ALS item factors of the training
  interactions, projected to d_model: items bought by the same users start close together, so the
  head ranks plausibly before the backbone has learned anything.
* `restricted_lm_output` computes the teacher-forced loss with the softmax restricted to a token
  subset (the item tokens): an item task's target is always an item, so text tokens only dilute it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput


def project_factors(factors: torch.Tensor, d_model: int, seed: int, std: float = 1.0) -> torch.Tensor:
    """ALS factors [N, c] -> embeddings [N, d_model] with element std `std`.

    For c <= d_model the projection has orthonormal rows, so dot products between items are kept up
    to one common scale; otherwise it is a seeded Gaussian map. Deterministic in `seed`.
    """
    n, c = factors.shape
    gen = torch.Generator().manual_seed(seed)
    gauss = torch.randn(d_model, c, generator=gen, dtype=torch.float64)
    if c <= d_model:
        q, _ = torch.linalg.qr(gauss)  # [d, c], orthonormal columns
        proj = q.T
    else:
        proj = gauss.T / d_model**0.5
    emb = factors.double() @ proj
    scale = emb.std()
    if not torch.isfinite(scale) or scale == 0:
        raise ValueError("ALS item factors are all zero: no training interactions to initialize from")
    return (emb * (std / scale)).float()


@torch.no_grad()
def init_item_embeddings(t5, token_ids: torch.Tensor, item_factors: torch.Tensor, seed: int) -> torch.Tensor:
    """Overwrite the embeddings of the item tokens `token_ids` [N] (item order) with projected
    `item_factors` [N, c], at the scale of the embeddings they replace. Returns the new rows [N, d]."""
    weight = t5.get_input_embeddings().weight
    if token_ids.shape[0] != item_factors.shape[0]:
        raise ValueError(f"{token_ids.shape[0]} item tokens but {item_factors.shape[0]} item factors")
    std = float(weight[token_ids].std())
    rows = project_factors(item_factors, weight.shape[1], seed, std).to(weight.dtype)
    weight[token_ids] = rows
    return rows


def restricted_lm_output(t5, encoder_out: BaseModelOutput, mask: torch.Tensor, labels: torch.Tensor, space: torch.Tensor) -> Seq2SeqLMOutput:
    """Teacher-forced decoder pass with the output softmax over the tokens `space` [V'] only.

    labels: [B, T] token ids, -100 where ignored; every other label must be in `space`.
    Returns a Seq2SeqLMOutput with the loss and, in eval mode, the logits [B, T, V'] (column j is
    token space[j]). In training mode the head runs only at labelled positions (a batch of
    next-5-item rows leaves a third to half of them empty) and `logits` is None.
    """
    decoder_out = t5.decoder(
        input_ids=t5._shift_right(labels),
        encoder_hidden_states=encoder_out.last_hidden_state,
        encoder_attention_mask=mask,
        return_dict=True,
    )
    hidden = decoder_out.last_hidden_state
    if getattr(t5.config, "scale_decoder_outputs", t5.config.tie_word_embeddings):
        hidden = hidden * (t5.config.d_model**-0.5)  # what T5 does before a tied head
    position = torch.full((t5.lm_head.weight.shape[0],), -1, dtype=torch.long, device=labels.device)
    position[space] = torch.arange(space.shape[0], device=labels.device)
    labelled = labels != -100
    mapped = position[labels[labelled]]  # [n] each labelled position's column in the space
    if bool((mapped == -1).any()):
        raise ValueError("a label token is outside the restricted label space")
    head = t5.lm_head.weight[space].T  # [d, V']
    logits = None
    if t5.training:
        scores = hidden[labelled] @ head  # [n, V']
    else:
        logits = hidden @ head
        scores = logits[labelled]
    if scores.shape[0] == 0:  # no labelled position: a zero loss that still reaches the graph
        loss = scores.sum() * 0.0
    else:
        loss = F.cross_entropy(scores.float(), mapped)
    return Seq2SeqLMOutput(loss=loss, logits=logits)
