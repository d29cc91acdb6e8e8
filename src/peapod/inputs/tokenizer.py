"""The from-scratch tokenizer: a T5-style BPE trained on the templates, the ids and the training sentences."""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from peapod.inputs.prompt import TEMPLATES


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
