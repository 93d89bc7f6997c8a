"""Data: what sources return, deterministic splits, and batches for the loop."""

from .augment import BatchAugment
from .loader import Batches
from .splits import Splits, UnlabeledSet, balanced_subset, make_splits
from .types import DataBundle, DataInfo, DataNotFound, ImageSet

__all__ = [
    "BatchAugment", "Batches", "DataBundle", "DataInfo", "DataNotFound", "ImageSet", "Splits",
    "UnlabeledSet", "balanced_subset", "make_splits",
]
