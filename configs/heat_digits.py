"""Inverse heat dissipation (docs/processes.md C1) on the 8x8 digits: F_t = V exp(-Lambda tau_t) V^T (DCT)
plus small noise sigma, an x_0-predicting UNet (l1 loss), the naive and improved designs.

  python -m experiments.main --config=configs/heat_digits.py --workdir=workdir/heat_digits

Variants: "noisy" (prior noise on the collapsed state), "smoke".
"""
import ml_collections

from configs import cold_digits


def get_config(variant: str = ""):
    c = cold_digits.get_config(variant)
    prior_noise = c.process.prior_noise
    c.process = ml_collections.ConfigDict(dict(
        name="heat", image_shape=(8, 8, 1), num_timesteps=20, tau_min=0.125, tau_max=50.0,
        sigma=0.01, prior_noise=prior_noise))
    return c
