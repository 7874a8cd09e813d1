"""The DDPM paper's CIFAR-10 model (35.7M parameters) for users with an accelerator.

Data: `--config.data.name=tfds:cifar10` when tensorflow-datasets is installed, or an .npz of
uint8 images via `--config.data.name=npz --config.data.path=cifar10.npz`. The paper trains
800k steps at batch 128, lr 2e-4 with 5000 warm-up steps, EMA 0.9999, linear schedule,
dropout 0.1. On CPU only the `:smoke` variant is meant to run.
"""
from configs import base


def get_config(variant: str = ""):
    c = base.get_config()
    c.data.name = "tfds:cifar10"
    c.process.schedule = "linear"
    c.model.channels = 128
    c.model.channel_mults = (1, 2, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attention_resolutions = (16,)
    c.model.dropout = 0.1
    c.model.num_groups = 32
    c.train.num_steps = 800_000
    c.train.batch_size = 128
    c.train.learning_rate = 2e-4
    c.train.warmup_steps = 5000
    c.train.ema_decay = 0.9999
    c.train.checkpoint_every = 10_000
    c.train.log_every = 100
    c.eval.samplers = ("ddim",)
    c.eval.step_counts = (10, 50, 100)
    c.eval.num_samples = 10_000
    c.eval.batch_size = 512
    if variant == "smoke":
        # Same architecture family at toy width on random 32x32x3 images supplied as npz.
        c.model.channels = 16
        c.model.num_res_blocks = 1
        c.model.num_groups = 8
        c.model.dropout = 0.0
        c.train.num_steps = 2
        c.train.batch_size = 16
        c.train.warmup_steps = 1
        c.train.log_every = 1
        c.train.checkpoint_every = 2
        c.sampler.num_steps = 3
        c.eval.step_counts = (3,)
        c.eval.num_samples = 16
        c.eval.batch_size = 16
        c.eval.classifier_steps = 20
        c.eval.grid_size = 16
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of ddpm_cifar10; valid: smoke")
    return c
