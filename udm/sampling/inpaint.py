"""Inpainting / infilling for every process as a transform of predictors (docs/inpainting.md).

When part of x_0 is known (a boolean mask m of known entries, with values x_known), every x_0
estimate gets its known part replaced by the truth before the correct step (IP1):

    x0_tilde = m * x_known + (1 - m) * x0_hat(x_t),

and the process's own correct step re-corrupts x0_tilde consistently. The transform returns a
predictor of the udm signature `(params, x_t [B, ...], t) -> x0_hat`, so every sampler (ddpm,
ddim, the fast DPM solvers, the SDE / ODE solvers, the token samplers) inpaints unchanged.

Spaces:
  space="x0": continuous states (Gaussian noise, the SDEs, flow matching, cold blur, heat): the
    replacement (IP1), computed with `jnp.where` so that the known entries are x_known bit for
    bit. An `Estimate` keeps its std on the unknown entries and gets std 0 on the known ones.
  space="logits": token processes, whose "x0_hat" is logits [..., l, V]: at a known position the
    logits become one-hot, 0 at the known token and -inf elsewhere (IP2), so every draw of x_0
    there is the known token.

reveal=True (absorbing processes only: masking, absorbing D3PM; `Capabilities.absorbing`): the
predictor also sees x_t with its known positions unmasked (IP3). A partially unmasked state is a
valid state of such a process (the known tokens were simply never masked), so for an exact model
the estimate is then the exact conditional p(x_0 | visible tokens, known tokens), and the
masking process's full chain samples the exact conditional law of the unknown tokens.

What is exact (docs/inpainting.md): the known part of the final sample whenever the sampler's
last output is an x_0 estimate, or a correct step to s = 0 that returns its x_0 (every Gaussian
process, where beta_bar_0 = 0; masking; D3PM; cold / heat with sigma = 0 and the baseline design);
the filled part when the unknown coordinates are independent of the known ones, or with reveal
on the masking process. Otherwise (correlated data) the filled part is biased: (IP1) conditions
on x_known only through the noisy x_t, not exactly (IP5).
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from udm.sampling.base import Estimate, Predictor

Array = Any
SPACES = ("x0", "logits")
REVEAL_PROCESSES = "masking, absorbing D3PM"


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_space(space: str) -> str:
    if space not in SPACES:
        raise ValueError(f"unknown inpainting space {space!r}; valid: {', '.join(SPACES)}")
    return space


def _check_mask(mask) -> Array:
    """mask as a boolean array; ValueError unless boolean with at least one dimension."""
    if _concrete(mask):
        mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be a boolean array (True = known entry), got dtype "
                         f"{mask.dtype}")
    if mask.ndim == 0:
        raise ValueError("mask must have at least one dimension (the entries of x_0), got a "
                         "scalar")
    return mask


def _check_known(known, mask, space: str, vocab_size: Optional[int]) -> Array:
    """known as an array broadcasting with mask; its values checked where mask is True."""
    if _concrete(known):
        known = np.asarray(known)
    if known.dtype == np.bool_ or not np.issubdtype(known.dtype, np.number):
        raise ValueError(f"known must be a numeric array, got dtype {known.dtype}")
    try:
        np.broadcast_shapes(known.shape, mask.shape)
    except ValueError:
        raise ValueError(f"known {known.shape} and mask {mask.shape} do not broadcast "
                         f"together") from None
    if space == "logits" and not np.issubdtype(known.dtype, np.integer):
        raise ValueError(f"space='logits': known must hold integer token ids, got dtype "
                         f"{known.dtype}")
    if space == "x0" and np.issubdtype(known.dtype, np.complexfloating):
        raise ValueError(f"known must be real, got dtype {known.dtype}")
    if _concrete(known) and _concrete(mask):
        values = np.broadcast_to(known, np.broadcast_shapes(known.shape, mask.shape))[
            np.broadcast_to(mask, np.broadcast_shapes(known.shape, mask.shape))]
        if space == "x0" and not np.all(np.isfinite(values)):
            raise ValueError("known must be finite at the known entries (mask True)")
        if space == "logits" and values.size:
            high = vocab_size if vocab_size is not None else np.inf
            if values.min() < 0 or values.max() >= high:
                raise ValueError(f"known tokens must be in [0, V={vocab_size}) at the known "
                                 f"positions, got values in [{values.min()}, {values.max()}]")
    return known


def _check_process(process, space: str, reveal: bool, mask) -> Optional[int]:
    """The vocabulary size to check known against (None if unknown); refuses inconsistencies."""
    if reveal and process is None:
        raise ValueError(f"reveal=True needs the process (for its mask_id): pass process=...; "
                         f"reveal is valid for: {REVEAL_PROCESSES}")
    if process is None:
        return None
    caps = process.capabilities
    if reveal and not caps.absorbing:
        raise ValueError(f"reveal=True needs an absorbing process (Capabilities.absorbing: a "
                         f"partially unmasked state must be a valid state), which the "
                         f"{type(process).__name__} is not; reveal is valid for: "
                         f"{REVEAL_PROCESSES}")
    if caps.tokens != (space == "logits"):
        want = "logits" if caps.tokens else "x0"
        raise ValueError(f"space={space!r} does not fit the {type(process).__name__}, whose "
                         f"predictor returns {'logits' if caps.tokens else 'x_0 estimates'}: "
                         f"use space={want!r}")
    seq_len = process.seq_len if caps.tokens else None
    if seq_len is not None and mask.shape[-1] not in (1, seq_len):
        raise ValueError(f"mask {mask.shape} must end with the sequence length l={seq_len} "
                         f"(or 1)")
    return process.vocab_size if caps.tokens else None


def _broadcast(name: str, target_shape, mask, known):
    """(mask, known) as jax arrays of target_shape; ValueError unless they broadcast to it
    without changing it. Explicit, so that the transform works under strict rank promotion."""
    for what, arr in (("mask", mask), ("known", known)):
        try:
            fits = (np.broadcast_shapes(tuple(target_shape), jnp.shape(arr))
                    == tuple(target_shape))
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"{what} {jnp.shape(arr)} does not broadcast against {name} "
                             f"{tuple(target_shape)}: it must have the shape of x_0, [B, ...] or "
                             f"[...], or broadcast to it")
    target_shape = tuple(target_shape)
    return (jnp.broadcast_to(jnp.asarray(mask), target_shape),
            jnp.broadcast_to(jnp.asarray(known), target_shape))


def replace_known(x0_hat: Array, known: Array, mask: Array) -> Array:
    """(IP1): x_known where mask is True, x0_hat elsewhere; x0_hat's shape and dtype.

    Computed with `jnp.where`, so the known entries are x_known (cast to x0_hat's dtype) exactly
    and a non-finite x0_hat on them does not leak through.
    """
    mask, known = _broadcast("x0_hat", jnp.shape(x0_hat), mask, known)
    return jnp.where(mask, known.astype(x0_hat.dtype), x0_hat)


def known_logits(logits: Array, known: Array, mask: Array) -> Array:
    """(IP2): at known positions one-hot logits (0 at the known token, -inf elsewhere).

    Args:
      logits: [..., l, V] (or [..., l, K]) logits of p(x_0 | x_t).
      known: int token ids broadcasting to [..., l]; read only where mask is True.
      mask: bool broadcasting to [..., l].
    Returns:
      logits' shape and dtype.
    """
    if jnp.ndim(logits) < 2:
        raise ValueError(f"space='logits' needs logits [..., l, V], got shape "
                         f"{jnp.shape(logits)}")
    mask, known = _broadcast("the token shape of the logits", jnp.shape(logits)[:-1], mask,
                             known)
    hot = jax.nn.one_hot(known, logits.shape[-1], dtype=jnp.bool_)
    one_hot_logits = jnp.where(hot, 0.0, -jnp.inf).astype(logits.dtype)
    return jnp.where(mask[..., None], one_hot_logits, logits)


def reveal_known(xt: Array, known: Array, mask: Array) -> Array:
    """(IP3): x_t with the known positions set to their tokens (xt's shape and dtype)."""
    mask, known = _broadcast("x_t", jnp.shape(xt), mask, known)
    return jnp.where(mask, known.astype(xt.dtype), xt)


def inpainting_predictor(predictor: Predictor, known, mask, *, space: str = "x0",
                         reveal: bool = False, process=None) -> Predictor:
    """A predictor whose x_0 estimates carry the known part of x_0 (docs/inpainting.md).

    inpainted(params, x_t, t) = m x_known + (1 - m) predictor(params, x_t, t) (IP1) in x0 space,
    or the predictor's logits with one-hot rows at the known positions (IP2) in logits space;
    with reveal=True the predictor sees x_t with the known tokens unmasked (IP3).

    Args:
      predictor: `(params, x_t [B, ...], t) -> x0_hat [B, ...]` (or an `Estimate`), or, for
        token processes, `-> logits [B, l, V]`.
      known: the known values, broadcasting against x_0 ([B, ...] per example, or [...] shared
        by the batch); x0 space: real numbers, finite where mask is True; logits space: integer
        token ids in [0, V) where mask is True (anything, e.g. the MASK id, elsewhere).
      mask: boolean, True at the known entries, broadcasting with known against x_0 (logits
        space: against the tokens [B, l], not the logits).
      space: "x0" (continuous states) or "logits" (token processes).
      reveal: True: x_t's known positions are set to the known tokens before the predictor sees
        them; only for absorbing processes (`process.capabilities.absorbing`: masking, absorbing
        D3PM), where that is a valid state, and it makes an exact model's estimate the exact
        conditional. The network is still told the chain's t, which counts the masks before the
        reveal (an exact model does not read t; a trained one sees fewer masks than t says).
      process: optional; needed by reveal (its `mask_id` is not used, the known tokens replace
        whatever x_t holds), and when given checks space (logits iff a token process), the
        sequence length and the token range of known.

    Returns:
      predictor(params, x_t, t) of the same signature, output type and dtype. An `Estimate`
      comes back as Estimate(x0_tilde, std_tilde) with std broadcast to x0's shape and set to 0
      at the known entries, so the sampler's draw x0 + std eps leaves them exact (a sampler's
      own sigma_bar table replaces that std and would perturb them; pass the std through the
      `Estimate` instead). Token predictors must return logits, not an `Estimate`.

    Raises:
      ValueError: an unknown space; a mask that is not boolean; known and mask that do not
        broadcast together (or, at call time, against x_0); non-finite known values or token
        ids outside [0, V) at known entries; reveal without a process or on a process that is
        not absorbing (the valid ones are named); a space that does not fit the process.
    """
    _check_space(space)
    if not callable(predictor):
        raise ValueError(f"predictor must be callable (params, x_t, t) -> x0_hat, got "
                         f"{type(predictor).__name__}")
    if not isinstance(reveal, (bool, np.bool_)):
        raise ValueError(f"reveal must be True or False, got {reveal!r}")
    if reveal and space != "logits":
        raise ValueError(f"reveal=True is for token processes (space='logits'); reveal is valid "
                         f"for: {REVEAL_PROCESSES}")
    mask = _check_mask(mask)
    vocab_size = _check_process(process, space, bool(reveal), mask)
    # Kept as numpy (when concrete) so that float64 values survive until the call's dtype.
    known = _check_known(known, mask, space, vocab_size)

    def inpainted(params, xt, t):
        if reveal:
            xt = reveal_known(xt, known, mask)
        out = predictor(params, xt, t)
        if space == "logits":
            if isinstance(out, Estimate):
                raise ValueError("space='logits': the predictor must return logits, not an "
                                 "Estimate")
            return known_logits(out, known, mask)
        if isinstance(out, Estimate):
            x0 = replace_known(out.x0, known, mask)
            std = jnp.broadcast_to(jnp.asarray(out.std), x0.shape)
            return Estimate(x0, jnp.where(mask, jnp.zeros((), std.dtype), std))
        return replace_known(out, known, mask)

    return inpainted


__all__ = ["REVEAL_PROCESSES", "SPACES", "inpainting_predictor", "known_logits",
           "replace_known", "reveal_known"]
