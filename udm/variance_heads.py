"""NPR-DPM and SN-DPM: state-dependent diagonal reverse variances (docs/optimal_variance.md §3.4-3.7).

A small convolutional head (`udm.nn.VarianceHead`) sits on the last features of the frozen mean
network (the UNet's `return_features`) and is trained in a second stage, the mean model
untouched (docs/optimal_variance.md §3.7):

    NPR (V7): g = argmin E || (eps - eps_theta(x_t, t))^2 - g(x_t, t) ||^2,
              sigma_bar_t^2(x_t) = (beta_bar_t^2 / alpha_bar_t^2) g(x_t, t);
    SN  (V8): h = argmin E || eps^2 - h(x_t, t) ||^2,
              sigma_bar_t^2(x_t) = (beta_bar_t^2 / alpha_bar_t^2) max(h(x_t, t) - eps_theta^2, 0),

x_t = alpha_bar_t x_0 + beta_bar_t eps, squares element-wise (a diagonal variance). Both are
clipped into [0, min(beta_bar_t^2 / alpha_bar_t^2, max_var)] as the isotropic estimates. The
sampler receives an `Estimate(x0_hat, std)` and the reverse step t -> s gets the diagonal
variance sigma_s^2 + gamma_{t,s}^2 sigma_bar_t^2(x_t) (docs/optimal_variance.md §3.6).
Source: Bao et al., arXiv 2206.07309 (ICML 2022); kexue.fm/archives/9246.
"""
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from udm.sampling import Estimate

Array = Any
HEAD_KINDS = ("npr", "sn")


def check_kind(kind: str) -> str:
    if kind not in HEAD_KINDS:
        raise ValueError(f"variance head kind must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
    return kind


def mean_features_fn(process, model) -> Callable:
    """`(mean_params, x_t [B, ...], t [B]) -> (eps_theta, x0_hat, features)` of a UNet mean model.

    eps_theta and x0_hat are the network output converted by the process (any prediction
    target); features are the UNet's last features (`return_features=True`).
    """
    def fn(mean_params, xt, t):
        out, features = model.apply({"params": mean_params}, xt, t, return_features=True)
        x0_hat = jax.vmap(process.x0_from_output)(t, xt, out)
        eps = out if process.prediction == "eps" else jax.vmap(process.invert)(t, x0_hat, xt)
        return eps, x0_hat, features

    return fn


def head_target(kind: str, eps: Array, eps_theta: Array) -> Array:
    """The regression target: (eps - eps_theta)^2 (NPR, V7) or eps^2 (SN, V8)."""
    return (eps - eps_theta) ** 2 if check_kind(kind) == "npr" else eps ** 2


def head_sigma_bar_sq(kind: str, process, t, eps_theta: Array, head_out: Array, *,
                      max_var: Optional[float] = None, min_var: float = 0.0) -> Array:
    """sigma_bar_t^2(x_t), element-wise, from the head output at one time t (V7 / V8), clipped.

        npr: r max(g, 0);  sn: r max(h - eps_theta^2, 0);  r = beta_bar_t^2 / alpha_bar_t^2,
        then into [min(min_var, upper), upper], upper = min(r, max_var).

    Args:
        kind: "npr" or "sn".
        process: GaussianProcess.
        t: scalar int time.
        eps_theta: [B, ...] the frozen mean model's eps.
        head_out: [B, ...] the head's output g or h.
        max_var: optional bound on Var[x_0] (1 for data in [-1, 1]).
        min_var: optional floor (0: none). A coordinate the head calls certain gets variance 0,
            which a likelihood's decoder cannot take; `udm.variance.pixel_clip_var(1)` is a
            floor on the scale of one grey level.

    Returns:
        float32 [B, ...].
    """
    moment = head_out if check_kind(kind) == "npr" else head_out - eps_theta ** 2
    ratio = (process.beta_bar[t] / process.alpha_bar[t]) ** 2
    upper = ratio if max_var is None else jnp.minimum(ratio, max_var)
    return jnp.clip(ratio * moment, jnp.minimum(min_var, upper), upper).astype(jnp.float32)


def make_head_loss_fn(process, features_fn: Callable, head_apply: Callable, mean_params, *,
                      kind: str):
    """`loss_fn(head_params, x0, *, key) -> (loss, aux)` of the second training stage.

    Per example t ~ U{1..T}, eps ~ N(0, I), x_t = alpha_bar_t x_0 + beta_bar_t eps; the head
    output at x_t is regressed onto `head_target` (mean over coordinates and batch). The mean
    model enters through `stop_gradient`: only the head learns (docs/optimal_variance.md §3.7).

    Args:
        process: GaussianProcess.
        features_fn: from `mean_features_fn`.
        head_apply: `(head_params, features) -> [B, ...]`.
        mean_params: the frozen mean model's parameters.
        kind: "npr" or "sn".
    """
    check_kind(kind)

    def loss_fn(head_params, x0, *, key):
        t_key, eps_key = jax.random.split(key)
        batch = x0.shape[0]
        t = jax.random.randint(t_key, (batch,), 1, process.num_timesteps + 1)
        eps = jax.random.normal(eps_key, x0.shape, x0.dtype)
        xt = jax.vmap(process.forward)(t, x0, eps)
        eps_theta, _, features = jax.lax.stop_gradient(features_fn(mean_params, xt, t))
        target = head_target(kind, eps, eps_theta)
        loss = jnp.mean((head_apply(head_params, features) - target) ** 2)
        return loss, {"target_mean": jnp.mean(target)}

    return loss_fn


def head_predictor(process, features_fn: Callable, head_apply: Callable, *, kind: str,
                   clip: Optional[float] = None, max_var: Optional[float] = None,
                   min_var: float = 0.0):
    """An x_0 predictor returning `Estimate(x0_hat, sigma_bar_t(x_t))` for make_sampler.

    `params` is the dict {"mean": mean model params, "head": head params}; one network call per
    step gives both. x0_hat is clipped to [-clip, clip] when clip is given; max_var and
    min_var bound the variance as in `head_sigma_bar_sq`.
    """
    check_kind(kind)

    def predictor(params, xt, t):
        t_batch = jnp.full((xt.shape[0],), t, dtype=jnp.int32)
        eps_theta, x0_hat, features = features_fn(params["mean"], xt, t_batch)
        var = head_sigma_bar_sq(kind, process, t, eps_theta,
                                head_apply(params["head"], features), max_var=max_var,
                                min_var=min_var)
        if clip is not None:
            x0_hat = jnp.clip(x0_hat, -clip, clip)
        return Estimate(x0_hat, jnp.sqrt(var))

    return predictor


class HeadModel(NamedTuple):
    """A trained NPR / SN variance head for the sampler (see `head_predictor`)."""
    kind: str
    features_fn: Callable
    head_apply: Callable
    params: Any
