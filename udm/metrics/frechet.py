"""The Fréchet distance between Gaussians fitted to two feature sets (the FID formula)."""
from typing import Tuple

import numpy as np


def gaussian_stats(feats: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a feature set, in float64.

    Args:
        feats: [N, F] features, N >= 2.

    Returns:
        (mu [F], sigma [F, F]).
    """
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"feats must be [N, F] with N >= 2, got shape {feats.shape}")
    return feats.mean(axis=0), np.atleast_2d(np.cov(feats, rowvar=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; rounding-error negative eigenvalues become 0."""
    eigvals, eigvecs = np.linalg.eigh(matrix)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance_from_stats(mu_a: np.ndarray, sigma_a: np.ndarray,
                                mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """d^2 = ||mu_a - mu_b||^2 + Tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2).

    Tr((Sa Sb)^1/2) is computed as the sum of square roots of the eigenvalues of the *symmetric*
    PSD matrix Sa^1/2 Sb Sa^1/2 (it has the same spectrum as Sa Sb), which avoids the complex
    round-off that scipy.linalg.sqrtm(Sa @ Sb) produces for near-singular covariances.

    Args:
        mu_a, mu_b: [F] means.
        sigma_a, sigma_b: [F, F] covariances.

    Returns:
        The squared Fréchet (2-Wasserstein) distance between N(mu_a, Sa) and N(mu_b, Sb), >= 0.

    Reference: Dowson & Landau (1982); Heusel et al. (2017), "GANs trained by a two time-scale
    update rule converge to a local Nash equilibrium" (FID).
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    dim = mu_a.shape[0]
    if mu_a.shape != (dim,) or mu_b.shape != (dim,) or sigma_a.shape != (dim, dim) or sigma_b.shape != (dim, dim):
        raise ValueError(f"shapes must be [F], [F, F], [F], [F, F]; got {mu_a.shape}, {sigma_a.shape}, "
                         f"{mu_b.shape}, {sigma_b.shape}")
    # Symmetrise first: np.cov output is symmetric only up to rounding.
    sigma_a = 0.5 * (sigma_a + sigma_a.T)
    sigma_b = 0.5 * (sigma_b + sigma_b.T)
    sqrt_a = _psd_sqrt(sigma_a)
    middle = sqrt_a @ sigma_b @ sqrt_a
    middle = 0.5 * (middle + middle.T)
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum()
    diff = mu_a - mu_b
    distance = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * trace_sqrt
    # The exact value is >= 0; a tiny negative is rounding (e.g. identical inputs).
    return float(max(distance, 0.0))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID when the features are Inception's).

    Args:
        feats_a: [N_a, F] features, N_a >= 2.
        feats_b: [N_b, F] features, N_b >= 2.

    Returns:
        ||mu_a - mu_b||^2 + Tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2), in the features' squared units.
    """
    return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))
