"""NPR-DPM on the digits (docs/optimal_variance.md §3.4): the DDPM digits model, then a noise-prediction-residual
head trained with the mean model frozen, sampled with its state-dependent diagonal variance.

  python -m experiments.main --config=configs/npr_digits.py --workdir=workdir/npr_digits

`:smoke` runs in seconds.
"""
from configs import ddpm_digits


def get_config(variant: str = ""):
    c = ddpm_digits.get_config(variant)
    c.variance.head = "npr"
    c.sampler.variance = "npr"
    c.sampler.name = "ddpm"
    c.eval.step_counts = (10, 25, 50, 100)
    if variant == "smoke":
        c.variance.head_steps = 4
        c.eval.step_counts = (5,)
    return c
