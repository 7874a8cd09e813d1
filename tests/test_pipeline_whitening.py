"""udm.pipeline.whitening on random vectors (no encoder): the spec refuses bad values naming the
field; the degenerate cells are the ones docs/whitening.md §7 says; beta = gamma = 0 with all
dims is a rotation (b = a); `measure` assembles the table from cached vectors."""
import dataclasses
import os

import jax
import numpy as np
import pytest

from configs import whitening as whitening_config
from udm import whitening as wh
from udm.data.similarity import SimilarityPairs
from udm.metrics.similarity import pair_cosines, spearman_x100
from udm.pipeline import whitening as pw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STS_TINY = os.path.join(ROOT, "tests", "data", "sts_tiny.tsv")


def _config(**changes):
    config = whitening_config.get_config("smoke")
    for path, value in changes.items():
        section, field = path.split(".")
        config[section][field] = value
    return config


# One shape for the vectors of every test ([24, 8]: the smoke Lee task's 10 + 14 texts), so
# that the whitening's small XLA computations compile once per process.
N, D = 24, 8


def _random_task(n_texts=N, n_pairs=40, *, seed=0) -> pw.Task:
    rng = np.random.default_rng(seed)
    pairs = np.stack([rng.choice(n_texts, 2, replace=False) for _ in range(n_pairs)])
    return pw.Task("rand", "random", [f"t{i}" for i in range(n_texts)], pairs,
                   rng.uniform(size=n_pairs), {"all": np.arange(n_texts)}, 16)


def test_from_config_gives_a_frozen_typed_spec():
    config = _config()
    spec = pw.from_config(config)
    assert spec.whitening.ks == (4, 8) and spec.encoder.poolings == ("cls", "mean",
                                                                       "first_last_avg")
    assert spec.data.lee_fit_ablation == ("background",)
    assert spec.record == config.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.hubness.k = 5


@pytest.mark.parametrize("changes, message", [
    ({"encoder.poolings": ("cls", "max")}, r"config.encoder.poolings: unknown \['max'\]"),
    ({"encoder.poolings": ()}, "config.encoder.poolings"),
    ({"whitening.ks": ()}, "config.whitening.ks must not be empty"),
    ({"whitening.grid": ()}, "config.whitening.grid must not be empty"),
    ({"whitening.grid": (0.0, 1.5)}, r"config.whitening.grid values must be in \[0, 1\], got 1.5"),
    ({"whitening.ks": (8, 385)}, r"config.whitening.ks must be in \[1, D=384\], got 385"),
    ({"whitening.main_k": 5}, "config.whitening.main_k=5 must be one of"),
    ({"hubness.k": 0}, "config.hubness.k must be >= 1, got 0"),
    ({"hubness.metric": "manhattan"}, "config.hubness.metric must be one of"),
    ({"data.lee_num_documents": 1}, r"config.data.lee_num_documents must be 0 or in \[2, 50\]"),
    ({"data.lee_num_documents": 51}, "config.data.lee_num_documents"),
    ({"data.lee_num_background": 301}, r"config.data.lee_num_background must be in \[0, 300\]"),
    ({"data.lee_fit": "held_out"}, "config.data.lee_fit / lee_fit_ablation: unknown fit "
                                   "'held_out'; valid: all, background, rated"),
    ({"data.lee_num_background": 1}, "config.data.lee_fit / lee_fit_ablation: Lee fit "
                                     "'background' has 1 texts"),
    ({"data.sts_path": "no/such/sts.tsv"}, "config.data.sts_path: no such file"),
])
def test_from_config_refuses_bad_values_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        pw.from_config(_config(**changes))


def test_from_config_refuses_an_unknown_field():
    config = _config()
    config.whitening.kk = 3
    with pytest.raises(ValueError, match="unknown field.*config.whitening.kk"):
        pw.from_config(config)


def test_degenerate_flags_full_whitening_of_the_fitted_span_only():
    assert pw.degenerate(24, 1.0, 384, 384)          # N <= D, gamma = 1, all dims
    assert pw.degenerate(24, 1.0, 23, 384)           # k = N - 1 keeps the whole span
    assert not pw.degenerate(24, 1.0, 22, 384)       # k < N - 1: informative
    assert not pw.degenerate(24, 0.5, 384, 384)      # not full whitening
    assert not pw.degenerate(500, 1.0, 384, 384)     # N > D: full rank


def test_degenerate_cell_is_a_regular_simplex():
    """N <= D, beta = gamma = 1, k = D: every cosine of the N fitted vectors is -1/(N-1)."""
    n, d = 6, 10
    x = np.random.default_rng(1).normal(size=(n, d))
    assert pw.degenerate(n, 1.0, d, d)
    with jax.enable_x64(True):
        y = np.asarray(wh.apply(wh.fit(x, beta=1.0), x, gamma=1.0, k=d))
    i, j = np.triu_indices(n, 1)
    np.testing.assert_allclose(pair_cosines(y, np.stack([i, j], 1)), -1 / (n - 1), atol=1e-8)


def test_score_grid_rotation_keeps_the_raw_score_at_every_k_equal_d():
    task = _random_task()
    x = np.random.default_rng(2).normal(size=(N, D)) + 3.0
    settings = {(0.0, 0.0), (1.0, 1.0), (0.5, 0.0)}
    with jax.enable_x64(True):
        scores = pw.score_grid(task, x, task.fits["all"], settings, (D, 4), eps=1e-12)
    assert set(scores) == {(b, g, k) for b, g in settings for k in (D, 4)}
    raw = spearman_x100(x, task.pairs, task.gold)
    assert abs(scores[(0.0, 0.0, D)] - raw) <= 1e-9             # b = a: a rotation
    assert all(-100 <= v <= 100 for v in scores.values())


def _knn_report(x, k, *, metric):
    """A numpy stand-in for udm.hubness.hubness_report (no compile): the cosine N_k."""
    assert metric == "cosine"
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = u @ u.T - 3 * np.eye(len(x))                    # self excluded
    nk = np.bincount(np.argsort(-sim, axis=1)[:, :k].ravel(), minlength=len(x))
    return dict(nk=tuple(int(v) for v in nk))


def test_hubness_rows_rotation_leaves_the_knn_graph(monkeypatch):
    monkeypatch.setattr(pw.hubness, "hubness_report", _knn_report)
    points = np.random.default_rng(3).normal(size=(N, D)) + 1.0
    with jax.enable_x64(True):
        rows = pw.hubness_rows(points, k=3, metric="cosine", main_k=4, eps=1e-12)
        assert pw.hubness_rows(points[:4], k=3, metric="cosine", main_k=4, eps=1e-12) == []
    by_name = {r["vectors"]: r for r in rows}
    assert list(by_name) == ["raw", "β=γ=1, k=8", "β=γ=1, k=4", "β=γ=0, k=8", "β=γ=0, k=4"]
    assert [r["dims"] for r in rows] == [D, D, 4, D, 4]
    assert by_name["β=γ=0, k=8"]["nk"] == by_name["raw"]["nk"]       # a rotation
    assert by_name["β=γ=1, k=8"]["nk"] != by_name["raw"]["nk"]


def test_corner_rows_and_best_cells_read_the_grid():
    grid, ks, dim = (0.0, 1.0), [6, 2], 6
    scores = {(b, g, k): 10 * b + g + k / 100 for b in grid for g in grid for k in ks}
    g = pw.Grid("lee", "mean", "all", "all", 30, 5.0, scores)
    rows = pw.corner_rows([g], ks, dim)
    assert [(r["beta"], r["gamma"]) for r in rows] == list(pw.CORNERS)
    assert rows[0]["b"] == scores[(1.0, 1.0, 6)] and rows[0]["c"] == {2: scores[(1.0, 1.0, 2)]}
    assert rows[0]["a"] == 5.0 and not rows[0]["degenerate_b"] and rows[0]["main_fit"] == "all"
    best = pw.best_cells(g, grid, ks)
    assert [(c["k"], c["beta"], c["gamma"]) for c in best] == [(6, 1.0, 1.0), (2, 1.0, 1.0)]
    assert best[1]["zero"] == scores[(0.0, 0.0, 2)]


def _fake_lee():
    """The shape of udm.data.similarity.load_lee_similarity without gensim (seconds of imports)."""
    i, j = np.triu_indices(50, 1)
    return SimilarityPairs("lee", [f"doc {n}" for n in range(50)], np.stack([i, j], 1),
                           np.linspace(0, 1, len(i)), [f"background {n}" for n in range(300)])


def test_tasks_of_smoke_lee_and_sts(monkeypatch):
    monkeypatch.setattr(pw, "load_lee_similarity", _fake_lee)
    spec = pw.from_config(_config(**{"data.sts_path": STS_TINY}))
    lee, sts = pw.tasks_of(spec)
    assert lee.texts == [f"doc {n}" for n in range(10)] + [f"background {n}" for n in range(14)]
    assert len(lee.pairs) == 45 and lee.pairs.max() < 10 and len(lee.gold) == 45
    assert list(lee.fits) == ["all", "background"] and lee.main_fit == "all"
    np.testing.assert_array_equal(lee.fits["background"], np.arange(10, 24))
    assert lee.max_length == spec.encoder.max_length
    assert len(sts.pairs) == 5 and len(sts.fits["all"]) == 10
    assert sts.max_length == spec.encoder.sts_max_length


class _FakeEncoder:
    """Random [N, D] vectors in place of all-MiniLM-L6-v2, counting its calls."""
    calls = 0

    def encode(self, texts, *, pooling, batch_size, normalize, progress):
        type(self).calls += 1
        seed = sum(map(ord, pooling)) + len(texts)
        return np.random.default_rng(seed).normal(size=(len(texts), D)).astype(np.float32)


def test_measure_from_cached_random_vectors(tmp_path, monkeypatch):
    monkeypatch.setattr(pw.SentenceEncoder, "from_package", lambda **kw: _FakeEncoder())
    monkeypatch.setattr(pw, "load_lee_similarity", _fake_lee)
    monkeypatch.setattr(pw.hubness, "hubness_report", _knn_report)
    monkeypatch.setattr(_FakeEncoder, "calls", 0)
    spec = pw.from_config(_config(**{"encoder.poolings": ("mean", "cls"),
                                     "whitening.grid": (0.0, 1.0)}))
    m = pw.measure(spec, cache_dir=str(tmp_path))
    assert _FakeEncoder.calls == 2 and len(os.listdir(tmp_path)) == 2
    assert m.dim == D and m.ks == [D, 4] and m.lengths["lee"]["texts"] == N
    assert len(m.grids) == 2 * 2 and len(m.rows) == 2 * len(m.grids)
    for r in m.rows:
        if r["beta"] == 0.0:
            assert abs(r["b"] - r["a"]) <= 1e-9
    assert len(m.hubness) == 2 * 5
    again = pw.measure(spec, cache_dir=str(tmp_path))       # read from the cache
    assert _FakeEncoder.calls == 2 and again.rows == m.rows
