"""Training and scoring a RoPE Transformer encoder on associative recall (docs/entropy_attention.md).

The model learns at one length and is scored at others with the same generator
("Experiment: length extrapolation"); only the attention logit scale differs between runs.
"""
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from tqdm import tqdm

from udm.data.recall import RecallTask, sample_recall_batch
from udm.nn.attention import ATTENTION_SCALES
from udm.nn.transformer import TransformerEncoder


class ModelSize(NamedTuple):
    """Shape of the encoder: L layers of H heads of dimension d, GELU MLP of width mlp_dim."""
    num_layers: int
    num_heads: int
    head_dim: int
    mlp_dim: int


class RecallTraining(NamedTuple):
    """What `train_recall` returns: the encoder's variables and the loss of the last step."""
    params: Any
    final_loss: float


def _model(task: RecallTask, size: ModelSize, scale: str) -> TransformerEncoder:
    if scale not in ATTENTION_SCALES:
        raise ValueError(f"scale {scale!r} is not one of {ATTENTION_SCALES.names()}")
    return TransformerEncoder(vocab_size=task.vocab_size, attention_scale=scale, **size._asdict())


def _optimizer(learning_rate: float, steps: int) -> optax.GradientTransformation:
    # Linear warm-up over 5% of the steps, cosine decay to zero; clipped AdamW.
    schedule = optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, warmup_steps=max(1, steps // 20), decay_steps=steps)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))


def _target_logits(logits: jax.Array, target_positions: jax.Array) -> jax.Array:
    # [B, N, V] logits at the masked positions -> [B, Q, V].
    return jnp.take_along_axis(logits, target_positions[:, :, None], axis=1)


# Static arguments are hashable (a Flax module, a NamedTuple, numbers), so the step is traced
# once per (model, task, shapes, schedule) and shared by every seed.
@functools.partial(jax.jit,
                   static_argnames=("model", "task", "batch", "length", "learning_rate", "steps"))
def _train_step(params: Any, opt_state: Any, step: int, *, key: jax.Array,
                model: TransformerEncoder, task: RecallTask, batch: int, length: int,
                learning_rate: float, steps: int):
    """One AdamW step on the cross-entropy of the masked targets of a fresh batch.

    The batch is drawn from `fold_in(key, step)`, so training is a pure function of the key.
    """
    optimizer = _optimizer(learning_rate, steps)

    def loss_fn(params, tokens, target_positions, targets):
        logits = _target_logits(model.apply(params, tokens), target_positions)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    tokens, target_positions, targets = sample_recall_batch(
            task, batch, length, key=jax.random.fold_in(key, step))
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, target_positions, targets)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def train_recall(task: RecallTask, size: ModelSize, scale: str, *, length: int, steps: int,
                 batch: int, learning_rate: float, seed: int, log_every: int = 50,
                 progress: Optional[tqdm] = None) -> RecallTraining:
    """Trains a RoPE Transformer encoder with attention scale `scale` on recall at one length.

    AdamW (weight decay 0.01, gradients clipped to global norm 1) with a linear warm-up over
    5% of the steps and a cosine decay to zero; every step draws a fresh batch.

    Args:
        task: the recall vocabulary and counts.
        size: the encoder's shape.
        scale: attention logit-scale rule, a name in `udm.nn.attention.ATTENTION_SCALES`
            (docs/entropy_attention.md A.8).
        length: training sequence length N >= task.min_length.
        steps: optimiser steps.
        batch: sequences per step.
        learning_rate: peak learning rate.
        seed: seeds the initialisation and the training batches.
        log_every: block on the loss (and show it on the bar) every this many steps; blocking
            keeps the dispatch queue short and the bar honest.
        progress: a bar to advance by one per step, shared across runs; a bar of this run
            alone when None.

    Returns:
        RecallTraining(params, final_loss): the encoder's variables (for `evaluate_recall`)
        and the loss of the last step.
    """
    if steps < 1 or batch < 1 or log_every < 1:
        raise ValueError(f"steps, batch and log_every must be >= 1, got {steps}, {batch}, "
                         f"{log_every}")
    if length < task.min_length:
        raise ValueError(f"length must be >= num_pairs + num_queries = {task.min_length}, "
                         f"got {length}")
    model = _model(task, size, scale)
    optimizer = _optimizer(learning_rate, steps)
    init_key, train_key = jax.random.split(jax.random.key(seed))
    # The initial variables depend on the key and the input's shape only, not on its tokens.
    # Eager, not jitted: a jitted init can differ in the last bit (XLA fuses the initializer's
    # multiplies), which would change the published tables.
    params = model.init(init_key, jnp.zeros((batch, length), jnp.int32))
    opt_state = optimizer.init(params)
    own_progress = progress is None
    if own_progress:
        progress = tqdm(total=steps, unit="step", dynamic_ncols=True)
    progress.set_description(f"{scale} seed {seed}")
    for step in range(steps):
        params, opt_state, loss = _train_step(
                params, opt_state, step, key=train_key, model=model, task=task, batch=batch,
                length=length, learning_rate=learning_rate, steps=steps)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            progress.set_postfix(loss=f"{float(loss):.3f}")
        progress.update(1)
    if own_progress:
        progress.close()
    return RecallTraining(params=params, final_loss=float(loss))


@functools.partial(jax.jit, static_argnames=("model", "task", "batch", "length"))
def _count_correct(params: Any, *, key: jax.Array, model: TransformerEncoder, task: RecallTask,
                   batch: int, length: int) -> jax.Array:
    """The number of masked targets predicted right (argmax) in one fresh batch."""
    tokens, target_positions, targets = sample_recall_batch(task, batch, length, key=key)
    logits = _target_logits(model.apply(params, tokens), target_positions)
    return jnp.sum(jnp.argmax(logits, axis=-1) == targets)


def evaluate_recall(params: Any, task: RecallTask, size: ModelSize, scale: str, *, length: int,
                    num_sequences: int, tokens_per_batch: int = 16384, key: jax.Array) -> float:
    """Masked-target accuracy, in percent, of a trained encoder on fresh sequences of one length.

    The sequences come in batches of `max(1, min(num_sequences, tokens_per_batch // length))`
    (rounded up to whole batches), batch i drawn from `fold_in(fold_in(key, length), i)`, so
    every model scored with the same key sees the same sequences at a given length.

    Args:
        params: the variables returned by `train_recall`.
        task, size, scale: as given to `train_recall`.
        length: evaluation sequence length N >= task.min_length.
        num_sequences: sequences to score (at least).
        tokens_per_batch: bounds the batch, and so the [B, H, N, N] attention weights in memory.
        key: PRNG key of the evaluation sequences.

    Returns:
        100 * correct / (number of masked targets), in [0, 100]; chance is 100 / num_values.
    """
    if num_sequences < 1 or tokens_per_batch < 1:
        raise ValueError(f"num_sequences and tokens_per_batch must be >= 1, got "
                         f"{num_sequences}, {tokens_per_batch}")
    model = _model(task, size, scale)
    batch = max(1, min(num_sequences, tokens_per_batch // length))
    num_batches = -(-num_sequences // batch)
    length_key = jax.random.fold_in(key, length)
    correct = sum(int(_count_correct(params, key=jax.random.fold_in(length_key, i), model=model,
                                     task=task, batch=batch, length=length))
                  for i in range(num_batches))
    # One rounding: 100 * correct / total, not 100 * (correct / total).
    return 100.0 * correct / (num_batches * batch * task.num_queries)
