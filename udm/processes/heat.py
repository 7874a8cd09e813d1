"""Heat-dissipation forward F_t = V exp(-Lambda tau_t) V^T (docs/processes.md C1, Rissanen et al. 2206.13397).

The heat equation du/dtau = Laplacian(u) on an H x W image with Neumann (zero-flux) boundary is
diagonal in the orthonormal 2-D DCT-II basis V, with eigenvalues
-Lambda_mn = -pi^2 (n^2 / W^2 + m^2 / H^2) (m the vertical, n the horizontal frequency, in the
documented pixel units), so running it for a time tau is F = V exp(-Lambda tau) V^T: linear, symmetric,
contractive (eigenvalues in (0, 1]), constant images are fixed points (Lambda_00 = 0), and
F(tau) F(tau') = F(tau + tau'). It is a `LinearDegradationProcess` like the Cold-Diffusion blur,
with x_t = F_t(x_0) + sigma eps; with UDM the network predicts x_0 and samples with (B2.2) / (A8).
(Rissanen et al. instead train a network to predict the slightly less blurred state.)

Schedule choices, for 8x8 images. Rissanen et al. use log-spaced blur widths sigma_B from about
0.5 to a maximum of the order of the image size, tau = sigma_B^2 / 2, and sigma ~ 0.01; these
values are as recalled in docs/processes.md and are UNVERIFIED. Here tau_1 = 0.5^2 / 2 = 0.125 and
tau_max = 50: the slowest non-constant mode decays as exp(-pi^2 / 8^2 * 50) = exp(-7.7) ~ 5e-4,
so F_T(x_0) is the per-channel mean image to within 5e-4 of the data range.
"""
import math
from typing import Optional, Sequence

import numpy as np

from udm.processes.cold import LinearDegradationProcess, _check_image_shape


def dct_matrix(n: int) -> np.ndarray:
    """[n, n] orthonormal DCT-II: row k is c_k cos(pi (i + 1/2) k / n), c_0 = sqrt(1/n), c_k = sqrt(2/n)."""
    i = np.arange(n)
    d = np.cos(np.pi * (i[None, :] + 0.5) * i[:, None] / n) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def heat_operator(hw, tau: float) -> np.ndarray:
    """[P, P] float64 F = V exp(-Lambda tau) V^T on row-major [H, W] pixels (Neumann boundary)."""
    h, w = hw
    v = np.kron(dct_matrix(h), dct_matrix(w))  # rows: 2-D basis images, index m W + n
    m, n = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    lam = (np.pi ** 2 * (n ** 2 / w ** 2 + m ** 2 / h ** 2)).reshape(-1)
    return v.T @ (np.exp(-lam * tau)[:, None] * v)


def heat_dissipation(image_shape: Sequence[int] = (8, 8, 1), num_timesteps: int = 20,
                     tau_min: float = 0.125, tau_max: float = 50.0, sigma: float = 0.01,
                     prior_noise: float = 0.0,
                     taus: Optional[Sequence[float]] = None) -> LinearDegradationProcess:
    """x_t = V exp(-Lambda tau_t) V^T x_0 + sigma eps with tau_t log-spaced on [tau_min, tau_max].

    Args:
      image_shape: (H, W, C).
      num_timesteps: T >= 1.
      tau_min: tau_1 > 0 (default 0.125 = sigma_B^2 / 2 with sigma_B = 0.5; see module doc).
      tau_max: tau_T (default 50: F_T is the mean image to ~5e-4 on 8x8).
      sigma: noise std (default 0.01, Rissanen et al.'s order of magnitude, unverified).
      prior_noise: extra std added to prior samples.
      taus: optional explicit [T] positive tau_1..tau_T, normally increasing (overrides
        num_timesteps, tau_min and tau_max; tau_0 = 0 always).
    Returns:
      A LinearDegradationProcess without a prior; call `.fit_prior(train_images)` to sample.
    """
    image_shape = _check_image_shape(image_shape)
    if taus is None:
        if int(num_timesteps) < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        if not (0.0 < float(tau_min) <= float(tau_max) and math.isfinite(float(tau_max))):
            raise ValueError(f"need 0 < tau_min <= tau_max < inf, got tau_min={tau_min}, "
                             f"tau_max={tau_max}")
        taus = np.geomspace(float(tau_min), float(tau_max), int(num_timesteps))
    else:
        taus = np.asarray(taus, np.float64)
        if taus.ndim != 1 or taus.size < 1 or np.any(taus <= 0) or not np.all(np.isfinite(taus)):
            raise ValueError(f"taus must be a non-empty 1-D sequence of positive finite numbers, "
                             f"got {taus}")
    h, w, _ = image_shape
    ops = np.stack([np.eye(h * w)] + [heat_operator((h, w), tau) for tau in taus])
    return LinearDegradationProcess.from_operators(ops, image_shape, sigma=sigma,
                                                   prior_noise=prior_noise)
