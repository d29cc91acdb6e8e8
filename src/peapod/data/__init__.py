"""Data layer: readers, leave-one-out splits, negatives, item indexing."""

from peapod.data.dataset import DataError, Dataset, Explanation
from peapod.data.explanations import assign_explanation_splits
from peapod.data.indexing import ItemIndex, build_item_index, user_text
from peapod.data.loaders import describe_dataset, describe_demo, load_dataset, load_demo
from peapod.data.negatives import ensure_negatives, read_negatives, sample_negatives, write_negatives
from peapod.data.p5 import load_p5_dir
from peapod.data.table import load_interactions_table

__all__ = [
    "DataError",
    "Dataset",
    "Explanation",
    "ItemIndex",
    "assign_explanation_splits",
    "build_item_index",
    "describe_dataset",
    "describe_demo",
    "ensure_negatives",
    "load_dataset",
    "load_demo",
    "load_interactions_table",
    "load_p5_dir",
    "read_negatives",
    "sample_negatives",
    "user_text",
    "write_negatives",
]
