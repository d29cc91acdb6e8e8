"""Generation over an encoded batch: beam search for item ids and explanation decoding.

`GenerationMixin` is half of `peapod.evaluate.inference.Predictor` (which supplies `model`,
`tokenizer`, `trie`, `n_items`, `device`, `first_step_scores`, `parse_item` and `_encoded`). The
encoder output is handed to `model.t5.generate(encoder_outputs=...)`, so the encoder is not rerun
per beam.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutput

from peapod.evaluate.requests import EXPLANATION_DECODINGS, BeamResult, Encoded, Request
from peapod.evaluate.trie import TrieLogitsProcessor, decode_items


class GenerationMixin:
    """Beam search over item ids and explanation decoding for `Predictor`."""

    def _generate(self, enc: Encoded, **kwargs):
        return self.model.t5.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=enc.hidden),
            attention_mask=enc.mask,
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
        token count (EOS included; one token for a decoder trained on several next items); each output is decoded to text (special tokens skipped) and its
        first whitespace-separated word is parsed as an item id (`parse_item`), as the published
        scripts do; an output naming no catalogue item is -1. Constrained: `TrieLogitsProcessor` allows only catalogue items (minus `exclude`, e.g.
        the history), outputs are mapped back through the trie (a row that could not finish an
        allowed item is -1).

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
        # A decoder that writes several items reads its item off the first step (`first_step_scores`):
        # free generation then ranks first tokens, not pairs of items.
        max_new = 1 if self.first_step_scores and not constrained else trie.max_length
        kwargs = dict(
            num_beams=num_beams, num_return_sequences=n_ret, max_new_tokens=max_new,
            length_penalty=length_penalty, output_scores=True, return_dict_in_generate=True,
        )
        if constrained:
            banned = None
            if exclude is not None:
                banned = torch.zeros(len(enc), self.n_items, dtype=torch.bool)
                for i, items in enumerate(exclude):
                    banned[i, [int(x) for x in items]] = True
                banned = banned.to(self.device)
            start = self.model.t5.config.decoder_start_token_id
            kwargs["logits_processor"] = LogitsProcessorList([TrieLogitsProcessor(trie, start, banned, num_beams)])
        out = self._generate(enc, **kwargs)
        seqs = out.sequences.cpu()
        texts = [t.strip() for t in self.tokenizer.batch_decode(seqs, skip_special_tokens=True)]
        if constrained:
            t5 = self.model.t5.config
            flat = decode_items(trie, seqs, decoder_start_token_id=t5.decoder_start_token_id, pad_token_id=t5.pad_token_id)
        else:
            flat = [self.parse_item(t) for t in texts]
        scores = out.sequences_scores.float().cpu().tolist() if getattr(out, "sequences_scores", None) is not None else [0.0] * len(flat)
        items = [flat[i * n_ret : (i + 1) * n_ret] for i in range(len(enc))]
        return BeamResult(
            items=items,
            scores=[scores[i * n_ret : (i + 1) * n_ret] for i in range(len(enc))],
            texts=[texts[i * n_ret : (i + 1) * n_ret] for i in range(len(enc))],
            invalid=sum(1 for x in flat if x < 0),
            total=len(flat),
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
        seqs = self._generate(enc, num_return_sequences=1, **settings)
        return [t.strip() for t in self.tokenizer.batch_decode(seqs.cpu(), skip_special_tokens=True)]
