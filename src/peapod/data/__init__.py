"""Data layer: readers, leave-one-out splits, negatives, item indexing."""

from peapod.data.dataset import DataError, Dataset, Explanation
from peapod.data.indexing import ItemIndex, build_item_index, user_text

__all__ = ["DataError", "Dataset", "Explanation", "ItemIndex", "build_item_index", "user_text"]
