"""Tests for udm.metrics: Fréchet distance against closed forms, sample statistics, the classifier, grids."""
import os

import matplotlib.image
import numpy as np
import pytest
import scipy.linalg

from udm.data import load_dataset
from udm.metrics import (class_statistics, frechet_distance, frechet_distance_from_stats, gaussian_stats,
                         image_grid, load_classifier, memorisation_report, nearest_neighbour_distances,
                         save_image_grid)
from udm.pipeline import classifier as classifier_lib
from udm.pipeline.classifier import load_or_train_classifier, train_classifier


def _closed_form_fd(mu1, s1, mu2, s2):
    """The textbook formula, with scipy's general matrix square root, as an independent reference."""
    sqrt_s1 = scipy.linalg.sqrtm(s1)
    cross = scipy.linalg.sqrtm(sqrt_s1 @ s2 @ sqrt_s1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2.0 * np.real(cross)))


def _random_covariance(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


# --- Fréchet distance -----------------------------------------------------------------------------

def test_frechet_equals_closed_form_on_the_empirical_statistics():
    rng = np.random.default_rng(0)
    feats_a = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    feats_b = rng.normal(size=(400, 6)) * 2.0 + 1.0
    mu_a, s_a = feats_a.mean(0), np.cov(feats_a, rowvar=False)
    mu_b, s_b = feats_b.mean(0), np.cov(feats_b, rowvar=False)
    expected = _closed_form_fd(mu_a, s_a, mu_b, s_b)
    np.testing.assert_allclose(frechet_distance(feats_a, feats_b), expected, rtol=1e-6)
    np.testing.assert_allclose(frechet_distance_from_stats(mu_a, s_a, mu_b, s_b), expected, rtol=1e-6)


def test_frechet_of_gaussian_samples_approaches_the_population_value():
    rng = np.random.default_rng(1)
    dim, n = 4, 200_000
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    s1, s2 = _random_covariance(rng, dim), _random_covariance(rng, dim)
    feats_a = rng.multivariate_normal(mu1, s1, size=n)
    feats_b = rng.multivariate_normal(mu2, s2, size=n)
    expected = _closed_form_fd(mu1, s1, mu2, s2)
    # Estimation error of the mean and covariance terms is O(dim / sqrt(n)) ~ 1e-2 here; 3% is
    # several standard errors for these O(1) distances.
    np.testing.assert_allclose(frechet_distance(feats_a, feats_b), expected, rtol=0.03)


def test_frechet_is_zero_on_itself_and_symmetric():
    rng = np.random.default_rng(2)
    feats_a = rng.normal(size=(200, 16)) ** 2
    feats_b = rng.normal(size=(150, 16))
    assert abs(frechet_distance(feats_a, feats_a)) < 1e-8
    np.testing.assert_allclose(frechet_distance(feats_a, feats_b), frechet_distance(feats_b, feats_a), rtol=1e-9)


def test_frechet_handles_rank_deficient_features():
    # Fewer samples than dimensions (singular covariances), as with few samples and wide features.
    rng = np.random.default_rng(3)
    feats_a, feats_b = rng.normal(size=(10, 32)), rng.normal(size=(12, 32)) + 0.5
    value = frechet_distance(feats_a, feats_b)
    assert np.isfinite(value) and value > 0
    assert abs(frechet_distance(feats_a, feats_a)) < 1e-8


def test_frechet_in_one_dimension_is_mean_and_std_gap():
    rng = np.random.default_rng(4)
    a, b = rng.normal(1.0, 2.0, size=(500, 1)), rng.normal(-0.5, 0.7, size=(300, 1))
    expected = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    np.testing.assert_allclose(frechet_distance(a, b), expected, rtol=1e-10)


def test_gaussian_stats_shapes_and_values():
    feats = np.arange(12, dtype=np.float32).reshape(4, 3)
    mu, sigma = gaussian_stats(feats)
    assert mu.dtype == np.float64 and mu.shape == (3,) and sigma.shape == (3, 3)
    np.testing.assert_allclose(mu, [4.5, 5.5, 6.5])
    np.testing.assert_allclose(sigma, np.full((3, 3), 15.0))  # var of 0,3,6,9 with ddof=1


# --- class statistics and memorisation ------------------------------------------------------------

def test_class_statistics_of_uniform_and_one_hot_predictions():
    uniform = class_statistics(np.full((7, 10), 0.1))
    np.testing.assert_allclose(uniform["mean_entropy_nats"], np.log(10))
    assert abs(sum(uniform["histogram"]) - 1.0) < 1e-12

    labels = np.arange(50) % 10
    one_hot = class_statistics(np.eye(10)[labels])
    assert one_hot["mean_entropy_nats"] == 0.0
    np.testing.assert_allclose(one_hot["histogram"], np.full(10, 0.1))
    np.testing.assert_allclose(one_hot["histogram_entropy_nats"], np.log(10))
    np.testing.assert_allclose(one_hot["max_class_fraction"], 0.1)

    collapsed = class_statistics(np.eye(10)[np.full(20, 3)])
    assert collapsed["histogram"][3] == 1.0 and collapsed["histogram_entropy_nats"] == 0.0
    assert collapsed["max_class_fraction"] == 1.0


def test_nearest_neighbour_distances_match_brute_force():
    rng = np.random.default_rng(5)
    samples, reference = rng.normal(size=(37, 4, 4, 1)), rng.normal(size=(53, 4, 4, 1))
    brute = np.linalg.norm(samples.reshape(37, 1, -1) - reference.reshape(1, 53, -1), axis=-1).min(axis=1)
    for chunk in (1, 7, 1024):  # blocks smaller than, not dividing, and larger than the inputs
        np.testing.assert_allclose(nearest_neighbour_distances(samples, reference, chunk=chunk), brute,
                                   rtol=1e-10)


def test_a_copied_training_image_has_distance_zero_and_is_flagged():
    rng = np.random.default_rng(6)
    train = rng.uniform(-1, 1, size=(200, 8, 8, 1))
    held_out = rng.uniform(-1, 1, size=(100, 8, 8, 1))
    # Constant-3 images are >= 2 per pixel (>= 16 in all) from any image in [-1, 1]: never flagged.
    novel = np.ones((3, 8, 8, 1)) * 3.0
    samples = np.concatenate([train[17:18], novel])
    distances = nearest_neighbour_distances(samples, train)
    assert distances[0] == 0.0 and np.all(distances[1:] > 0)

    report = memorisation_report(samples, train, held_out)
    assert report["sample_nn_min"] == 0.0
    assert report["memorised_fraction"] == 0.25 and report["exact_copy_fraction"] == 0.25
    assert 0 < report["held_out_nn_min"] <= report["threshold"] <= report["held_out_nn_mean"]
    # Honest samples drawn like the held-out data are flagged only rarely.
    fresh = rng.uniform(-1, 1, size=(100, 8, 8, 1))
    assert memorisation_report(fresh, train, held_out)["memorised_fraction"] <= 0.05


# --- classifier -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def trained(digits):
    return train_classifier(digits.train_images, digits.train_labels, digits.test_images, digits.test_labels,
                            num_classes=10, seed=0, num_steps=600)


def test_classifier_is_accurate_on_held_out_digits(trained, digits):
    assert trained.test_accuracy >= 0.93
    recomputed = np.mean(trained.probs(digits.test_images).argmax(1) == digits.test_labels)
    assert recomputed == pytest.approx(trained.test_accuracy)


def test_classifier_outputs_have_declared_shapes(trained, digits):
    images = digits.test_images[:13]
    feats, probs = trained.features(images), trained.probs(images)
    assert feats.shape == (13, trained.feature_dim) and feats.dtype == np.float32
    assert probs.shape == (13, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # Chunking (with a padded last chunk) changes nothing.
    np.testing.assert_allclose(trained.features(images, chunk=4), feats, rtol=1e-5, atol=1e-6)


def test_classifier_features_separate_real_digits_from_noise(trained, digits):
    rng = np.random.default_rng(0)
    real_a, real_b = trained.features(digits.test_images[:150]), trained.features(digits.test_images[150:])
    noise = trained.features(rng.uniform(-1, 1, size=(150, 8, 8, 1)).astype(np.float32))
    assert frechet_distance(real_a, real_b) < 0.2 * frechet_distance(real_a, noise)


def test_classifier_save_load_round_trip(trained, digits, tmp_path):
    path = trained.save(str(tmp_path / "clf.msgpack"))
    loaded = load_classifier(path)
    assert loaded.test_accuracy == trained.test_accuracy and loaded.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(loaded.probs(digits.test_images), trained.probs(digits.test_images))
    # A corrupted parameter file is detected rather than silently loaded.
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="checksum"):
        load_classifier(path)


def test_load_or_train_reuses_the_cache(digits, tmp_path, monkeypatch):
    calls = []
    real_train = classifier_lib.train_classifier

    def counting_train(*args, **kwargs):
        calls.append(kwargs["seed"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(classifier_lib, "train_classifier", counting_train)
    first = load_or_train_classifier(str(tmp_path), digits, seed=1, num_steps=20)
    second = load_or_train_classifier(str(tmp_path), digits, seed=1, num_steps=20)
    assert calls == [1]
    np.testing.assert_array_equal(first.probs(digits.test_images[:5]), second.probs(digits.test_images[:5]))
    assert second.provenance["dataset"] == "digits"
    # Exactly the parameter file and its metadata: no temp files are left behind.
    path = classifier_lib._cache_path(str(tmp_path), "digits", 1)
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(path), os.path.basename(path) + ".json"])
    # A different seed does not match the cache, so it trains.
    load_or_train_classifier(str(tmp_path), digits, seed=2, num_steps=20)
    assert calls == [1, 2]


# --- image grids ----------------------------------------------------------------------------------

def test_save_image_grid_writes_the_expected_pixels(tmp_path):
    rng = np.random.default_rng(7)
    images = (rng.integers(0, 256, size=(5, 8, 8, 1)) / 127.5 - 1.0).astype(np.float32)
    path = save_image_grid(images, str(tmp_path / "grid.png"), ncols=3, scale=2)
    assert os.path.getsize(path) > 0
    png = matplotlib.image.imread(path)
    # 2 rows x 3 columns of 8x8 tiles with 1-pixel borders, each pixel doubled.
    assert png.shape[:2] == (2 * (2 * 9 + 1), 2 * (3 * 9 + 1))
    expected = image_grid(images, ncols=3, scale=2)
    np.testing.assert_allclose(png[..., :3], expected, atol=1.01 / 255)
    # The second image's top-left pixel sits after one border pixel and one tile + border.
    np.testing.assert_allclose(png[2, 2 * 10, 0], (images[1, 0, 0, 0] + 1) / 2, atol=1.01 / 255)


def test_save_image_grid_with_title_and_rgb(tmp_path):
    images = np.stack([np.full((4, 4, 3), -1.0), np.full((4, 4, 3), 1.0)]).astype(np.float32)
    images[0, ..., 0] = 1.0  # pure red
    path = save_image_grid(images, str(tmp_path / "rgb.png"), title="two tiles", scale=4)
    png = matplotlib.image.imread(path)
    grid = image_grid(images, scale=4)
    assert png.shape[0] > grid.shape[0] and png.shape[1] == grid.shape[1]
    np.testing.assert_allclose(png[-grid.shape[0]:, :, :3], grid, atol=1.01 / 255)
    np.testing.assert_allclose(png[-grid.shape[0] + 4 + 1, 4 + 1, :3], [1.0, 0.0, 0.0])
