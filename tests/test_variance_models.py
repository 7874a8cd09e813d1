"""udm.pipeline.variance_models with an oracle mean model: no training.

For Gaussian data x_0 ~ N(MEAN, STD^2 I) the exact E[x_0 | x_t] and its spread sigma_bar_t are
known, so the Analytic-DPM variance (V1) built from them is the best isotropic reverse variance
and its bound must beat DDPM's fixed ones (docs/optimal_variance.md §2).
"""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm import oracles, variance
from udm.pipeline import variance_models
from udm.processes import PROCESSES
from udm.sampling import time_grid
from udm.variance_heads import HeadModel

MEAN, STD, LEVELS = 0.1, 0.3, 17
PROCESS = PROCESSES.get("gaussian")(schedule="blog", num_timesteps=20)


def _oracle_eps(params, xt, t):
    """The eps a perfect network outputs for the Gaussian data: (x_t - a E[x_0 | x_t]) / b."""
    del params
    t = t[0]  # every example shares the time
    a, b = PROCESS.marginal(t)
    x0_hat = oracles.gaussian_posterior_mean(PROCESS, MEAN, STD)(None, xt, t)
    return (xt - a * x0_hat) / b


def _exact_sigma_bar():
    """sqrt(Var[x_0 | x_t]) = STD b / sqrt(a^2 STD^2 + b^2) for t = 0..T."""
    a, b = PROCESS.alpha_bar, PROCESS.beta_bar
    return STD * b / jnp.sqrt(a ** 2 * STD ** 2 + b ** 2)


def _models(**heads):
    return variance_models.VarianceModels(
            types.SimpleNamespace(process=PROCESS), "mean params", _oracle_eps, heads,
            {"analytic": _exact_sigma_bar()}, train_seconds=0.0)


def _images(n=48):
    """Gaussian data on the 17-level grid of [-1, 1]."""
    x = MEAN + STD * np.random.default_rng(0).standard_normal((n, 3, 3, 1))
    return (np.round((np.clip(x, -1, 1) + 1) / 2 * (LEVELS - 1)) / (LEVELS - 1) * 2 - 1
            ).astype(np.float32)


def test_spacing_and_sampler_params():
    head = HeadModel("npr", None, None, "head params")
    models = _models(npr=head)
    assert models.spacing("uniform", 5) == "uniform"
    optimal = models.spacing("optimal", 4, bin_width=0.125)
    np.testing.assert_array_equal(optimal, variance.optimal_trajectory(
            PROCESS, _exact_sigma_bar() ** 2, 4, bin_width=0.125))
    assert models.spacing("optimal", 4, bin_width=0.125) is optimal  # computed once
    with pytest.raises(ValueError, match="trajectory"):
        models.spacing("best", 4)
    assert models.sampler_params("npr") == {"mean": "mean params", "head": "head params"}
    assert models.sampler_params("analytic") == "mean params"


def test_bound_with_the_exact_analytic_variance_beats_the_fixed_large_one():
    """Each variance compiles its own bound, so one fixed variance is compared: the large one
    (3.92 against 3.74 bits/dim here; the small one gives 4.02)."""
    models, images, key = _models(), _images(), jax.random.key(0)
    bpd = {name: variance_models.bound_bits_per_dim(models, name, 2, images, num_levels=LEVELS,
                                                    batch_size=16, key=key)
           for name in ("fixed_large", "analytic")}
    assert all(np.isfinite(r["bpd"]) and r["sem"] > 0 for r in bpd.values())
    assert bpd["analytic"]["bpd"] < bpd["fixed_large"]["bpd"] - 0.05
    assert bpd["analytic"]["tau_1"] == int(time_grid(PROCESS, 2, "uniform")[-1, 0])
