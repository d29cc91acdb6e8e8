"""Inference over a trained model, shared by evaluation and serving.

A `Predictor` wraps a `ModelBundle` and answers batches of `Request`s, each one (task, user, items):

* `encode(requests)` writes every request's encoder text in the evaluation form (the bare template for
  pod/peapod, template 0 for p5; see `peapod.inputs.prompt.eval_template`), tokenizes the batch and runs
  the encoder **once**. Every other method accepts either a list of requests or that `Encoded` batch,
  so one encoder pass can feed several decoders.
* users: `Request.user` is a training user's internal index; `None` is a user the model never saw.
  An unseen user is written with the generic user text (`GENERIC_USER`) and, for the peapod variant,
  gets a prompt from CF vectors folded in from its items (`model.fold_in`) and their nearest training
  users (`model.neighbors_of`). Which items: `Request.profile`, defaulting to the history for the
  sequential task and to the item for explanation.
* item scores are exact teacher-forced log-likelihoods (EOS included), computed with the prefix-tree
  scorer of `peapod.infer.prefix_scoring` (same numbers as `scoring.score_candidates`, faster);
  `method="naive"` uses `scoring.py` directly. A multi-item atomic decoder scores at one step: the
  first, or with `decoder_history` j the step after the user's last j items (`Predictor.decoder_items`).
* generation passes the encoder output to `model.t5.generate(encoder_outputs=...)`, so the encoder is
  not rerun per beam.

The item token matrix, the item trie (constrained decoding) and the prefix tree are built on first use
and cached per predictor.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutput

from peapod.config import RunConfig
from peapod.data.indexing import user_text
from peapod.data.retrieval import ExplanationRetrieval
from peapod.infer.prefix_scoring import PrefixTree, score_items_tree
from peapod.infer.requests import (
    EXPLANATION_DECODINGS,
    BeamResult,
    Encoded,
    Request,
    _default_device,
    normalize_task,
    resolve_model_dir,
)
from peapod.infer.scoring import item_token_matrix, score_all_items, score_candidates
from peapod.infer.topk_search import TreeChildren, search_top_k
from peapod.infer.trie import ItemTrie
from peapod.infer.trie_decoding import TrieLogitsProcessor, decode_items
from peapod.inputs.examples import newest_first
from peapod.inputs.prompt import GENERIC_USER, TASK_IDS, encode_inputs, eval_template, source_text
from peapod.metrics.ranking import mask_items
from peapod.model.peapod import ModelBundle

__all__ = [
    "EXPLANATION_DECODINGS",
    "BeamResult",
    "Encoded",
    "Predictor",
    "Request",
    "normalize_task",
    "resolve_model_dir",
]

class Predictor:
    """Scores, beams and explanations for batches of requests over one trained model.

    Args:
        bundle: the model with its tokenizer, item index and id maps (`load_bundle`).
        device: where to run; default CUDA when available, else CPU.
        max_history: most recent history items written into a sequential input (the run's
            `train.max_history`; `peapod.infer.run.open_run` reads it from the run directory).
        max_input_length: encoder token budget; longer inputs are cut and reported in
            `Encoded.truncated` (the default leaves room for 100 top-n candidates).
        decoder_history: j most recent items teacher-forced into the decoder before the scored step
            (sequential: the history's last j, which the encoder then leaves out; top-n: the
            profile's last j); default the model's `decoder_history`. Exact scoring only.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        device: str | torch.device | None = None,
        max_history: int = 20,
        max_input_length: int = 1024,
        decoder_history: int | None = None,
    ):
        self.bundle = bundle
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = bundle.model.to(self.device).eval()
        self.tokenizer = bundle.tokenizer
        self.index = bundle.index
        self.max_history = int(max_history)
        self.max_input_length = int(max_input_length)
        self.template = eval_template(self.model.config.variant)
        config = self.model.config
        self.decoder_history = config.decoder_history if decoder_history is None else int(decoder_history)
        if self.decoder_history < 0:
            raise ValueError(f"decoder_history must be >= 0, got {self.decoder_history}")
        if self.decoder_history and not (self.index.is_atomic and self.decoder_history < config.item_targets):
            raise ValueError(
                f"decoder_history {self.decoder_history} needs atomic items and a decoder trained on more items "
                f"(model.item_targets {config.item_targets} > decoder_history)"
            )
        # Fitted on the training explanations by whoever loads the data (evaluation, serving), for a model
        # whose explanation inputs hold a retrieved sentence (`ModelConfig.explanation_context`).
        self.retrieval: ExplanationRetrieval | None = None
        self._lock = threading.Lock()
        self._item_tokens: tuple[torch.Tensor, torch.Tensor] | None = None
        self._trie: ItemTrie | None = None
        self._tree: PrefixTree | None = None
        self._children: TreeChildren | None = None
        self._user_index: dict[str, int] | None = None
        self._item_index: dict[str, int] | None = None

    def read_training_data(self, ds, run_config: RunConfig) -> None:
        """Take from the training data what the model's inputs need beyond the request: the explanation
        retrieval for `explanation_context: retrieved` (fitted on the run's training explanations)."""
        if self.model.config.explanation_context == "retrieved":
            self.retrieval = ExplanationRetrieval.for_run(ds, run_config)

    # ---- facts about the model ----------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self.bundle.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.bundle.user_ids)

    @property
    def variant(self) -> str:
        return self.model.config.variant

    @property
    def indexing(self) -> str:
        return self.index.strategy

    def user_index(self, raw_id: str) -> int | None:
        """Internal index of a raw (dataset) user id, or None for a user the model never saw."""
        if self._user_index is None:
            self._user_index = {u: i for i, u in enumerate(self.bundle.user_ids)}
        return self._user_index.get(str(raw_id))

    def item_index(self, raw_id: str) -> int | None:
        """Internal index of a raw item id, or None when it is not in the catalogue."""
        if self._item_index is None:
            self._item_index = {u: i for i, u in enumerate(self.bundle.item_ids)}
        return self._item_index.get(str(raw_id))

    def parse_item(self, text: str) -> int:
        """Item index named by the first whitespace-separated word of a generated text, else -1.
        Atomic item tokens decode with no space between them, so there the first word is cut after
        its first token (`<item_3><item_9>` names item 3)."""
        words = text.split()
        first = words[0] if words else ""
        if self.index.is_atomic and first.startswith("<") and ">" in first:
            first = first[: first.index(">") + 1]
        item = self.index.parse(first) if first else None
        return -1 if item is None else item

    # ---- cached item structures ---------------------------------------------------------------
    @property
    def item_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([N, T] decoder token ids of every item, EOS included, padded; [N, T] mask), on CPU."""
        if self._item_tokens is None:
            with self._lock:
                if self._item_tokens is None:
                    self._item_tokens = item_token_matrix(self.tokenizer, self.index.all_item_texts())
        return self._item_tokens

    @property
    def trie(self) -> ItemTrie:
        """Prefix trie of the item token sequences (constrained decoding), on the model's device."""
        if self._trie is None:
            ids, mask = self.item_tokens
            seqs = [row[: int(n)] for row, n in zip(ids.tolist(), mask.sum(1).tolist())]
            t5 = self.model.t5.config
            trie = ItemTrie.build(seqs, vocab_size=t5.vocab_size, eos_token_id=t5.eos_token_id).to(self.device)
            with self._lock:
                self._trie = self._trie or trie
        return self._trie

    @property
    def prefix_tree(self) -> PrefixTree:
        """Prefix tree over all items for exact scoring (CPU tensors)."""
        if self._tree is None:
            ids, mask = self.item_tokens
            tree = PrefixTree.build(ids, mask, self.model.t5.config.decoder_start_token_id)
            with self._lock:
                self._tree = self._tree or tree
        return self._tree

    @property
    def tree_children(self) -> TreeChildren:
        """Child lists of the prefix tree (exact top-k search)."""
        if self._children is None:
            children = TreeChildren.build(self.prefix_tree)
            with self._lock:
                self._children = self._children or children
        return self._children

    def warm_up(self) -> None:
        """Build every cache now (item tokens, trie, prefix tree) instead of on first use."""
        _ = self.item_tokens, self.trie, self.prefix_tree, self.tree_children

    # ---- exact scores -------------------------------------------------------------------------
    @torch.no_grad()
    def score_all_items(
        self,
        batch: Sequence[Request] | Encoded,
        exclude: Sequence[Sequence[int]] | None = None,
        method: str = "tree",
    ) -> torch.Tensor:
        """Exact log-likelihood of every catalogue item for each request: [B, N] float32 on CPU.

        Args:
            exclude: per request, items whose score is set to -inf (e.g. the history).
            method: "tree" (prefix-shared, default) or "naive" (`scoring.score_all_items`, which
                for atomic indexing leaves out the EOS step; "tree" always includes it).
        """
        enc = self._encoded(batch)
        if self.first_step_scores:
            ids, mask = self.item_tokens
            scores = score_all_items(self.model, enc.hidden, enc.mask, ids, mask, atomic=True, decoder_prefix=self._decoder_prefix(enc))
        elif method == "tree":
            scores = score_items_tree(self.model, enc.hidden, enc.mask, self.prefix_tree)
        elif method == "naive":
            ids, mask = self.item_tokens
            scores = score_all_items(self.model, enc.hidden, enc.mask, ids, mask, self.index.is_atomic)
        else:
            raise ValueError(f"unknown scoring method {method!r}; use 'tree' or 'naive'")
        scores = scores.float().cpu()
        if exclude is not None:
            mask_items(scores, exclude)
        return scores

    @torch.no_grad()
    def score_candidates(
        self,
        batch: Sequence[Request] | Encoded,
        candidates: Sequence[Sequence[int]] | None = None,
        method: str = "tree",
    ) -> torch.Tensor:
        """Exact log-likelihood of each request's candidates: [B, C] float32 on CPU.

        Args:
            candidates: per request, the items to score; default each request's own `items` (the
                top-n candidates). Rows may differ in length: shorter rows are padded with -inf.
            method: "tree" (default) or "naive" (`scoring.score_candidates`).
        """
        enc = self._encoded(batch)
        if candidates is None:
            candidates = [r.items for r in enc.requests]
        if len(candidates) != len(enc):
            raise ValueError(f"{len(candidates)} candidate lists for {len(enc)} requests")
        width = max((len(c) for c in candidates), default=0)
        if width == 0:
            return torch.empty(len(enc), 0)
        cand = torch.zeros(len(enc), width, dtype=torch.long)
        pad = torch.zeros(len(enc), width, dtype=torch.bool)
        for i, c in enumerate(candidates):
            if any(not 0 <= int(x) < self.n_items for x in c):
                raise ValueError(f"candidate item out of range (the catalogue has {self.n_items} items)")
            cand[i, : len(c)] = torch.tensor([int(x) for x in c], dtype=torch.long)
            pad[i, len(c) :] = True
        if self.first_step_scores:
            scores = self.score_all_items(enc).gather(1, cand)
        elif method == "tree":
            scores = score_items_tree(self.model, enc.hidden, enc.mask, self.prefix_tree, cand)
        elif method == "naive":
            ids, mask = self.item_tokens
            scores = score_candidates(self.model, enc.hidden, enc.mask, cand.to(self.device), ids, mask)
        else:
            raise ValueError(f"unknown scoring method {method!r}; use 'tree' or 'naive'")
        return scores.float().cpu().masked_fill(pad, float("-inf"))

    @torch.no_grad()
    def top_k(
        self,
        batch: Sequence[Request] | Encoded,
        k: int,
        exclude: Sequence[Sequence[int]] | None = None,
        method: str = "search",
    ) -> tuple[list[list[int]], list[list[float]]]:
        """The k catalogue items with the highest exact log-likelihood, per request (best first).

        Excluded items are never returned, so a list is shorter than k only when fewer than k items
        remain. method "search" (default): best-first search over the prefix tree
        (`topk_search.search_top_k`), exact and far cheaper than scoring everything; "scores": sort
        `score_all_items` (ties towards the lower item index). Both give the same lists up to float
        rounding of near-equal scores.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        enc = self._encoded(batch)
        if method == "scores" or self.first_step_scores:
            return _top_k_lists(self.score_all_items(enc, exclude=exclude), k)
        if method != "search":
            raise ValueError(f"unknown top-k method {method!r}; use 'search' or 'scores'")
        if exclude is not None and len(exclude) != len(enc):
            raise ValueError(f"{len(exclude)} exclusion lists for {len(enc)} requests")
        banned = None if exclude is None else [{int(x) for x in e} for e in exclude]
        items, scores, _ = search_top_k(
            self.model, enc.hidden, enc.mask, self.prefix_tree, self.tree_children, min(k, self.n_items), banned
        )
        return items, scores

    def rank_candidates(
        self,
        batch: Sequence[Request] | Encoded,
        candidates: Sequence[Sequence[int]] | None = None,
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Each request's candidates sorted by exact log-likelihood (best first), with the scores."""
        enc = self._encoded(batch)
        if candidates is None:
            candidates = [r.items for r in enc.requests]
        scores = self.score_candidates(enc, candidates)
        items, values = [], []
        for row, cands in zip(scores, candidates):
            order = _stable_desc(row[: len(cands)])
            items.append([int(cands[j]) for j in order])
            values.append([float(row[j]) for j in order])
        return items, values

    # ---- request inputs: what a request's encoder reads, its decoder prefix, whose prompt ----------

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
            if self.model.config.history_order == "newest-first" and recent:
                return tuple(int(i) for i in newest_first(np.asarray([recent]))[0])
            return recent
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

    # ---- generation: beam search over item ids, explanation decoding -------------------------------

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
        arguments override its settings. Atomic item tokens are never generated.
        """
        if decoding not in EXPLANATION_DECODINGS:
            raise ValueError(f"unknown explanation decoding {decoding!r}; choose {', '.join(EXPLANATION_DECODINGS)}")
        enc = self._encoded(batch)
        settings = dict(EXPLANATION_DECODINGS[decoding])
        for key, value in (("num_beams", num_beams), ("min_length", min_length), ("max_length", max_length)):
            if value is not None:
                settings[key] = int(value)
        if self.index.is_atomic:
            # An explanation is text (the dense objective does not even train the item tokens' logits there).
            settings["suppress_tokens"] = self.item_tokens[0][:, 0].tolist()
        with self.model.copying(enc.hidden, enc.copy_source):
            seqs = self._generate(enc.hidden, enc.mask, num_return_sequences=1, **settings)
        return [t.strip() for t in self.tokenizer.batch_decode(seqs.cpu(), skip_special_tokens=True)]


def _stable_desc(row: torch.Tensor) -> list[int]:
    """Indices sorting `row` descending, ties by ascending index."""
    return torch.sort(row, descending=True, stable=True).indices.tolist()


def _top_k_lists(scores: torch.Tensor, k: int) -> tuple[list[list[int]], list[list[float]]]:
    items, values = [], []
    for row in scores:
        order = torch.sort(row, descending=True, stable=True).indices[:k]
        keep = [int(j) for j in order if row[j] != float("-inf")]
        items.append(keep)
        values.append([float(row[j]) for j in keep])
    return items, values

