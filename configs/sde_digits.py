"""Continuous-time score SDEs on scikit-learn's 8x8 digits (docs/sde_ode.md), through train_and_evaluate.

  --config=configs/sde_digits.py          VP SDE (the default)
  --config=configs/sde_digits.py:ve       VE SDE; also "subvp", "blog"
  --config=configs/sde_digits.py:ve,smoke a variant that runs in seconds
"""
import ml_collections

from configs import base

# Hyperparameters of each SDE: the Score SDE paper's CIFAR-10 values, except the VE sigma_max,
# which the paper sets to about the largest distance between training images (50 for CIFAR-10):
# for 64-pixel digits in [-1, 1] that distance is about 10, so 12 here.
_SDES = {
    "vp": dict(sde="vp", beta_min=0.1, beta_max=20.0),
    "subvp": dict(sde="subvp", beta_min=0.1, beta_max=20.0),
    "ve": dict(sde="ve", sigma_min=0.01, sigma_max=12.0),
    "blog": dict(sde="blog"),
}


def get_config(variant: str = ""):
    tokens = [t for t in variant.split(",") if t]
    unknown = [t for t in tokens if t not in (*_SDES, "smoke")]
    if unknown or sum(t in _SDES for t in tokens) > 1:
        raise ValueError(f"unknown variant {variant!r} of sde_digits; valid: one of "
                         f"{', '.join(_SDES)}, optionally with ',smoke'")
    kind = next((t for t in tokens if t in _SDES), "vp")
    c = base.get_config()
    c.process = ml_collections.ConfigDict(dict(name="sde", **_SDES[kind]))
    c.train.loss_weighting = "none"
    c.train.time_sampling = "uniform"
    c.sampler.name = "ode_adaptive"
    c.sampler.num_steps = 100
    c.sampler.clip_x0 = True
    c.eval.samplers = ("em", "pc", "ode_heun", "ode_adaptive")
    c.eval.step_counts = (100,)
    if "smoke" in tokens:
        base.apply_image_smoke(c)
        c.sampler.rtol = c.sampler.atol = 1e-3
    return c
