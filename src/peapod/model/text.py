"""Text side of the model: task templates, the from-scratch tokenizer, and batch encoding.

Inputs are written as in P5/POD (`user_12`, `item_345`). Whole-word ids mark the sub-tokens of each
`user_…`/`item_…` span with one index (1, 2, … in order of appearance; 0 elsewhere), so the model can
read `item_1234` split into several sub-tokens as one id.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

TASKS = ("explanation", "sequential", "topn")
TASK_IDS = {t: i for i, t in enumerate(TASKS)}
GENERIC_USER = "user_0"  # user-id dropout and cold-start users: no user number in the text

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


def template_corpus(user_texts: list[str], item_texts: list[str], sentences: list[str]) -> list[str]:
    """Text to train a from-scratch tokenizer on: every template, every id, the training sentences."""
    lines = []
    for options in TEMPLATES.values():
        for t in options:
            lines.append(t.format(user="user_1", history="item_1 item_2", candidates="item_3 item_4", item="item_5"))
    lines.extend(" ".join(user_texts[i : i + 64]) for i in range(0, len(user_texts), 64))
    lines.extend(" ".join(item_texts[i : i + 64]) for i in range(0, len(item_texts), 64))
    lines.extend(sentences)
    return lines


def train_tokenizer(corpus: list[str], vocab_size: int, atomic_tokens: list[str] = ()) -> PreTrainedTokenizerFast:
    """A T5-style (pad=0, eos=1, unk=2) BPE tokenizer trained on `corpus` with HF `tokenizers`.

    Digit runs are pre-split from letters, so `item_1234` becomes `▁item_` plus a few digit pieces,
    as in P5. `atomic_tokens` (e.g. `<item_17>`) are added as single tokens.
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=False)])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False, min_frequency=1
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    if atomic_tokens:
        fast.add_tokens(atomic_item_tokens(atomic_tokens))
    return fast


def atomic_item_tokens(texts) -> list[AddedToken]:
    """Atomic item tokens that absorb the space before them, so `a <item_3>` is two tokens, not three."""
    return [AddedToken(t, lstrip=True, normalized=False) for t in texts]


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
