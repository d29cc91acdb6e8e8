"""peapod.baselines: score-based baselines (popularity, SASRec) and explanation retrieval, evaluated on the same splits."""

from peapod.baselines.popularity import PopularityModel, candidate_metrics, full_ranking_metrics
from peapod.baselines.retrieval import ExplanationRetrieval, evaluate_retrieval
from peapod.baselines.sasrec import SASRec, SASRecConfig, train_sasrec

__all__ = [
    "ExplanationRetrieval",
    "PopularityModel",
    "SASRec",
    "SASRecConfig",
    "candidate_metrics",
    "evaluate_retrieval",
    "full_ranking_metrics",
    "train_sasrec",
]
