"""peapod.baselines: score-based baselines (popularity, SASRec) evaluated on the same splits."""

from peapod.baselines.popularity import PopularityModel, candidate_metrics, full_ranking_metrics
from peapod.baselines.sasrec import SASRec, SASRecConfig, train_sasrec

__all__ = [
    "PopularityModel",
    "SASRec",
    "SASRecConfig",
    "candidate_metrics",
    "full_ranking_metrics",
    "train_sasrec",
]
