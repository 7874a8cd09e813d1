"""SN-DPM on the digits (docs/optimal_variance.md §3.5): as configs/npr_digits.py with a squared-noise head,
sigma_bar^2(x_t) = (beta_bar_t^2 / alpha_bar_t^2) max(h(x_t) - eps_theta^2, 0).

  python -m experiments.main --config=configs/sn_digits.py --workdir=workdir/sn_digits

`:smoke` runs in seconds.
"""
from configs import npr_digits


def get_config(variant: str = ""):
    c = npr_digits.get_config(variant)
    c.variance.head = "sn"
    c.sampler.variance = "sn"
    return c
