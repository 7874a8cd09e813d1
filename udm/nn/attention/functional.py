"""Multi-head softmax attention as pure functions: the weights, the outputs (through the fused
kernel where the scale allows), and plain dot-product attention with a given scale."""
from typing import Optional, Union

import chex
import jax
import jax.numpy as jnp

from udm.entropy import entropy_normalize
from udm.nn.attention.scales import ATTENTION_SCALES, logit_scale, valid_key_counts


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

    Equation (E1) of docs/entropy_attention.md with lambda_i from the rule `scale` (see `logit_scale`). For
    "entropy_normalized" each row is then mapped to `a_ij^gamma_i / sum_j a_ij^gamma_i` with
    entropy `H_i = -sum_j a_ij log a_ij = entropy_target` (docs/entropy_attention.md N1, B.4).

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
    if ATTENTION_SCALES.get(scale).needs_entropy_target:
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
    may attend to (docs/entropy_attention.md E1), with `lambda_i = rule(n_i, d)`: "standard" 1/sqrt(d),
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
    if ATTENTION_SCALES.get(scale).needs_entropy_target:
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

    Equation (E1) of docs/entropy_attention.md with a given lambda; Vaswani et al. (2017) use
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
