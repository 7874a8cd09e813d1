"""Flow matching / rectified flow on scikit-learn's 8x8 digits (docs/flow_matching.md), through train_and_evaluate.

  --config=configs/flow_digits.py                 velocity prediction, ode_euler with 50 steps
  --config=configs/flow_digits.py:x0              the network predicts x_0 instead (also "eps")
  --config=configs/flow_digits.py:logit_normal    SD3's logit-normal training times
  --config=configs/flow_digits.py:mnist5k         the 28x28 MNIST digits with configs/ddpm_mnist5k.py's
                                                  UNet, batch and step count
  --config=configs/flow_digits.py:smoke           a variant that runs in seconds (combine: "x0,smoke")
"""
import ml_collections

from configs import base, ddpm_mnist5k

_PREDICTIONS = ("velocity", "x0", "eps")
_OPTIONS = ("logit_normal", "mnist5k", "smoke")


def get_config(variant: str = ""):
    tokens = [t for t in variant.split(",") if t]
    unknown = [t for t in tokens if t not in (*_PREDICTIONS, *_OPTIONS)]
    if unknown or sum(t in _PREDICTIONS for t in tokens) > 1:
        raise ValueError(f"unknown variant {variant!r} of flow_digits; valid: at most one of "
                         f"{', '.join(_PREDICTIONS)}, optionally with any of {', '.join(_OPTIONS)}")
    prediction = next((t for t in tokens if t in _PREDICTIONS), "velocity")
    c = base.get_config()
    # x_t = (1 - t) x_0 + t eps on [t_min, 1]; the network sees time_input_scale * t.
    c.process = ml_collections.ConfigDict(dict(name="flow", prediction=prediction, t_min=1e-3,
                                               time_input_scale=999.0))
    c.train.loss_weighting = "none"   # the plain MSE in the target space (FM7)
    c.train.time_sampling = "logit_normal" if "logit_normal" in tokens else "uniform"
    c.sampler.name = "ode_euler"      # rectified flow's Euler sampler (= ode_ddim here, FM5)
    c.sampler.num_steps = 50
    c.sampler.clip_x0 = True
    c.eval.samplers = ("ode_euler", "ode_heun", "ode_adaptive", "ddim")
    c.eval.step_counts = (10, 50)
    if "mnist5k" in tokens:
        mnist = ddpm_mnist5k.get_config()
        c.data, c.model = mnist.data, mnist.model
        for field in ("num_steps", "batch_size", "checkpoint_every", "log_every"):
            c.train[field] = mnist.train[field]
    if "smoke" in tokens:
        base.apply_image_smoke(c)
        c.sampler.rtol = c.sampler.atol = 1e-3
        c.eval.samplers = ("ode_euler", "ode_adaptive")
    return c
