"""Input checks of the hubness functions, on the host, before anything compiles."""
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

METRICS = ("euclidean", "cosine")


def _as_points(x, name: str = "x") -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a [N, d] array of points, got shape {x.shape}")
    return x


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")


def _first_rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
    return f"row {rows[0]}{more}"


def _check_points(x: Array, k: int, *, metric: str, include_self: bool, name: str = "x") -> None:
    """Raises ValueError for a bad k, too few points, non-finite rows or zero rows (cosine)."""
    _check_metric(metric)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"{name} needs at least 2 points for nearest neighbours, got N = {n}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if include_self and k > n:
        raise ValueError(f"k = {k} must be <= N = {n} (self included)")
    if not include_self and k >= n:
        raise ValueError(f"k = {k} must be <= N - 1 = {n - 1}: each point has only N - 1 "
                         f"other points (self excluded)")
    if isinstance(x, jax.core.Tracer):
        return  # values unknown under a transformation: only shapes are checked
    finite = np.asarray(jnp.all(jnp.isfinite(x), axis=1))
    if not finite.all():
        raise ValueError(f"{name} has non-finite values (NaN or inf) in {_first_rows(~finite)}")
    if metric == "cosine":
        zero = np.asarray(jnp.all(x == 0, axis=1))
        if zero.any():
            raise ValueError(f"{name} has an all-zero {_first_rows(zero)}: its cosine distance "
                             f"is undefined")


def _check_block_size(block_size: int) -> None:
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
