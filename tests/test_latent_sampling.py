"""udm.pipeline.latent_sampling with oracle predictors: no training.

A deterministic sampler started from x_T = prior_std z is a function of z alone; the latent sets
and scores of docs/hubness.md §7 are built on udm.hubness and udm.pipeline.evaluate.
"""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm import hubness, metrics, oracles, parallel
from udm.pipeline import latent_sampling as ls
from udm.processes import PROCESSES
from udm.sampling import make_sampler

SHAPE = (4, 4, 1)  # dim 16
MEAN, STD = 0.3, 0.5  # the data N(MEAN, STD^2 I) of the oracle


def _sample_fn(process, name, num_steps, **options):
    predictor = oracles.gaussian_posterior_mean(process, MEAN, STD)
    return jax.jit(make_sampler(process, predictor, name, num_steps=num_steps, **options))


# One jitted DDIM (eta = 0) sampler shared by the tests, so that it compiles once.
GAUSSIAN = PROCESSES.get("gaussian")(schedule="blog", num_timesteps=20)
DDIM = _sample_fn(GAUSSIAN, "ddim", 5, eta=0.0)


def _generator(process, sample_fn, *, noise_key=0):
    return ls.LatentGenerator(process, sample_fn, None, SHAPE, parallel.data_mesh(), 8,
                              jax.random.key(noise_key))


def _latents(m, seed=0):
    return np.asarray(jax.random.normal(jax.random.key(seed), (m, 16)))


def _sampled_directly(sample_fn, x_T):
    """The sampler's own output on x_T [8, 16], sharded as the generator shards it."""
    x_T = parallel.shard_batch(np.asarray(x_T, np.float32).reshape(8, *SHAPE), parallel.data_mesh())
    return np.asarray(sample_fn(None, x_T, key=jax.random.key(9)).x0)


def test_ddim_generator_is_a_function_of_z_alone():
    """Batching, padding and the noise key do not change what DDIM (eta = 0) makes of each z."""
    process, sample_fn = GAUSSIAN, DDIM
    z = _latents(13)  # two batches of 8, the second one padded
    samples = _generator(process, sample_fn)(z)
    assert samples.shape == (13, *SHAPE)
    one = _generator(process, sample_fn, noise_key=1)(z[3:4])  # z[3] among 7 copies of itself
    np.testing.assert_allclose(one[0], samples[3], atol=1e-6)
    # x_T = z: the Gaussian process's prior std is 1.
    np.testing.assert_allclose(samples[:8], _sampled_directly(sample_fn, z[:8]), atol=1e-6)


def test_ode_generator_starts_at_prior_std_times_z():
    """The VE SDE's prior is N(0, sigma_max^2 I): x_T = prior_std z, not z."""
    process = PROCESSES.get("sde")(sde="ve")
    assert process.prior_std > 10.0
    sample_fn = _sample_fn(process, "ode_heun", 2)
    z = _latents(8, seed=1)
    np.testing.assert_allclose(_generator(process, sample_fn)(z),
                               _sampled_directly(sample_fn, process.prior_std * z),
                               rtol=1e-5, atol=1e-5)


def test_generator_refuses_a_process_without_an_isotropic_prior_and_bad_latents():
    masking = PROCESSES.get("masking")(seq_len=6, vocab_size=5)
    with pytest.raises(ValueError, match="isotropic"):
        ls.LatentGenerator(masking, None, None, (6,), parallel.data_mesh(), 8, jax.random.key(0))
    gen = _generator(GAUSSIAN, None)
    with pytest.raises(ValueError, match=r"z must be \[M, 16\]"):
        gen(np.zeros((4, 15), np.float32))


def test_z_space_latent_sets(monkeypatch):
    """random: N(0, I); hub / antihub: hub_antihub_select on the pool key; truncated: at the hub
    set's mean norm (the truncation maths is checked in tests/test_hubness.py; a stand-in
    records what it is asked for)."""
    asked = {}

    def fake_truncated(n, dim, target_mean_norm, *, key):
        asked.update(n=n, dim=dim, target=target_mean_norm, key=key)
        return jnp.zeros((n, dim))

    monkeypatch.setattr(hubness, "truncated_normal_matched", fake_truncated)
    monkeypatch.setattr(hubness, "truncation_radius", lambda dim, target: (dim, target))
    key = jax.random.key(7)
    sets = ls.z_space_latent_sets(10, 16, pool_size=200, k=5, threshold=10, max_pools=20,
                                  key=key)
    assert list(sets) == ["random", "hub", "antihub", "truncated"]
    assert all(s["z"].shape == (10, 16) for s in sets.values())
    random_key, pool_key, trunc_key = jax.random.split(key, 3)
    np.testing.assert_array_equal(sets["random"]["z"], jax.random.normal(random_key, (10, 16)))
    hubs, antihubs = hubness.hub_antihub_select(dim=16, num_wanted=10, pool_size=200, k=5,
                                                threshold=10, key=pool_key)
    np.testing.assert_array_equal(sets["hub"]["z"], hubs.latents)
    np.testing.assert_array_equal(sets["antihub"]["z"], antihubs.latents)
    assert sets["hub"]["pools"] == sets["antihub"]["pools"] == hubs.num_rounds
    assert sets["hub"]["pass_rate"] == hubs.num_passed / (200 * hubs.num_rounds)
    assert sets["antihub"]["pass_rate"] == antihubs.num_passed / (200 * hubs.num_rounds)
    norms = {name: np.linalg.norm(s["z"], axis=1).mean() for name, s in sets.items()}
    assert norms["hub"] < norms["random"] < norms["antihub"]
    hub_norm = float(np.linalg.norm(sets["hub"]["z"], axis=1).mean())
    assert (asked["n"], asked["dim"], asked["target"]) == (10, 16, hub_norm)
    assert bool(jnp.all(jax.random.key_data(asked["key"]) == jax.random.key_data(trunc_key)))
    assert sets["truncated"]["radius"] == (16, hub_norm)
    assert sets["random"]["pass_rate"] is None and sets["truncated"]["pass_rate"] is None


def test_output_space_hub_set_lowers_the_threshold_and_caches(tmp_path):
    process = GAUSSIAN
    gen = _generator(process, DDIM)
    features_fn = lambda images: images.reshape(len(images), -1)  # noqa: E731
    path = str(tmp_path / "pool.npz")
    kwargs = dict(num_samples=6, pool_size=64, k=3, threshold=50, key=jax.random.key(2))
    paper = ls.output_space_hub_set(gen, features_fn, cache_path=path, **kwargs)
    pool = np.asarray(jax.random.normal(jax.random.key(2), (64, 16)))
    nk = np.asarray(hubness.k_occurrence_of(features_fn(gen(pool)), 3, include_self=True))
    # Nobody reaches N_k >= 50 among 64 points with k = 3: t drops to the 6th largest N_k.
    assert paper["paper_pass_rate"] == 0.0 and paper["threshold"] == np.sort(nk)[::-1][5]
    assert paper["pass_rate"] == np.mean(nk >= paper["threshold"])
    np.testing.assert_array_equal(paper["z"], pool[nk >= paper["threshold"]][:6])
    assert paper["nk_max"] == nk.max() and paper["pool"] == 64
    # Read back from the cache (a generator that fails proves it is not called again).
    broken = ls.LatentGenerator(process, None, None, SHAPE, parallel.data_mesh(), 8,
                                jax.random.key(0))
    again = ls.output_space_hub_set(broken, features_fn, cache_path=path, **kwargs)
    assert again["pool_seconds"] == paper["pool_seconds"]
    np.testing.assert_array_equal(again["z"], paper["z"])


class _LinearClassifier:
    """features = x W, probs = softmax(features): enough for the scores."""

    def __init__(self, seed=0):
        self.w = np.random.default_rng(seed).standard_normal((16, 10)).astype(np.float32)

    def features(self, images):
        return images.reshape(len(images), -1) @ self.w

    def probs(self, images):
        return np.asarray(jax.nn.softmax(self.features(images)))


def _dataset():
    rng = np.random.default_rng(1)
    return types.SimpleNamespace(train_images=rng.uniform(-1, 1, (40, *SHAPE)).astype(np.float32),
                                 test_images=rng.uniform(-1, 1, (30, *SHAPE)).astype(np.float32))


def test_scores_and_the_real_reference_row():
    classifier, dataset = _LinearClassifier(), _dataset()
    reference = classifier.features(dataset.test_images)
    scores = ls.score_samples(dataset.test_images[:12], classifier, reference, dataset)
    np.testing.assert_allclose(scores["confidence"],
                               classifier.probs(dataset.test_images[:12]).max(axis=1).mean(),
                               rtol=1e-6)
    per_seed = ls.real_reference_scores(dataset, classifier, reference, num_samples=12, seeds=2)
    held_out = ls.score_samples(dataset.test_images, classifier, reference, dataset)
    for seed, row in enumerate(per_seed):
        real = dataset.train_images[np.random.default_rng(seed).choice(40, 12, replace=False)]
        assert row["fd"] == float(metrics.frechet_distance(classifier.features(real), reference))
        assert {k: v for k, v in row.items() if k != "fd"} == {
                k: v for k, v in held_out.items() if k != "fd"}


def test_summarise_seeds_and_fd_differences():
    per_seed = [dict({k: float(i) for k in ls.SCORE_KEYS}, fd=f, mean_norm=1.0, pass_rate=p)
                for i, (f, p) in enumerate([(10.0, 0.1), (12.0, None), (14.0, 0.3)])]
    row = ls.summarise_seeds("hub", per_seed, dict(threshold=5))
    assert list(row)[:3] == ["method", "seeds", "threshold"] and row["seeds"] == 3
    assert row["fd"] == 12.0 and row["fd_sd"] == 2.0 and row["fd_per_seed"] == [10.0, 12.0, 14.0]
    assert row["confidence"] == 1.0 and row["pass_rate"] == pytest.approx(0.2)
    assert ls.summarise_seeds("one", per_seed[:1], {})["fd_sd"] is None
    other = dict(fd=9.0, seeds=2, fd_per_seed=[8.0, 10.0])
    # Pooled sd: sqrt((4 + 2) / 2); SE of the difference: noise sqrt(1/3 + 1/2).
    noise = ls.pooled_fd_sd([row, other, dict(seeds=1, fd_per_seed=[3.0])])
    assert noise == pytest.approx(np.sqrt(3.0))
    delta, z = ls.fd_difference(row, other, noise)
    assert delta == 3.0 and z == pytest.approx(3.0 / (np.sqrt(3.0) * np.sqrt(1 / 3 + 1 / 2)))
    assert np.isnan(ls.pooled_fd_sd([dict(seeds=1, fd_per_seed=[3.0])]))
