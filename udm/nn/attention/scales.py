"""Logit-scale rules lambda = rule(n keys, head dim d) of softmax(lambda q.k), their registry and
the per-query scale under a mask."""
import math
from typing import Callable, NamedTuple, Optional, Tuple, Union

import chex
import jax.numpy as jnp

from udm.registry import Registry

Number = Union[int, float]

# A scale rule maps the number of valid keys n and the head dimension d to the logit scale
# lambda of softmax(lambda q.k). `n` is a Python int when every query sees the same keys (the
# rule then returns a Python float, and attention takes the fused path with one scalar scale),
# or a float array [B, H, N, 1] of per-query counts (the rule then returns a broadcastable array).
# Keyword arguments: `p`, `n0` (power rule and calibration length), `ssmax_s` ([1, H, 1, 1]).
ScaleFn = Callable[..., Union[float, chex.Array]]


class ScaleRule(NamedTuple):
    """A registered logit-scale rule: its function and the extra inputs it needs.

    Calling the rule calls `fn`.

    Attributes:
        fn: the ScaleFn.
        needs_ssmax_s: the rule has a learned per-head factor `ssmax_s` [H], so its scale is
            never a single float.
        needs_entropy_target: the attention rows are entropy-normalised after the softmax: the
            rule needs an `entropy_target` and the explicit [B, H, N, M] weights, so it never
            takes the fused path.
    """
    fn: ScaleFn
    needs_ssmax_s: bool = False
    needs_entropy_target: bool = False

    def __call__(self, n_keys, head_dim: int, **kwargs) -> Union[float, chex.Array]:
        return self.fn(n_keys, head_dim, **kwargs)


ATTENTION_SCALES: Registry[ScaleRule] = Registry("attention scale")


def _rule(name: str, *, needs_ssmax_s: bool = False, needs_entropy_target: bool = False):
    """Registers the decorated ScaleFn in ATTENTION_SCALES under `name`, with what it needs."""
    def decorator(fn: ScaleFn) -> ScaleFn:
        ATTENTION_SCALES.register(name)(ScaleRule(fn, needs_ssmax_s, needs_entropy_target))
        return fn
    return decorator


def _log(n: Union[Number, chex.Array]) -> Union[float, chex.Array]:
    # Static counts stay Python floats, so a uniform scale is known before tracing.
    return math.log(n) if isinstance(n, (int, float)) else jnp.log(n)


@_rule("standard")
def standard_scale(n_keys, head_dim: int, *, p: float = 0.5, n0: float = 512.0, ssmax_s=None):
    """Standard ("Attention-O") scale, independent of the number of keys.

    `lambda = 1 / sqrt(d)` (docs/entropy_attention.md E1; Vaswani et al., 2017).

    Args:
        n_keys: number of valid keys n, int or [B, H, N, 1] (unused by this rule).
        head_dim: per-head feature dimension d.
        p, n0, ssmax_s: unused by this rule.

    Returns:
        The scale as a Python float.
    """
    del n_keys, p, n0, ssmax_s
    return 1.0 / math.sqrt(head_dim)


@_rule("entropy_invariant")
def entropy_invariant_scale(n_keys, head_dim: int, *, p: float = 0.5, n0: float = 512.0,
                            ssmax_s=None):
    """Entropy-invariant ("Attention-E") scale, calibrated to the standard one at n = n0.

    `lambda = log_{n0}(n) / sqrt(d) = (log n / log n0) / sqrt(d)`, n0 = 512 (docs/entropy_attention.md E3;
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


@_rule("power")
def power_scale(n_keys, head_dim: int, *, p: float = 0.5, n0: float = 512.0, ssmax_s=None):
    """Interpolation between the standard (p = 0) and entropy-invariant (p = 1) scales.

    `lambda = (log n / log n0)^p / sqrt(d)` (docs/entropy_attention.md A.8); p = 0.5 is the ablation of A.9.

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


@_rule("ssmax", needs_ssmax_s=True)
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


@_rule("entropy_normalized", needs_entropy_target=True)
def entropy_normalized_scale(n_keys, head_dim: int, *, p: float = 0.5, n0: float = 512.0,
                             ssmax_s=None):
    """Logit scale of entropy-normalised attention: the standard one, `lambda = 1 / sqrt(d)`.

    The rows are then mapped to a target entropy (docs/entropy_attention.md N1 and B.4; kexue.fm/archives/8829),
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

    `lambda_i = rule(n_i, d)`, n_i = number of valid keys of query i (docs/entropy_attention.md A.8): the
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
    if mask is None and not rule.needs_ssmax_s:
        return float(rule.fn(m, d, p=p, n0=n0))
    # log(0) would make the scale -inf and the logits NaN for an empty row.
    counts = jnp.maximum(valid_key_counts(mask, (b, h, n, m)), 1.0)
    return jnp.broadcast_to(rule.fn(counts, d, p=p, n0=n0, ssmax_s=ssmax_s), (b, h, n, 1))
