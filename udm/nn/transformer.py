"""A pre-LayerNorm Transformer encoder with rotary positions and a named attention scale."""
import functools
from typing import Optional

import chex
import flax.linen as nn
import jax.numpy as jnp

from udm.nn.attention import MultiHeadAttention


def rotary_embedding(x: chex.Array, positions: chex.Array, *, base: float = 10000.0) -> chex.Array:
    """Rotary position embedding (RoPE) of queries or keys.

    Feature pairs (x_i, x_{i + D/2}) are rotated by the angle `t * theta_i`,
    `theta_i = base^(-2i / D)`, i = 0..D/2-1, t = the token's position, so that
    `<R_s q, R_t k>` depends on the positions only through s - t (Su et al., 2021,
    "RoFormer: Enhanced Transformer with Rotary Position Embedding"). Pairing the two halves
    rather than neighbouring features is the same rotation up to a fixed permutation of the
    features, which a learned projection absorbs.

    Args:
        x: [B, N, H, D] queries or keys, D even.
        positions: [N] or [B, N] token positions (any real numbers; shifting them all by a
            constant leaves every q.k unchanged).
        base: wavelength base of the rotation frequencies.

    Returns:
        [B, N, H, D] rotated features in the dtype of `x`; every [D] vector keeps its norm.
    """
    chex.assert_rank(x, 4)
    b, n, h, d = x.shape
    if d % 2:
        raise ValueError(f"rotary_embedding needs an even head dimension, got D = {d}")
    positions = jnp.asarray(positions, jnp.float32)
    if positions.ndim == 1:
        positions = positions[None]
    if positions.shape not in ((1, n), (b, n)):
        raise ValueError(f"rotary_embedding positions must be [N] or [B, N] = [{n}] or "
                         f"[{b}, {n}], got {positions.shape}")
    half = d // 2
    theta = base ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / d)
    # Angles in float32 whatever the compute dtype: position * theta loses all precision in
    # bfloat16 long before the lengths we evaluate at.
    angles = positions[:, :, None, None] * theta[None, None, None, :]  # [B or 1, N, 1, D/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1 = x[..., :half].astype(jnp.float32)
    x2 = x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.astype(x.dtype)


def _rope_qk(q: chex.Array, k: chex.Array, *, positions: chex.Array, base: float):
    # Self-attention: queries and keys share the same positions.
    return (rotary_embedding(q, positions, base=base),
            rotary_embedding(k, positions, base=base))


class TransformerEncoder(nn.Module):
    """Bidirectional pre-LayerNorm Transformer over token ids, with RoPE and no absolute positions.

    `h_0 = E[tokens]`; per layer `h = h + Attn(LN(h))`, `h = h + MLP(LN(h))`;
    `logits = W LN(h_L)`. Positions enter only through the rotary embedding of queries and keys,
    so the same parameters run at any length; the attention logit scale follows the rule
    `attention_scale` (docs/entropy_attention.md Part A: "standard" = Attention-O, "entropy_invariant" =
    Attention-E), with n = the number of valid keys of each query.

    Attributes:
        vocab_size: number of token ids V (inputs and output classes).
        num_layers: number of blocks L.
        num_heads: heads H per attention layer.
        head_dim: per-head dimension d (even, for RoPE); the model width is H * d.
        mlp_dim: hidden width of the GELU MLP.
        attention_scale: rule name in `udm.nn.attention.ATTENTION_SCALES`.
        p: exponent of the "power" rule.
        n0: calibration length of the length-aware rules.
        rope_base: wavelength base of RoPE.
    """
    vocab_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    attention_scale: str = "standard"
    p: float = 0.5
    n0: float = 512.0
    rope_base: float = 10000.0

    def __post_init__(self):
        for name in ("vocab_size", "num_layers", "num_heads", "head_dim", "mlp_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransformerEncoder.{name} must be >= 1, "
                                 f"got {getattr(self, name)}")
        if self.head_dim % 2:
            raise ValueError(f"TransformerEncoder.head_dim must be even for RoPE, got "
                             f"{self.head_dim}")
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: chex.Array, *, mask: Optional[chex.Array] = None) -> chex.Array:
        """Applies the encoder.

        Args:
            tokens: [B, N] int token ids in [0, vocab_size).
            mask: boolean [B, 1 or H, N, N] (True = may attend), e.g. padding, or None.

        Returns:
            [B, N, vocab_size] float32 logits.
        """
        chex.assert_rank(tokens, 2)
        b, n = tokens.shape
        width = self.num_heads * self.head_dim
        h = nn.Embed(self.vocab_size, width, name="embed")(tokens)
        rope_fn = functools.partial(_rope_qk, positions=jnp.arange(n), base=self.rope_base)
        for layer in range(self.num_layers):
            y = nn.LayerNorm(name=f"attn_norm_{layer}")(h)
            h = h + MultiHeadAttention(num_heads=self.num_heads, head_dim=self.head_dim,
                                       out_features=width, scale=self.attention_scale,
                                       p=self.p, n0=self.n0, name=f"attn_{layer}")(
                    y, mask=mask, rope_fn=rope_fn)
            y = nn.LayerNorm(name=f"mlp_norm_{layer}")(h)
            y = nn.Dense(self.mlp_dim, name=f"mlp_in_{layer}")(y)
            y = nn.Dense(width, name=f"mlp_out_{layer}")(nn.gelu(y))
            h = h + y
        h = nn.LayerNorm(name="final_norm")(h)
        return nn.Dense(self.vocab_size, name="logits")(h).astype(jnp.float32)
