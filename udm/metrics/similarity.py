"""Scores of text embeddings against human similarity judgements (docs/whitening.md §3)."""
import numpy as np


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a vector, ties given their average rank."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    sorted_x = x[order]
    start = 0
    while start < len(x):
        stop = start + 1
        while stop < len(x) and sorted_x[stop] == sorted_x[start]:
            stop += 1
        ranks[order[start:stop]] = 0.5 * (start + stop - 1) + 1.0
        start = stop
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation: the Pearson correlation of the (tie-averaged) ranks."""
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need two vectors of the same length >= 2, got {x.shape} and {y.shape}")
    rx, ry = rank(x) - (len(x) + 1) / 2, rank(y) - (len(y) + 1) / 2
    denominator = np.sqrt(np.sum(rx ** 2) * np.sum(ry ** 2))
    if denominator == 0:
        raise ValueError("Spearman correlation is undefined for a constant vector")
    return float(np.sum(rx * ry) / denominator)


def pair_cosines(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """cos(e_i, e_j) for every pair (i, j): embeddings [N, D], pairs int [P, 2] -> [P]."""
    e = np.asarray(embeddings, np.float64)
    norms = np.linalg.norm(e, axis=1)
    if np.any(norms == 0) or not np.all(np.isfinite(e)):
        raise ValueError("embeddings must be finite and non-zero to take cosines")
    e = e / norms[:, None]
    return np.sum(e[pairs[:, 0]] * e[pairs[:, 1]], axis=1)


def spearman_x100(embeddings: np.ndarray, pairs: np.ndarray, gold: np.ndarray) -> float:
    """100 x Spearman(cosine of each pair, gold score): the number of the post's tables."""
    return 100.0 * spearman(pair_cosines(embeddings, pairs), gold)
