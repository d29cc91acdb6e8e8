"""Request inputs for `peapod.infer.predictor.Predictor`: what a request's encoder reads, which
items its decoder is handed before the scored step, and whose prompt it gets.

`RequestInputsMixin` is that half of `Predictor` (which supplies `model`, `tokenizer`, `index`,
`device`, `max_history`, `max_input_length`, `template`, `decoder_history`, `item_tokens`,
`n_users` and `n_items`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from peapod.data.indexing import user_text
from peapod.infer.requests import Encoded, Request
from peapod.model.text import GENERIC_USER, TASK_IDS, encode_inputs, source_text


class RequestInputsMixin:
    """Encoder inputs, decoder prefixes and prompt owners of `Request` batches."""

    # ---- encoder inputs -----------------------------------------------------------------------
    def _check(self, r: Request) -> None:
        if r.user is not None and not 0 <= r.user < self.n_users:
            raise ValueError(f"user index {r.user} out of range (the model has {self.n_users} users)")
        for i in r.items + (r.profile or ()):
            if not 0 <= i < self.n_items:
                raise ValueError(f"item index {i} out of range (the catalogue has {self.n_items} items)")

    def decoder_items(self, request: Request) -> tuple[int, ...]:
        """The items teacher-forced into the decoder before the scored step, oldest first: with
        `decoder_history` j, a sequential request's last j history items (at least one stays in the
        encoder) and a top-n request's last j profile items; none for explanations, nor for top-n
        when the model reads candidates (it was trained on one target item there, `topn_rows`)."""
        j = self.decoder_history
        if j == 0 or request.task == "explanation" or (request.task == "topn" and self.model.config.topn_input != "user"):
            return ()
        if request.task == "sequential":
            j = min(j, len(request.items) - 1)
            return request.items[len(request.items) - j :] if j > 0 else ()
        if request.profile is None:
            raise ValueError(
                f"this model reads the user's last {j} items in its top-n decoder (decoder_history); "
                "pass the top-n request's `profile` (the user's items, oldest first)"
            )
        return request.profile[-j:] if request.profile else ()

    def input_items(self, request: Request) -> tuple[int, ...]:
        """The items written into the request's input (sequential: the last `max_history` of those
        not in the decoder (`decoder_items`), newest first under `ModelConfig.history_order`
        "newest-first"; top-n: none when the model reads no candidates, `ModelConfig.topn_input` "user")."""
        if request.task == "sequential":
            items = request.items[: len(request.items) - len(self.decoder_items(request))]
            recent = items[-self.max_history :] if self.max_history > 0 else ()
            return recent[::-1] if self.model.config.history_order == "newest-first" else recent
        if request.task == "topn" and self.model.config.topn_input == "user":
            return ()
        return request.items

    @property
    def first_step_scores(self) -> bool:
        """Item scores read one decoder step: atomic items, and a decoder trained to write several
        items (`item_targets` > 1), whose next token after an item is an item, not EOS. The step is
        the first, or the one after the `decoder_items`."""
        return self.index.is_atomic and self.model.config.item_targets > 1

    def explanation_context(self, request: Request) -> str | None:
        """The retrieved sentence an explanation request's input holds (`ModelConfig.explanation_context`)."""
        if request.task != "explanation" or self.model.config.explanation_context != "retrieved":
            return None
        if self.retrieval is None:
            raise ValueError(
                "this model's explanation inputs hold a retrieved training sentence: load it with its dataset "
                "(peapod.evaluate.tasks.load_setup, Recommender.load), or set Predictor.retrieval"
            )
        return self.retrieval.explain(request.user, request.items[0])[0]

    def source_text(self, request: Request) -> str:
        """The encoder text of a request, in the evaluation form."""
        who = user_text(request.user) if request.user is not None else GENERIC_USER
        items = [self.index.item_text(i) for i in self.input_items(request)]
        return source_text(request.task, self.template, who, items, self.explanation_context(request))

    def _who(self, requests: list[Request]) -> dict:
        """Prompt owners for `model.encode`: CF vectors and neighbours of every row."""
        model = self.model
        if not model.config.has_user_prompt:
            return {}
        known = [i for i, r in enumerate(requests) if r.user is not None]
        unseen = [i for i, r in enumerate(requests) if r.user is None]
        if not unseen:
            return {"users": torch.tensor([r.user for r in requests], dtype=torch.long, device=self.device)}
        profiles = []
        for i in unseen:
            r = requests[i]
            profile = r.profile
            if profile is None:
                if r.task == "topn":
                    raise ValueError("a top-n request for an unseen user needs `profile` (the items the user interacted with)")
                profile = r.items
            profiles.append(list(profile))
        cf_dim = model.cf_users.shape[1]
        cf = torch.zeros(len(requests), cf_dim, dtype=model.cf_users.dtype, device=self.device)
        neighbors = torch.zeros(len(requests), model.config.n_neighbors, dtype=torch.long, device=self.device)
        folded = model.fold_in(profiles).to(self.device)
        cf[unseen] = folded
        neighbors[unseen] = model.neighbors_of(folded).to(self.device)
        if known:
            users = torch.tensor([requests[i].user for i in known], dtype=torch.long, device=self.device)
            cf[known] = model.cf_users[users].detach()
            neighbors[known] = model.neighbor_index[users]
        return {"cf_query": cf, "neighbors": neighbors}

    @torch.no_grad()
    def encode(self, requests: Sequence[Request]) -> Encoded:
        """Run the encoder once over a batch of requests (tasks may be mixed)."""
        requests = list(requests)
        if not requests:
            raise ValueError("empty request batch")
        for r in requests:
            self._check(r)
        texts = [self.source_text(r) for r in requests]
        words = self.model.config.max_whole_words
        # One token of slack tells whether a text was cut; re-encode at the real budget only then.
        enc = encode_inputs(self.tokenizer, texts, self.max_input_length + 1, words)
        truncated = (enc.attention_mask.sum(1) > self.max_input_length).tolist()
        if any(truncated):
            enc = encode_inputs(self.tokenizer, texts, self.max_input_length, words)
        task_ids = torch.tensor([TASK_IDS[r.task] for r in requests], dtype=torch.long, device=self.device)
        inputs = (task_ids, enc.input_ids.to(self.device), enc.attention_mask.to(self.device), enc.whole_word_ids.to(self.device))
        out, mask = self.model.encode(*inputs, **self._who(requests))
        return Encoded(requests, out.last_hidden_state, mask, [bool(t) for t in truncated], self.model.copy_sources(*inputs))

    def _encoded(self, batch: Sequence[Request] | Encoded) -> Encoded:
        return batch if isinstance(batch, Encoded) else self.encode(batch)

    def _decoder_prefix(self, enc: Encoded) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(decoder_input_ids [B, 1 + j]: the start token, then each request's `decoder_items` as item
        tokens, right-padded; read_at [B]: the step that scores, the number of items written), or
        None when no request has any. The decoder is causal, so padding after a row's step is unread."""
        rows = [self.decoder_items(r) for r in enc.requests]
        width = max((len(r) for r in rows), default=0)
        if width == 0:
            return None
        first = self.item_tokens[0][:, 0]
        t5 = self.model.t5.config
        ids = torch.full((len(rows), 1 + width), t5.pad_token_id, dtype=torch.long)
        ids[:, 0] = t5.decoder_start_token_id
        for i, r in enumerate(rows):
            if r:
                ids[i, 1 : 1 + len(r)] = first[torch.tensor(r, dtype=torch.long)]
        return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)
