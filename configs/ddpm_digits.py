"""DDPM/DDIM on scikit-learn's 8x8 digits: the default experiment of `make demo`.

`--config=configs/ddpm_digits.py:smoke` selects a variant that runs in seconds.
"""
from configs import base


def get_config(variant: str = ""):
    c = base.get_config()
    if variant == "smoke":
        c.model.channels = 8
        c.model.channel_mults = (1, 2)
        c.model.num_groups = 4
        c.train.num_steps = 4
        c.train.batch_size = 16
        c.train.warmup_steps = 2
        c.train.log_every = 2
        c.train.checkpoint_every = 2
        c.sampler.num_steps = 5
        c.eval.step_counts = (5,)
        c.eval.num_samples = 32
        c.eval.batch_size = 32
        c.eval.classifier_steps = 50
        c.eval.grid_size = 16
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of ddpm_digits; valid: smoke")
    return c
