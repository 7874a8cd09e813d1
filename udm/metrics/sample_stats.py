"""Statistics of generated samples: classifier confidence, class balance and nearness to training data."""
from typing import Dict

import numpy as np


def _entropy_nats(probs: np.ndarray) -> np.ndarray:
    """-sum_k p_k log p_k over the last axis, with 0 log 0 = 0."""
    safe = np.where(probs > 0, probs, 1.0)
    return -np.sum(probs * np.log(safe), axis=-1)


def class_statistics(probs: np.ndarray) -> Dict[str, object]:
    """Confidence and class balance of a classifier's predictions on samples.

    Args:
        probs: [N, K] predicted class probabilities, each row summing to 1.

    Returns:
        A dict with
          mean_entropy_nats: mean over samples of H(p(y | x)); 0 when every prediction is certain,
            log K when every prediction is uniform (low means confident, recognisable samples);
          histogram: list of K floats, the fraction of samples whose argmax is each class;
          histogram_entropy_nats: entropy of that histogram; log K when classes are equally
            represented, 0 when every sample falls in one class (mode collapse);
          max_class_fraction: the largest histogram entry.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be [N, K] with N >= 1, got shape {probs.shape}")
    if probs.min() < 0 or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("each row of probs must be a probability distribution (>= 0, summing to 1)")
    num_classes = probs.shape[1]
    histogram = np.bincount(probs.argmax(axis=1), minlength=num_classes) / probs.shape[0]
    return {
            "mean_entropy_nats": float(_entropy_nats(probs).mean()),
            "histogram": [float(h) for h in histogram],
            "histogram_entropy_nats": float(_entropy_nats(histogram)),
            "max_class_fraction": float(histogram.max()),
    }


def nearest_neighbour_distances(samples: np.ndarray, reference: np.ndarray, *, chunk: int = 1024) -> np.ndarray:
    """Euclidean pixel-space distance from each sample to its nearest reference image.

    Works block by block ([chunk, chunk] distance tiles), so memory stays bounded for any N and M.
    The nearest neighbour is found with ||a||^2 + ||b||^2 - 2 a.b; its distance is then recomputed
    directly as ||a - b||, so an exact copy gets exactly 0 rather than a rounding residue.

    Args:
        samples: [N, ...] images (any trailing shape; flattened).
        reference: [M, ...] images with the same trailing shape.
        chunk: block size along N and M.

    Returns:
        float64 [N] distances.
    """
    samples = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)
    reference = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    if samples.shape[1] != reference.shape[1]:
        raise ValueError(f"samples have {samples.shape[1]} values each but reference images {reference.shape[1]}")
    if len(reference) == 0:
        raise ValueError("reference holds no images")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    ref_sq = np.einsum("md,md->m", reference, reference)
    distances = np.empty(len(samples))
    for start in range(0, len(samples), chunk):
        block = samples[start:start + chunk]
        block_sq = np.einsum("nd,nd->n", block, block)
        best_sq = np.full(len(block), np.inf)
        best_idx = np.zeros(len(block), dtype=np.int64)
        for ref_start in range(0, len(reference), chunk):
            ref = reference[ref_start:ref_start + chunk]
            sq = block_sq[:, None] + ref_sq[None, ref_start:ref_start + chunk] - 2.0 * block @ ref.T
            idx = sq.argmin(axis=1)
            val = sq[np.arange(len(block)), idx]
            better = val < best_sq
            best_sq = np.where(better, val, best_sq)
            best_idx = np.where(better, idx + ref_start, best_idx)
        distances[start:start + chunk] = np.linalg.norm(block - reference[best_idx], axis=1)
    return distances


def memorisation_report(samples: np.ndarray, train_images: np.ndarray, held_out_images: np.ndarray, *,
                        chunk: int = 1024) -> Dict[str, float]:
    """How close samples lie to the training set, against the level set by real held-out images.

    A model that generalises produces samples about as far from their nearest training image as
    fresh real images are; a model that memorises produces near-copies. The flag threshold is the
    1st percentile of held-out nearest-training distances: real unseen images rarely come closer.

    Args:
        samples: [N, H, W, C] generated images.
        train_images: [M, H, W, C] the model's training images.
        held_out_images: [K, H, W, C] real images the model never saw.
        chunk: block size for the distance computation.

    Returns:
        A dict of floats:
          sample_nn_mean, sample_nn_min: mean / min distance from a sample to its nearest training image;
          held_out_nn_mean, held_out_nn_min: the same for held-out real images (the reference level);
          threshold: the 1st-percentile held-out distance;
          memorised_fraction: fraction of samples closer to a training image than the threshold
            (exact copies always count, even if a held-out image duplicates a training one);
          exact_copy_fraction: fraction of samples at distance 0 (up to 1e-6) from a training image.
    """
    sample_nn = nearest_neighbour_distances(samples, train_images, chunk=chunk)
    held_out_nn = nearest_neighbour_distances(held_out_images, train_images, chunk=chunk)
    threshold = float(np.percentile(held_out_nn, 1.0))
    exact = sample_nn <= 1e-6
    return {
            "sample_nn_mean": float(sample_nn.mean()),
            "sample_nn_min": float(sample_nn.min()),
            "held_out_nn_mean": float(held_out_nn.mean()),
            "held_out_nn_min": float(held_out_nn.min()),
            "threshold": threshold,
            "memorised_fraction": float(np.mean((sample_nn < threshold) | exact)),
            "exact_copy_fraction": float(np.mean(exact)),
    }
