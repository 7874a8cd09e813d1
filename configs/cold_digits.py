"""Cold diffusion (docs/processes.md B2) on the 8x8 digits: repeated Gaussian blur, an x_0-predicting UNet
trained with the l1 loss, sampled with the naive (B2.1, "baseline") and improved (B2.2,
"improved") designs of the one scan sampler.

  python -m experiments.main --config=configs/cold_digits.py --workdir=workdir/cold_digits

Variants (comma-separated): "noisy" adds a little noise to the collapsed state of the prior
(Cold Diffusion's remedy for the many-to-one blur), "smoke" runs in seconds.
"""
import ml_collections

from configs import ddpm_digits


def get_config(variant: str = ""):
    options = [v for v in variant.split(",") if v]
    unknown = set(options) - {"noisy", "smoke"}
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)} of cold_digits; valid: noisy, smoke")
    c = ddpm_digits.get_config("smoke" if "smoke" in options else "")
    # Cold Diffusion's MNIST blur (T = 20, 11x11 kernel, std 7, circular) scaled by 8/28.
    c.process = ml_collections.ConfigDict(dict(
        name="cold_blur", image_shape=(8, 8, 1), num_timesteps=20, kernel_size=5,
        kernel_std=2.0, padding="circular", sigma=0.0,
        prior_noise=0.1 if "noisy" in options else 0.0))
    c.sampler.name = "improved"
    c.sampler.num_steps = 20
    c.eval.samplers = ("baseline", "improved")
    c.eval.step_counts = (5, 20)
    if "smoke" in options:
        c.sampler.num_steps = 5
        c.eval.step_counts = (5,)
    return c
