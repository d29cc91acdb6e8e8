"""How a prompt is written: task templates filled with `user_…`/`item_…` texts, and batch encoding.

Inputs are written as in P5/POD (`user_12`, `item_345`). Whole-word ids mark the sub-tokens of each
`user_…`/`item_…` span with one index (1, 2, … in order of appearance; 0 elsewhere), so the model can
read `item_1234` split into several sub-tokens as one id.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import torch

from peapod.data.indexing import ItemIndex, user_text

TASKS = ("explanation", "sequential", "topn")
TASK_IDS = {t: i for i, t in enumerate(TASKS)}
GENERIC_INDEX = -1  # the generic user in the text form: user_text(-1) is "user_0", no user number
GENERIC_USER = user_text(GENERIC_INDEX)  # user-id dropout and cold-start users

# Our own wording. Slot {user} is `user_n`, {history}/{candidates} are space-separated item texts,
# {item} one item text. The last template of each task is the bare form used for validation and test.
TEMPLATES: dict[str, list[str]] = {
    "sequential": [
        "Here is what {user} bought, in order: {history}. Which item will {user} buy next?",
        "{user} has purchased {history}. Predict the next purchase.",
        "Purchase history of {user}: {history}. Recommend the next item.",
        "Given the items {history} bought by {user}, what comes next?",
        "{user} {history}",
    ],
    "topn": [
        "Which of these items should we recommend to {user}? {candidates}",
        "Pick the best item for {user} from the candidates: {candidates}",
        "Candidates for {user}: {candidates}. Choose the one to recommend.",
        "{user} {candidates}",
    ],
    "explanation": [
        "Write what {user} would say about {item}.",
        "Explain why {user} liked {item}.",
        "Generate a review sentence of {user} about {item}.",
        "{user} {item}",
    ],
}

_ID_SPAN = re.compile(r"<?(?:user|item)_\d+>?")


def fill_template(task: str, template: int | None, **slots: str) -> str:
    """Fill a task template. `template=None` picks the bare evaluation form."""
    options = TEMPLATES[task]
    return options[-1 if template is None else template].format(**slots)


def random_template(task: str, rng: random.Random) -> int:
    return rng.randrange(len(TEMPLATES[task]))


@dataclass
class EncodedBatch:
    """Token ids of a batch of encoder inputs.

    input_ids: [B, T] token ids (padded with pad id).
    attention_mask: [B, T] 1 for real tokens.
    whole_word_ids: [B, T] index of the `user_…`/`item_…` span a token belongs to (1, 2, …), 0 elsewhere.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    whole_word_ids: torch.Tensor


def whole_word_ids_for(text: str, offsets: list[tuple[int, int]], max_index: int) -> list[int]:
    """Per token, the 1-based index of the id span its characters fall in, else 0."""
    spans = [m.span() for m in _ID_SPAN.finditer(text)]
    out, j = [], 0
    for start, end in offsets:
        if end <= start:  # special tokens
            out.append(0)
            continue
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        # Overlap, not containment: a Metaspace token's offsets include the space before the id.
        inside = j < len(spans) and spans[j][0] < end
        out.append(min(j + 1, max_index) if inside else 0)
    return out


def encode_inputs(tokenizer, texts: list[str], max_length: int, max_words: int) -> EncodedBatch:
    """Tokenize encoder inputs (truncating to `max_length`) and compute whole-word ids."""
    enc = tokenizer(
        texts, max_length=max_length, truncation=True, padding=True, return_offsets_mapping=True, return_tensors="pt"
    )
    words = [
        whole_word_ids_for(t, [tuple(o) for o in offs.tolist()], max_words - 1)
        for t, offs in zip(texts, enc["offset_mapping"])
    ]
    return EncodedBatch(enc["input_ids"], enc["attention_mask"], torch.tensor(words, dtype=torch.long))


def encode_targets(tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    """Decoder labels [B, T] with padding set to -100 (ignored by the loss)."""
    enc = tokenizer(texts, max_length=max_length, truncation=True, padding=True, return_tensors="pt")
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    return labels


def eval_template(variant: str) -> int | None:
    """Template for validation/test inputs: the bare form, except for P5, whose only task signal is the
    discrete prompt (it gets the first template of each task)."""
    return 0 if variant == "p5" else None


def source_text(task: str, template: int | None, user: str, items: list[str], context: str | None = None) -> str:
    """The encoder text of one example.

    `items` is the history (sequential), the candidates (topn; or the history or nothing when the model
    reads no candidates, see `ModelConfig.topn_input`) or the one item (explanation). `context`: an
    explanation's retrieved sentence, written after the template (`ModelConfig.explanation_context`).
    """
    if task == "sequential":
        return fill_template(task, template, user=user, history=" ".join(items))
    if task == "topn":
        if not items:  # candidate-free top-n (model.topn_input "user"): the user alone
            return user
        return fill_template(task, template, user=user, candidates=" ".join(items))
    if task == "explanation":
        text = fill_template(task, template, user=user, item=items[0])
        return f"{text} {context}" if context else text
    raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")


# ---- the same prompts as token ids -----------------------------------------------------------------
# Encoder inputs and decoder labels as token ids, assembled from per-user and per-item token tables.
# 
# Every user text (`user_12`) and item text (`<item_345>` or `item_345`) is tokenized once; an example
# is then a row of internal indices (user, input items, target items), and a whole epoch of rows becomes
# padded id matrices with a few numpy operations. The result equals tokenizing the bare evaluation
# text `source_text(task, None, user, items)` with `encode_inputs` (tested token for token), so a model
# trained on these ids is evaluated and served by the ordinary text path.


def _padded(rows: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(1, max((len(r) for r in rows), default=1))
    out = np.full((len(rows), width), pad, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, np.array([len(r) for r in rows], dtype=np.int64)


def _compact(tokens: np.ndarray, valid: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Move each row's valid entries to the front, in order (a stable sort on the padding flag)."""
    order = np.argsort(~valid, axis=1, kind="stable")
    return tuple(np.take_along_axis(a, order, axis=1) for a in (tokens, valid, *others))


@dataclass(frozen=True)
class TokenTables:
    """Token ids of every user and item text, without EOS.

    user_tokens: [n_users + 1, Lu] padded rows; row n_users is the generic user (`GENERIC_USER`).
    item_tokens: [n_items, Li] padded rows.
    item_space: sorted distinct token ids that occur in item texts (the item head's tokens).
    """

    user_tokens: np.ndarray
    user_lengths: np.ndarray
    item_tokens: np.ndarray
    item_lengths: np.ndarray
    item_space: np.ndarray
    eos_id: int
    pad_id: int

    @property
    def generic_user(self) -> int:
        return self.user_tokens.shape[0] - 1

    @classmethod
    def build(cls, tokenizer, index: ItemIndex, n_users: int) -> TokenTables:
        users = [user_text(u) for u in range(n_users)] + [GENERIC_USER]
        user_ids = tokenizer(users, add_special_tokens=False)["input_ids"]
        item_ids = tokenizer(index.all_item_texts(), add_special_tokens=False)["input_ids"]
        user_tokens, user_lengths = _padded(user_ids, tokenizer.pad_token_id)
        item_tokens, item_lengths = _padded(item_ids, tokenizer.pad_token_id)
        space = np.unique(np.concatenate([np.asarray(r, dtype=np.int64) for r in item_ids]))
        return cls(user_tokens, user_lengths, item_tokens, item_lengths, space, tokenizer.eos_token_id, tokenizer.pad_token_id)

    def inputs(
        self, text_users: np.ndarray, items: np.ndarray, max_length: int, max_words: int, context: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encoder rows `user item item ... [context] </s>`.

        Args:
            text_users: [N] rows of the user table written in the input (generic_user for dropout).
            items: [N, H] internal item indices, left-aligned, -1 padded (H may be 0).
            max_length: longer rows keep their first max_length - 1 tokens and EOS (as `encode_inputs`).
            max_words: whole-word ids are capped at max_words - 1.
            context: ([N, C] token ids, [N] lengths) written after the items (an explanation's retrieved
                sentence, `context_tokens`); whole-word id 0, as any word outside an id span.
        Returns:
            input_ids, attention_mask, whole_word_ids: [N, T] int64, T the longest row.
        """
        n, h = items.shape
        u_tok = self.user_tokens[text_users]
        u_valid = np.arange(u_tok.shape[1])[None, :] < self.user_lengths[text_users][:, None]
        present = items >= 0
        safe = np.where(present, items, 0)
        li = self.item_tokens.shape[1]
        i_tok = self.item_tokens[safe].reshape(n, h * li)
        i_valid = ((np.arange(li)[None, None, :] < self.item_lengths[safe][..., None]) & present[..., None]).reshape(n, h * li)
        # Whole words: the user span is 1, the j-th item j + 2 (items are left-aligned).
        i_word = np.broadcast_to(np.minimum(np.arange(h) + 2, max_words - 1)[None, :, None], (n, h, li)).reshape(n, h * li)
        c_tok, c_valid = np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=bool)
        if context is not None:
            c_tok, c_len = context
            c_valid = np.arange(c_tok.shape[1])[None, :] < c_len[:, None]
        tokens = np.concatenate([u_tok, i_tok, c_tok, np.full((n, 1), self.eos_id)], axis=1)
        valid = np.concatenate([u_valid, i_valid, c_valid, np.ones((n, 1), dtype=bool)], axis=1)
        words = np.concatenate(
            [np.where(u_valid, min(1, max_words - 1), 0), i_word, np.zeros_like(c_tok), np.zeros((n, 1), dtype=np.int64)], axis=1
        )
        tokens, valid, words = _compact(tokens, valid, words)
        lengths = valid.sum(1)
        cut = lengths > max_length
        if cut.any():
            rows = np.nonzero(cut)[0]
            tokens[rows, max_length - 1] = self.eos_id
            words[rows, max_length - 1] = 0
            valid[rows, max_length:] = False
        width = int(min(lengths.max(), max_length))
        tokens, valid, words = tokens[:, :width], valid[:, :width], words[:, :width]
        return np.where(valid, tokens, self.pad_id), valid.astype(np.int64), np.where(valid, words, 0)

    def item_labels(self, targets: np.ndarray, eos: bool) -> np.ndarray:
        """Decoder labels [N, T] of target items [N, M] (left-aligned, -1 padded), -100 on padding.
        With `eos`, an EOS follows the items (single-item targets, as the text path writes them)."""
        n, m = targets.shape
        present = targets >= 0
        safe = np.where(present, targets, 0)
        li = self.item_tokens.shape[1]
        tok = self.item_tokens[safe].reshape(n, m * li)
        valid = ((np.arange(li)[None, None, :] < self.item_lengths[safe][..., None]) & present[..., None]).reshape(n, m * li)
        if eos:
            tok = np.concatenate([tok, np.full((n, 1), self.eos_id)], axis=1)
            valid = np.concatenate([valid, np.ones((n, 1), dtype=bool)], axis=1)
        tok, valid = _compact(tok, valid)
        width = max(1, int(valid.sum(1).max()))
        return np.where(valid, tok, -100)[:, :width]


def context_tokens(tokenizer, sentences: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """([N, C] token ids without EOS, pad-padded; [N] lengths) of explanation contexts, each cut at
    max_length tokens (the encoder budget cuts the row again)."""
    if not sentences:
        return np.zeros((0, 1), dtype=np.int64), np.zeros(0, dtype=np.int64)
    ids = tokenizer(sentences, add_special_tokens=False, max_length=max_length, truncation=True)["input_ids"]
    return _padded(ids, tokenizer.pad_token_id)


def sentence_labels(tokenizer, sentences: list[str], max_length: int) -> np.ndarray:
    """Decoder labels [N, T] of explanation sentences (EOS included, cut at max_length), -100 padded;
    the same ids as `encode_targets`."""
    if not sentences:
        return np.zeros((0, 1), dtype=np.int64)
    ids = tokenizer(sentences, max_length=max_length, truncation=True)["input_ids"]
    out, _ = _padded(ids, -100)
    return out
