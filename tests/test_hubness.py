"""Hubness (docs/hubness.md): exact k-NN, the k-occurrence identities, measures, reductions, latents."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats
from sklearn.neighbors import NearestNeighbors

from udm import hubness
from udm.hubness import reductions
from udm.parallel import data_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gaussian(n, d, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _brute_force(x, k, metric, include_self):
    """float64 numpy reference: full distance matrix, stable sort (ties: lower index first)."""
    x = np.asarray(x, np.float64)
    if metric == "cosine":
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        dist = 1.0 - u @ u.T
    else:
        dist = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0.0))
    if not include_self:
        np.fill_diagonal(dist, np.inf)
    idx = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(dist, idx, axis=1)


@pytest.fixture(scope="module")
def gaussian_100d():
    return _gaussian(2000, 100, seed=0)


@pytest.fixture(scope="module")
def base_skewness(gaussian_100d):
    return {m: hubness.hubness_report(gaussian_100d, 5, metric=m)["skewness"]
            for m in hubness.METRICS}


@pytest.mark.parametrize("metric", hubness.METRICS)
@pytest.mark.parametrize("include_self", [False, True])
def test_sum_of_k_occurrence_is_n_times_k(metric, include_self):
    x = _gaussian(203, 7, seed=1)
    for k in (1, 4, 10):
        nk = hubness.k_occurrence_of(x, k, metric=metric, include_self=include_self,
                                     block_size=50)
        assert nk.dtype == jnp.int32 and nk.shape == (203,)
        assert int(nk.sum()) == 203 * k


@pytest.mark.parametrize("metric", hubness.METRICS)
@pytest.mark.parametrize("include_self", [False, True])
def test_blocked_equals_brute_force(metric, include_self):
    x = _gaussian(500, 12, seed=2)
    k = 6
    ref_idx, ref_dist = _brute_force(x, k, metric, include_self)
    ref_nk = np.bincount(ref_idx.ravel(), minlength=500)
    for block_size in (37, 128, 500, 4096):  # non-divisors, exactly N, larger than N
        idx, dist = hubness.knn(x, k, metric=metric, include_self=include_self,
                                block_size=block_size)
        np.testing.assert_array_equal(np.asarray(idx), ref_idx)
        np.testing.assert_allclose(np.asarray(dist), ref_dist, rtol=1e-4, atol=2e-5)
        np.testing.assert_array_equal(np.asarray(hubness.k_occurrence(idx, 500)), ref_nk)


@pytest.mark.parametrize("metric", hubness.METRICS)
def test_matches_scikit_learn(metric):
    x = _gaussian(300, 10, seed=3)
    k = 5
    sk_dist, sk_idx = NearestNeighbors(n_neighbors=k, metric=metric,
                                       algorithm="brute").fit(x).kneighbors()  # self excluded
    idx, dist = hubness.knn(x, k, metric=metric, block_size=64)
    np.testing.assert_array_equal(np.asarray(idx), sk_idx)
    np.testing.assert_allclose(np.asarray(dist), sk_dist, rtol=1e-4, atol=2e-5)


def test_top_k_keeps_lower_index_first_on_ties():
    # The tie rule everything rests on.
    _, idx = jax.lax.top_k(jnp.array([1.0, 3.0, 3.0, 0.0, 3.0, 3.0]), 3)
    np.testing.assert_array_equal(np.asarray(idx), [1, 2, 4])
    # Exact duplicates: masked by index, so a duplicate is still a neighbour at distance 0.
    x = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [5.0, 0.0]], np.float32)
    idx, dist = hubness.knn(x, 2)
    np.testing.assert_array_equal(np.asarray(idx), [[1, 2], [0, 2], [0, 1], [0, 1]])
    np.testing.assert_array_equal(np.asarray(dist)[:3], 0.0)
    idx, _ = hubness.knn(x, 2, include_self=True)
    np.testing.assert_array_equal(np.asarray(idx), [[0, 1], [0, 1], [0, 1], [3, 0]])


def test_hand_example_of_the_spec():
    # Points 0, 1, 2, 10 with k = 1: 0->1, 1->0 (tie with 2, lower index), 2->1, 10->2.
    x = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
    idx, dist = hubness.knn(x, 1)
    np.testing.assert_array_equal(np.asarray(idx)[:, 0], [1, 0, 1, 2])
    np.testing.assert_array_equal(np.asarray(dist)[:, 0], [1.0, 1.0, 1.0, 8.0])
    np.testing.assert_array_equal(np.asarray(hubness.k_occurrence(idx, 4)), [1, 2, 1, 0])


def test_hubness_grows_with_dimension():
    reports = [hubness.hubness_report(_gaussian(2000, d, seed=4), 5) for d in (3, 20, 100)]
    skew = [r["skewness"] for r in reports]
    zero = [r["frac_zero"] for r in reports]
    assert skew[0] < skew[1] < skew[2], skew
    assert zero[0] < zero[1] < zero[2], zero
    assert all(r["mean"] == 5.0 for r in reports)
    # Hubs are central (docs/hubness.md §2): N_k falls with the distance to the mean.
    assert reports[1]["corr_dist_to_mean"] < -0.3 and reports[2]["corr_dist_to_mean"] < -0.3


def test_measures_against_definitions():
    rng = np.random.default_rng(5)
    nk = rng.poisson(3.0, size=400).astype(np.int32)
    nk[:3] = [40, 25, 0]
    v = nk.astype(np.float64)
    np.testing.assert_allclose(float(hubness.skewness(nk)), stats.skew(v), rtol=1e-4)
    gini = np.abs(v[:, None] - v[None, :]).sum() / (2 * len(v) * v.sum())
    np.testing.assert_allclose(float(hubness.gini(nk)), gini, rtol=1e-4)
    robin_hood = np.abs(v - v.mean()).sum() / (2 * v.sum())
    np.testing.assert_allclose(float(hubness.robin_hood_index(nk)), robin_hood, rtol=1e-4)
    np.testing.assert_allclose(float(hubness.antihub_occurrence(nk)), np.mean(v == 0), rtol=1e-6)
    k = 3
    hub_share = v[v >= 2 * k].sum() / v.sum()
    np.testing.assert_allclose(float(hubness.hub_occurrence(nk, k)), hub_share, rtol=1e-5)
    x = rng.standard_normal((400, 6)).astype(np.float32) + 2.0
    dist = np.linalg.norm(x - x.mean(0), axis=1)
    np.testing.assert_allclose(float(hubness.corr_with_distance_to_mean(nk, x)),
                               np.corrcoef(v, dist)[0, 1], atol=1e-5)
    # Equal counts: no hubness.
    assert float(hubness.skewness(jnp.full(10, 5))) == 0.0
    assert float(hubness.robin_hood_index(jnp.full(10, 5))) == 0.0


@pytest.mark.parametrize("method", [m for m in hubness.REDUCTIONS if m != "none"])
def test_each_reduction_lowers_skewness(method, gaussian_100d, base_skewness):
    params = {"num_candidates": 50} if method == "mp_empiric" else {}
    after = hubness.reduce_and_report(gaussian_100d, 5, method, **params)
    assert int(round(after["mean"] * 2000)) == 5 * 2000
    assert after["skewness"] < 0.5 * base_skewness["euclidean"], (method, after)


@pytest.mark.parametrize("method", ["centering", "csls"])
def test_cosine_reductions_remove_the_hubness_of_an_offset(method):
    # Cosine on data with a common offset: points near the mean direction are hubs.
    x = _gaussian(1000, 50, seed=6) + 1.0
    raw = hubness.hubness_report(x, 5, metric="cosine")["skewness"]
    after = hubness.reduce_and_report(x, 5, method)["skewness"]
    assert after < raw - 1.0, (raw, after)


def test_mutual_proximity_exact_on_a_small_set():
    x = _gaussian(40, 8, seed=7)
    idx, sec = hubness.mutual_proximity_empiric(x, 3, num_candidates=39)
    d = np.asarray(hubness.pairwise_distances(x), np.float64)
    n = len(x)
    mp = np.array([[np.sum((d[i] > d[i, j]) & (d[j] > d[i, j])) for j in range(n)]
                   for i in range(n)]) / (n - 2)
    ref = 1.0 - mp
    np.fill_diagonal(ref, np.inf)
    np.testing.assert_allclose(np.asarray(sec), np.sort(ref, axis=1)[:, :3], atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(ref, np.asarray(idx), axis=1),
                               np.asarray(sec), atol=1e-6)


def test_hub_selected_latents_are_central_and_truncation_matches_their_norm():
    key = jax.random.key(0)
    selection = hubness.hub_select(dim=64, pool_size=2000, k=5, threshold=20, num_wanted=100,
                                   key=key)
    assert selection.latents.shape == (100, 64)
    assert bool(jnp.all(selection.k_occurrence > 20))
    pool = jax.random.normal(jax.random.fold_in(key, 0), (2000, 64))
    hub_norm = float(jnp.linalg.norm(selection.latents, axis=1).mean())
    random_norm = float(jnp.linalg.norm(pool, axis=1).mean())
    assert hub_norm < random_norm - 0.2, (hub_norm, random_norm)
    z = hubness.truncated_normal_matched(4000, 64, hub_norm, key=jax.random.key(1))
    matched = float(jnp.linalg.norm(z, axis=1).mean())
    assert abs(matched - hub_norm) < 0.01 * hub_norm, (matched, hub_norm)
    assert float(jnp.linalg.norm(z, axis=1).max()) <= hubness.truncation_radius(64, hub_norm)


def test_hub_antihub_select_shares_hub_selects_pools():
    """Hubs are hub_select's (same pools, fold_in(key, i)); anti-hubs have N_k = 0 there."""
    key = jax.random.key(3)
    hubs, antihubs = hubness.hub_antihub_select(dim=16, num_wanted=12, pool_size=200, k=5,
                                                threshold=10, key=key)
    alone = hubness.hub_select(dim=16, pool_size=200, k=5, threshold=10, num_wanted=12, key=key)
    np.testing.assert_array_equal(np.asarray(hubs.latents), np.asarray(alone.latents))
    assert hubs.num_rounds == antihubs.num_rounds >= alone.num_rounds
    assert hubs.num_drawn == 200 * hubs.num_rounds
    assert bool(jnp.all(hubs.k_occurrence > 10)) and bool(jnp.all(antihubs.k_occurrence == 0))
    # The pass rates count every latent of the pools that passed, before trimming to 12.
    pool = jax.random.normal(jax.random.fold_in(key, 0), (200, 16))
    nk = np.asarray(hubness.k_occurrence_of(pool, 5))
    if hubs.num_rounds == 1:
        assert (hubs.num_passed, antihubs.num_passed) == (np.sum(nk > 10), np.sum(nk == 0))
    np.testing.assert_array_equal(np.asarray(antihubs.latents)[:min(12, np.sum(nk == 0))],
                                  np.asarray(pool)[nk == 0][:12])
    with pytest.raises(RuntimeError, match="fewer than 5"):
        hubness.hub_antihub_select(dim=16, num_wanted=5, pool_size=200, threshold=99,
                                   max_rounds=2, key=key)


def test_reduction_reports_cover_every_accepting_metric(monkeypatch):
    """Every k, metric and reduction that accepts the metric, "none" first (the reductions
    themselves are checked above; a stand-in records the calls)."""
    calls = []

    def fake_report(x, k, method, *, metric):
        calls.append((k, metric, method))
        return {"method": method, "k": k}

    monkeypatch.setattr(reductions, "reduce_and_report", fake_report)
    reports = hubness.reduction_reports(np.zeros((5, 2), np.float32), (3, 5))
    cosine = sorted(hubness.REDUCTIONS.names(), key=lambda m: m != "none")
    euclidean = [m for m in cosine if m not in hubness.COSINE_ONLY]
    assert cosine[0] == "none" and hubness.COSINE_ONLY < set(cosine)
    assert calls == [(k, metric, m) for k in (3, 5) for metric, methods in
                     (("euclidean", euclidean), ("cosine", cosine)) for m in methods]
    assert [(r["k"], r["metric"], r["method"]) for r in reports] == calls
    assert all(r["seconds"] >= 0 for r in reports)


def test_truncated_mean_norm_closed_form():
    for dim, r in ((2, 1.0), (64, 7.0), (512, 21.0)):
        m = np.sqrt(2) * np.exp(special.gammaln((dim + 1) / 2) - special.gammaln(dim / 2))
        ref = m * special.gammainc((dim + 1) / 2, r * r / 2) / special.gammainc(dim / 2, r * r / 2)
        np.testing.assert_allclose(float(hubness.truncated_mean_norm(dim, r)), ref, rtol=1e-4)
    with pytest.raises(ValueError, match="target_mean_norm"):
        hubness.truncation_radius(64, 9.0)  # above E||z|| ~ 7.98


def test_hub_select_threshold_rounds_pool_and_map_fn():
    key = jax.random.key(2)
    pool = jax.random.normal(key, (1000, 32))
    nk = np.asarray(hubness.k_occurrence_of(pool, 5, block_size=1000))
    strict = hubness.hub_select(pool=pool, threshold=15, pool_size=1000)
    loose = hubness.hub_select(pool=pool, threshold=15, strict=False)
    assert len(strict.latents) == np.sum(nk > 15) and len(loose.latents) == np.sum(nk >= 15)
    np.testing.assert_array_equal(np.asarray(strict.latents), np.asarray(pool)[nk > 15])
    # A map_fn that only rescales leaves the neighbour lists unchanged.
    scaled = hubness.hub_select(pool=pool, threshold=15, map_fn=lambda z: 3.0 * z)
    np.testing.assert_array_equal(np.asarray(scaled.latents), np.asarray(strict.latents))
    several = hubness.hub_select(dim=32, pool_size=500, threshold=12, num_wanted=60, key=key)
    assert several.latents.shape == (60, 32) and several.num_rounds >= 1
    with pytest.raises(RuntimeError, match="kept"):
        hubness.hub_select(dim=32, pool_size=300, threshold=200, num_wanted=5, max_rounds=2,
                           key=key)


def test_sharded_knn_equals_unsharded():
    assert jax.device_count() == 8  # tests/conftest.py
    mesh = data_mesh()
    x = _gaussian(501, 9, seed=8)  # not a multiple of 8 devices x block
    for metric in hubness.METRICS:
        idx, dist = hubness.knn(x, 4, metric=metric, block_size=16)
        s_idx, s_dist = hubness.knn(x, 4, metric=metric, block_size=16, mesh=mesh)
        np.testing.assert_array_equal(np.asarray(s_idx), np.asarray(idx))
        np.testing.assert_allclose(np.asarray(s_dist), np.asarray(dist), rtol=1e-6, atol=1e-6)


def test_bad_inputs_give_clear_errors():
    x = _gaussian(10, 3)
    with pytest.raises(ValueError, match="k = 10 must be <= N - 1 = 9"):
        hubness.knn(x, 10)
    with pytest.raises(ValueError, match="at least 2 points"):
        hubness.knn(x[:1], 1)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        hubness.knn(x, 0)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite .* row 3"):
        hubness.knn(bad, 2)
    bad[3, 1], bad[7, 0] = 0.0, np.inf
    with pytest.raises(ValueError, match="row 7"):
        hubness.k_occurrence_of(bad, 2)
    with pytest.raises(ValueError, match="unknown metric 'manhattan'.*cosine, euclidean|"
                                         "unknown metric 'manhattan'.*euclidean, cosine"):
        hubness.knn(x, 2, metric="manhattan")
    zero = x.copy()
    zero[5] = 0.0
    with pytest.raises(ValueError, match="all-zero row 5"):
        hubness.knn(zero, 2, metric="cosine")
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        hubness.knn(x[0], 2)
    with pytest.raises(ValueError, match="valid names: centering, csls"):
        hubness.reduce_and_report(x, 2, "snn")
    with pytest.raises(ValueError, match="num_candidates"):
        hubness.mutual_proximity_empiric(x, 3, num_candidates=2)


def _run(module, *args):
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow  # an experiment script, end to end
def test_reproduce_hubness_skew_smoke(tmp_path):
    _run("experiments.reproduce_hubness_skew", "--smoke", f"--workdir={tmp_path}")
    table = (tmp_path / "hubness_skew.md").read_text()
    assert "| normal | euclidean | 512 | 5 |" in table and "| uniform | cosine | 3 | 10 |" in table
    result = json.loads((tmp_path / "hubness_skew.json").read_text())
    assert len(result["rows"]) == 2 * 4 * 2 * 2  # distributions x dims x metrics x ks
    assert all(abs(r["mean"] - r["k"]) < 1e-6 for r in result["rows"])
    assert [s["d"] for s in result["seed_spread"]] == [3, 20, 100, 512]


@pytest.mark.slow  # an experiment script, end to end
def test_bench_knn_smoke():
    out = _run("experiments.bench_knn", "--smoke")
    assert "N_k mismatches: 0 of 1000 points" in out and "speed ratio sklearn / udm" in out
