"""BERT-whitening with (beta, gamma, k): the identities of docs/whitening.md §6, numerics, I/O and the sweep."""
import jax
import numpy as np
import pytest

from udm import whitening


def _anisotropic(n: int, d: int, *, seed: int = 0) -> np.ndarray:
    # A large shared mean plus a few dominant directions plus small isotropic noise: the
    # anisotropy of raw BERT vectors that whitening is meant to undo.
    rng = np.random.default_rng(seed)
    mean = 5.0 * rng.normal(size=d)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    scales = np.geomspace(10.0, 0.1, d)
    return mean + (rng.normal(size=(n, d)) * scales) @ basis.T


def _cosines(x: np.ndarray) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


@pytest.fixture()
def float64():
    # Reference numerics: docs/whitening.md §6 quotes ~1e-12 agreement in float64.
    with jax.enable_x64(True):
        yield


def test_original_setting_gives_zero_mean_and_identity_covariance(float64):
    x = _anisotropic(500, 16)
    w = whitening.fit(x, beta=1.0)
    y = np.asarray(whitening.apply(w, x, gamma=1.0))
    assert y.dtype == np.float64 and y.shape == x.shape
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(y.T @ y / len(y), np.eye(16), atol=1e-10)  # 1/N, as in W1


def test_float32_input_stays_float32_and_whitens():
    x = _anisotropic(500, 16).astype(np.float32)
    w = whitening.fit(x, beta=1.0)
    y = np.asarray(whitening.apply(w, x))
    assert y.dtype == np.float32
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(16), atol=1e-3)


def test_rotation_setting_keeps_cosines_and_spearman(float64):
    x = _anisotropic(200, 12, seed=1)
    w = whitening.fit(x, beta=0.0)
    y = np.asarray(whitening.apply(w, x, gamma=0.0, k=None))
    assert np.abs(_cosines(y) - _cosines(x)).max() < 1e-12
    labels = np.random.default_rng(2).normal(size=100)
    assert whitening.spearman_of_cosine(y[:100], y[100:], labels) == pytest.approx(
            whitening.spearman_of_cosine(x[:100], x[100:], labels), abs=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_gamma_zero_keeps_the_norm_of_the_shifted_vector(float64, beta):
    # docs/whitening.md §6: with gamma = 0, ||x~_i|| = ||x_i - beta mu|| (a rotation), for every beta.
    x = _anisotropic(100, 10, seed=3)
    w = whitening.fit(x, beta=beta)
    y = np.asarray(whitening.apply(w, x, gamma=0.0))
    np.testing.assert_allclose(np.linalg.norm(y, axis=1),
                               np.linalg.norm(x - beta * x.mean(0), axis=1), rtol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_eigenvalues_sorted_nonnegative_and_u_orthogonal(beta):
    x = _anisotropic(300, 20, seed=4)
    w = whitening.fit(x, beta=beta)
    assert np.all(w.eigenvalues >= 0) and np.all(np.diff(w.eigenvalues) <= 0)
    np.testing.assert_allclose(w.U.T @ w.U, np.eye(20), atol=1e-12)
    # Sigma is the second moment about beta mu (not the covariance unless beta = 1).
    xc = x - beta * x.mean(0)
    np.testing.assert_allclose(w.U @ np.diag(w.eigenvalues) @ w.U.T, xc.T @ xc / len(x),
                               rtol=1e-10, atol=1e-10)


def test_retained_energy_is_monotone_and_matches_truncation(float64):
    x = _anisotropic(300, 12, seed=5)
    w = whitening.fit(x, beta=1.0)
    energy = whitening.retained_energy(w)
    assert np.all(np.diff(energy) >= 0) and energy[-1] == pytest.approx(1.0, abs=1e-15)
    total = np.sum(np.asarray(whitening.apply(w, x, gamma=0.0)) ** 2)
    kept = [np.sum(np.asarray(whitening.apply(w, x, gamma=0.0, k=k)) ** 2) / total
            for k in range(1, 13)]
    np.testing.assert_allclose(kept, energy, rtol=1e-10)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_rank_deficient_and_degenerate_inputs_stay_finite(beta):
    # N < D: at most N (beta = 0) or N - 1 (beta = 1) nonzero eigenvalues.
    x = _anisotropic(5, 32, seed=6)
    w = whitening.fit(x, beta=beta)
    y = np.asarray(whitening.apply(w, x, gamma=1.0))
    assert np.all(np.isfinite(y)) and w.floor > 0
    # Within the data's span the whitening is exact: the kept directions have unit spread.
    rank = 5 - int(beta)
    top = np.asarray(whitening.apply(w, x, k=rank))
    np.testing.assert_allclose(np.sum(top ** 2, axis=0) / 5, 1.0, rtol=1e-4)
    # One vector repeated: no spread at all (Sigma = 0 when beta = 1).
    same = np.repeat(x[:1], 4, axis=0)
    y = np.asarray(whitening.apply(whitening.fit(same, beta=beta), same))
    assert np.all(np.isfinite(y))


def test_save_load_round_trip(tmp_path):
    x = _anisotropic(50, 8, seed=7)
    w = whitening.fit(x, beta=0.25)
    path = tmp_path / "whitening.npz"
    whitening.save(path, w)
    loaded = whitening.load(path)
    for name in whitening.Whitening._fields:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(w, name))
    assert float(loaded.beta) == 0.25
    np.testing.assert_array_equal(np.asarray(whitening.apply(loaded, x, gamma=0.5, k=3)),
                                  np.asarray(whitening.apply(w, x, gamma=0.5, k=3)))
    np.savez(tmp_path / "other.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="not a saved Whitening"):
        whitening.load(tmp_path / "other.npz")


def test_apply_under_jit_matches_eager():
    x = _anisotropic(40, 8, seed=8).astype(np.float32)
    w = whitening.fit(x, beta=1.0)
    jitted = jax.jit(lambda w, x: whitening.apply(w, x, gamma=0.5, k=4))
    np.testing.assert_allclose(np.asarray(jitted(w, x)),
                               np.asarray(whitening.apply(w, x, gamma=0.5, k=4)), rtol=1e-5,
                               atol=1e-5)


def _labelled_pairs(n: int, d: int, *, seed: int):
    # docs/whitening.md §6's synthetic task: a large shared mean and two strong nuisance directions (drawn
    # independently for each sentence), plus a weaker 10-d semantic subspace that alone decides
    # the pair labels, plus tiny isotropic noise. The known best: gamma = 1 (equalise the
    # nuisance and semantic directions) and k = 12 (drop the 12 pure-noise directions, which
    # gamma = 1 would otherwise blow up to the same weight).
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    nuisance, semantic = basis[:, :2], basis[:, 2:12]
    mean = 20.0 * rng.normal(size=d)

    def embed(z):
        return (mean[None, :] + 10.0 * rng.normal(size=(len(z), 2)) @ nuisance.T
                + z @ semantic.T + 0.01 * rng.normal(size=(len(z), d)))

    za = rng.normal(size=(n, 10))
    noise = rng.uniform(0, 2, size=n)  # more noise = less similar
    zb = za + noise[:, None] * rng.normal(size=(n, 10))
    return embed(za), embed(zb), -noise


def test_sweep_finds_the_known_best_on_a_synthetic_task():
    a, b, labels = _labelled_pairs(400, 24, seed=0)
    result = whitening.sweep(a, b, labels, betas=(0.0, 1.0), gammas=(0.0, 1.0), ks=(4, 12, 24))
    assert [(p.beta, p.gamma, p.k) for p in result.grid] == [
            (bt, g, k) for bt in (0.0, 1.0) for g in (0.0, 1.0) for k in (4, 12, 24)]
    # Raw cosines are dominated by the mean and the nuisance directions.
    assert abs(result.raw_score) < 0.15
    assert result.best.score == max(p.score for p in result.grid)
    assert (result.best.gamma, result.best.k) == (1.0, 12)
    assert result.best.score > result.raw_score + 0.3
    # beta = 1 adds nothing to (gamma, k) = (1, 12) here: the mean is one direction among 12.
    for beta in (0.0, 1.0):
        best_at_beta = max((p for p in result.grid if p.beta == beta), key=lambda p: p.score)
        assert (best_at_beta.gamma, best_at_beta.k) == (1.0, 12)
    # The rotation setting at k = D reproduces the raw score exactly (a = b in docs/whitening.md §4).
    rotation = next(p for p in result.grid if (p.beta, p.gamma, p.k) == (0.0, 0.0, 24))
    assert rotation.score == pytest.approx(result.raw_score, abs=1e-6)


def test_sweep_with_a_user_metric_and_fit_vectors():
    a, b, labels = _labelled_pairs(100, 16, seed=1)
    calls = []

    def metric(x, y, gold):
        calls.append(x.shape)
        return -float(x.shape[1])  # prefers the smallest k

    result = whitening.sweep(a, b, labels, fit_on=np.concatenate([a, b, a]), betas=(1.0,),
                             gammas=(0.5,), ks=(2, 4, 16), metric=metric)
    assert result.best.k == 2 and result.best.score == -2.0
    assert calls[:3] == [(100, 2), (100, 4), (100, 16)]


def test_bad_inputs_give_clear_errors():
    x = _anisotropic(20, 6, seed=11)
    w = whitening.fit(x)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\], got 1.5"):
        whitening.fit(x, beta=1.5)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\], got -0.1"):
        whitening.apply(w, x, gamma=-0.1)
    with pytest.raises(ValueError, match="gamma must be in"):
        whitening.apply(w, x, gamma=float("nan"))
    with pytest.raises(ValueError, match=r"k must be in \[1, D=6\], got 7"):
        whitening.apply(w, x, k=7)
    with pytest.raises(ValueError, match=r"k must be in \[1, D=6\], got 0"):
        whitening.apply(w, x, k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        whitening.apply(w, x, k=2.0)
    with pytest.raises(ValueError, match=r"vectors \[\.\.\., D=6\]"):
        whitening.apply(w, x[:, :5])
    with pytest.raises(ValueError, match=r"vectors \[N, D\]"):
        whitening.fit(x[0])
    with pytest.raises(ValueError, match="non-finite"):
        whitening.fit(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="a, b \\[P, D\\] and labels \\[P\\]"):
        whitening.sweep(x, x, np.zeros(3))
    with pytest.raises(TypeError):
        whitening.apply(w, x, 1.0)  # gamma and k are keyword-only; beta is in w
