"""Training the scoring classifier (Adam on cross-entropy) and its cache on disk."""
import dataclasses
import functools
import hashlib
import json
import os
import re
import time
from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from udm.data.datasets import Dataset
from udm.data.pipeline import batch_at_step
from udm.metrics.classifier import Classifier, load_classifier
from udm.nn.classifier import CNN


def _random_shift(images: jax.Array, *, key: jax.Array) -> jax.Array:
    """Shifts each image by an independent offset in {-1, 0, 1}^2, repeating the edge pixels."""
    num, height, width, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (num, 2), 0, 3)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


# Adam's direction only; the step size is applied in `_train_step`, so the jitted step does not
# depend on the schedule and compiles once per architecture and input shape.
_ADAM = optax.scale_by_adam()


# A Python loop over this jitted step, not lax.scan: XLA:CPU runs convolutions inside a while loop
# on a much slower path (measured ~10x slower per step for this CNN on 2 cores).
@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def _train_step(model: CNN, augment: bool, params: Any, opt_state: Any, images: jax.Array, labels: jax.Array,
                indices: jax.Array, learning_rate: jax.Array, step: jax.Array, *,
                key: jax.Array) -> Tuple[Any, Any]:
    """One Adam step on the mean softmax cross-entropy of the batch `images[indices]`."""
    batch = images[indices]
    if augment:
        batch = _random_shift(batch, key=jax.random.fold_in(key, step))

    def loss_fn(params):
        logits, _ = model.apply({"params": params}, batch)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels[indices]).mean()

    grads = jax.grad(loss_fn)(params)
    directions, opt_state = _ADAM.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, d: p - learning_rate * d, params, directions)
    return params, opt_state


def train_classifier(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                     test_labels: np.ndarray, *, num_classes: int, seed: int = 0, num_steps: int = 1500,
                     batch_size: int = 128, learning_rate: float = 3e-3, augment: bool = True,
                     channels: Tuple[int, ...] = (16, 32), feature_dim: int = 128) -> Classifier:
    """Trains the CNN with Adam (cosine-decayed step size) on softmax cross-entropy.

    Batches follow `batch_at_step(seed=seed)`; augmentation shifts images by up to one pixel.

    Args:
        train_images: float32 [N, H, W, C] in [-1, 1].
        train_labels: int [N] in [0, num_classes).
        test_images: float32 [N_test, H, W, C], held out, used only to measure accuracy.
        test_labels: int [N_test].
        num_classes: K.
        seed: seeds the initialisation, batch order and augmentation.
        num_steps: optimiser steps.
        batch_size: examples per step (capped at N).
        learning_rate: Adam's initial step size.
        augment: whether to apply random 1-pixel shifts.
        channels: conv channels of the CNN.
        feature_dim: width of the feature layer.

    Returns:
        The trained Classifier, with test_accuracy measured on (test_images, test_labels).
    """
    train_images = np.asarray(train_images, np.float32)
    train_labels = np.asarray(train_labels, np.int32)
    if train_images.ndim != 4 or train_labels.shape != train_images.shape[:1]:
        raise ValueError(f"need train_images [N, H, W, C] and train_labels [N], got {train_images.shape}, "
                         f"{train_labels.shape}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    start_time = time.perf_counter()
    batch_size = min(batch_size, train_images.shape[0])
    model = CNN(num_classes=num_classes, channels=tuple(channels), feature_dim=feature_dim)
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    # One compiled init rather than many small eager dispatches.
    params = jax.jit(model.init)(init_key, jnp.zeros((1,) + train_images.shape[1:], jnp.float32))["params"]
    # Step sizes on the host, so the loop dispatches nothing but the step itself.
    learning_rates = np.asarray(optax.cosine_decay_schedule(learning_rate, num_steps)(jnp.arange(num_steps)),
                                np.float32)
    images_on_device, labels_on_device = jnp.asarray(train_images), jnp.asarray(train_labels)
    opt_state = _ADAM.init(params)
    for step_index in range(num_steps):
        indices = batch_at_step(len(train_images), batch_size, step_index, seed=seed)
        params, opt_state = _train_step(model, augment, params, opt_state, images_on_device, labels_on_device,
                                        indices, learning_rates[step_index], step_index, key=train_key)
    classifier = Classifier(params=params, num_classes=num_classes, test_accuracy=float("nan"),
                            image_shape=tuple(int(d) for d in train_images.shape[1:]),
                            channels=tuple(channels), feature_dim=feature_dim)
    predictions = classifier.probs(test_images).argmax(axis=1)
    accuracy = float(np.mean(predictions == np.asarray(test_labels)))
    provenance = {"seed": seed, "num_steps": num_steps, "batch_size": batch_size,
                  "training_seconds": round(time.perf_counter() - start_time, 2)}
    return dataclasses.replace(classifier, test_accuracy=accuracy, provenance=provenance)


def _cache_path(cache_dir: str, dataset_name: str, seed: int) -> str:
    """A file name that is readable and unique per dataset name (which may hold ':' or '/')."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name)[-40:]
    digest = hashlib.sha256(dataset_name.encode()).hexdigest()[:8]
    return os.path.join(cache_dir, f"classifier_{readable}_{digest}_seed{seed}.msgpack")


def load_or_train_classifier(cache_dir: str, dataset: Dataset, *, seed: int = 0, num_steps: int = 1500,
                             batch_size: int = 128) -> Classifier:
    """Returns the cached classifier for this dataset, or trains one and caches it.

    The cache is reused only when its metadata match the dataset's name, image shape and number of
    classes and the requested seed, num_steps and batch_size, and its checksum is intact; otherwise
    the classifier is retrained and the cache overwritten (atomically).

    Args:
        cache_dir: folder for the cache files (created if missing).
        dataset: a `udm.data.Dataset` with labels.
        seed: training seed.
        num_steps: training steps.
        batch_size: examples per step.

    Returns:
        The Classifier.
    """
    if dataset.train_labels is None or dataset.test_labels is None:
        raise ValueError(f"dataset {dataset.name!r} has no labels; a classifier cannot be trained on it")
    path = _cache_path(cache_dir, dataset.name, seed)
    batch_size = min(batch_size, len(dataset.train_images))
    expected = {"dataset": dataset.name, "seed": seed, "num_steps": num_steps, "batch_size": batch_size}
    if os.path.exists(path) and os.path.exists(path + ".json"):
        try:
            cached = load_classifier(path)
        except (ValueError, KeyError, OSError, json.JSONDecodeError):
            cached = None  # Unreadable or inconsistent: retrain below.
        if (cached is not None and tuple(cached.image_shape) == tuple(dataset.image_shape)
                and cached.num_classes == dataset.num_classes
                and all(cached.provenance.get(k) == v for k, v in expected.items())):
            return cached
    classifier = train_classifier(dataset.train_images, dataset.train_labels, dataset.test_images,
                                  dataset.test_labels, num_classes=dataset.num_classes, seed=seed,
                                  num_steps=num_steps, batch_size=batch_size)
    classifier = dataclasses.replace(classifier, provenance=dict(classifier.provenance, dataset=dataset.name))
    classifier.save(path)
    return classifier
