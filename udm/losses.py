"""The one training loss: fit the x_0 predictor of p(x_0 | x_t) (docs/udm.md A4-A5, docs/ddpm_ddim.md §1.3).

Every process, discrete or continuous time, is trained by `make_loss_fn`; what differs lives in
the process: the time draw (`sample_time`: U{1..T}, U(t_min, 1) or importance-sampled), the
corruption (`sample_eps`, `forward`), the time the network sees (`network_time`) and the
per-example loss (`loss`: w(t) times the eps / x0 / v MSE, denoising score matching with the
likelihood weighting, l1 for cold diffusion, cross-entropy for the token corruptions, the
encoding model's joint cross-entropy).
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from udm.processes.base import diagnostics, split_params


def drop_labels(key, labels, rate: float, null_label: int):
    """Label dropout for classifier-free guidance: each label becomes null_label with probability
    `rate`, independently (one uniform draw per label, dropped where it is < rate).

    Args:
      key: PRNG key.
      labels: int [B] class labels.
      rate: the dropout probability in [0, 1]; 0 keeps every label, 1 drops every one.
      null_label: the value standing for "no class" (the conditional UNet's num_classes).
    Returns:
      int [B], labels' dtype.
    """
    dropped = jax.random.uniform(key, labels.shape) < rate
    return jnp.where(dropped, jnp.asarray(null_label, labels.dtype), labels)


def make_loss_fn(process, apply_fn: Callable, *, weighting: str = "none",
                 time_sampling: str = "uniform", num_classes: Optional[int] = None,
                 label_dropout: float = 0.0):
    """Builds `loss_fn(params, x0, *, key, labels=None) -> (loss, aux)` for any process.

    Per example (docs/udm.md A4): t from `process.sample_time`, eps ~ q(eps), x_t = F_t(x_0, eps);
    the network output at (x_t, network_time(t)) is scored by
    `process.loss(t, x0, eps, output, weighting=...)`, times the importance ratio of the time
    draw where there is one.

    Args:
      process: a process (udm.processes). One with learned parameters (the encoding model)
        takes params = {"network": ..., "process": ...} and is trained jointly.
      apply_fn: `apply_fn(params, x_t [B, ...], t_input [B], key) -> output [B, ...]`; the key
        feeds dropout. A class-conditional network's takes the labels [B] as a fifth argument.
      weighting: a per-t loss weighting the process knows (Gaussian: LOSS_WEIGHTINGS; SDEs:
        "none" or "likelihood").
      time_sampling: "uniform", or "importance" (SDEs with the likelihood weighting).
      num_classes: a class-conditional network's class count C (C is its null label); None for
        an unconditional one.
      label_dropout: with num_classes, the probability that a label is replaced by the null
        label before the network sees it (`drop_labels`), so that one network learns both
        branches of classifier-free guidance.
    Returns:
      loss_fn(params, x0 [B, ...], *, key, labels=None) -> (scalar loss, dict of per-batch
      diagnostics, with the process's own `diagnostics()` where it learns parameters). labels,
      int [B] in [0, C), are required exactly when num_classes is set. Without labels the
      computation and the random draws are those of an unconditional loss; with them the key
      is split four ways, the fourth key driving the label dropout.
    """
    process.check_loss_options(weighting, time_sampling)  # fail before anything is traced
    if num_classes is not None and not 0.0 <= label_dropout <= 1.0:
        raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")

    def loss_fn(params, x0, *, key, labels=None):
        if (labels is None) != (num_classes is None):
            raise ValueError(f"labels must be given exactly when the network is class-"
                             f"conditional (num_classes={num_classes}); got labels="
                             f"{'None' if labels is None else 'an array'}")
        if labels is None:
            t_key, eps_key, net_key = jax.random.split(key, 3)
        else:
            t_key, eps_key, net_key, label_key = jax.random.split(key, 4)
        proc, network_params = split_params(process, params)
        t, ratio = proc.sample_time(t_key, x0.shape[0], time_sampling=time_sampling)
        eps = proc.sample_eps(eps_key, x0.shape, x0.dtype)
        xt = jax.vmap(proc.forward)(t, x0, eps)
        if labels is None:
            output = apply_fn(network_params, xt, proc.network_time(t), net_key)
        else:
            labels = drop_labels(label_key, labels, label_dropout, num_classes)
            output = apply_fn(network_params, xt, proc.network_time(t), net_key, labels)
        weighted, unweighted = jax.vmap(
            lambda *a: proc.loss(*a, weighting=weighting))(t, x0, eps, output)
        if ratio is not None:
            weighted = ratio * weighted
        aux = {"unweighted_loss": jnp.mean(unweighted), **diagnostics(proc)}
        return jnp.mean(weighted), aux

    return loss_fn
