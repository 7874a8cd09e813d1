"""Image datasets scaled to [-1, 1] and the deterministic batch order used in training."""
from udm.data.datasets import DATASETS, Dataset, load_dataset
from udm.data.pipeline import batch_at_step

__all__ = ["DATASETS", "Dataset", "batch_at_step", "load_dataset"]
