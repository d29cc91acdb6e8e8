"""Generation over an encoded batch: beam search for item ids and explanation decoding.

`GenerationMixin` is half of `peapod.infer.predictor.Predictor` (which supplies `model`,
`tokenizer`, `trie`, `n_items`, `device`, `first_step_scores`, `decoder_items`, `parse_item` and `_encoded`). The
encoder output is handed to `model.t5.generate(encoder_outputs=...)`, so the encoder is not rerun
per beam.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutput

from peapod.infer.requests import EXPLANATION_DECODINGS, BeamResult, Encoded, Request
from peapod.infer.trie_decoding import TrieLogitsProcessor, decode_items


class GenerationMixin:
    """Beam search over item ids and explanation decoding for `Predictor`."""

    def _generate(self, hidden: torch.Tensor, mask: torch.Tensor, **kwargs):
        """`t5.generate` from encoder states [B, S, d] and their mask [B, S] (the encoder is not rerun)."""
        return self.model.t5.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            attention_mask=mask,
            do_sample=False,
            **kwargs,
        )

    @torch.no_grad()
    def beam_items(
        self,
        batch: Sequence[Request] | Encoded,
        num_beams: int = 20,
        num_return_sequences: int | None = None,
        *,
        constrained: bool = False,
        exclude: Sequence[Sequence[int]] | None = None,
        length_penalty: float = 1.0,
    ) -> BeamResult:
        """Ranked items by beam search.

        Unconstrained (the legacy protocol): free generation of `max_new_tokens` = the longest item's
        token count (EOS included; one token for a decoder trained on several next items); each output
        is decoded to text (special tokens skipped) and its first whitespace-separated word is parsed as
        an item id (`parse_item`), as the published scripts do; an output naming no catalogue item is
        -1. Constrained: `TrieLogitsProcessor` allows only catalogue items (minus `exclude`, e.g. the
        history), outputs are mapped back through the trie (a row that could not finish an allowed
        item is -1). A predictor with `decoder_history` hands each request's `decoder_items` to the
        decoder first (rows grouped by their count) and searches from the step after them.

        Args:
            num_beams: beam width; num_return_sequences: list length (default num_beams).
            exclude: per request, items constrained decoding must not produce (constrained only).
            length_penalty: transformers' beam score normalisation (1.0 is its default).
        """
        enc = self._encoded(batch)
        n_ret = num_beams if num_return_sequences is None else int(num_return_sequences)
        if not 1 <= n_ret <= num_beams:
            raise ValueError(f"num_return_sequences must be in 1..num_beams ({num_beams}), got {n_ret}")
        if exclude is not None and not constrained:
            raise ValueError("`exclude` needs constrained decoding")
        trie = self.trie
        # A decoder that writes several items reads its item off one step (`first_step_scores`): free
        # generation then ranks that step's tokens, not pairs of items.
        max_new = 1 if self.first_step_scores and not constrained else trie.max_length
        kwargs = dict(
            num_beams=num_beams, num_return_sequences=n_ret, max_new_tokens=max_new,
            length_penalty=length_penalty, output_scores=True, return_dict_in_generate=True,
        )
        banned = None
        if exclude is not None:
            banned = torch.zeros(len(enc), self.n_items, dtype=torch.bool)
            for i, items in enumerate(exclude):
                banned[i, [int(x) for x in items]] = True
        t5 = self.model.t5.config
        prefix = self._decoder_prefix(enc)
        read_at = torch.zeros(len(enc), dtype=torch.long) if prefix is None else prefix[1]
        items: list[list[int]] = [[] for _ in range(len(enc))]
        scores: list[list[float]] = [[] for _ in range(len(enc))]
        texts: list[list[str]] = [[] for _ in range(len(enc))]
        for length in read_at.unique().tolist():
            rows = (read_at == length).nonzero().flatten()
            group = dict(kwargs)
            if length:
                group["decoder_input_ids"] = prefix[0][rows, : 1 + length].to(self.device)
            if constrained:
                processor = TrieLogitsProcessor(
                    trie, t5.decoder_start_token_id, None if banned is None else banned[rows].to(self.device), num_beams, prefix_length=length
                )
                group["logits_processor"] = LogitsProcessorList([processor])
            out = self._generate(enc.hidden[rows.to(enc.hidden.device)], enc.mask[rows.to(enc.mask.device)], **group)
            seqs = out.sequences.cpu()
            seqs = torch.cat([seqs[:, :1], seqs[:, 1 + length :]], 1)  # the start token, then what was generated
            decoded = [t.strip() for t in self.tokenizer.batch_decode(seqs, skip_special_tokens=True)]
            if constrained:
                flat = decode_items(trie, seqs, decoder_start_token_id=t5.decoder_start_token_id, pad_token_id=t5.pad_token_id)
            else:
                flat = [self.parse_item(t) for t in decoded]
            beam_scores = getattr(out, "sequences_scores", None)
            flat_scores = beam_scores.float().cpu().tolist() if beam_scores is not None else [0.0] * len(flat)
            for k, row in enumerate(rows.tolist()):
                items[row] = flat[k * n_ret : (k + 1) * n_ret]
                scores[row] = flat_scores[k * n_ret : (k + 1) * n_ret]
                texts[row] = decoded[k * n_ret : (k + 1) * n_ret]
        return BeamResult(
            items=items, scores=scores, texts=texts,
            invalid=sum(1 for row in items for x in row if x < 0), total=sum(len(row) for row in items),
        )

    @torch.no_grad()
    def explain(
        self,
        batch: Sequence[Request] | Encoded,
        decoding: str = "greedy",
        *,
        num_beams: int | None = None,
        min_length: int | None = None,
        max_length: int | None = None,
    ) -> list[str]:
        """Generated explanations (special tokens skipped, whitespace-stripped), one per request.

        `decoding` is a key of `EXPLANATION_DECODINGS` (greedy | beam | legacy | serve); the keyword
        arguments override its settings.
        """
        if decoding not in EXPLANATION_DECODINGS:
            raise ValueError(f"unknown explanation decoding {decoding!r}; choose {', '.join(EXPLANATION_DECODINGS)}")
        enc = self._encoded(batch)
        settings = dict(EXPLANATION_DECODINGS[decoding])
        for key, value in (("num_beams", num_beams), ("min_length", min_length), ("max_length", max_length)):
            if value is not None:
                settings[key] = int(value)
        with self.model.copying(enc.hidden, enc.copy_source):
            seqs = self._generate(enc.hidden, enc.mask, num_return_sequences=1, **settings)
        return [t.strip() for t in self.tokenizer.batch_decode(seqs.cpu(), skip_special_tokens=True)]
