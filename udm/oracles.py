"""Exact x_0 predictors E[x_0 | x_t] for Gaussian-process data whose posterior is known.

They have the predictor signature `(params, x_t, t) -> x0_hat` (params ignored), so they plug
into every sampler exactly like a trained network; tests and notebooks use them as ground truth.
They work for every process with Gaussian marginals (`process.marginal(t)`), discrete or
continuous time.
"""
import jax
import jax.numpy as jnp

from udm.processes.sde import as_score_fn


def gaussian_posterior_mean(process, mean, std):
    """E[x_0 | x_t] for x_0 ~ N(mean, std^2 I): mean + a s^2 (x_t - a mean) / (a^2 s^2 + b^2)."""
    def predictor(params, xt, t):
        del params
        a, b = process.marginal(t)
        gain = a * std ** 2 / (a ** 2 * std ** 2 + b ** 2)
        return mean + gain * (xt - a * mean)

    return predictor


def correlated_gaussian_posterior_mean(process, mean, cov):
    """E[x_0 | x_t] for x_0 ~ N(mean, cov) with a full covariance (docs/inpainting.md (IP6)).

        E[x_0 | x_t] = mean + a cov (a^2 cov + b^2 I)^{-1} (x_t - a mean),   (a, b) = marginal(t).

    Args:
      mean: [d]; cov: [d, d] symmetric positive definite.
    Returns:
      predictor(params, x_t [B, d], t) -> [B, d].
    """
    mean = jnp.asarray(mean)
    cov = jnp.asarray(cov)
    eye = jnp.eye(cov.shape[-1], dtype=cov.dtype)

    def predictor(params, xt, t):
        del params
        a, b = process.marginal(t)
        # gain^T = (a^2 cov + b^2 I)^{-1} a cov (both factors symmetric)
        gain_t = jnp.linalg.solve(a ** 2 * cov + b ** 2 * eye, a * cov)
        centred = xt - a * jnp.broadcast_to(mean, xt.shape)
        return jnp.broadcast_to(mean, xt.shape) + centred @ gain_t

    return predictor


def gaussian_mixture_posterior_mean(process, means, stds, weights):
    """E[x_0 | x_t] for x_0 ~ sum_k w_k N(mu_k, s_k^2 I) in d dimensions.

    Args:
      means: [K, d] component means; stds: [K] isotropic stds; weights: [K], summing to 1.
    Returns:
      predictor(params, x_t [B, d], t) -> [B, d].
    """
    means = jnp.asarray(means)
    stds = jnp.asarray(stds)
    log_w = jnp.log(jnp.asarray(weights))

    def one(xt, t):
        a, b = process.marginal(t)
        var_t = a ** 2 * stds ** 2 + b ** 2                       # [K] marginal variance of x_t
        d = xt.shape[-1]
        sq = jnp.sum((xt[None, :] - a * means) ** 2, axis=-1)      # [K]
        log_resp = log_w - 0.5 * sq / var_t - 0.5 * d * jnp.log(var_t)
        resp = jax.nn.softmax(log_resp)                           # p(k | x_t)
        gain = a * stds ** 2 / var_t                              # [K]
        comp_means = means + gain[:, None] * (xt[None, :] - a * means)
        return resp @ comp_means

    def predictor(params, xt, t):
        del params
        return jax.vmap(one, in_axes=(0, None))(xt, t)

    return predictor


def mixture_responsibilities(means, stds, weights, x0):
    """p(k | x_0) for samples x_0 [N, d] of the mixture: used to read off recovered weights."""
    means = jnp.asarray(means)
    stds = jnp.asarray(stds)
    d = x0.shape[-1]
    sq = jnp.sum((x0[:, None, :] - means[None]) ** 2, axis=-1)   # [N, K]
    log_resp = (jnp.log(jnp.asarray(weights))[None] - 0.5 * sq / stds[None] ** 2
                - d * jnp.log(stds)[None])
    return jax.nn.softmax(log_resp, axis=-1)


# --- continuous time ---------------------------------------------------------------------------

def gaussian_score(sde, mean, std):
    """Exact score of p_t for x_0 ~ N(mean, std^2 I) under an SDE: `(params, x, t) -> score`."""
    return as_score_fn(sde, gaussian_posterior_mean(sde, mean, std), "x0")


def gaussian_mixture_score(sde, means, stds, weights):
    """Exact score of p_t for mixture data under an SDE, via (alpha_bar E[x_0|x_t] - x_t) / beta_bar^2."""
    x0_fn = gaussian_mixture_posterior_mean(sde, means, stds, weights)
    return as_score_fn(sde, x0_fn, "x0")
