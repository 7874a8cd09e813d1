"""Multi-head softmax attention with a length-aware logit scale (spec 05 Part A), and Flax blocks."""
import math
from typing import Callable, Optional, Tuple, Union

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from udm.entropy import entropy_normalize
from udm.registry import Registry

Number = Union[int, float]

# A scale rule maps the number of valid keys n and the head dimension d to the logit scale
# lambda of softmax(lambda q.k). `n` is a Python int when every query sees the same keys (the
# rule then returns a Python float, and attention takes the fused path with one scalar scale),
# or a float array [B, H, N, 1] of per-query counts (the rule then returns a broadcastable array).
# Keyword arguments: `p`, `n0` (power rule and calibration length), `ssmax_s` ([1, H, 1, 1]).
ScaleFn = Callable[..., Union[float, chex.Array]]

ATTENTION_SCALES: Registry[ScaleFn] = Registry("attention scale")

# Rules whose attention rows are entropy-normalised after the softmax: they need the explicit
# [B, H, N, M] weights, so they never take the fused path.
_ENTROPY_NORMALIZED = "entropy_normalized"
# Rules with a learned per-head parameter.
_SSMAX = "ssmax"


def _log(n: Union[Number, chex.Array]) -> Union[float, chex.Array]:
    # Static counts stay Python floats, so a uniform scale is known before tracing.
    return math.log(n) if isinstance(n, (int, float)) else jnp.log(n)


@ATTENTION_SCALES.register("standard")
def standard_scale(n_keys, head_dim: int, *, p: float = 0.5, n0: float = 512.0, ssmax_s=None):
    """Standard ("Attention-O") scale, independent of the number of keys.

    `lambda = 1 / sqrt(d)` (spec 05, E1; Vaswani et al., 2017).

    Args:
        n_keys: number of valid keys n, int or [B, H, N, 1] (unused by this rule).
        head_dim: per-head feature dimension d.
        p, n0, ssmax_s: unused by this rule.

    Returns:
        The scale as a Python float.
    """
    del n_keys, p, n0, ssmax_s
    return 1.0 / math.sqrt(head_dim)


@ATTENTION_SCALES.register("entropy_invariant")
def entropy_invariant_scale(n_keys, head_dim: int, *, p: float = 0.5, n0: float = 512.0,
                            ssmax_s=None):
    """Entropy-invariant ("Attention-E") scale, calibrated to the standard one at n = n0.

    `lambda = log_{n0}(n) / sqrt(d) = (log n / log n0) / sqrt(d)`, n0 = 512 (spec 05, E3;
    Su, kexue.fm/archives/8823). A single visible key gives log 1 = 0: a zero scale, which is
    harmless because the softmax over one key is 1 whatever the scale.

    Args:
        n_keys: number of valid keys n >= 1, int or [B, H, N, 1].
        head_dim: per-head feature dimension d.
        p: unused by this rule.
        n0: calibration length where the rule equals the standard scale.
        ssmax_s: unused by this rule.

    Returns:
        A Python float for an int `n_keys`, else an array shaped like `n_keys`.
    """
    del p, ssmax_s
    return _log(n_keys) / (math.log(n0) * math.sqrt(head_dim))


@ATTENTION_SCALES.register("power")
def power_scale(n_keys, head_dim: int, *, p: float = 0.5, n0: float = 512.0, ssmax_s=None):
    """Interpolation between the standard (p = 0) and entropy-invariant (p = 1) scales.

    `lambda = (log n / log n0)^p / sqrt(d)` (spec 05, A.8); p = 0.5 is the ablation of A.9.

    Args:
        n_keys: number of valid keys n >= 1, int or [B, H, N, 1].
        head_dim: per-head feature dimension d.
        p: exponent of the length factor.
        n0: calibration length where the rule equals the standard scale.
        ssmax_s: unused by this rule.

    Returns:
        A Python float for an int `n_keys`, else an array shaped like `n_keys`.
    """
    del ssmax_s
    return (_log(n_keys) / math.log(n0)) ** p / math.sqrt(head_dim)


@ATTENTION_SCALES.register(_SSMAX)
def ssmax_scale(n_keys, head_dim: int, *, p: float = 0.5, n0: float = 512.0, ssmax_s=None):
    """Scalable-Softmax scale with a learned per-head factor s.

    `lambda_h = s_h log n / sqrt(d)` (Nakanishi, 2025, "Scalable-Softmax Is Superior for
    Attention"). With s_h = 1 / log n0 it is exactly the entropy-invariant scale E3.

    Args:
        n_keys: number of valid keys n >= 1, int or [B, H, N, 1].
        head_dim: per-head feature dimension d.
        p, n0: unused by this rule.
        ssmax_s: [1, H, 1, 1] per-head factors s_h.

    Returns:
        An array broadcastable to [B, H, N, 1].
    """
    del p, n0
    if ssmax_s is None:
        raise ValueError("the 'ssmax' attention scale needs the per-head factors ssmax_s [H]")
    return ssmax_s * _log(n_keys) / math.sqrt(head_dim)


@ATTENTION_SCALES.register(_ENTROPY_NORMALIZED)
def entropy_normalized_scale(n_keys, head_dim: int, *, p: float = 0.5, n0: float = 512.0,
                             ssmax_s=None):
    """Logit scale of entropy-normalised attention: the standard one, `lambda = 1 / sqrt(d)`.

    The rows are then mapped to a target entropy (spec 05, N1 and B.4; kexue.fm/archives/8829),
    which cancels any scale: `softmax(lambda z)^gamma` is `softmax(gamma lambda z)`.

    Args:
        n_keys, p, n0, ssmax_s: unused by this rule.
        head_dim: per-head feature dimension d.

    Returns:
        The scale as a Python float.
    """
    del n_keys, p, n0, ssmax_s
    return 1.0 / math.sqrt(head_dim)


def valid_key_counts(mask: Optional[chex.Array], shape: Tuple[int, int, int, int]) -> chex.Array:
    """Per-query number of keys a query may attend to, `n_i = sum_j mask_ij`.

    Args:
        mask: boolean [B, 1 or H, N, M] (True = may attend), or None (every key is valid).
        shape: (B, H, N, M).

    Returns:
        [B, H, N, 1] float32 counts.
    """
    b, h, n, m = shape
    if mask is None:
        return jnp.full((b, h, n, 1), float(m), jnp.float32)
    counts = jnp.sum(mask, axis=-1, keepdims=True, dtype=jnp.int32).astype(jnp.float32)
    return jnp.broadcast_to(counts, (b, h, n, 1))


def _check_n0(n0):
    if isinstance(n0, (int, float)) and not n0 > 1:
        raise ValueError(f"attention n0 must be > 1 (log n0 is a divisor), got {n0}")


def logit_scale(
        scale: str,
        shape: Tuple[int, int, int, int, int],
        *,
        mask: Optional[chex.Array] = None,
        p: float = 0.5,
        n0: float = 512.0,
        ssmax_s: Optional[chex.Array] = None,
) -> Union[float, chex.Array]:
    """The logit scale lambda_i of every query under the rule named `scale`.

    `lambda_i = rule(n_i, d)`, n_i = number of valid keys of query i (spec 05, A.8): the
    valid length of a padded example, i + 1 for causal attention. A query without any valid
    key gets the scale of n = 1; `attention` zeroes its output.

    Args:
        scale: rule name in ATTENTION_SCALES.
        shape: (B, H, N, M, D): batch, heads, queries, keys, head dimension.
        mask: boolean [B, 1 or H, N, M] (True = may attend), or None.
        p, n0: power-rule exponent and calibration length.
        ssmax_s: [H] Scalable-Softmax factors, needed by scale == "ssmax".

    Returns:
        A Python float when the scale is the same for every query (no mask and no per-head
        factor), else a float32 array [B, H, N, 1].
    """
    rule = ATTENTION_SCALES.get(scale)
    _check_n0(n0)
    b, h, n, m, d = shape
    if ssmax_s is not None:
        chex.assert_shape(ssmax_s, (h,))
        ssmax_s = jnp.reshape(ssmax_s.astype(jnp.float32), (1, h, 1, 1))
    if mask is None and scale != _SSMAX:
        return float(rule(m, d, p=p, n0=n0))
    # log(0) would make the scale -inf and the logits NaN for an empty row.
    counts = jnp.maximum(valid_key_counts(mask, (b, h, n, m)), 1.0)
    return jnp.broadcast_to(rule(counts, d, p=p, n0=n0, ssmax_s=ssmax_s), (b, h, n, 1))


def _check_inputs(q, k, v, mask):
    chex.assert_rank([q, k, v], 4)
    chex.assert_equal_shape([k, v])
    chex.assert_equal_shape([q, k], dims=(0, 2, 3))
    if mask is not None:
        b, n, h, _ = q.shape
        m = k.shape[1]
        if mask.dtype != jnp.bool_ or mask.ndim != 4 or mask.shape[1] not in (1, h) or (
                mask.shape[0], mask.shape[2], mask.shape[3]) != (b, n, m):
            raise ValueError(
                    f"attention mask must be boolean [B, 1 or H, N, M] = [{b}, 1 or {h}, {n}, {m}], "
                    f"got {mask.dtype} {mask.shape}")


def attention_weights(
        q: chex.Array,
        k: chex.Array,
        *,
        mask: Optional[chex.Array] = None,
        scale: str = "standard",
        p: float = 0.5,
        n0: float = 512.0,
        ssmax_s: Optional[chex.Array] = None,
        entropy_target: Optional[Union[float, chex.Array]] = None,
) -> chex.Array:
    """Attention probabilities `a_ij = softmax_j(lambda_i q_i . k_j)` over the valid keys.

    Equation (E1) of spec 05 with lambda_i from the rule `scale` (see `logit_scale`). For
    "entropy_normalized" each row is then mapped to `a_ij^gamma_i / sum_j a_ij^gamma_i` with
    entropy `H_i = -sum_j a_ij log a_ij = entropy_target` (spec 05, N1, B.4).

    Args:
        q: [B, N, H, D] queries.
        k: [B, M, H, D] keys.
        mask: boolean [B, 1 or H, N, M] (True = may attend), or None.
        scale: rule name in ATTENTION_SCALES.
        p, n0: power-rule exponent and calibration length.
        ssmax_s: [H] Scalable-Softmax factors, for scale == "ssmax".
        entropy_target: target entropy in nats, broadcastable to [B, H, N], for scale ==
            "entropy_normalized"; clipped to the reachable range [0, log n_i].

    Returns:
        [B, H, N, M] float32 weights; masked keys and queries without valid keys get exactly 0.
    """
    _check_inputs(q, k, k, mask)
    b, n, h, d = q.shape
    m = k.shape[1]
    lam = logit_scale(scale, (b, h, n, m, d), mask=mask, p=p, n0=n0, ssmax_s=ssmax_s)
    logits = lam * jnp.einsum("bnhd,bmhd->bhnm", q, k, preferred_element_type=jnp.float32)
    if mask is None:
        valid = jnp.ones((b, h, n, m), bool)
        has_keys = jnp.ones((b, h, n, 1), bool)
    else:
        valid = jnp.broadcast_to(mask, (b, h, n, m))
        has_keys = jnp.any(valid, axis=-1, keepdims=True)
        # An empty row is computed as if every key were valid and zeroed at the end: neither
        # the softmax nor the entropy Newton step then ever sees an empty row (no NaN, even in
        # the gradient).
        valid = jnp.logical_or(valid, jnp.logical_not(has_keys))
    if scale == _ENTROPY_NORMALIZED:
        if entropy_target is None:
            raise ValueError("the 'entropy_normalized' attention scale needs an entropy_target")
        log_n = jnp.log(valid_key_counts(valid, (b, h, n, m)))[..., 0]
        target = jnp.broadcast_to(jnp.asarray(entropy_target, jnp.float32), (b, h, n))
        target = jnp.clip(target, 0.0, log_n)
        weights = entropy_normalize(
                target, logits=jnp.where(valid, logits, 0.0), where=valid).probs
    else:
        weights = jax.nn.softmax(jnp.where(valid, logits, -jnp.inf), axis=-1)
    # Exact zeros on masked keys, whatever the normaliser returned there.
    return jnp.where(jnp.logical_and(valid, has_keys), weights, 0.0)


def attention(
        q: chex.Array,
        k: chex.Array,
        v: chex.Array,
        *,
        mask: Optional[chex.Array] = None,
        scale: str = "standard",
        p: float = 0.5,
        n0: float = 512.0,
        ssmax_s: Optional[chex.Array] = None,
        entropy_target: Optional[Union[float, chex.Array]] = None,
        implementation: Optional[str] = None,
) -> chex.Array:
    """Multi-head softmax attention with a named, length-aware logit scale.

    `o_i = sum_j a_ij v_j`, `a_ij = softmax_j(lambda_i q_i . k_j)` over the keys that query i
    may attend to (spec 05, E1), with `lambda_i = rule(n_i, d)`: "standard" 1/sqrt(d),
    "entropy_invariant" log_{n0}(n_i)/sqrt(d) (E3), "power" (log n_i/log n0)^p/sqrt(d),
    "ssmax" s_h log n_i/sqrt(d), "entropy_normalized" 1/sqrt(d) then rows mapped to the target
    entropy (8829). n_i is the number of valid keys of query i (`mask.sum(-1)`, or M).

    A scale shared by all queries goes to `jax.nn.dot_product_attention` as its float `scale`.
    A per-query or per-head scale is folded into the queries, `(lambda_i q_i) . k_j`, which is
    the same logit, so the fused kernel is used as well; only "entropy_normalized" needs the
    explicit weights (`attention_weights`).

    Args:
        q: [B, N, H, D] queries.
        k: [B, M, H, D] keys.
        v: [B, M, H, D] values.
        mask: boolean [B, 1 or H, N, M] (True = may attend: padding, causal), or None.
        scale: rule name in ATTENTION_SCALES.
        p, n0: power-rule exponent and calibration length (n0 = 512 in E3).
        ssmax_s: [H] Scalable-Softmax factors, needed by scale == "ssmax".
        entropy_target: target row entropy in nats, broadcastable to [B, H, N], needed by
            scale == "entropy_normalized".
        implementation: passed to `jax.nn.dot_product_attention` ("xla", "cudnn" or None).

    Returns:
        [B, N, H, D] outputs in the dtype of `v`; zeros for a query with no valid key.
    """
    _check_inputs(q, k, v, mask)
    b, n, h, d = q.shape
    m = k.shape[1]
    if scale == _ENTROPY_NORMALIZED:
        weights = attention_weights(q, k, mask=mask, scale=scale, p=p, n0=n0, ssmax_s=ssmax_s,
                                    entropy_target=entropy_target)
        return jnp.einsum("bhnm,bmhd->bnhd", weights.astype(v.dtype), v)
    lam = logit_scale(scale, (b, h, n, m, d), mask=mask, p=p, n0=n0, ssmax_s=ssmax_s)
    if isinstance(lam, float):
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=lam,
                                           implementation=implementation)
    else:
        q_scaled = q * jnp.transpose(lam, (0, 2, 1, 3)).astype(q.dtype)
        out = jax.nn.dot_product_attention(q_scaled, k, v, mask=mask, scale=1.0,
                                           implementation=implementation)
    if mask is None:
        return out
    # The fused kernel spreads an empty row uniformly over the masked keys; such a query
    # attends to nothing, so its output is zero.
    has_keys = jnp.transpose(jnp.any(jnp.broadcast_to(mask, (b, h, n, m)), axis=-1,
                                     keepdims=True), (0, 2, 1, 3))
    return jnp.where(has_keys, out, jnp.zeros((), out.dtype))


def dot_product_attention(
        q: chex.Array, k: chex.Array, v: chex.Array, *, scale: Union[float, chex.Array]
) -> chex.Array:
    """Per-head softmax attention `o_i = sum_j a_ij v_j`, `a_ij = softmax_j(scale * q_i . k_j)`.

    Equation (E1) of spec 05 with a given lambda; Vaswani et al. (2017) use
    `scale = 1 / sqrt(d)`. `attention` is the entry point with named, length-aware scales.

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


# Initial learned entropy target H*_h(n) = offset_h + slope_h log n: in the untrained regime
# (random directions, |q| = |k| = sqrt(d)) standard attention has H ~ log n - lambda^2 d / 2 =
# log n - 1/2 (spec 05, A.9), so entropy normalisation starts where standard attention is.
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
    if scale == _SSMAX:
        s = module.param("ssmax_s", nn.initializers.constant(1.0 / math.log(n0)), (h,),
                         jnp.float32)
        return dict(ssmax_s=s)
    if scale == _ENTROPY_NORMALIZED:
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
