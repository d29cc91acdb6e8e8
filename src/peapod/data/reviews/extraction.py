"""Explanation extraction from review texts, in the spirit of Sentires (Zhang et al., SIGIR 2014) as used by
PETER and P5: a feature (aspect) lexicon built from the corpus, then per review one sentence that names a
feature together with an opinion word.

Everything is rule-based, deterministic and needs no download at run time:

- Sentences: `syntok`'s rule-based segmenter, after one normalisation: a missing space after a full stop,
  question or exclamation mark between a lowercase word and an uppercase letter (``"affordable.I did"``,
  common in Amazon reviews) counts as a sentence boundary. A sentence is the original text between its first
  and last token, with runs of whitespace collapsed to one space.
- Words: lowercase runs of ASCII letters; any other character (digit, punctuation, apostrophe) separates words
  and breaks bigrams, so a bigram never spans a comma.
- Opinion words: the single-word entries of VADER's sentiment lexicon (``vader_lexicon.txt``, shipped inside
  the vaderSentiment wheel) with ``|mean valence| >= 0.5``, minus a few entries that are mostly not opinions in
  reviews (`NOT_OPINIONS`: "like", "no", "yes", ...).
- Features: unigrams and bigrams of words that are neither stopwords (`STOPWORDS`), opinion words, nor shorter
  than 3 letters, kept when they look like nouns by three corpus shares of their occurrences (a cheap stand-in
  for a POS tagger): at least 15% directly follow a determiner or possessive (`DETERMINERS`: "the pop filter",
  "my strings"), at most 5% directly follow a copula or intensifier (`PREDICATE_CUES`: "is small", "very
  cheap") and at most 60% are directly followed by another candidate word ("new strings", "little bit"). The
  lexicon holds such terms found in at least `min_df` reviews, the `top_k` most frequent by review count (ties
  alphabetical).
- One sentence per review: a sentence *qualifies* when it has `MIN_WORDS`..`MAX_WORDS` words, at least one
  feature and at least one opinion word. Features are matched left to right, a lexicon bigram before its
  unigrams. The explanation is the *first* qualifying sentence of the review; its feature is the matched term
  nearest to an opinion word (in tokens), then the one found in more reviews, then the earlier one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from peapod.extras import require

MIN_WORDS = 4
MAX_WORDS = 40
MIN_OPINION_VALENCE = 0.5
DEFAULT_MIN_DF = 10
DEFAULT_TOP_K = 1000
MIN_DETERMINER_SHARE = 0.15
MAX_PREDICATE_SHARE = 0.05
MAX_MODIFIER_SHARE = 0.6
MIN_TERM_LETTERS = 3

# Function words and review boilerplate that are never aspects (written for this module; lowercase, ASCII).
STOPWORDS = frozenset(
    """
    a about above after again against all almost along already also although always am among an and another any
    anybody anyone anything anyway anywhere are around as at away back be became because become becomes been
    before behind being below beside besides between beyond both but by can cannot could did do does doing done
    down during each either else enough etc even ever every everybody everyone everything everywhere few first
    for from further get gets getting got gotten had has have having he her here hers herself him himself his how
    however i if in inside instead into is it its itself just last least less let lets many may maybe me might
    mine more most much must my myself near nearly neither never next nor not nothing now of off often on once one
    ones only onto or other others otherwise our ours ourselves out over own per perhaps quite rather really same
    second several shall she should since so some somebody someone something sometimes somewhat somewhere still
    such than that the their theirs them themselves then there therefore these they thing things third this those
    though through throughout thru thus to together too toward towards under until up upon us very via was we
    were what whatever when whenever where whereas wherever whether which while who whoever whole whom whose why
    will with within without would yet you your yours yourself yourselves
    like likes no yes please ok okay overall plus
    two three four five six seven eight nine ten twenty hundred half dozen
    dont doesnt didnt isnt wasnt arent werent wont wouldnt couldnt shouldnt cant ive im youre thats theres
    don doesn didn isn wasn aren weren won wouldn couldn shouldn haven hasn hadn ain ll ve re
    amazon product products item items review reviews reviewer star stars lot lots bit bunch kind sort type way
    ways time times day days week weeks month months year years today yesterday couple part parts piece pieces
    stuff use used uses using buy bought buying purchase purchased order ordered make made makes need needs needed
    want wanted try tried say said think thought know knew see saw look looked come came go went going take took
    put give gave find found keep kept seem seems seemed feel felt sure able unless order reason fact point end
    """.split()
)
PREDICATE_CUES = frozenset(
    "am is are was were be been being seem seems seemed look looks looked feel feels felt "
    "very too so pretty quite really extremely fairly incredibly super".split()
)
DETERMINERS = frozenset("a an the this that these those my your his her its our their another every each any".split())
NOT_OPINIONS = frozenset("like likes liked no yes please want wants wanted care cares cared ok okay".split())

_RUN_ON = re.compile(r"(?<=[a-z]{2})([.!?])(?=[A-Z])")
_TOKEN = re.compile(r"[a-z]+|[^\sa-z]")
_WS = re.compile(r"\s+")


@lru_cache(maxsize=4)
def opinion_words(min_valence: float = MIN_OPINION_VALENCE) -> frozenset[str]:
    """Single-word VADER lexicon entries with |mean valence| >= `min_valence`, minus `NOT_OPINIONS`."""
    require("vaderSentiment", "reviews", "extracting explanations from reviews")
    text = resources.files("vaderSentiment").joinpath("vader_lexicon.txt").read_text(encoding="utf-8")
    out = set()
    for line in text.splitlines():
        parts = line.split("\t")
        word = parts[0]
        if len(parts) >= 2 and word.isascii() and word.isalpha() and word.islower() and abs(float(parts[1])) >= min_valence:
            out.add(word)
    return frozenset(out - NOT_OPINIONS)


def split_sentences(text: str) -> list[str]:
    """Sentences of a review, in order (see the module doc for the rule)."""
    require("syntok", "reviews", "extracting explanations from reviews")
    from syntok import segmenter

    text = _RUN_ON.sub(r"\1 ", text)
    out = []
    for paragraph in segmenter.analyze(text):
        for sentence in paragraph:
            if not sentence:
                continue
            start, last = sentence[0].offset, sentence[-1]
            s = _WS.sub(" ", text[start : last.offset + len(last.value)]).strip()
            if s:
                out.append(s)
    return out


def tokens(sentence: str) -> list[str]:
    """Lowercase words and single non-word characters; only the words (all letters) count as words."""
    return _TOKEN.findall(sentence.lower())


def _candidate_word(w: str, opinions: frozenset[str]) -> bool:
    return w.isalpha() and len(w) >= MIN_TERM_LETTERS and w not in STOPWORDS and w not in opinions


@dataclass(frozen=True)
class FeatureLexicon:
    """Feature terms (unigrams and "w1 w2" bigrams) with their review counts, most frequent first."""

    terms: tuple[tuple[str, int], ...]

    @property
    def df(self) -> dict[str, int]:
        return dict(self.terms)

    def __len__(self) -> int:
        return len(self.terms)


def build_feature_lexicon(
    documents: Iterable[Sequence[Sequence[str]]],
    opinions: frozenset[str],
    *,
    min_df: int = DEFAULT_MIN_DF,
    top_k: int = DEFAULT_TOP_K,
) -> FeatureLexicon:
    """The corpus's feature lexicon; `documents` are reviews, each a list of tokenized sentences."""
    df: Counter[str] = Counter()
    count: Counter[str] = Counter()
    after_det: Counter[str] = Counter()
    after_cue: Counter[str] = Counter()
    before_word: Counter[str] = Counter()
    for doc in documents:
        seen = set()
        for toks in doc:
            ok = [_candidate_word(w, opinions) for w in toks]
            for k, w in enumerate(toks):
                if not ok[k]:
                    continue
                prev = toks[k - 1] if k > 0 else ""
                det, cue = prev in DETERMINERS, prev in PREDICATE_CUES
                terms = [(w, k + 1)]
                if k + 1 < len(toks) and ok[k + 1]:
                    terms.append((f"{w} {toks[k + 1]}", k + 2))
                for term, after in terms:
                    count[term] += 1
                    after_det[term] += det
                    after_cue[term] += cue
                    before_word[term] += after < len(toks) and ok[after]
                    seen.add(term)
        df.update(seen)
    kept = [
        (t, n)
        for t, n in df.items()
        if n >= min_df
        and after_det[t] >= MIN_DETERMINER_SHARE * count[t]
        and after_cue[t] <= MAX_PREDICATE_SHARE * count[t]
        and before_word[t] <= MAX_MODIFIER_SHARE * count[t]
    ]
    kept.sort(key=lambda x: (-x[1], x[0]))
    return FeatureLexicon(tuple(kept[:top_k]))


@dataclass(frozen=True)
class Extracted:
    sentence: str
    feature: str
    sentence_index: int  # position of the sentence in the review


def match_features(toks: Sequence[str], lexicon: dict[str, int]) -> list[tuple[int, str]]:
    """(token position, term) of the lexicon terms in a tokenized sentence, left to right, bigrams first."""
    out = []
    k = 0
    while k < len(toks):
        if k + 1 < len(toks) and f"{toks[k]} {toks[k + 1]}" in lexicon:
            out.append((k, f"{toks[k]} {toks[k + 1]}"))
            k += 2
        elif toks[k] in lexicon:
            out.append((k, toks[k]))
            k += 1
        else:
            k += 1
    return out


def pick_explanation(
    sentences: Sequence[str],
    tokenized: Sequence[Sequence[str]],
    lexicon: dict[str, int],
    opinions: frozenset[str],
) -> Extracted | None:
    """The review's explanation sentence and its feature, or None when no sentence qualifies."""
    for index, (sentence, toks) in enumerate(zip(sentences, tokenized)):
        n_words = sum(1 for t in toks if t.isalpha())
        if not MIN_WORDS <= n_words <= MAX_WORDS:
            continue
        opinion_at = [k for k, t in enumerate(toks) if t in opinions]
        if not opinion_at:
            continue
        found = match_features(toks, lexicon)
        if found:
            return Extracted(sentence, min(found, key=lambda e: _feature_key(e, opinion_at, lexicon))[1], index)
    return None


def _feature_key(entry: tuple[int, str], opinion_at: list[int], lexicon: dict[str, int]) -> tuple[int, int, int]:
    """Sort key of a matched feature: tokens to the nearest opinion word, then more reviews, then earlier."""
    pos, term = entry
    end = pos + len(term.split()) - 1
    distance = min(pos - o if o < pos else o - end for o in opinion_at)
    return distance, -lexicon[term], pos
