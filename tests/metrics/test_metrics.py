"""Ranking and text metrics against hand-computed fixtures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peapod.metrics.ranking import (
    MISS,
    hit_rate_at,
    metrics_from_ranked_lists,
    ndcg_at,
    rank_of_target,
    ranking_metrics,
    ranks_from_ranked_lists,
)
from peapod.metrics.text import (
    bleu_score,
    compute_legacy_bleu,
    feature_hit_rate,
    legacy_text_metrics,
    rouge_score,
    rouge_score_f,
    sacrebleu_score,
)

TOL = 1e-6

# --------------------------------------------------------------------------- #
# Ranking metrics                                                              #
# --------------------------------------------------------------------------- #


def test_rank_of_target_by_hand() -> None:
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.3],  # target col 2 (0.5): only 0.9 is higher -> rank 1
            [0.7, 0.2, 0.7, 0.7],  # target col 0 (0.7): nothing strictly higher -> 0; 2 ties
            [0.4, 0.3, 0.2, 0.1],  # target col 3 (0.1): 3 higher -> rank 3
        ]
    )
    target = torch.tensor([2, 0, 3])
    assert rank_of_target(scores, target).tolist() == [1, 0, 3]
    # Pessimistic: the two tied candidates of row 1 go in front of the target.
    assert rank_of_target(scores, target, ties="pessimistic").tolist() == [1, 2, 3]


def test_hr_ndcg_by_hand() -> None:
    ranks = [0, 1, 4, 9, MISS]
    # HR@1: only rank 0 -> 1/5. HR@5: ranks 0,1,4 -> 3/5. HR@10: 4/5 (the miss never counts).
    assert hit_rate_at(ranks, 1) == pytest.approx(0.2, abs=TOL)
    assert hit_rate_at(ranks, 5) == pytest.approx(0.6, abs=TOL)
    assert hit_rate_at(ranks, 10) == pytest.approx(0.8, abs=TOL)
    # NDCG@5 = (1/log2(2) + 1/log2(3) + 1/log2(6)) / 5 = (1 + 0.6309298 + 0.3868528) / 5
    assert ndcg_at(ranks, 5) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5, abs=TOL)
    assert ndcg_at(ranks, 5) == pytest.approx(0.4035565, abs=TOL)
    # NDCG@10 adds rank 9: 1/log2(11) = 0.2890648
    assert ndcg_at(ranks, 10) == pytest.approx((2.0177826 + 0.2890648) / 5, abs=TOL)
    m = ranking_metrics(torch.tensor(ranks), ks=(1, 5), ndcg_ks=(5,))
    assert list(m) == ["HR@1", "HR@5", "NDCG@5"]
    assert m["HR@5"] == pytest.approx(0.6, abs=TOL)
    assert ranking_metrics([])["HR@1"] == 0.0


def test_ranked_lists_by_hand() -> None:
    ranked = [
        [7, 3, 9],  # target 3 at position 1
        [-1, -1, 5, 6],  # invalid outputs occupy positions; target 5 at position 2
        [1, 2],  # shorter than k, target 4 absent -> miss
        [4, 4, 8],  # repeated target counts once, at position 0
    ]
    targets = [3, 5, 4, 4]
    assert ranks_from_ranked_lists(ranked, targets).tolist() == [1, 2, MISS, 0]
    m = metrics_from_ranked_lists(ranked, targets, ks=(1, 5), ndcg_ks=(1, 5))
    # HR@1: only the last user -> 1/4. HR@5: 3/4.
    assert m["HR@1"] == pytest.approx(0.25, abs=TOL)
    assert m["HR@5"] == pytest.approx(0.75, abs=TOL)
    assert m["NDCG@1"] == pytest.approx(0.25, abs=TOL)
    # NDCG@5 = (1/log2(3) + 1/log2(4) + 0 + 1) / 4 = (0.6309298 + 0.5 + 1) / 4
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(3) + 0.5 + 1.0) / 4, abs=TOL)
    with pytest.raises(ValueError):
        metrics_from_ranked_lists([[1]], [1, 2])


def _legacy_hr_ndcg(ranked: list[list[int]], targets: list[int], k: int) -> tuple[float, float]:
    """The P5/POD/PeaPOD evaluate_hr / evaluate_ndcg definitions, restated for one target per user."""
    dcgs = [1 / math.log2(i + 2) for i in range(k)]
    hr = ndcg = 0.0
    for items, target in zip(ranked, targets, strict=True):
        hits = [idx for idx, item in enumerate(items[:k]) if item == target]
        hr += len(hits) / 1  # divided by |ground truth| = 1
        if hits:
            ndcg += sum(dcgs[i] for i in hits) / sum(dcgs[: len(hits)])
    return hr / len(targets), ndcg / len(targets)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.permutations(list(range(12))), st.integers(0, 12), st.integers(1, 14)),
        min_size=1,
        max_size=8,
    ),
    st.integers(1, 15),
)
def test_ranked_lists_agree_with_legacy_and_with_scores(rows, k) -> None:
    # Distinct item ids per list (as beam search returns), arbitrary length, target maybe absent.
    ranked = [list(perm[:length]) for perm, _, length in rows]
    targets = [target for _, target, _ in rows]
    hr, ndcg = _legacy_hr_ndcg(ranked, targets, k)
    m = metrics_from_ranked_lists(ranked, targets, ks=(k,), ndcg_ks=(k,))
    assert m[f"HR@{k}"] == pytest.approx(hr, abs=TOL)
    assert m[f"NDCG@{k}"] == pytest.approx(ndcg, abs=TOL)
    # Same ranks from scores: score = -(position), absent items far below everything.
    for items, target in zip(ranked, targets, strict=True):
        if target in items:
            scores = torch.full((1, 13), -100.0)
            scores[0, torch.tensor(items)] = -torch.arange(len(items), dtype=torch.float)
            assert rank_of_target(scores, torch.tensor([target])).item() == items.index(target)


# --------------------------------------------------------------------------- #
# Legacy BLEU / ROUGE                                                          #
# --------------------------------------------------------------------------- #

# Two sentence pairs, 9 reference and 8 hypothesis tokens.
REFS = ["the room was very clean and quiet", "great location"]
HYPS = ["the room was very clean", "great location great"]

# BLEU (corpus level; clipped counts summed over both pairs):
#   c = 5 + 3 = 8, r = 7 + 2 = 9  ->  c < r, BP = exp(1 - 9/8) = exp(-0.125) = 0.8824969
#   1-grams: pair 1 matches 5/5; pair 2 "great great location" vs ref "great location":
#            "great" clipped to 1, "location" 1 -> 2/3.            p1 = 7/8
#   2-grams: pair 1 4/4; pair 2 "great location" yes, "location great" no -> 1/2. p2 = 5/6
#   3-grams: pair 1 3/3; pair 2 0/1.                                p3 = 3/4
#   4-grams: pair 1 2/2; pair 2 has none (length 3, not counted).   p4 = 2/2 = 1
#   BLEU-1 = 100 * BP * 7/8                         = 77.2184790
#   BLEU-4 = 100 * BP * (7/8 * 5/6 * 3/4 * 1)^(1/4) = 100 * BP * (105/192)^(1/4) = 75.8901144
BP = math.exp(1 - 9 / 8)
BLEU1 = 100 * BP * 7 / 8
BLEU4 = 100 * BP * (105 / 192) ** 0.25


def _f_legacy_n(p: float, r: float) -> float:
    """Legacy ROUGE-N F (with its 1e-8 in the denominator)."""
    return 2 * p * r / (p + r + 1e-8)


def _f_legacy_l(p: float, r: float) -> float:
    """Legacy ROUGE-L F: beta = P/R, F = (1+beta^2) R P / (R + beta^2 P) = P R (P^2+R^2) / (P^3+R^3)."""
    beta = p / (r + 1e-12)
    return (1 + beta**2) * r * p / (r + beta**2 * p + 1e-12)


# ROUGE, per pair on n-gram SETS, then averaged:
#   ROUGE-1 pair 1: hyp set 5, ref set 7, overlap 5 -> P = 1,   R = 5/7
#           pair 2: hyp set {great, location} (duplicate collapses) = ref set -> P = 1, R = 1
#   ROUGE-2 pair 1: hyp 4 bigrams, ref 6, overlap 4 -> P = 1, R = 4/6
#           pair 2: hyp {great location, location great}, ref {great location} -> P = 1/2, R = 1
#   ROUGE-L pair 1: LCS 5, |hyp| 5, |ref| 7 -> P = 1, R = 5/7
#           pair 2: LCS("great location great", "great location") = 2, |hyp| 3, |ref| 2 -> P = 2/3, R = 1
#   e.g. ROUGE-1-R = 100 * (5/7 + 1) / 2 = 85.7142857, ROUGE-2-P = 100 * (1 + 1/2) / 2 = 75
#        ROUGE-L-F = 100 * (F(1, 5/7) + F(2/3, 1)) / 2 with F(p, r) = p r (p^2 + r^2) / (p^3 + r^3):
#                    F(1, 5/7) = (5/7)(1 + 25/49)/(1 + 125/343) = 0.7916667 ... -> 76.6727717
EXPECTED_ROUGE = {
    "ROUGE-1-P": 100.0,
    "ROUGE-1-R": 100 * (5 / 7 + 1) / 2,
    "ROUGE-1-F": 100 * (_f_legacy_n(1, 5 / 7) + _f_legacy_n(1, 1)) / 2,
    "ROUGE-2-P": 100 * (1 + 1 / 2) / 2,
    "ROUGE-2-R": 100 * (4 / 6 + 1) / 2,
    "ROUGE-2-F": 100 * (_f_legacy_n(1, 4 / 6) + _f_legacy_n(1 / 2, 1)) / 2,
    "ROUGE-L-P": 100 * (1 + 2 / 3) / 2,
    "ROUGE-L-R": 100 * (5 / 7 + 1) / 2,
    "ROUGE-L-F": 100 * (_f_legacy_l(1, 5 / 7) + _f_legacy_l(2 / 3, 1)) / 2,
}


def test_legacy_bleu_by_hand() -> None:
    ref_tokens = [r.split() for r in REFS]
    hyp_tokens = [h.split() for h in HYPS]
    assert bleu_score(ref_tokens, hyp_tokens, n_gram=1) == pytest.approx(BLEU1, abs=TOL)
    assert bleu_score(ref_tokens, hyp_tokens, n_gram=4) == pytest.approx(BLEU4, abs=TOL)
    assert BLEU1 == pytest.approx(77.2184790, abs=1e-6)
    assert BLEU4 == pytest.approx(75.8901144, abs=1e-6)
    stats = compute_legacy_bleu(ref_tokens, hyp_tokens, max_order=4)
    assert stats.precisions == pytest.approx((7 / 8, 5 / 6, 3 / 4, 1.0), abs=TOL)
    assert (stats.hypothesis_length, stats.reference_length) == (8, 9)
    assert stats.brevity_penalty == pytest.approx(BP, abs=TOL)


def test_legacy_bleu_no_smoothing_and_lengths() -> None:
    # One pair, no 4-gram match at all -> BLEU-4 is exactly 0 without smoothing.
    assert bleu_score([["a", "b", "c", "d"]], [["a", "b", "c", "e"]], n_gram=4) == 0.0
    # With add-one smoothing: p = (3+1)/(4+1), (2+1)/(3+1), (1+1)/(2+1), (0+1)/(1+1); BP = 1 (c = r).
    smoothed = 100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert bleu_score([["a", "b", "c", "d"]], [["a", "b", "c", "e"]], n_gram=4, smooth=True) == pytest.approx(
        smoothed, abs=TOL
    )
    # Longer hypothesis: no brevity penalty; p1 = 2/3.
    assert bleu_score([["a", "b"]], [["a", "b", "z"]], n_gram=1) == pytest.approx(100 * 2 / 3, abs=TOL)
    # Degenerate lengths do not divide by zero.
    assert bleu_score([["a"]], [[]], n_gram=4) == 0.0
    assert bleu_score([], [], n_gram=4) == 0.0


def test_legacy_rouge_by_hand() -> None:
    got = rouge_score(REFS, HYPS)
    assert set(got) == set(EXPECTED_ROUGE)
    for key, value in EXPECTED_ROUGE.items():
        assert got[key] == pytest.approx(value, abs=TOL), key
    assert got["ROUGE-1-R"] == pytest.approx(85.7142857, abs=1e-6)
    assert got["ROUGE-L-F"] == pytest.approx(76.6727717, abs=1e-6)


def test_legacy_rouge_edge_cases() -> None:
    # Empty hypothesis = the single empty token, as in the legacy code: all zeros, no crash.
    got = rouge_score(["a b"], [""])
    assert all(v == pytest.approx(0.0, abs=TOL) for v in got.values())
    # Identical sentences: P = R = 1; the legacy F carries its epsilons (1e-8 / 1e-12).
    got = rouge_score(["x y z"], ["x  y z"])
    assert got["ROUGE-1-P"] == pytest.approx(100.0, abs=TOL)
    assert got["ROUGE-1-F"] == pytest.approx(100 * 2 / (2 + 1e-8), abs=TOL)
    assert got["ROUGE-L-F"] == pytest.approx(100.0, abs=TOL)


def test_legacy_text_metrics_keys_and_truncation() -> None:
    got = legacy_text_metrics(REFS, HYPS)
    assert got["BLEU-1"] == pytest.approx(BLEU1, abs=TOL)
    assert got["BLEU-4"] == pytest.approx(BLEU4, abs=TOL)
    for key, value in EXPECTED_ROUGE.items():
        assert got[key] == pytest.approx(value, abs=TOL)
    # truncate=2 cuts both sides to "the room" / "great location": a perfect match.
    cut = legacy_text_metrics(REFS, HYPS, truncate=2)
    assert cut["BLEU-1"] == pytest.approx(100.0, abs=TOL)
    assert cut["ROUGE-2-P"] == pytest.approx(100.0, abs=TOL)
    # Cutting only the references: pair 2 hyp "great location great" vs ref "great location"
    # and pair 1 "the room was very clean" vs "the room": c = 8, r = 4, p1 = (2 + 2)/8.
    ref_only = legacy_text_metrics(REFS, HYPS, truncate=2, truncate_hypotheses=False)
    assert ref_only["BLEU-1"] == pytest.approx(100 * 4 / 8, abs=TOL)
    with pytest.raises(ValueError):
        legacy_text_metrics(["a"], [])


# --------------------------------------------------------------------------- #
# Standard metrics                                                             #
# --------------------------------------------------------------------------- #


def test_sacrebleu_identical_and_documented_example() -> None:
    score, signature = sacrebleu_score(["the room was clean .", "great place"], ["the room was clean .", "great place"])
    assert score == pytest.approx(100.0, abs=TOL)
    assert "nrefs:1" in signature and "tok:13a" in signature
    # The example of the sacrebleu README (two reference streams):
    # "BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)".
    refs = [
        ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
        ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
    ]
    sys = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    score, signature = sacrebleu_score(refs, sys)
    assert score == pytest.approx(48.53, abs=0.005)
    assert "nrefs:2" in signature


def test_google_rouge_by_hand() -> None:
    # Pair 1, ref "the cat sat", hyp "the cat": rouge1 P = 1, R = 2/3, F = 0.8;
    # rouge2 P = 1/1, R = 1/2, F = 2/3; rougeL LCS = 2 -> same as rouge1, 0.8.
    # Pair 2 is identical after the package's lowercasing / punctuation removal -> 1.
    got = rouge_score_f(["the cat sat", "A dog!"], ["the cat", "a dog"])
    assert got["rouge1"] == pytest.approx(100 * (0.8 + 1) / 2, abs=TOL)
    assert got["rouge2"] == pytest.approx(100 * (2 / 3 + 1) / 2, abs=TOL)
    assert got["rougeL"] == pytest.approx(100 * (0.8 + 1) / 2, abs=TOL)


def test_feature_hit_rate() -> None:
    hyps = ["The Room was clean", "great roomy bed", "nice, ROOM!", "the front desk staff", ""]
    feats = ["room", "room", "room", "front desk", "room"]
    # hits: 1 (case-insensitive), 0 ("roomy" is not the word), 1 (punctuation bounds), 1 (phrase), 0
    assert feature_hit_rate(hyps, feats) == pytest.approx(3 / 5, abs=TOL)
    assert feature_hit_rate([], []) == 0.0
    assert feature_hit_rate(["a.b"], ["a"]) == 1.0


def test_rank_array_types() -> None:
    assert hit_rate_at(np.array([0, 3]), 1) == 0.5
    assert ndcg_at(torch.tensor([1]), 2) == pytest.approx(1 / math.log2(3), abs=TOL)


def test_peter_feature_metrics_against_a_hand_computed_fixture() -> None:
    from peapod.metrics.text import explanation_metrics, feature_metrics, mentioned_features

    vocabulary = ["sound", "strap", "price", "Sound Quality", "tuner", "sound", ""]  # 4 distinct features
    hypotheses = [
        "The sound quality is great",  # names: sound, sound quality
        "great strap, good price",  # strap, price
        "The sound quality is great",  # sound, sound quality (a repeat)
        "nothing to say",  # none
    ]
    features = ["sound quality", "price", "tuner", "strap"]
    assert mentioned_features(hypotheses[0], ["sound", "sound quality", "strap"]) == {"sound", "sound quality"}
    m = feature_metrics(hypotheses, features, vocabulary)
    # FMR: hypotheses 1 and 2 name their own feature -> 2/4
    assert m["FMR"] == 0.5
    # FCR: named {sound, sound quality, strap, price} of 5 distinct features {price, sound, sound quality, strap, tuner}
    assert m["FCR"] == pytest.approx(4 / 5)
    # DIV: pairs (1,2) 0, (1,3) 2, (1,4) 0, (2,3) 0, (2,4) 0, (3,4) 0 -> 2 / 6
    assert m["DIV"] == pytest.approx(2 / 6)
    # USR: 3 distinct sentences of 4
    assert m["USR"] == pytest.approx(3 / 4)
    assert feature_metrics([], [], vocabulary) == {"FMR": 0.0, "FCR": 0.0, "DIV": 0.0, "USR": 0.0}
    with pytest.raises(ValueError):
        feature_metrics(["a"], [], vocabulary)
    full, signature = explanation_metrics(["the sound quality is great"] * 4, hypotheses, features, vocabulary)
    assert {"FMR", "FCR", "DIV", "USR", "FHR", "SacreBLEU", "BLEU-4"} <= set(full) and full["FHR"] == full["FMR"]
    assert signature.startswith("nrefs:1")
