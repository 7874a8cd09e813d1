"""experiments/reproduce_whitening_table.py in --smoke mode: its tables, and identities its numbers
must satisfy (docs/whitening.md §6: beta = gamma = 0 with all dims is a rotation, so b = a exactly)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import whitening as whitening_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POOLINGS = ("P1 (CLS)", "P3 (mean)", "P4 (first-last-avg)")
D = 384


def _run(workdir, *extra):
    cmd = [sys.executable, "-m", "experiments.reproduce_whitening_table", "--smoke",
           f"--workdir={workdir}", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # an experiment script, end to end
@pytest.mark.parametrize("with_sts", [False, True])
def test_whitening_table_smoke(tmp_path, with_sts):
    extra = (["--config=configs/whitening.py:smoke",
              "--config.data.sts_path=tests/data/sts_tiny.tsv"] if with_sts else [])
    done = _run(tmp_path, *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "longer than max_length" in done.stdout          # the truncation count is printed
    table = (tmp_path / "whitening_table.md").read_text()
    result = json.loads((tmp_path / "whitening_table.json").read_text())
    assert (tmp_path / "whitening_grid.png").stat().st_size > 10_000

    tasks = ["lee", "sts"] if with_sts else ["lee"]
    assert sorted(result["tasks"]) == sorted(tasks)
    for task in tasks:
        for pooling in POOLINGS:
            for setting in ("β=γ=1", "β=γ=0"):
                assert f"| {task} | {pooling} | {setting} |" in table
    if not with_sts:
        assert "| sts |" not in table
    else:
        # 5 well-formed pairs (one broken line skipped), fitted on their 10 distinct sentences.
        assert result["tasks"]["sts"]["pairs"] == 5
        assert result["tasks"]["sts"]["fits"] == {"all": 10}
    assert "| post | SimBERT-P1 | STS-B (zh) | β=γ=1 | 74.14 / 73.37 / 75.29 |" in table
    assert "| background (14) |" in table                      # the fitting-data ablation

    smoke = whitening_config.get_config("smoke")
    ks = set(smoke.whitening.ks)
    rows = result["table"]
    assert len(rows) == 2 * len(POOLINGS) * (len(tasks) + len(smoke.data.lee_fit_ablation))
    for r in rows:
        assert all(-100 <= v <= 100 for v in (r["a"], r["b"], *r["c"].values()))
        assert {int(k) for k in r["c"]} == ks
        if r["beta"] == 0.0:
            # A rotation keeps every cosine: the all-dims cell is the raw one (float64: ~1e-12).
            assert abs(r["b"] - r["a"]) <= 1e-6, r
        else:
            # N <= D fitting vectors: full whitening makes their cosines equal (flagged).
            assert r["degenerate_b"] == (r["n_fit"] <= D)
    for panel in result["grid"]:
        cells = {(c["beta"], c["gamma"], c["k"]): c["score"] for c in panel["cells"]}
        assert abs(cells[(0.0, 0.0, D)] - panel["raw"]) <= 1e-6
        if panel["fit"] == "all" and panel["task"] == "lee":
            grid = smoke.whitening.grid
            assert len(cells) == len(grid) ** 2 * (len(ks) + 1)

    # Hubness: a rotation leaves the cosine k-NN graph, hence N_k, unchanged.
    hub = result["hubness"]
    assert len(hub) == len(tasks) * len(POOLINGS) * 5
    for task in tasks:
        for pooling in ("cls", "mean", "first_last_avg"):
            hs = {h["vectors"]: h for h in hub if h["task"] == task and h["pooling"] == pooling}
            raw, rotated = hs["raw"], hs[f"β=γ=0, k={D}"]
            for field in ("max", "frac_zero", "hub_occurrence", "robin_hood", "gini"):
                assert rotated[field] == pytest.approx(raw[field], abs=1e-6), field
            assert all(h["mean"] == pytest.approx(smoke.hubness.k) for h in hs.values())

    if with_sts:
        return
    # A rerun reads the cached embeddings: no encoding, same numbers.
    again = _run(tmp_path, *extra)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "encoded " not in again.stdout
    rerun = json.loads((tmp_path / "whitening_table.json").read_text())
    np.testing.assert_allclose([r["a"] for r in rerun["table"]], [r["a"] for r in rows])


def test_whitening_config_refuses_unknown_variant():
    with pytest.raises(ValueError, match="valid: smoke"):
        whitening_config.get_config("tiny")
