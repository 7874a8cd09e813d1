"""BERT-whitening with the hyper-parameters (beta, gamma, k): fit, apply, save/load and a sweep.

docs/whitening.md (Su, kexue.fm/archives/9079; Su et al., arXiv 2103.15316). For row vectors
`x_i in R^D`, i = 1..N (W1):

    mu    = (1/N) sum_i x_i
    Sigma = (1/N) sum_i (x_i - beta mu)^T (x_i - beta mu) = U Lambda U^T   (Lambda descending)
    x~_i  = (x_i - beta mu) U Lambda^{-gamma/2},   keep the first k columns.

`beta` enters both the statistics (Sigma is the second moment about `beta mu`, the covariance
only for beta = 1, the Gram matrix `X^T X / N` for beta = 0) and the transform, so it is fixed
by `fit` and stored in the fitted `Whitening`; `gamma` and `k` only rescale and truncate the
columns of `U` and are chosen at `apply` time. Settings:

    (beta, gamma, k) = (1, 1, D)   the original BERT-whitening (`ORIGINAL`);
    (beta, gamma, k) = (0, 0, k)   the post's compression setting: a rotation of the raw vectors
                                   truncated to k columns (`COMPRESSION`, k = 256 for 768-d
                                   base models, 128 for small ones, docs/whitening.md §3).

Typical use:

    w = fit(all_vectors, beta=0.0)          # statistics of every sentence vector of the task
    y = apply(w, vectors, gamma=0.0, k=128)  # [N, 128]; cosines of y are the similarities
"""
import math
import os
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import chex
import jax.numpy as jnp
import numpy as np

from udm.metrics.similarity import spearman

PathLike = Union[str, os.PathLike]

# Relative floor on the eigenvalues before the power -gamma/2 (docs/whitening.md §5): rank deficiency
# (N < D, duplicate sentences, an anisotropic encoder) gives eigenvalues at rounding level,
# whose inverse square roots would be huge or infinite.
DEFAULT_EPS = 1e-12

_FORMAT_VERSION = 1


class Setting(NamedTuple):
    """One hyper-parameter setting of W1: `beta, gamma` in [0, 1], `k` kept columns (None = D)."""

    beta: float = 1.0
    gamma: float = 1.0
    k: Optional[int] = None


ORIGINAL = Setting(beta=1.0, gamma=1.0, k=None)
COMPRESSION = Setting(beta=0.0, gamma=0.0, k=256)


class Whitening(NamedTuple):
    """Fitted statistics of W1 (a pytree: pass it through `jit` or close over it).

    Attributes:
        mu: [D] float64 mean `mu = (1/N) sum_i x_i` (the plain mean, whatever beta).
        U: [D, D] float64 orthogonal eigenvectors of Sigma (about `beta mu`), as columns,
            in descending order of eigenvalue.
        eigenvalues: [D] float64 eigenvalues `Lambda` of Sigma, descending, clipped at 0 (the
            true spectrum: `retained_energy` uses it).
        floor: () float64 > 0, the floor applied to `eigenvalues` before `Lambda^{-gamma/2}`:
            `eps * lambda_max`, or 1 when lambda_max = 0 (no spread at all: no rescaling).
        beta: () float64 in [0, 1], the centring weight Sigma was computed with.
    """

    mu: chex.Array
    U: chex.Array
    eigenvalues: chex.Array
    floor: chex.Array
    beta: chex.Array

    @property
    def dim(self) -> int:
        """D, the dimension of the vectors."""
        return int(np.shape(self.mu)[0])


def _check_unit_interval(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"whitening {name} must be a real number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"whitening {name} must be in [0, 1], got {value}")
    return value


def _check_k(k: Optional[int], dim: int) -> int:
    if k is None:
        return dim
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"whitening k must be an int in [1, D={dim}] or None, got {k!r}")
    if not 1 <= k <= dim:
        raise ValueError(f"whitening k must be in [1, D={dim}], got {k}")
    return int(k)


def fit(x, *, beta: float = 1.0, eps: float = DEFAULT_EPS) -> Whitening:
    """Fits W1's statistics in float64: `mu`, and `Sigma = U Lambda U^T` about `beta mu`.

    `Sigma = (1/N) sum_i (x_i - beta mu)^T (x_i - beta mu)` (docs/whitening.md W1), divided by N as the
    post writes it; the author's code (`chn/utils.py`) uses `np.cov`, which divides by N - 1.
    The two differ by the factor N/(N-1) on every eigenvalue, which scales every transformed
    vector by the same `((N-1)/N)^{gamma/2}`: cosines, and hence every score, are unchanged.

    The eigendecomposition (`numpy.linalg.eigh`, ascending, reversed to descending) runs in
    float64. Eigenvalues are clipped at 0 (rounding makes null ones slightly negative) and the
    transform uses `max(lambda_j, eps * lambda_max)` so that rank-deficient data (N < D,
    duplicates) gives finite outputs; directions below the floor carry almost no data and are
    the ones `k < rank` drops.

    Args:
        x: [N, D] sentence vectors (any real dtype; N >= 1).
        beta: centring weight in [0, 1]; 1 = covariance, 0 = uncentred second moment.
        eps: relative eigenvalue floor, > 0.

    Returns:
        The fitted `Whitening`, holding `beta`.
    """
    beta = _check_unit_interval("beta", beta)
    if not (isinstance(eps, (int, float)) and 0.0 < eps < 1.0):
        raise ValueError(f"whitening eps must be a float in (0, 1), got {eps!r}")
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"whitening fit expects vectors [N, D] with N, D >= 1, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise TypeError(f"whitening fit expects real vectors, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("whitening fit got non-finite vectors (NaN or inf)")
    n = x.shape[0]
    mu = x.mean(axis=0)
    xc = x - beta * mu[None, :]
    sigma = xc.T @ xc / n
    evals, evecs = np.linalg.eigh(sigma)
    evals = np.clip(evals[::-1], 0.0, None)
    u = np.ascontiguousarray(evecs[:, ::-1])
    lam_max = float(evals[0])
    floor = eps * lam_max if lam_max > 0.0 else 1.0
    return Whitening(mu=mu, U=u, eigenvalues=evals, floor=np.float64(floor), beta=np.float64(beta))


def apply(w: Whitening, x, *, gamma: float = 1.0, k: Optional[int] = None) -> chex.Array:
    """Transforms vectors with fitted statistics: `x~ = (x - beta mu) U Lambda^{-gamma/2}`, first k columns.

    docs/whitening.md (W1). `beta` is the one `w` was fitted with. `gamma = 1` equalises the kept
    directions (whitening), `gamma = 0` keeps their natural scales (a rotation: norms and, at
    k = D, inner products of the shifted vectors are unchanged). Computed in the floating dtype
    of `x` (float32 stays float32); the eigenvalues are floored at `w.floor` first.

    Args:
        w: statistics from `fit`.
        x: [..., D] vectors.
        gamma: isotropy exponent in [0, 1].
        k: number of leading directions kept, in [1, D]; None keeps all D.

    Returns:
        [..., k] transformed vectors (a JAX array).
    """
    gamma = _check_unit_interval("gamma", gamma)
    dim = w.dim
    k = _check_k(k, dim)
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(f"whitening apply expects vectors [..., D={dim}], got shape {x.shape}")
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    x = x.astype(dtype)
    lam = jnp.maximum(jnp.asarray(w.eigenvalues[:k], dtype), jnp.asarray(w.floor, dtype))
    # Column scaling of U: W = U[:, :k] diag(lam^{-gamma/2}); gamma = 0 gives exactly 1.
    kernel = jnp.asarray(w.U[:, :k], dtype) * jnp.power(lam, -gamma / 2)[None, :]
    shift = jnp.asarray(w.beta, dtype) * jnp.asarray(w.mu, dtype)
    shift = jnp.reshape(shift, (1,) * (x.ndim - 1) + (dim,))
    return (x - shift) @ kernel


def retained_energy(w: Whitening) -> np.ndarray:
    """Fraction of the spread kept by the first k directions, for k = 1..D.

    `E_k = sum_{j<=k} lambda_j / sum_j lambda_j` (docs/whitening.md §6): with gamma = 0 this is the
    fraction of `sum_i ||x_i - beta mu||^2` that the first k columns of x~ keep. Non-decreasing
    in k, E_D = 1 (all ones if the data has no spread at all).

    Args:
        w: statistics from `fit`.

    Returns:
        [D] float64 fractions.
    """
    lam = np.asarray(w.eigenvalues, np.float64)
    total = lam.sum()
    if total <= 0.0:
        return np.ones_like(lam)
    return np.minimum(np.cumsum(lam) / total, 1.0)


def save(path: PathLike, w: Whitening) -> None:
    """Writes fitted statistics to `path` as an uncompressed .npz (the name is used as given)."""
    with open(path, "wb") as f:
        np.savez(f, version=np.int64(_FORMAT_VERSION),
                 **{name: np.asarray(value, np.float64) for name, value in w._asdict().items()})


def load(path: PathLike) -> Whitening:
    """Reads statistics written by `save`, checking their fields and shapes."""
    with np.load(path, allow_pickle=False) as data:
        missing = set(Whitening._fields) - set(data.files)
        if missing:
            raise ValueError(f"{path} is not a saved Whitening: missing {sorted(missing)}")
        version = int(data["version"]) if "version" in data.files else None
        if version != _FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported Whitening format version {version}")
        w = Whitening(**{name: np.asarray(data[name], np.float64) for name in Whitening._fields})
    d = w.mu.shape[0] if w.mu.ndim == 1 else -1
    if (w.mu.ndim != 1 or w.U.shape != (d, d) or w.eigenvalues.shape != (d,)
            or w.floor.shape != () or w.beta.shape != ()):
        raise ValueError(f"{path}: inconsistent Whitening shapes mu {w.mu.shape}, U {w.U.shape}, "
                         f"eigenvalues {w.eigenvalues.shape}, floor {w.floor.shape}, "
                         f"beta {w.beta.shape}")
    return w


# --- evaluation ---------------------------------------------------------------------------------

Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def cosine_similarity(a, b) -> np.ndarray:
    """Row-wise cosine `cos(a_i, b_i) = a_i . b_i / (||a_i|| ||b_i||)` in float64.

    Args:
        a, b: [P, D] vectors (a zero row gives cosine 0).

    Returns:
        [P] float64 cosines.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"cosine_similarity expects two [P, D] arrays, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("pd,pd->p", a, b) / np.where(norms > 0, norms, 1.0)


def spearman_of_cosine(a, b, labels) -> float:
    """Spearman correlation between pair cosines and gold labels (docs/whitening.md §3; x100 in tables).

    Args:
        a, b: [P, D] vectors of the two sides of each pair.
        labels: [P] gold similarity labels.

    Returns:
        The Spearman rank correlation in [-1, 1].
    """
    return spearman(cosine_similarity(a, b), np.asarray(labels))


class SweepPoint(NamedTuple):
    """One evaluated setting: `beta, gamma, k` (k = number of kept columns) and its score."""

    beta: float
    gamma: float
    k: int
    score: float


class SweepResult(NamedTuple):
    """Result of `sweep`.

    Attributes:
        best: the highest-scoring point (the earliest in grid order on ties).
        grid: every point, in the order betas x gammas x ks.
        raw_score: the metric on the untransformed vectors (the tables' column `a`).
    """

    best: SweepPoint
    grid: Tuple[SweepPoint, ...]
    raw_score: float


def sweep(
        a,
        b,
        labels,
        *,
        fit_on=None,
        betas: Sequence[float] = (0.0, 1.0),
        gammas: Sequence[float] = (0.0, 1.0),
        ks: Optional[Sequence[int]] = None,
        metric: Metric = spearman_of_cosine,
        eps: float = DEFAULT_EPS,
) -> SweepResult:
    """Evaluates a grid of (beta, gamma, k) on a labelled split and returns the best and the grid.

    For each beta the statistics are fitted once on `fit_on` (docs/whitening.md §3: all sentence vectors
    of the task; default both sides of the given pairs), then every (gamma, k) transforms both
    sides with `apply` and is scored by `metric(apply(a), apply(b), labels)`; docs/whitening.md §2 tunes
    beta, gamma, k this way on a labelled validation set when whitening is used to compress a
    supervised encoder.

    Args:
        a, b: [P, D] vectors of the two sides of each labelled pair.
        labels: [P] gold labels.
        fit_on: [N, D] vectors to fit the statistics on; None = concatenate a and b.
        betas, gammas: values in [0, 1].
        ks: kept dimensions in [1, D]; None = (D,).
        metric: `(a~ [P, k], b~ [P, k], labels [P]) -> float`, higher is better (default:
            Spearman of the cosines).
        eps: relative eigenvalue floor of `fit`.

    Returns:
        A `SweepResult` (best point, full grid, raw score).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    labels = np.asarray(labels)
    if a.ndim != 2 or a.shape != b.shape or labels.shape != (a.shape[0],):
        raise ValueError(f"sweep expects a, b [P, D] and labels [P], got {a.shape}, {b.shape}, "
                         f"{labels.shape}")
    dim = a.shape[1]
    fit_on = np.concatenate([a, b], axis=0) if fit_on is None else np.asarray(fit_on)
    if fit_on.ndim != 2 or fit_on.shape[1] != dim:
        raise ValueError(f"sweep fit_on must be [N, D={dim}], got {fit_on.shape}")
    betas = [_check_unit_interval("beta", v) for v in betas]
    gammas = [_check_unit_interval("gamma", v) for v in gammas]
    ks = [dim] if ks is None else [_check_k(k, dim) for k in ks]
    if not (betas and gammas and ks):
        raise ValueError("sweep needs at least one value of each of betas, gammas and ks")
    grid = []
    for beta in betas:
        w = fit(fit_on, beta=beta, eps=eps)
        for gamma in gammas:
            for k in ks:
                score = float(metric(np.asarray(apply(w, a, gamma=gamma, k=k)),
                                     np.asarray(apply(w, b, gamma=gamma, k=k)), labels))
                grid.append(SweepPoint(beta=beta, gamma=gamma, k=k, score=score))
    # NaN scores (a constant metric input) never win.
    best = max(grid, key=lambda p: -math.inf if math.isnan(p.score) else p.score)
    return SweepResult(best=best, grid=tuple(grid), raw_score=float(metric(a, b, labels)))
