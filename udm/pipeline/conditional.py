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
from typing import Callable, Optional, Sequence, Tuple

import jax.numpy as jnp

from udm.sampling.base import Predictor, network_predictor
from udm.sampling.guidance import classifier_free_guidance


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


__all__ = ["class_predictors", "guided_predictor"]
