"""Encoder inputs and decoder labels as token ids, assembled from per-user and per-item token tables.

Every user text (`user_12`) and item text (`<item_345>` or `item_345`) is tokenized once; an example
is then a row of internal indices (user, input items, target items), and a whole epoch of rows becomes
padded id matrices with a few numpy operations. The result equals tokenizing the bare evaluation
text `source_text(task, None, user, items)` with `encode_inputs` (tested token for token), so a model
trained on these ids is evaluated and served by the ordinary text path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peapod.data.indexing import ItemIndex, user_text
from peapod.model.text import GENERIC_USER


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
