"""Classifier-free guidance as a transform of predictors (docs/guidance.md).

`classifier_free_guidance(conditional, unconditional, scale)` takes two predictors of the udm
signature `(params, x_t [B, ...], t) -> x0_hat` and returns a third one, so every sampler takes a
guided model exactly as it takes a plain one. With scale w (docs/guidance.md (CG1)):

    x0_guided = x0_c + w (x0_c - x0_u)  =  (1 + w) x0_c - w x0_u.

w = 0 is the conditional predictor (bitwise: the static w = 0 returns its value untouched, and
the formula adds w * (...) = 0 to x0_c); w > 0 moves the estimate away from the unconditional
one. This is Ho & Salimans' classifier-free guidance ("Classifier-Free Diffusion Guidance",
arXiv 2207.12598), which they write on eps_hat: at a fixed (x_t, t), eps_hat, v_hat and the score
of a Gaussian-marginal process are all affine in x0_hat with the same coefficients for both
branches, f(x0) = c(x_t, t) + k(t) x0, so

    f(x0_c) + w (f(x0_c) - f(x0_u)) = c + k (x0_c + w (x0_c - x0_u)) = f(x0_guided)    (CG2)

and guiding x0 with w is guiding eps / v / score with the same w.

Options:
  interval=(t_lo, t_hi): guide only where t_lo <= t <= t_hi, in the process's own time (integer
    steps in discrete time, floats in continuous time), the conditional prediction elsewhere
    (Kynkaenniemi et al., "Applying Guidance in a Limited Interval Improves Sample and
    Distribution Quality in Diffusion Models", arXiv 2404.07724), (CG4).
  space="logits": for token processes, whose predictors return logits [..., l, V]: the guided
    logits are l_c + w (log p_c - log p_u), i.e. softmax = p_c^(1 + w) / p_u^w normalised (CG3).
  pair_params=True: params is a pair (cond_params, uncond_params); by default both branches get
    the same params (one network trained with label dropout, the label closed over).
"""
import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from udm.sampling.base import Estimate, Predictor, x0_of

Array = Any
SPACES = ("x0", "logits")


def _check_scale(scale) -> float:
    """scale as a Python float; ValueError unless it is a finite real number >= 0."""
    if isinstance(scale, (bool, str, bytes)):
        raise ValueError(f"scale must be a finite float >= 0 (the guidance weight w), got "
                         f"{scale!r}")
    try:  # a traced scale fails here too (w is static: it decides the w = 0 shortcut)
        w = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a finite float >= 0 (the guidance weight w), got "
                         f"{scale!r}") from None
    if not math.isfinite(w) or w < 0.0:
        raise ValueError(f"scale must be a finite float >= 0 (the guidance weight w; 0 is the "
                         f"conditional predictor), got {scale!r}")
    return w


def _check_interval(interval) -> Optional[tuple]:
    """interval as (t_lo, t_hi) floats or ints; ValueError unless a pair with t_lo <= t_hi."""
    if interval is None:
        return None
    try:
        t_lo, t_hi = interval
        if isinstance(t_lo, (str, bytes)) or isinstance(t_hi, (str, bytes)):
            raise TypeError
        bounds = (float(t_lo), float(t_hi))
    except (TypeError, ValueError):
        raise ValueError(f"interval must be a pair (t_lo, t_hi) of times with t_lo <= t_hi, got "
                         f"{interval!r}") from None
    if any(math.isnan(b) for b in bounds) or bounds[0] > bounds[1]:
        raise ValueError(f"interval must be a pair (t_lo, t_hi) of times with t_lo <= t_hi, got "
                         f"{interval!r}")
    return t_lo, t_hi


def _check_space(space: str) -> str:
    if space not in SPACES:
        raise ValueError(f"unknown guidance space {space!r}; valid: {', '.join(SPACES)}")
    return space


def guided_difference(cond: Array, uncond: Array, *, space: str = "x0") -> Array:
    """What w multiplies in the guided estimate: cond + w * guided_difference(cond, uncond).

    x0 space: cond - uncond. Logits space: log_softmax(cond) - log_softmax(uncond) along the last
    (vocabulary) axis, a difference free of each row's arbitrary logit offset, set to 0 where
    either probability is 0 (so cond's -inf logits stay -inf, and a token the unconditional
    branch rules out but the conditional one does not keeps its conditional logit; this
    avoids -inf - (-inf) = NaN). The result has cond's dtype.
    """
    _check_space(space)
    if space == "x0":
        return (cond - uncond).astype(cond.dtype)
    log_pc = jax.nn.log_softmax(cond, axis=-1)
    log_pu = jax.nn.log_softmax(uncond, axis=-1)
    either_zero = jnp.isneginf(log_pc) | jnp.isneginf(log_pu)
    return jnp.where(either_zero, 0.0, log_pc - log_pu).astype(cond.dtype)


def guide(cond: Array, uncond: Array, scale, *, space: str = "x0") -> Array:
    """The guided estimate from the two branches' estimates: (CG1) or (CG3).

    x0 space: cond + w (cond - uncond), the same formula for eps / v / score arrays (CG2).
    Logits space: cond + w (log p_c - log p_u), valid logits whose softmax is
    p_c^(1 + w) / p_u^w normalised. w = 0 returns cond itself (no arithmetic).

    Args:
      cond, uncond: arrays of one shape (x0_hat [B, ...], or logits [B, ..., V]).
      scale: the guidance weight w, a finite float >= 0.
      space: "x0" or "logits".
    """
    w = _check_scale(scale)
    _check_space(space)
    if w == 0.0:
        return cond
    return cond + w * guided_difference(cond, uncond, space=space)


def _inside(t, interval, ndim: int):
    """bool: t_lo <= t <= t_hi, a scalar for a scalar t, [B, 1, ...] (rank ndim) for t of [B]."""
    t = jnp.asarray(t)
    inside = (interval[0] <= t) & (t <= interval[1])
    if inside.ndim == 0:
        return inside
    if inside.ndim != 1:
        raise ValueError(f"t must be a scalar or a [B] array of times, got shape {t.shape}")
    return inside.reshape(inside.shape + (1,) * (ndim - 1))


def classifier_free_guidance(conditional: Predictor, unconditional: Predictor, scale, *,
                             interval: Optional[Sequence] = None, space: str = "x0",
                             pair_params: bool = False) -> Predictor:
    """A predictor that mixes a conditional and an unconditional one by classifier-free guidance.

    guided(params, x_t, t) = x0_c + w (x0_c - x0_u) (docs/guidance.md (CG1)), which for a process
    with Gaussian marginals is Ho & Salimans' eps-space guidance with the same w (CG2): at fixed
    (x_t, t), eps_hat = (x_t - alpha_bar x0_hat) / beta_bar, v_hat and the score
    (alpha_bar x0_hat - x_t) / beta_bar^2 are each c + k x0_hat with c, k shared by both branches,
    so c + k (x0_c + w (x0_c - x0_u)) = f_c + w (f_c - f_u). In logits space (token processes)
    it is l_c + w (log p_c - log p_u), whose softmax is p_c^(1 + w) / p_u^w normalised (CG3).

    Args:
      conditional: predictor `(params, x_t, t) -> x0_hat` (or `Estimate`, or logits) of the
        conditional model p(x_0 | x_t, c); the condition is closed over or part of params.
      unconditional: the same for p(x_0 | x_t) (the null label), same output shape.
      scale: w, a static finite float >= 0; 0 gives the conditional predictor's values exactly
        (no arithmetic), w > 0 pushes away from the unconditional estimate.
      interval: optional (t_lo, t_hi), t_lo <= t_hi, in the process's own time units (steps in
        discrete time, floats in continuous time): guidance where t_lo <= t <= t_hi, the
        conditional estimate (exactly) elsewhere (CG4). t may be traced: a scalar t (what every
        udm sampler passes) selects with `lax.cond`, so the unconditional branch is not
        evaluated outside the interval; a [B] t selects per example with `jnp.where`.
      space: "x0" (any continuous-state process; the guided x0_hat of (CG1)) or "logits" (token
        processes whose "x0_hat" is logits [..., l, V]; (CG3), the result is not normalised
        but its softmax is).
      pair_params: False (default): both branches get the guided predictor's params (one
        network trained with label dropout). True: params is a pair (cond_params,
        uncond_params) and each branch gets its own.

    Returns:
      predictor(params, x_t, t) with the conditional branch's output type and dtype. An
      `Estimate` from the conditional branch comes back as Estimate(guided x0, conditional std):
      guidance moves the point estimate only (the unconditional branch's std, if any, is
      ignored). Each call evaluates both branches (inside the interval), so a sampler's nfe
      counts guided evaluations, each of them two network evaluations.

    Raises:
      ValueError: a negative, infinite, NaN or non-numeric scale; an interval that is not an
        ordered pair; an unknown space (the valid ones are named).
    """
    w = _check_scale(scale)
    interval = _check_interval(interval)
    _check_space(space)

    def branch_params(params):
        if not pair_params:
            return params, params
        try:
            cond_params, uncond_params = params
        except (TypeError, ValueError):
            raise ValueError("pair_params=True: params must be a pair (cond_params, "
                             "uncond_params)") from None
        return cond_params, uncond_params

    def guided(params, xt, t):
        cond_params, uncond_params = branch_params(params)
        out_c = conditional(cond_params, xt, t)
        if w == 0.0:
            return out_c
        x0_c = x0_of(out_c)

        def difference():
            return guided_difference(x0_c, x0_of(unconditional(uncond_params, xt, t)),
                                     space=space)

        if interval is None:
            x0 = x0_c + w * difference()
        else:
            inside = _inside(t, interval, x0_c.ndim)
            if inside.ndim == 0:
                diff = jax.lax.cond(inside, difference, lambda: jnp.zeros_like(x0_c))
            else:
                diff = difference()
            x0 = jnp.where(inside, x0_c + w * diff, x0_c)
        return Estimate(x0, out_c.std) if isinstance(out_c, Estimate) else x0

    return guided


__all__ = ["SPACES", "classifier_free_guidance", "guide", "guided_difference"]
