"""Datasets (images in [-1, 1], token sequences, associative recall) and the deterministic batch order."""
from udm.data.datasets import DATASETS, Dataset, load_dataset
from udm.data.pipeline import batch_at_step
from udm.data.recall import RecallTask, sample_recall_batch, sample_recall_sequence
from udm.data.text import (TEXT_DATASETS, TextDataset, arithmetic_dataset, is_valid_equation,
                           lee_dataset, load_text_dataset)

__all__ = ["DATASETS", "Dataset", "RecallTask", "TEXT_DATASETS", "TextDataset", "arithmetic_dataset",
           "batch_at_step", "is_valid_equation", "lee_dataset", "load_dataset", "load_text_dataset",
           "sample_recall_batch", "sample_recall_sequence"]
