"""Class-conditional sampling from Python: the predictors of a network trained with label dropout.

A class-conditional UNet (config.model.num_classes = C) is trained on the data's labels, each
replaced by the null label C with probability config.train.label_dropout, so the one network
gives both branches of classifier-free guidance (docs/guidance.md): x0_hat(x_t, t, c) and, with
the null label, x0_hat(x_t, t).

`class_predictors(process, eval_apply, num_classes)` returns these two as udm predictors. Their
params are the pair `(network_params, labels)`, labels int [B] with one class per example of the
batch: the labels then travel with the batch as an argument of the (jitted) sampler, so one
compiled sampler serves every choice of classes, and they can be sharded like x_T. Both
predictors take the same pair, which is what `classifier_free_guidance` hands to both branches
by default; the unconditional one reads only the labels' shape. `guided_predictor` composes the
two with `classifier_free_guidance`:

    _, eval_apply = train.make_apply_fns(model)
    guided = guided_predictor(process, eval_apply, model.num_classes, scale=2.0)
    sample = make_sampler(process, guided, "ddim", num_steps=50, clip_x0=1.0)
    out = sample((params, labels), x_T, key=key)   # out.x0[i] is of class labels[i]
"""
import re
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

from udm import parallel
from udm.sampling.base import Predictor, network_predictor
from udm.sampling.guidance import classifier_free_guidance
from udm.sampling.inpaint import inpainting_predictor


def _split(params, xt, num_classes: int):
    """(network_params, labels int [B]) of a predictor's params, checked against x_t [B, ...]."""
    try:
        network_params, labels = params
    except (TypeError, ValueError):
        raise ValueError("a class-conditional predictor's params must be the pair "
                         "(network_params, labels [B])") from None
    labels = jnp.asarray(labels)
    if labels.shape != (xt.shape[0],) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers of shape [B] = ({xt.shape[0]},), one class in "
                         f"[0, {num_classes}] per example (the null label is {num_classes}), got "
                         f"{labels.dtype} {labels.shape}")
    return network_params, labels


def class_predictors(process, eval_apply: Callable, num_classes: int) -> Tuple[Predictor, Predictor]:
    """(conditional, unconditional) x0 predictors of a class-conditional network.

    Args:
      process: the process the network was trained for.
      eval_apply: `eval_apply(params, x_t, t_input, labels) -> output`, e.g. the second function
        of `udm.pipeline.train.make_apply_fns(model)` for a UNet with num_classes set.
      num_classes: the network's num_classes C; C is the null label.

    Returns:
      Two predictors `(params, x_t [B, ...], t) -> x0_hat`, with params the pair
      (network_params, labels int [B]): the conditional one gives example i the class
      labels[i] (the null label C is allowed: that example is unconditional); the unconditional
      one gives every example the null label, whatever labels holds.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1 (the network's), got {num_classes!r}")

    def conditional_apply(params, xt, t_input):
        network_params, labels = _split(params, xt, num_classes)
        return eval_apply(network_params, xt, t_input, labels.astype(jnp.int32))

    def unconditional_apply(params, xt, t_input):
        network_params, labels = _split(params, xt, num_classes)
        return eval_apply(network_params, xt, t_input,
                          jnp.full(labels.shape, num_classes, jnp.int32))

    return (network_predictor(process, conditional_apply),
            network_predictor(process, unconditional_apply))


def guided_predictor(process, eval_apply: Callable, num_classes: int, scale, *,
                     interval: Optional[Sequence] = None) -> Predictor:
    """The classifier-free guided predictor x0_c + w (x0_c - x0_u) of a class-conditional network.

    `classifier_free_guidance(*class_predictors(process, eval_apply, num_classes), scale,
    interval=interval)`: params is the pair (network_params, labels [B]); scale = 0 is the
    conditional predictor exactly. See `udm.sampling.guidance` for scale and interval.
    """
    conditional, unconditional = class_predictors(process, eval_apply, num_classes)
    return classifier_free_guidance(conditional, unconditional, scale, interval=interval)


# --- conditioned evaluation: labels and known parts per batch ------------------------------------
#
# The command line conditions sampling with config.sampler.guidance_scale / guidance_interval (a
# class-conditional model) and config.sampler.inpaint (the known part of x_0, taken from held-out
# examples). `conditioned_predictor` builds one predictor for all of them whose params are the
# pair (network_params, condition), condition a dict of per-batch arrays ("labels" int [B],
# "known" [B, ...]) that `batch_conditions` shards like x_T: one compiled sampler serves every
# batch.

IMAGE_HALVES = ("top_half", "bottom_half", "left_half", "right_half")
_PREFIX = re.compile(r"^prefix:([0-9]+)$")


def check_inpaint(inpaint: str, *, tokens: bool, seq_len: Optional[int] = None) -> None:
    """ValueError unless `inpaint` names a known part that fits the data ("" is off).

    Images: "top_half", "bottom_half", "left_half", "right_half" (that half of every held-out
    image is known). Token sequences: "prefix:N", the first N tokens known, 0 < N < l.
    """
    if not inpaint:
        return
    valid = "prefix:N with 0 < N < l" if tokens else ", ".join(IMAGE_HALVES)
    match = _PREFIX.match(inpaint)
    if tokens and match:
        n = int(match.group(1))
        if seq_len is None or 0 < n < seq_len:
            return
        raise ValueError(f"inpaint={inpaint!r}: the prefix must keep 0 < N < l = {seq_len} "
                         f"tokens known")
    if not tokens and inpaint in IMAGE_HALVES:
        return
    raise ValueError(f"inpaint={inpaint!r} does not name a known part of "
                     f"{'token sequences' if tokens else 'images'}; valid: {valid}")


def known_mask(inpaint: str, example_shape: Sequence[int]) -> np.ndarray:
    """bool [example_shape], True where config.sampler.inpaint makes x_0 known.

    example_shape is [H, W, C] for images ("*_half": rows < H/2 for top_half, and so on) and [l]
    for tokens ("prefix:N": positions < N).
    """
    shape = tuple(example_shape)
    match = _PREFIX.match(inpaint)
    if match:
        check_inpaint(inpaint, tokens=True, seq_len=shape[0])
        return np.arange(shape[0]) < int(match.group(1))
    check_inpaint(inpaint, tokens=False)
    if len(shape) != 3:
        raise ValueError(f"inpaint={inpaint!r} needs images [H, W, C], got examples {shape}")
    h, w = shape[0], shape[1]
    rows = np.arange(h)[:, None, None]
    cols = np.arange(w)[None, :, None]
    region = {"top_half": rows < h // 2, "bottom_half": rows >= h - h // 2,
              "left_half": cols < w // 2, "right_half": cols >= w - w // 2}[inpaint]
    return np.broadcast_to(region, shape).copy()


def conditioned_predictor(process, eval_apply: Callable, *, num_classes: Optional[int] = None,
                          scale: float = 0.0, interval: Optional[Sequence] = None,
                          mask: Optional[np.ndarray] = None) -> Predictor:
    """The x0 predictor of a network under classifier-free guidance and / or inpainting.

    Args:
      process: the process the network was trained for.
      eval_apply: `eval_apply(params, x_t, t_input[, labels])`, as from
        `udm.pipeline.train.make_apply_fns`.
      num_classes: the class count of a class-conditional network (guided by `scale` and
        `interval`, `udm.sampling.guidance`); None for an unconditional one.
      mask: bool, the shape of one example, True where x_0 is known (`known_mask`); None: no
        inpainting. Token processes inpaint in logits space, absorbing ones (masking, absorbing
        D3PM) also reveal the known tokens to the network (`udm.sampling.inpaint`).

    Returns:
      predictor(params, x_t, t) with params = (network_params, condition), condition a dict with
      "labels" (int [B], when num_classes is set) and "known" ([B, ...] like x_0, when mask is).
    """
    space = "logits" if process.capabilities.tokens else "x0"
    if num_classes is not None:
        guided = classifier_free_guidance(*class_predictors(process, eval_apply, num_classes),
                                          scale, interval=interval, space=space)

        def base(params, xt, t):
            network_params, condition = params
            return guided((network_params, condition["labels"]), xt, t)
    else:
        plain = network_predictor(process, eval_apply)

        def base(params, xt, t):
            return plain(params[0], xt, t)
    if mask is None:
        return base
    mask = np.asarray(mask, np.bool_)
    reveal = bool(process.capabilities.absorbing)

    def inpainted(params, xt, t):
        known = params[1]["known"]
        return inpainting_predictor(base, known, mask, space=space, reveal=reveal,
                                    process=process)(params, xt, t)

    return inpainted


class Conditions(NamedTuple):
    """What conditions each sampling batch, and what the samples should then show."""
    batches: List[Dict[str, Any]]  # one dict of sharded arrays per batch ("labels", "known")
    labels: Optional[np.ndarray]   # int [n]: the class each sample should have (None: no class)
    known: Optional[np.ndarray]    # [n, ...]: the known values of each sample (None: no mask)
    mask: Optional[np.ndarray]     # bool [example shape]


def batch_conditions(*, num_samples: int, batch_size: int, num_classes: Optional[int],
                     inpaint: str, test_examples: np.ndarray,
                     test_labels: Optional[np.ndarray], mesh) -> Conditions:
    """The per-batch conditions of an evaluation (the i-th sample of the run is example i).

    Classes: sample i asks for class i mod C (balanced), or with inpainting for the label of the
    held-out example it completes. Inpainting: sample i completes held-out example i mod N_test,
    whose `known_mask(inpaint, ...)` part is known. Arrays are padded to whole batches and
    sharded over the mesh like x_T.
    """
    total = -(-num_samples // batch_size) * batch_size
    index = np.arange(total)
    condition, labels, known, mask = {}, None, None, None
    if inpaint:
        source = index % len(test_examples)
        mask = known_mask(inpaint, test_examples.shape[1:])
        known = test_examples[source]
        condition["known"] = known
        if test_labels is not None:
            labels = np.asarray(test_labels)[source].astype(np.int32)
    if num_classes is not None:
        if labels is None:
            labels = (index % num_classes).astype(np.int32)
        condition["labels"] = labels
    batches = [{name: parallel.shard_batch(np.ascontiguousarray(v[i:i + batch_size]), mesh)
                for name, v in condition.items()} for i in range(0, total, batch_size)]
    return Conditions(batches, None if labels is None else labels[:num_samples],
                      None if known is None else known[:num_samples], mask)


__all__ = ["Conditions", "IMAGE_HALVES", "batch_conditions", "check_inpaint", "class_predictors",
           "conditioned_predictor", "guided_predictor", "known_mask"]
