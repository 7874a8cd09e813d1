"""Flax attention blocks with a named logit-scale rule: MultiHeadAttention over a sequence,
SelfAttention (residual) over the positions of a feature map."""
import math
from typing import Callable, Optional, Tuple

import chex
import flax.linen as nn
import jax.numpy as jnp

from udm.nn.attention.functional import attention
from udm.nn.attention.scales import ATTENTION_SCALES, valid_key_counts


# Initial learned entropy target H*_h(n) = offset_h + slope_h log n: in the untrained regime
# (random directions, |q| = |k| = sqrt(d)) standard attention has H ~ log n - lambda^2 d / 2 =
# log n - 1/2 (docs/entropy_attention.md A.9), so entropy normalisation starts where standard attention is.
_TARGET_OFFSET_INIT = -0.5
_TARGET_SLOPE_INIT = 1.0


def _check_scale_fields(owner: str, scale: str, p: float, n0: float,
                        entropy_target: Optional[float]):
    # Fail at construction, before any tracing, on a bad name or value.
    if scale not in ATTENTION_SCALES:
        raise ValueError(f"{owner}.scale must be one of {ATTENTION_SCALES.names()}, got {scale!r}")
    if not n0 > 1:
        raise ValueError(f"{owner}.n0 must be > 1, got {n0}")
    if not p >= 0:
        raise ValueError(f"{owner}.p must be >= 0, got {p}")
    if entropy_target is not None and not entropy_target >= 0:
        raise ValueError(f"{owner}.entropy_target must be >= 0 nats, got {entropy_target}")


def _scale_arguments(module: nn.Module, mask, shape, *, scale: str, n0: float,
                     entropy_target: Optional[float]) -> dict:
    """Creates the learned scale parameters of `module` and returns `attention`'s extra kwargs.

    "ssmax": `ssmax_s` [H], initialised to 1 / log n0, so that at n = n0 the scale is the
    standard one (and at every n the entropy-invariant one). "entropy_normalized" without a
    fixed target: `H*_h(n_i) = entropy_target_offset_h + entropy_target_slope_h log n_i`.
    """
    b, h, n, m, _ = shape
    rule = ATTENTION_SCALES.get(scale)
    if rule.needs_ssmax_s:
        s = module.param("ssmax_s", nn.initializers.constant(1.0 / math.log(n0)), (h,),
                         jnp.float32)
        return dict(ssmax_s=s)
    if rule.needs_entropy_target:
        if entropy_target is not None:
            return dict(entropy_target=entropy_target)
        offset = module.param("entropy_target_offset",
                              nn.initializers.constant(_TARGET_OFFSET_INIT), (h,), jnp.float32)
        slope = module.param("entropy_target_slope",
                             nn.initializers.constant(_TARGET_SLOPE_INIT), (h,), jnp.float32)
        log_n = jnp.log(jnp.maximum(valid_key_counts(mask, (b, h, n, m)), 1.0))
        target = jnp.reshape(offset, (1, h, 1, 1)) + jnp.reshape(slope, (1, h, 1, 1)) * log_n
        return dict(entropy_target=target[..., 0])
    return {}


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention over a sequence with a named logit-scale rule.

    `y = W_o attention(W_q x, W_k x, W_v x)` with lambda_i from `scale` (see `attention`).

    Attributes:
        num_heads: number of heads H.
        head_dim: per-head dimension d; defaults to the input features divided by H.
        out_features: output features; defaults to the input features.
        scale: rule name in ATTENTION_SCALES.
        p, n0: power-rule exponent and calibration length.
        entropy_target: fixed target entropy (nats) for "entropy_normalized"; None learns
            `H*_h(n) = offset_h + slope_h log n`, initialised to log n - 1/2.
        use_bias: biases in the projections.
        implementation: passed to `jax.nn.dot_product_attention`.
    """
    num_heads: int
    head_dim: Optional[int] = None
    out_features: Optional[int] = None
    scale: str = "standard"
    p: float = 0.5
    n0: float = 512.0
    entropy_target: Optional[float] = None
    use_bias: bool = True
    implementation: Optional[str] = None

    def __post_init__(self):
        _check_scale_fields("MultiHeadAttention", self.scale, self.p, self.n0, self.entropy_target)
        if self.num_heads < 1:
            raise ValueError(f"MultiHeadAttention.num_heads must be >= 1, got {self.num_heads}")
        super().__post_init__()

    @nn.compact
    def __call__(
            self,
            x: chex.Array,
            *,
            mask: Optional[chex.Array] = None,
            rope_fn: Optional[Callable[[chex.Array, chex.Array], Tuple[chex.Array, chex.Array]]] = None,
    ) -> chex.Array:
        """Applies the layer.

        Args:
            x: [B, N, C] token features.
            mask: boolean [B, 1 or H, N, N] (True = may attend), or None.
            rope_fn: `(q, k) -> (q, k)` on [B, N, H, d] arrays, e.g. rotary positions,
                applied before the logits.

        Returns:
            [B, N, out_features].
        """
        chex.assert_rank(x, 3)
        b, n, c = x.shape
        if self.head_dim is None and c % self.num_heads:
            raise ValueError(f"MultiHeadAttention.num_heads={self.num_heads} must divide the "
                             f"input features {c} when head_dim is not given")
        head_dim = self.head_dim or c // self.num_heads
        qkv = nn.DenseGeneral((3, self.num_heads, head_dim), use_bias=self.use_bias,
                              name="qkv")(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if rope_fn is not None:
            q, k = rope_fn(q, k)
        extra = _scale_arguments(self, mask, (b, self.num_heads, n, n, head_dim), scale=self.scale,
                                 n0=self.n0, entropy_target=self.entropy_target)
        out = attention(q, k, v, mask=mask, scale=self.scale, p=self.p, n0=self.n0,
                        implementation=self.implementation, **extra)
        return nn.DenseGeneral(self.out_features or c, axis=(-2, -1), use_bias=self.use_bias,
                               name="out")(out)


class SelfAttention(nn.Module):
    """Residual multi-head self-attention over the H*W positions of a feature map.

    `y = x + W_o attn(W_qkv GroupNorm(x))`, with `W_o` zero-initialised so that the block
    is the identity at initialisation (the DDPM U-Net's AttnBlock, Ho et al., 2020); the
    attention uses the logit-scale rule `scale` with n = H*W keys (see `attention`).

    Attributes:
        num_heads: number of heads; must divide the channel count C.
        num_groups: GroupNorm groups; must divide C.
        scale: name of the logit-scale rule in ATTENTION_SCALES ("standard" = 1/sqrt(d)).
        p, n0: power-rule exponent and calibration length.
        entropy_target: fixed target entropy (nats) for "entropy_normalized"; None learns it
            (see MultiHeadAttention).
    """
    num_heads: int = 1
    num_groups: int = 8
    scale: str = "standard"
    p: float = 0.5
    n0: float = 512.0
    entropy_target: Optional[float] = None

    def __post_init__(self):
        _check_scale_fields("SelfAttention", self.scale, self.p, self.n0, self.entropy_target)
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

        y = nn.GroupNorm(num_groups=self.num_groups, name="norm")(x)
        qkv = nn.Dense(3 * c, name="qkv")(y.reshape(b, n, c))
        qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
        extra = _scale_arguments(self, None, (b, self.num_heads, n, n, head_dim), scale=self.scale,
                                 n0=self.n0, entropy_target=self.entropy_target)
        out = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], scale=self.scale, p=self.p,
                        n0=self.n0, **extra)
        out = nn.Dense(c, kernel_init=nn.initializers.zeros, name="proj_out")(out.reshape(b, n, c))
        return x + out.reshape(b, h, w, c)
