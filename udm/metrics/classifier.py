"""A small CNN classifier whose features and predictions score generated images (FD, class statistics)."""
import dataclasses
import functools
import hashlib
import json
import os
import re
import tempfile
import time
from typing import Any, Dict, Tuple

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from udm.data.datasets import Dataset
from udm.data.pipeline import batch_at_step

_FORMAT_VERSION = 1
_ARCHITECTURE = "cnn"


class CNN(nn.Module):
    """Conv(3x3) stack, the later convs with stride 2, then a ReLU feature layer and a linear head.

    Attributes:
        num_classes: K, the number of logits.
        channels: output channels of each conv; the first keeps resolution, the rest halve it.
        feature_dim: F, width of the penultimate (feature) layer.
    """

    num_classes: int
    channels: Tuple[int, ...] = (16, 32)
    feature_dim: int = 128

    @nn.compact
    def __call__(self, images: jax.Array) -> Tuple[jax.Array, jax.Array]:
        """Logits and features.

        Args:
            images: [B, H, W, C] in [-1, 1].

        Returns:
            (logits [B, K], features [B, F]).
        """
        x = images
        for i, channels in enumerate(self.channels):
            x = nn.relu(nn.Conv(channels, (3, 3), strides=1 if i == 0 else 2)(x))
        x = x.reshape((x.shape[0], -1))
        features = nn.relu(nn.Dense(self.feature_dim)(x))
        return nn.Dense(self.num_classes)(features), features


@functools.partial(jax.jit, static_argnums=0)
def _apply(model: CNN, params: Any, images: jax.Array) -> Tuple[jax.Array, jax.Array]:
    logits, features = model.apply({"params": params}, images)
    return jax.nn.softmax(logits, axis=-1), features


@dataclasses.dataclass(frozen=True, eq=False)
class Classifier:
    """A trained CNN: its parameters, architecture and the accuracy measured on held-out data.

    Attributes:
        params: the Flax parameter pytree.
        num_classes: K.
        test_accuracy: fraction of held-out images classified correctly at training time.
        image_shape: (H, W, C) of the images it takes.
        channels: the CNN's conv channels.
        feature_dim: F, the width of `features`.
        provenance: JSON-able facts about its training (dataset, seed, num_steps, seconds).
    """

    params: Any
    num_classes: int
    test_accuracy: float
    image_shape: Tuple[int, int, int]
    channels: Tuple[int, ...] = (16, 32)
    feature_dim: int = 128
    provenance: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def model(self) -> CNN:
        return CNN(num_classes=self.num_classes, channels=tuple(self.channels), feature_dim=self.feature_dim)

    def _run(self, images: np.ndarray, chunk: int) -> Tuple[np.ndarray, np.ndarray]:
        """(probs [N, K], features [N, F]), computed chunk by chunk at one compiled shape."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.image_shape):
            raise ValueError(f"images must be [N, {', '.join(map(str, self.image_shape))}], got {images.shape}")
        num = images.shape[0]
        chunk = max(1, min(chunk, num))
        probs, feats = [], []
        for start in range(0, num, chunk):
            block = images[start:start + chunk]
            valid = block.shape[0]
            # Padding the last block to `chunk` rows keeps a single compiled shape.
            if valid < chunk:
                block = np.concatenate([block, np.zeros((chunk - valid,) + block.shape[1:], np.float32)])
            p, f = _apply(self.model, self.params, block)
            probs.append(np.asarray(p)[:valid])
            feats.append(np.asarray(f)[:valid])
        return (np.concatenate(probs) if probs else np.zeros((0, self.num_classes), np.float32),
                np.concatenate(feats) if feats else np.zeros((0, self.feature_dim), np.float32))

    def probs(self, images: np.ndarray, *, chunk: int = 512) -> np.ndarray:
        """Predicted class probabilities.

        Args:
            images: [N, H, W, C] in [-1, 1].
            chunk: images per jitted call.

        Returns:
            float32 [N, K], rows summing to 1.
        """
        return self._run(images, chunk)[0]

    def features(self, images: np.ndarray, *, chunk: int = 512) -> np.ndarray:
        """Penultimate-layer features, the inputs to Fréchet distance.

        Args:
            images: [N, H, W, C] in [-1, 1].
            chunk: images per jitted call.

        Returns:
            float32 [N, F].
        """
        return self._run(images, chunk)[1]

    def metadata(self) -> Dict[str, Any]:
        """The JSON-able description written next to the parameters."""
        return {
                "format_version": _FORMAT_VERSION,
                "architecture": {"name": _ARCHITECTURE, "channels": list(self.channels),
                                 "feature_dim": self.feature_dim},
                "num_classes": self.num_classes,
                "image_shape": list(self.image_shape),
                "test_accuracy": self.test_accuracy,
                "provenance": self.provenance,
        }

    def save(self, path: str) -> str:
        """Writes the parameters (msgpack) to `path` and the metadata to `path + ".json"`, each atomically.

        The JSON, written last, holds the SHA-256 of the parameter bytes, so a crash between the
        two writes leaves a pair that `load_classifier` recognises as inconsistent.

        Args:
            path: the parameter file, e.g. ".../classifier.msgpack".

        Returns:
            path.
        """
        param_bytes = flax.serialization.to_bytes(jax.device_get(self.params))
        metadata = dict(self.metadata(), params_sha256=hashlib.sha256(param_bytes).hexdigest())
        _atomic_write(path, param_bytes)
        _atomic_write(path + ".json", json.dumps(metadata, indent=2, sort_keys=True).encode())
        return path


def _atomic_write(path: str, data: bytes) -> None:
    """Writes to a temp file in the same folder, then renames it over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def _read_metadata(path: str) -> Dict[str, Any]:
    with open(path + ".json") as f:
        return json.load(f)


def load_classifier(path: str) -> Classifier:
    """Reads a classifier written by `Classifier.save`.

    Args:
        path: the parameter file given to `save`; its metadata is at `path + ".json"`.

    Returns:
        The Classifier, parameters as jax arrays.
    """
    metadata = _read_metadata(path)
    with open(path, "rb") as f:
        param_bytes = f.read()
    if metadata.get("format_version") != _FORMAT_VERSION or metadata["architecture"]["name"] != _ARCHITECTURE:
        raise ValueError(f"{path}: unsupported classifier format {metadata.get('format_version')} / "
                         f"{metadata.get('architecture')}")
    if hashlib.sha256(param_bytes).hexdigest() != metadata.get("params_sha256"):
        raise ValueError(f"{path}: parameters do not match the checksum in {path}.json (interrupted save?)")
    params = jax.tree.map(jnp.asarray, flax.serialization.msgpack_restore(param_bytes))
    return Classifier(params=params, num_classes=int(metadata["num_classes"]),
                      test_accuracy=float(metadata["test_accuracy"]),
                      image_shape=tuple(metadata["image_shape"]),
                      channels=tuple(metadata["architecture"]["channels"]),
                      feature_dim=int(metadata["architecture"]["feature_dim"]),
                      provenance=metadata.get("provenance", {}))


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
