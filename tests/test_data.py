"""Tests for udm.data: the digits split, the npz loader's contract and the resumable batch order."""
import importlib.util

import numpy as np
import pytest
from sklearn.datasets import load_digits

from udm.data import DATASETS, Dataset, batch_at_step, load_dataset


# --- digits ---------------------------------------------------------------------------------------

def test_digits_split_covers_all_images_in_range_and_shape():
    data = load_dataset("digits", seed=0)
    assert isinstance(data, Dataset)
    assert len(data.train_images) + len(data.test_images) == 1797
    # test_fraction = 1/6 of 1797, rounded up by sklearn.
    assert len(data.test_images) == int(np.ceil(1797 / 6))
    for images, labels in ((data.train_images, data.train_labels), (data.test_images, data.test_labels)):
        assert images.dtype == np.float32 and labels.dtype == np.int32
        assert images.shape[1:] == (8, 8, 1) and labels.shape == images.shape[:1]
        # Values 0..16 map to -1..1 in steps of 1/8.
        np.testing.assert_array_equal(np.unique(images * 8 + 8), np.arange(17))
        assert set(labels.tolist()) == set(range(10))
    assert min(data.train_images.min(), data.test_images.min()) == -1.0
    assert max(data.train_images.max(), data.test_images.max()) == 1.0
    assert data.num_classes == 10 and data.name == "digits" and data.image_shape == (8, 8, 1)


def test_digits_split_is_stratified_and_covers_every_image():
    data = load_dataset("digits", seed=0)
    train_counts = np.bincount(data.train_labels, minlength=10)
    test_counts = np.bincount(data.test_labels, minlength=10)
    fractions = test_counts / (train_counts + test_counts)
    np.testing.assert_allclose(fractions, 1 / 6, atol=0.01)
    # Together the splits hold every digits image (compared as sets: a few images are duplicates).
    all_images = np.concatenate([data.train_images, data.test_images]).reshape(1797, -1)
    reference = load_digits().images.reshape(1797, -1) / 8.0 - 1.0
    np.testing.assert_array_equal(np.unique(all_images, axis=0), np.unique(reference, axis=0))


def test_digits_split_is_a_function_of_the_seed():
    a, b, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    assert a.test_images.shape == c.test_images.shape
    assert not np.array_equal(a.test_images, c.test_images)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="digits.*mnist5k.*npz.*tfds:"):
        load_dataset("mnist-typo")
    assert DATASETS.names() == ["digits", "mnist5k", "npz"]


# --- npz ------------------------------------------------------------------------------------------

def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_round_trip_maps_uint8_to_minus_one_one(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(60, 5, 4), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = np.repeat(np.arange(3), 20)
    path = _write_npz(tmp_path / "toy.npz", images=images, labels=labels)
    data = load_dataset("npz", path=path, seed=3, test_fraction=0.25)

    assert data.train_images.shape[1:] == (5, 4, 1) and data.train_images.dtype == np.float32
    assert len(data.train_images) == 45 and len(data.test_images) == 15
    assert data.num_classes == 3 and data.name.startswith("npz:")
    # Every stored image comes back exactly, with its label: x / 127.5 - 1 is invertible on 0..255.
    restored = np.concatenate([data.train_images, data.test_images])[..., 0]
    restored_labels = np.concatenate([data.train_labels, data.test_labels])
    back = np.rint((restored + 1.0) * 127.5).astype(np.uint8)
    order = np.lexsort(back.reshape(60, -1).T)
    expected_order = np.lexsort(images.reshape(60, -1).T)
    np.testing.assert_array_equal(back[order], images[expected_order])
    np.testing.assert_array_equal(restored_labels[order], labels[expected_order])
    assert restored.min() == -1.0 and restored.max() == 1.0
    # Stratified: 5 of each class in the test split.
    np.testing.assert_array_equal(np.bincount(data.test_labels), [5, 5, 5])


def test_npz_with_given_test_split_and_rgb_without_labels(tmp_path):
    images = np.full((4, 3, 3, 3), 255, np.uint8)
    test_images = np.zeros((2, 3, 3, 3), np.uint8)
    path = _write_npz(tmp_path / "rgb.npz", images=images, test_images=test_images)
    data = load_dataset("npz", path=path)
    assert data.train_labels is None and data.test_labels is None and data.num_classes is None
    np.testing.assert_array_equal(data.train_images, np.ones((4, 3, 3, 3), np.float32))
    np.testing.assert_array_equal(data.test_images, -np.ones((2, 3, 3, 3), np.float32))


@pytest.mark.parametrize("arrays, error, message", [
        (None, FileNotFoundError, "not found"),
        ({"pixels": np.zeros((4, 2, 2), np.uint8)}, ValueError, r"no 'images'.*pixels"),
        ({"images": np.zeros((4, 2, 2), np.float32)}, ValueError, "uint8.*float32"),
        ({"images": np.zeros((4, 2), np.uint8)}, ValueError, "rank 2"),
        ({"images": np.zeros((4, 2, 2, 2), np.uint8)}, ValueError, r"C in \{1, 3\}"),
        ({"images": np.zeros((4, 2, 2), np.uint8), "labels": np.zeros(3, np.int64)}, ValueError,
         r"'labels' must have shape \[4\]"),
])
def test_npz_bad_inputs_name_the_problem(tmp_path, arrays, error, message):
    path = str(tmp_path / "missing.npz") if arrays is None else _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(error, match=message):
        load_dataset("npz", path=path)


def test_npz_needs_a_path():
    with pytest.raises(ValueError, match="path="):
        load_dataset("npz")


# --- tfds -----------------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is not None,
                    reason="tensorflow-datasets is installed")
def test_tfds_without_the_package_says_what_to_do():
    with pytest.raises(ImportError, match="tensorflow-datasets.*npz"):
        load_dataset("tfds:cifar10")


# --- batch order ----------------------------------------------------------------------------------

def test_every_example_appears_once_per_epoch():
    num_examples, batch_size = 103, 10
    steps_per_epoch = num_examples // batch_size
    for epoch in range(3):
        batches = [batch_at_step(num_examples, batch_size, epoch * steps_per_epoch + i, seed=7)
                   for i in range(steps_per_epoch)]
        seen = np.concatenate(batches)
        assert all(b.shape == (batch_size,) for b in batches)
        # 100 distinct examples; the 3 left over are dropped this epoch.
        assert len(np.unique(seen)) == steps_per_epoch * batch_size
        assert seen.min() >= 0 and seen.max() < num_examples
    # Over many epochs, the dropped remainder rotates, so every example is eventually used.
    used = np.concatenate([batch_at_step(num_examples, batch_size, s, seed=7) for s in range(200)])
    assert len(np.unique(used)) == num_examples


def test_batch_is_a_pure_function_of_seed_and_step():
    # Recomputing step 37 from scratch (as a resumed run does) gives the same batch.
    first = [batch_at_step(50, 8, s, seed=3) for s in range(40)]
    np.testing.assert_array_equal(first[37], batch_at_step(50, 8, 37, seed=3))
    assert not np.array_equal(batch_at_step(50, 8, 37, seed=3), batch_at_step(50, 8, 37, seed=4))
    # Epochs differ from each other too.
    assert not np.array_equal(batch_at_step(50, 8, 0, seed=3), batch_at_step(50, 8, 6, seed=3))


def test_batch_larger_than_dataset_raises():
    with pytest.raises(ValueError, match="batch_size=11.*num_examples=10"):
        batch_at_step(10, 11, 0, seed=0)
    np.testing.assert_array_equal(np.sort(batch_at_step(10, 10, 5, seed=0)), np.arange(10))
