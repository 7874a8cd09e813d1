"""Optimal reverse variances: Analytic-DPM (docs/optimal_variance.md §2) and the ML estimates of §3.3.

Blog notation: x_t = alpha_bar_t x_0 + beta_bar_t eps. A reverse step t -> s of the DDIM family
(docs/optimal_variance.md §2.1) with the point estimate x0_hat replaced by p(x_0|x_t) ~ N(mu_bar(x_t),
sigma_bar_t^2 I) has the same mean and the variance

    sigma_s^2 + gamma_{t,s}^2 sigma_bar_t^2,
    gamma_{t,s} = alpha_bar_s - alpha_bar_t sqrt(beta_bar_s^2 - sigma_s^2) / beta_bar_t   (V1)

on any sub-sequence (sigma_s = eta * the DDPM value recomputed on the step, docs/ddpm_ddim.md §2.4).
sigma_bar_t depends on t only, so a [T + 1] array of it serves every grid: it is the
`sigma_bar` hook of `udm.sampling.make_sampler` (which adds N(0, sigma_bar_t^2) to x0_hat,
realising exactly (V1) because x0_hat enters x_s with the coefficient gamma_{t,s}).

Estimates of sigma_bar_t^2 from an eps predictor `eps_fn(params, x_t [B, ...], t) -> [B, ...]`,
by Monte Carlo over training data (x_t = alpha_bar_t x_0 + beta_bar_t eps):
  analytic (V3):      (beta_bar_t^2 / alpha_bar_t^2) (1 - Gamma_t),  Gamma_t = E||eps_theta||^2/d;
  ML isotropic (V5):  (beta_bar_t^2 / alpha_bar_t^2) E||eps - eps_theta||^2 / d;
and their diagonal forms (V4, V6). All are clipped into [0, min(beta_bar_t^2 / alpha_bar_t^2,
max_var)] (docs/optimal_variance.md §2.3, §2.5 step 2), max_var = ((b - a)/2)^2 for data in [a, b].
Sources: Bao et al. arXiv 2201.06503 and 2206.07309; kexue.fm/archives/9245, 9246.
"""
from udm.variance.moments import (EpsFn, eps_fn_from_x0_predictor, estimate_eps_mse,
                                  estimate_gamma)
from udm.variance.reverse import (HEAD_VARIANCES, MONTE_CARLO_VARIANCES, SAMPLING_VARIANCES,
                                  VARIANCES, VarianceChoice, analytic_sigma_bar,
                                  analytic_sigma_bar_sq, clip_sigma_bar_sq, corrected_reverse_var,
                                  estimate_sigma_bar, ml_sigma_bar, ml_sigma_bar_sq,
                                  pixel_clip_var, reverse_variance, sampling_clip,
                                  sampling_sigma_bar, sigma_bar_table, std_cap, step_coefficients)
from udm.variance.trajectory import (chain_from_grid, chain_reverse_var, optimal_trajectory,
                                     trajectory_costs)

__all__ = [
        "EpsFn",
        "HEAD_VARIANCES",
        "MONTE_CARLO_VARIANCES",
        "SAMPLING_VARIANCES",
        "VARIANCES",
        "VarianceChoice",
        "analytic_sigma_bar",
        "analytic_sigma_bar_sq",
        "chain_from_grid",
        "chain_reverse_var",
        "clip_sigma_bar_sq",
        "corrected_reverse_var",
        "eps_fn_from_x0_predictor",
        "estimate_eps_mse",
        "estimate_gamma",
        "estimate_sigma_bar",
        "ml_sigma_bar",
        "ml_sigma_bar_sq",
        "optimal_trajectory",
        "pixel_clip_var",
        "reverse_variance",
        "sampling_clip",
        "sampling_sigma_bar",
        "sigma_bar_table",
        "std_cap",
        "step_coefficients",
        "trajectory_costs",
]
