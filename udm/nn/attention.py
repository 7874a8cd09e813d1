"""Multi-head dot-product attention with a named logit scale, and a self-attention block for images."""
import math
from typing import Callable, Union

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from udm.registry import Registry

# A scale rule maps (number of keys n, head dimension d) to the logit scale lambda in
# softmax(lambda q.k). Plain functions of static ints, so the maths stays testable without Flax.
ScaleFn = Callable[[int, int], float]

ATTENTION_SCALES: Registry[ScaleFn] = Registry("attention scale")


@ATTENTION_SCALES.register("standard")
def standard_scale(n_keys: int, head_dim: int) -> float:
    """Standard ("Attention-O") scale `lambda = 1 / sqrt(d)`, independent of the number of keys.

    Args:
        n_keys: number of keys attended over (unused by this rule).
        head_dim: per-head feature dimension d.

    Returns:
        The scale as a Python float.
    """
    del n_keys
    return 1.0 / math.sqrt(head_dim)


def dot_product_attention(
        q: chex.Array, k: chex.Array, v: chex.Array, *, scale: Union[float, chex.Array]
) -> chex.Array:
    """Per-head softmax attention `o_i = sum_j a_ij v_j`, `a_ij = softmax_j(scale * q_i . k_j)`.

    Equation (E1) of spec 05 with a generic scale lambda; Vaswani et al. (2017) use
    `scale = 1 / sqrt(d)`.

    Args:
        q: [B, N, H, D] queries.
        k: [B, M, H, D] keys.
        v: [B, M, H, D] values.
        scale: scalar lambda multiplying the logits.

    Returns:
        [B, N, H, D] attention outputs, in the dtype of `v`.
    """
    chex.assert_rank([q, k, v], 4)
    chex.assert_equal_shape([k, v])
    chex.assert_equal_shape([q, k], dims=(0, 2, 3))
    logits = scale * jnp.einsum("bnhd,bmhd->bhnm", q, k)
    # Softmax in float32 so that a low-precision compute dtype cannot overflow the exponent.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhnm,bmhd->bnhd", weights, v)


class SelfAttention(nn.Module):
    """Residual multi-head self-attention over the H*W positions of a feature map.

    `y = x + W_o attn(W_qkv GroupNorm(x))`, with `W_o` zero-initialised so that the block
    is the identity at initialisation (the DDPM U-Net's AttnBlock, Ho et al., 2020).

    Attributes:
        num_heads: number of heads; must divide the channel count C.
        num_groups: GroupNorm groups; must divide C.
        scale: name of the logit-scale rule in ATTENTION_SCALES ("standard" = 1/sqrt(d)).
    """
    num_heads: int = 1
    num_groups: int = 8
    scale: str = "standard"

    def __post_init__(self):
        # Fail at construction, before any tracing, on a name that is not registered.
        ATTENTION_SCALES.get(self.scale)
        if self.num_heads < 1:
            raise ValueError(f"SelfAttention.num_heads must be >= 1, got {self.num_heads}")
        if self.num_groups < 1:
            raise ValueError(f"SelfAttention.num_groups must be >= 1, got {self.num_groups}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: chex.Array) -> chex.Array:
        """Applies the block.

        Args:
            x: [B, H, W, C] feature map.

        Returns:
            [B, H, W, C], the input plus the attention update.
        """
        chex.assert_rank(x, 4)
        b, h, w, c = x.shape
        if c % self.num_heads:
            raise ValueError(
                    f"SelfAttention.num_heads={self.num_heads} must divide the channel count {c}")
        if c % self.num_groups:
            raise ValueError(
                    f"SelfAttention.num_groups={self.num_groups} must divide the channel count {c}")
        head_dim = c // self.num_heads
        n = h * w
        lam = ATTENTION_SCALES.get(self.scale)(n, head_dim)

        y = nn.GroupNorm(num_groups=self.num_groups, name="norm")(x)
        qkv = nn.Dense(3 * c, name="qkv")(y.reshape(b, n, c))
        qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
        out = dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], scale=lam)
        out = nn.Dense(c, kernel_init=nn.initializers.zeros, name="proj_out")(out.reshape(b, n, c))
        return x + out.reshape(b, h, w, c)
