"""DDPM/DDIM on scikit-learn's 8x8 digits: the default experiment of `make demo`.

  --config=configs/ddpm_digits.py                    unconditional (the default)
  --config=configs/ddpm_digits.py:smoke              a variant that runs in seconds
  --config=configs/ddpm_digits.py:conditional        class-conditional on the 10 digit labels,
                                                     trained with label dropout for
                                                     classifier-free guidance (docs/guidance.md)
  --config=configs/ddpm_digits.py:conditional,smoke  both
"""
from configs import base

_VARIANTS = ("conditional", "smoke")


def get_config(variant: str = ""):
    tokens = [t for t in variant.split(",") if t]
    unknown = [t for t in tokens if t not in _VARIANTS]
    if unknown or len(set(tokens)) != len(tokens):
        raise ValueError(f"unknown variant {variant!r} of ddpm_digits; valid: smoke, conditional, "
                         f"or conditional,smoke")
    c = base.get_config()
    if "conditional" in tokens:
        c.model.num_classes = 10     # digits 0-9; label 10 is the null label
        c.train.label_dropout = 0.1
    if "smoke" in tokens:
        base.apply_image_smoke(c)
        c.model.channel_mults = (1, 2)
    return c
