"""Explanation-generation metrics: the legacy BLEU/ROUGE of PETER/P5/POD/PeaPOD
and the standard SacreBLEU / Google ``rouge_score`` versions.

Legacy definitions (re-implemented here from their description, not copied)
---------------------------------------------------------------------------
Reference sources read: ``lileipisces/PETER`` ``utils.py`` and ``main.py``,
``jeromeramos70/peapod`` ``src/bleu.py``, ``src/rouge.py``, ``src/utils.py``,
``src/exp.py``, ``src/module_multihead.py`` (POD/PeaPOD copy PETER's
``utils.bleu_score`` / ``utils.rouge_score`` and the tensorflow/nmt
``bleu.py`` / ``rouge.py`` scripts).

BLEU (``bleu_score``; tensorflow/nmt ``compute_bleu``), on whitespace tokens:

* corpus level: for each order ``n = 1..max_order`` the clipped n-gram matches
  (``min(count in hypothesis, count in reference)``) and the number of
  hypothesis n-grams ``max(0, len - n + 1)`` are *summed over the corpus*;
  ``p_n = matches_n / possible_n`` (``0`` when ``possible_n == 0``);
* geometric mean ``exp(mean_n log p_n)`` over all orders, and ``0`` as soon as
  any ``p_n`` is 0 (no smoothing by default; ``smooth=True`` gives
  ``p_n = (matches_n + 1) / (possible_n + 1)``, Lin & Och 2004);
* brevity penalty with ``c`` = total hypothesis length, ``r`` = total
  reference length: ``1`` if ``c > r`` else ``exp(1 - r / c)``;
* ``BLEU-1`` is ``max_order=1``, ``BLEU-4`` is ``max_order=4``; times 100.
* Edge cases where the legacy code divides by zero: ``c == 0`` gives 0,
  ``r == 0`` gives a brevity penalty of 1.

ROUGE (``rouge_score``; PETER's ``rouge.py``), one sentence pair at a time and
then the plain mean over pairs, times 100:

* tokens are the space-separated words of the text; like the legacy code on a
  ``" ".join(tokens)`` string, an empty text is the single empty token ``""``;
* ROUGE-N (n = 1, 2) works on n-gram *sets* (repeats count once):
  ``P = |H ∩ R| / |H|``, ``R = |H ∩ R| / |R|`` (0 when the set is empty),
  ``F = 2 P R / (P + R + 1e-8)``;
* ROUGE-L (sentence level) with ``l = LCS(hyp, ref)``: ``R = l / len(ref)``,
  ``P = l / len(hyp)``, ``beta = P / (R + 1e-12)``,
  ``F = (1 + beta^2) R P / (R + beta^2 P + 1e-12)`` — note this is *not* F1:
  with this beta it equals ``P R (P^2 + R^2) / (P^3 + R^3)``.

Length truncation (``truncate``)
--------------------------------
PETER cuts each reference to its first ``--words`` (15) words
(``sentence_format``) and generates exactly ``--words`` words, cut at the
first ``<eos>`` (``ids2tokens``), so both sides are at most ``--words`` words.
POD/PeaPOD instead cut the *T5 subword ids* of the reference to ``exp_len``
(20; ``target_seq[:, :exp_len]``), then ``tokenizer.decode(...,
skip_special_tokens=True).split()``; hypotheses are only bounded by the beam
search ``max_length`` (50 decoder ids). :func:`legacy_text_metrics` offers the
word-level version: ``truncate=N`` keeps the first N whitespace tokens of every
reference and (unless ``truncate_hypotheses=False``) every hypothesis. The
PeaPOD subword truncation needs the tokenizer and has to be applied to the
reference ids before decoding (``ids[:20]``), upstream of this module.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BleuStats",
    "bleu_score",
    "compute_legacy_bleu",
    "explanation_metrics",
    "feature_hit_rate",
    "feature_metrics",
    "legacy_text_metrics",
    "mentioned_features",
    "mentions",
    "rouge_score",
    "rouge_score_f",
    "sacrebleu_score",
]


# --------------------------------------------------------------------------- #
# Legacy BLEU                                                                  #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class BleuStats:
    """Corpus BLEU and its parts (``bleu`` in [0, 1], not a percentage)."""

    bleu: float
    precisions: tuple[float, ...]  # p_1 .. p_max_order
    brevity_penalty: float
    ratio: float  # hypothesis length / reference length (inf if reference length is 0)
    hypothesis_length: int
    reference_length: int


def _ngram_counts(tokens: Sequence[str], max_order: int) -> Counter[tuple[str, ...]]:
    """Multiset of all n-grams of ``tokens`` for n = 1..max_order."""
    counts: Counter[tuple[str, ...]] = Counter()
    for n in range(1, max_order + 1):
        for start in range(len(tokens) - n + 1):
            counts[tuple(tokens[start : start + n])] += 1
    return counts


def compute_legacy_bleu(
    references: Sequence[Sequence[str]],
    generated: Sequence[Sequence[str]],
    max_order: int = 4,
    smooth: bool = False,
) -> BleuStats:
    """tensorflow/nmt corpus BLEU with one reference per hypothesis.

    Args:
        references: per example, the reference as a list of tokens.
        generated: per example, the hypothesis as a list of tokens.
        max_order: highest n-gram order (1 for BLEU-1, 4 for BLEU-4).
        smooth: add-one smoothing of every precision (off in all legacy results).
    """
    if len(references) != len(generated):
        raise ValueError(f"{len(references)} references but {len(generated)} hypotheses")
    matches = [0] * max_order
    possible = [0] * max_order
    ref_len = 0
    hyp_len = 0
    for ref, hyp in zip(references, generated, strict=True):
        ref_len += len(ref)
        hyp_len += len(hyp)
        # Counter "&" keeps min(count_hyp, count_ref): the clipped matches.
        overlap = _ngram_counts(hyp, max_order) & _ngram_counts(ref, max_order)
        for ngram, count in overlap.items():
            matches[len(ngram) - 1] += count
        for n in range(1, max_order + 1):
            possible[n - 1] += max(0, len(hyp) - n + 1)

    if smooth:
        precisions = [(m + 1.0) / (p + 1.0) for m, p in zip(matches, possible, strict=True)]
    else:
        precisions = [m / p if p > 0 else 0.0 for m, p in zip(matches, possible, strict=True)]

    if min(precisions) > 0:
        geo_mean = math.exp(sum(math.log(p) for p in precisions) / max_order)
    else:
        geo_mean = 0.0

    if ref_len == 0:
        ratio, bp = math.inf, 1.0
    elif hyp_len == 0:
        ratio, bp = 0.0, 0.0  # limit of exp(1 - r/c) as c -> 0
    else:
        ratio = hyp_len / ref_len
        bp = 1.0 if ratio > 1.0 else math.exp(1.0 - 1.0 / ratio)

    return BleuStats(
        bleu=geo_mean * bp,
        precisions=tuple(precisions),
        brevity_penalty=bp,
        ratio=ratio,
        hypothesis_length=hyp_len,
        reference_length=ref_len,
    )


def bleu_score(
    references: Sequence[Sequence[str]],
    generated: Sequence[Sequence[str]],
    n_gram: int = 4,
    smooth: bool = False,
) -> float:
    """PETER's ``bleu_score``: legacy corpus BLEU-``n_gram`` in percent.

    Both arguments are lists of token lists (already split on whitespace).
    """
    return compute_legacy_bleu(references, generated, max_order=n_gram, smooth=smooth).bleu * 100.0


# --------------------------------------------------------------------------- #
# Legacy ROUGE                                                                 #
# --------------------------------------------------------------------------- #


def _rouge_tokens(text: str) -> list[str]:
    """Space-separated words; an empty text is ``[""]`` as in the legacy code.

    The legacy scripts call ``" ".join(tokens).split(" ")``; normalising the
    whitespace first makes that identical for any input string.
    """
    return " ".join(text.split()).split(" ")


def _ngram_set(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def _rouge_n_pair(hyp: Sequence[str], ref: Sequence[str], n: int) -> tuple[float, float, float]:
    """(F, P, R) of ROUGE-N on n-gram sets for one sentence pair."""
    hyp_set = _ngram_set(hyp, n)
    ref_set = _ngram_set(ref, n)
    overlap = len(hyp_set & ref_set)
    precision = overlap / len(hyp_set) if hyp_set else 0.0
    recall = overlap / len(ref_set) if ref_set else 0.0
    f = 2.0 * precision * recall / (precision + recall + 1e-8)
    return f, precision, recall


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (two-row dynamic programme)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def _rouge_l_pair(hyp: Sequence[str], ref: Sequence[str]) -> tuple[float, float, float]:
    """(F, P, R) of the legacy sentence-level ROUGE-L for one pair (both non-empty lists)."""
    lcs = _lcs_length(hyp, ref)
    recall = lcs / len(ref)
    precision = lcs / len(hyp)
    beta = precision / (recall + 1e-12)
    f = (1 + beta**2) * recall * precision / (recall + beta**2 * precision + 1e-12)
    return f, precision, recall


_ROUGE_KINDS = ("1", "2", "L")


def rouge_score(references: Sequence[str], generated: Sequence[str]) -> dict[str, float]:
    """PETER's ``rouge_score``: legacy ROUGE-1/2/L P/R/F averaged over pairs, in percent.

    Args:
        references: per example, the reference sentence.
        generated: per example, the generated sentence.

    Returns:
        ``{"ROUGE-1-P", "ROUGE-1-R", "ROUGE-1-F", "ROUGE-2-...", "ROUGE-L-..."}``.
        (PETER names them ``rouge_1/p_score`` etc.) All zeros for an empty corpus.
    """
    if len(references) != len(generated):
        raise ValueError(f"{len(references)} references but {len(generated)} hypotheses")
    per_pair: dict[str, list[tuple[float, float, float]]] = {k: [] for k in _ROUGE_KINDS}
    for ref_text, hyp_text in zip(references, generated, strict=True):
        ref = _rouge_tokens(ref_text)
        hyp = _rouge_tokens(hyp_text)
        per_pair["1"].append(_rouge_n_pair(hyp, ref, 1))
        per_pair["2"].append(_rouge_n_pair(hyp, ref, 2))
        per_pair["L"].append(_rouge_l_pair(hyp, ref))
    out: dict[str, float] = {}
    for kind in _ROUGE_KINDS:
        values = np.asarray(per_pair[kind], dtype=np.float64).reshape(-1, 3)
        means = values.mean(axis=0) * 100.0 if len(values) else np.zeros(3)
        out[f"ROUGE-{kind}-P"] = float(means[1])
        out[f"ROUGE-{kind}-R"] = float(means[2])
        out[f"ROUGE-{kind}-F"] = float(means[0])
    return out


def legacy_text_metrics(
    references: Sequence[str],
    hypotheses: Sequence[str],
    truncate: int | None = None,
    *,
    truncate_hypotheses: bool = True,
) -> dict[str, float]:
    """BLEU-1, BLEU-4 and ROUGE-1/2/L P/R/F exactly as PETER/POD/PeaPOD report them.

    Args:
        references: reference explanations (plain strings).
        hypotheses: generated explanations (plain strings).
        truncate: if given, keep only the first ``truncate`` whitespace tokens
            of every reference (PETER's ``--words`` cut) and, when
            ``truncate_hypotheses`` is true, of every hypothesis too.
        truncate_hypotheses: see ``truncate``; set to False to cut only the
            references (closest to POD/PeaPOD, whose hypotheses are not cut).

    Returns:
        ``{"BLEU-1", "BLEU-4", "ROUGE-1-P", "ROUGE-1-R", "ROUGE-1-F", ...}`` in percent.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if truncate is not None and truncate < 0:
        raise ValueError("truncate must be non-negative")
    ref_tokens = [r.split() for r in references]
    hyp_tokens = [h.split() for h in hypotheses]
    if truncate is not None:
        ref_tokens = [t[:truncate] for t in ref_tokens]
        if truncate_hypotheses:
            hyp_tokens = [t[:truncate] for t in hyp_tokens]
    out = {
        "BLEU-1": bleu_score(ref_tokens, hyp_tokens, n_gram=1),
        "BLEU-4": bleu_score(ref_tokens, hyp_tokens, n_gram=4),
    }
    # Like the legacy scripts, ROUGE sees the token lists re-joined with spaces.
    out.update(rouge_score([" ".join(t) for t in ref_tokens], [" ".join(t) for t in hyp_tokens]))
    return out


# --------------------------------------------------------------------------- #
# Standard metrics                                                             #
# --------------------------------------------------------------------------- #


def sacrebleu_score(
    references: Sequence[str] | Sequence[Sequence[str]],
    hypotheses: Sequence[str],
    **bleu_kwargs: object,
) -> tuple[float, str]:
    """Corpus BLEU with SacreBLEU's default settings (13a tokenisation, exp smoothing).

    Args:
        references: either one reference string per hypothesis, or SacreBLEU's
            reference *streams* (a list of lists, each as long as ``hypotheses``)
            for multiple references.
        hypotheses: generated strings.
        bleu_kwargs: passed to ``sacrebleu.metrics.BLEU`` (e.g. ``lowercase=True``).

    Returns:
        ``(score, signature)``: the BLEU score in percent and the SacreBLEU
        signature string to report alongside it.
    """
    from sacrebleu.metrics import BLEU

    if references and isinstance(references[0], str):
        streams = [list(references)]  # type: ignore[arg-type]
    else:
        streams = [list(s) for s in references]  # type: ignore[union-attr]
    for stream in streams:
        if len(stream) != len(hypotheses):
            raise ValueError(f"a reference stream has {len(stream)} entries, expected {len(hypotheses)}")
    metric = BLEU(**bleu_kwargs)  # type: ignore[arg-type]
    result = metric.corpus_score(list(hypotheses), streams)
    return float(result.score), str(metric.get_signature())


def rouge_score_f(
    references: Sequence[str],
    hypotheses: Sequence[str],
    use_stemmer: bool = False,
) -> dict[str, float]:
    """Mean F-measure of Google's ``rouge_score`` (rouge1, rouge2, rougeL), in percent.

    Unlike the legacy ROUGE this counts n-gram multiplicities, uses the
    package's own tokenizer (lowercase, non-alphanumerics dropped) and the
    usual F1 for ROUGE-L.

    Returns:
        ``{"rouge1": ..., "rouge2": ..., "rougeL": ...}``; zeros for an empty corpus.
    """
    from rouge_score import rouge_scorer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=use_stemmer)
    totals = dict.fromkeys(kinds, 0.0)
    for ref, hyp in zip(references, hypotheses, strict=True):
        scores = scorer.score(ref, hyp)  # argument order: (target, prediction)
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    n = len(references)
    return {kind: (100.0 * total / n if n else 0.0) for kind, total in totals.items()}


def feature_hit_rate(hypotheses: Sequence[str], features: Sequence[str]) -> float:
    """Fraction of hypotheses that mention their feature word.

    The match is case-insensitive and on whole words: the feature must not be
    preceded or followed by a word character, so "room" matches "Room," but
    not "roomy". Multi-word features match as a phrase. An empty feature
    never matches. (This is PETER's feature matching ratio, FMR, on strings.)

    Args:
        hypotheses: generated sentences.
        features: per hypothesis, the ground-truth feature word.
    """
    if len(hypotheses) != len(features):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(features)} features")
    if not hypotheses:
        return 0.0
    return sum(1 for text, feature in zip(hypotheses, features, strict=True) if mentions(text, feature)) / len(hypotheses)


@functools.lru_cache(maxsize=65536)
def _feature_pattern(feature: str) -> re.Pattern | None:
    words = feature.split()
    if not words:
        return None
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)", flags=re.IGNORECASE)


def mentions(text: str, feature: str) -> bool:
    """Whether `text` names `feature`: case-insensitive, on whole words, a multi-word feature as a phrase."""
    pattern = _feature_pattern(feature.strip())
    return pattern is not None and pattern.search(text) is not None


def _by_first_word(vocabulary: Sequence[str]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for f in vocabulary:
        if f.split():
            index.setdefault(f.split()[0], []).append(f)
    return index


def _named(text: str, by_first_word: dict[str, list[str]]) -> frozenset[str]:
    words = set(re.findall(r"\w+", text.lower()))
    return frozenset(f for w in words for f in by_first_word.get(w, ()) if mentions(text, f))


def mentioned_features(text: str, vocabulary: Sequence[str]) -> frozenset[str]:
    """The features of `vocabulary` (lower-cased) that `text` names (`mentions`)."""
    return _named(text, _by_first_word(vocabulary))


def feature_metrics(hypotheses: Sequence[str], features: Sequence[str], vocabulary: Sequence[str]) -> dict[str, float]:
    """The explainability metrics of PETER (Li et al., ACL 2021) and PEPLER (TOIS 2023), on strings.

    * FMR, feature matching ratio: the share of hypotheses that name their record's feature (= FHR).
    * FCR, feature coverage ratio: distinct features named over all hypotheses / the number of features
      in `vocabulary` (every feature of the dataset's explanation records).
    * DIV, feature diversity: the mean, over all pairs of hypotheses, of the number of features both
      name; lower is more diverse. Computed as sum over features of C(n_f, 2) / C(N, 2), which equals
      the pairwise sum.
    * USR, unique sentence ratio: distinct hypotheses (as whitespace-separated token sequences) / N.

    A feature is named as in `mentions` (PETER compares single word tokens; for one-word features the two
    agree, and a multi-word feature counts when its words appear as a phrase).
    """
    if len(hypotheses) != len(features):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(features)} features")
    n = len(hypotheses)
    if n == 0:
        return {"FMR": 0.0, "FCR": 0.0, "DIV": 0.0, "USR": 0.0}
    vocab = sorted({" ".join(f.lower().split()) for f in vocabulary if f.strip()})
    by_first_word = _by_first_word(vocab)  # each hypothesis checks only the features its words can start
    named = [_named(h, by_first_word) for h in hypotheses]
    counts = Counter(f for fs in named for f in fs)
    pairs = n * (n - 1) / 2
    return {
        "FMR": feature_hit_rate(hypotheses, features),
        "FCR": len(counts) / len(vocab) if vocab else 0.0,
        "DIV": sum(c * (c - 1) / 2 for c in counts.values()) / pairs if pairs else 0.0,
        "USR": len({tuple(h.split()) for h in hypotheses}) / n,
    }


def explanation_metrics(
    references: Sequence[str], hypotheses: Sequence[str], features: Sequence[str], vocabulary: Sequence[str],
    legacy_references: Sequence[str] | None = None,
) -> tuple[dict[str, float], str | None]:
    """Every explanation metric we report, and SacreBLEU's signature: legacy BLEU/ROUGE (against
    `legacy_references`, e.g. cut to 20 tokens, default the references), SacreBLEU, rouge-score F, FHR
    and PETER's FMR/FCR/DIV/USR."""
    if not references:
        return {}, None
    metrics = dict(legacy_text_metrics(list(legacy_references if legacy_references is not None else references), hypotheses))
    metrics["SacreBLEU"], signature = sacrebleu_score(references, hypotheses)
    metrics.update({f"rouge-score-{k}-F": v for k, v in rouge_score_f(references, hypotheses).items()})
    metrics["FHR"] = feature_hit_rate(hypotheses, features)
    metrics.update(feature_metrics(hypotheses, features, vocabulary))
    return metrics, signature
