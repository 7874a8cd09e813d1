"""A small CNN classifier whose features and predictions score generated images (FD, class statistics)."""
import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from typing import Any, Dict, Tuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from udm.nn.classifier import CNN

_FORMAT_VERSION = 1
_ARCHITECTURE = "cnn"


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
