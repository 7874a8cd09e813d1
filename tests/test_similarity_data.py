"""Similarity data (the embedded Lee documents, STS-Benchmark files) and the Spearman score."""
import os

import numpy as np
import pytest

from udm.data.similarity import load_lee_similarity, load_sts_tsv
from udm.metrics.similarity import pair_cosines, rank, spearman, spearman_x100

DATA = os.path.join(os.path.dirname(__file__), "data")


def test_lee_data_has_50_documents_1225_rated_pairs_and_300_background():
    lee = load_lee_similarity()
    assert len(lee.texts) == 50 and len(lee.background) == 300
    assert lee.pairs.shape == (1225, 2) and np.all(lee.pairs[:, 0] < lee.pairs[:, 1])
    assert np.all((lee.gold >= 0) & (lee.gold <= 1)) and lee.gold.std() > 0.05
    assert all(len(d) > 200 for d in lee.texts)   # whole news documents


def test_sts_original_and_glue_layouts():
    original = load_sts_tsv(os.path.join(DATA, "sts_tiny.tsv"))
    assert len(original.pairs) == 5                       # the malformed line is skipped
    np.testing.assert_allclose(original.gold, [5.0, 3.8, 3.8, 2.6, 0.5])
    first = original.pairs[0]
    assert (original.texts[first[0]], original.texts[first[1]]) == (
        "A plane is taking off.", "An air plane is taking off.")
    glue = load_sts_tsv(os.path.join(DATA, "sts_glue_tiny.tsv"))
    np.testing.assert_allclose(glue.gold, [5.0, 0.5])
    assert glue.texts[glue.pairs[1, 1]] == "A woman is slicing an onion."


def test_sts_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="STS file not found"):
        load_sts_tsv(str(tmp_path / "missing.tsv"))
    bad = tmp_path / "bad.tsv"
    bad.write_text("just\tthree\tcolumns\n")
    with pytest.raises(ValueError, match="column layout"):
        load_sts_tsv(str(bad))


def test_spearman_matches_closed_forms():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    np.testing.assert_allclose(rank([3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0])
    # 1 - 6 sum d^2 / (n (n^2 - 1)) without ties: ranks (1..5) vs (2, 1, 4, 3, 5): sum d^2 = 4.
    assert spearman(x, np.array([2.0, 1.0, 4.0, 3.0, 5.0])) == pytest.approx(1 - 6 * 4 / 120)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=200), rng.normal(size=200)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)
    with pytest.raises(ValueError, match="constant"):
        spearman(x, np.ones(5))


def test_cosine_score_is_invariant_to_scale_and_rotation():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(30, 8))
    pairs = np.stack(np.triu_indices(30, 1), axis=1)
    gold = pair_cosines(emb, pairs) + 0.1 * rng.normal(size=len(pairs))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    base = spearman_x100(emb, pairs, gold)
    assert base > 80
    assert spearman_x100(3.0 * emb @ q, pairs, gold) == pytest.approx(base, abs=1e-9)
