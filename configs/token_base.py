"""Shared settings of the token-process configs (docs/processes.md B3, B4, C2): a process on a text
dataset, the bidirectional TokenDenoiser, the baseline and improved designs.

The per-process files (configs/<process>_<data>.py) call `get_config(process, data, variant)`.
"""
import ml_collections

from configs import base

DATA = {  # name -> (seq_len, vocab_size) of udm.data.load_text_dataset
    "arithmetic": (9, 12),   # "ab+cd=efg", exact validity check
    "lee": (32, 41),         # gensim's Lee news corpus, character windows
}
PROCESS_FIELDS = {
    "masking": dict(name="masking"),
    "edit": dict(name="edit", version=2),
    "edit_v1": dict(name="edit", version=1),
    "d3pm_uniform": dict(name="d3pm_uniform", num_timesteps=20),
    "d3pm_absorbing": dict(name="d3pm_absorbing", num_timesteps=20),
    # B5: a learned encoder (16-d latent per token, vectors of norm 4) + hot diffusion in it.
    "encoding": dict(name="encoding", latent_dim=16, schedule="cosine", num_timesteps=200,
                     normalize=True, estimate="sample"),
}


def get_config(process: str, data: str, variant: str = ""):
    if variant not in ("", "smoke"):
        raise ValueError(f"unknown variant {variant!r} of {process}_{data}; valid: smoke")
    seq_len, vocab_size = DATA[data]
    c = base.get_config()
    c.data.name = data
    c.data.seq_len = seq_len
    c.process = ml_collections.ConfigDict(dict(PROCESS_FIELDS[process], seq_len=seq_len,
                                               vocab_size=vocab_size))
    if c.process.name in ("masking", "edit"):
        # Entropy-controlled draws of x0_hat (udm.entropy, docs/entropy_attention.md): None samples q itself;
        # --config.process.target_entropy=0.5 draws from the entropy-normalised q (nats).
        c.process.target_entropy = ml_collections.config_dict.placeholder(float)
    c.model = ml_collections.ConfigDict(dict(
        name="token_denoiser", width=64, depth=3, num_heads=4, mlp_ratio=4, dropout=0.0,
        attention_scale="standard"))
    # The arithmetic sums need longer training (20000 steps: ~11 min on 2 CPU cores).
    c.train.num_steps = 20000 if data == "arithmetic" else 3000
    c.train.batch_size = 128
    c.train.learning_rate = 1e-3
    T = c.process.get("num_timesteps", seq_len)
    c.sampler.name = "improved"
    c.sampler.num_steps = T
    c.eval.samplers = ("baseline", "improved")
    c.eval.step_counts = tuple(sorted({max(1, T // 3), T}))
    if process == "encoding":  # hot diffusion in the latent: DDPM's variance exists too
        c.eval.samplers = ("baseline", "ddpm", "improved")
        c.eval.step_counts = (T // 10, T)
    c.eval.num_samples = 512
    c.eval.batch_size = 128
    c.eval.grid_size = 32                  # decoded samples written per row
    if variant == "smoke":
        c.model.width, c.model.depth = 32, 1
        c.train.num_steps = 4
        c.train.batch_size = 16
        c.train.warmup_steps = 2
        c.train.log_every = 2
        c.train.checkpoint_every = 2
        c.eval.step_counts = (T,)
        c.eval.num_samples = 32
        c.eval.batch_size = 32
    return c
