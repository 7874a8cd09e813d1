"""Monte Carlo moments of an eps predictor over the data: Gamma_t and the per-t eps MSE."""
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from udm import parallel

Array = Any
# `eps_fn(params, x_t [B, ...], t int32 scalar) -> eps_hat [B, ...]`.
EpsFn = Callable[[Any, Array, Array], Array]


def eps_fn_from_x0_predictor(process, predictor: Callable) -> EpsFn:
    """Turns an x_0 predictor into an eps predictor: eps = (x_t - alpha_bar_t x0_hat) / beta_bar_t.

    Args:
        process: a GaussianProcess (alpha_bar, beta_bar [T + 1]).
        predictor: `(params, x_t [B, ...], t) -> x0_hat [B, ...]`, e.g. an oracle of udm.oracles.

    Returns:
        `eps_fn(params, x_t [B, ...], t) -> [B, ...]`, valid for t >= 1.
    """
    def eps_fn(params, xt, t):
        return process.invert(t, predictor(params, xt, t), xt)

    return eps_fn


# --- Monte Carlo moments of the eps predictor over the data ---------------------------------

def _statistic(name: str, eps: Array, eps_hat: Array, diagonal: bool) -> Array:
    """Per-example statistic: eps_hat^2 ("gamma") or (eps - eps_hat)^2 ("mse"), [B] or [B, ...]."""
    value = eps_hat ** 2 if name == "gamma" else (eps - eps_hat) ** 2
    if diagonal:
        return value
    return jnp.mean(value.reshape(value.shape[0], -1), axis=1)


def _monte_carlo(process, eps_fn, params, data, timesteps, key, *, statistic, diagonal,
                 num_samples, batch_size, mesh):
    """Mean and standard error over (x_0, eps) of a statistic, for every t: ([n, ...], [n, ...]).

    With a mesh each batch is split over its devices (the draws do not depend on it); the sums
    over the batch become cross-device reductions.
    """
    def split_batch(x):
        if mesh is None:
            return x
        return jax.lax.with_sharding_constraint(x, parallel.batch_sharded(mesh))

    num_data = data.shape[0]
    num_batches = num_samples // batch_size
    stat_shape = data.shape[1:] if diagonal else ()

    def per_t(t):
        t_key = jax.random.fold_in(key, t)

        def body(carry, b):
            total, total_sq = carry
            index_key, eps_key = jax.random.split(jax.random.fold_in(t_key, b))
            index = jax.random.randint(index_key, (batch_size,), 0, num_data)
            x0 = split_batch(data[index].astype(jnp.float32))
            eps = split_batch(jax.random.normal(eps_key, x0.shape, jnp.float32))
            xt = process.forward(t, x0, eps)
            stat = _statistic(statistic, eps, eps_fn(params, xt, t).astype(jnp.float32),
                              diagonal)
            return (total + jnp.sum(stat, axis=0), total_sq + jnp.sum(stat ** 2, axis=0)), None

        zeros = jnp.zeros(stat_shape, jnp.float32)
        (total, total_sq), _ = jax.lax.scan(body, (zeros, zeros),
                                            jnp.arange(num_batches, dtype=jnp.int32))
        mean = total / num_samples
        var = jnp.maximum(total_sq / num_samples - mean ** 2, 0.0)
        return mean, jnp.sqrt(var / max(num_samples - 1, 1))

    return jax.lax.map(per_t, timesteps)


_monte_carlo_jit = jax.jit(_monte_carlo, static_argnames=(
    "eps_fn", "statistic", "diagonal", "num_samples", "batch_size", "mesh"))


def _run_monte_carlo(statistic, process, eps_fn, params, data, timesteps, *, key, num_samples,
                     batch_size, diagonal, return_stderr, mesh):
    if num_samples < 1 or batch_size < 1 or num_samples % batch_size:
        raise ValueError(f"num_samples must be a positive multiple of batch_size, got "
                         f"num_samples={num_samples}, batch_size={batch_size}")
    if mesh is not None:
        parallel.check_divisible(batch_size, mesh, "batch_size")
        # Every process holds the whole data set; a global replicated copy for the program.
        data = parallel.replicate(np.asarray(data), mesh)
    timesteps = jnp.asarray(timesteps, jnp.int32)
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D, got shape {timesteps.shape}")
    t_np = np.asarray(timesteps)
    if t_np.size and (t_np.min() < 1 or t_np.max() > process.num_timesteps):
        raise ValueError(f"timesteps must lie in [1, T={process.num_timesteps}], got "
                         f"[{t_np.min()}, {t_np.max()}]")
    mean, stderr = _monte_carlo_jit(process, eps_fn, params, jnp.asarray(data), timesteps, key,
                                    statistic=statistic, diagonal=diagonal,
                                    num_samples=num_samples, batch_size=batch_size, mesh=mesh)
    return (mean, stderr) if return_stderr else mean


def estimate_gamma(process, eps_fn: EpsFn, params, data: Array, timesteps: Array, *, key,
                   num_samples: int, batch_size: int, diagonal: bool = False,
                   return_stderr: bool = False, mesh: Optional[Mesh] = None):
    """Monte Carlo Gamma_t = E_{x_t ~ p(x_t)} ||eps_theta(x_t, t)||^2 / d for each t (docs/optimal_variance.md §2.5).

        Gamma_t ~ (1/N) sum_n ||eps_theta(alpha_bar_t x_0^n + beta_bar_t eps^n, t)||^2 / d,
        x_0^n drawn uniformly from `data`, eps^n ~ N(0, I)   (diagonal: eps_theta^2, for V4).

    One jitted program: `lax.map` over t, `lax.scan` over batches (eps_fn is traced once).

    Args:
        process: GaussianProcess (alpha_bar, beta_bar [T + 1]).
        eps_fn: `(params, x_t [B, ...], t int32 scalar) -> [B, ...]`.
        params: passed to eps_fn.
        data: [N, ...] training examples, sampled with replacement.
        timesteps: int [n], each in [1, T].
        key: PRNG key (t's draws use fold_in(key, t)).
        num_samples: examples per t, a multiple of batch_size (author: 160).
        batch_size: B, examples per eps_fn call.
        diagonal: return the per-coordinate E[eps_theta^2] [n, ...] instead.
        return_stderr: also return the Monte Carlo standard errors.
        mesh: a data mesh (`udm.parallel.data_mesh`, all processes' devices): each batch of B
            is split over its devices (B must be a multiple of the device count) and `params`
            must be replicated on it. The estimate equals the unsharded one up to float
            summation order (tested with threefry and rbg keys).

    Returns:
        float32 [n] (or [n, ...]); with return_stderr, (gamma, stderr).
    """
    return _run_monte_carlo("gamma", process, eps_fn, params, data, timesteps, key=key,
                            num_samples=num_samples, batch_size=batch_size, diagonal=diagonal,
                            return_stderr=return_stderr, mesh=mesh)


def estimate_eps_mse(process, eps_fn: EpsFn, params, data: Array, timesteps: Array, *, key,
                     num_samples: int, batch_size: int, diagonal: bool = False,
                     return_stderr: bool = False, mesh: Optional[Mesh] = None):
    """Monte Carlo E||eps - eps_theta(x_t, t)||^2 / d for each t, the per-t eps loss (docs/optimal_variance.md §3.3).

        mse_t ~ (1/N) sum_n ||eps^n - eps_theta(alpha_bar_t x_0^n + beta_bar_t eps^n, t)||^2 / d
        (diagonal: the per-coordinate mean of (eps - eps_theta)^2, for V6).

    Args and Returns: as `estimate_gamma`.
    """
    return _run_monte_carlo("mse", process, eps_fn, params, data, timesteps, key=key,
                            num_samples=num_samples, batch_size=batch_size, diagonal=diagonal,
                            return_stderr=return_stderr, mesh=mesh)
