"""Datasets (images scaled to [-1, 1]; token sequences) and the deterministic batch order."""
from udm.data.datasets import DATASETS, Dataset, load_dataset
from udm.data.pipeline import batch_at_step
from udm.data.text import (TEXT_DATASETS, TextDataset, arithmetic_dataset, is_valid_equation,
                           lee_dataset, load_text_dataset)

__all__ = ["DATASETS", "Dataset", "TEXT_DATASETS", "TextDataset", "arithmetic_dataset",
           "batch_at_step", "is_valid_equation", "lee_dataset", "load_dataset", "load_text_dataset"]
