"""Sinusoidal embedding of a (diffusion) time index."""
import math

import chex
import jax.numpy as jnp


def timestep_embedding(t: chex.Array, dim: int, max_period: float = 10000.0) -> chex.Array:
    """Embeds each time value as sines and cosines of geometrically spaced frequencies.

    With `half = dim // 2` and `w_i = max_period^(-i / half)` for `i = 0..half-1`,
    `emb(t) = [sin(t w_0), ..., sin(t w_{half-1}), cos(t w_0), ..., cos(t w_{half-1})]`,
    followed by one zero column when `dim` is odd. These are the Transformer's positional
    frequencies (Vaswani et al., 2017, section 3.5) in the sin-then-cos layout of the DDPM
    U-Net (Ho et al., 2020).

    Args:
        t: [B] integer or float time values, used as given (e.g. 1..1000, or in [0, 1]).
        dim: embedding width, at least 1.
        max_period: the longest period, reached by the last frequency pair in the limit.

    Returns:
        [B, dim] float32 embedding with entries in [-1, 1].
    """
    if dim < 1:
        raise ValueError(f"timestep_embedding dim must be >= 1, got {dim}")
    chex.assert_rank(t, 1)
    half = dim // 2
    # float32 throughout: the library must be right in float32 even when x64 is enabled.
    freqs = jnp.exp(-math.log(max_period) / max(half, 1) * jnp.arange(half, dtype=jnp.float32))
    angles = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb
