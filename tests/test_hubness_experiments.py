"""The hubness-prior sampling script runs end to end in --smoke mode and writes its tables."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

# A whole experiment script in a subprocess: `make test-slow`.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["random", "hub", "hub (paper)", "truncated", "antihub"]


def test_reproduce_hubness_sampling_smoke(tmp_path):
    cmd = [sys.executable, "-m", "experiments.reproduce_hubness_sampling", "--smoke",
           f"--workdir={tmp_path}"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    md = (tmp_path / "hubness_sampling.md").read_text()
    assert "| ddim | random |" in md and "| ode | antihub (z space, N_k = 0) |" in md
    assert "## Hubness of real embeddings" in md and "| 5 | cosine | csls |" in md
    assert (tmp_path / "hubness_sampling.png").stat().st_size > 0
    result = json.loads((tmp_path / "hubness_sampling.json").read_text())
    n = result["settings"]["n"]
    for res in result["results"]:
        rows = {r["method"]: r for r in res["rows"]}
        assert list(rows) == METHODS
        assert all(np.isfinite(r["fd"]) for r in rows.values())
        # Every noise set has n latents per seed; hubs are central, anti-hubs peripheral, and the
        # truncated set is matched to the hub set's mean norm (up to sampling noise).
        assert all(len(s["fd_per_seed"]) == s["seeds"] for s in rows.values())
        assert rows["hub"]["mean_norm"] < rows["random"]["mean_norm"] < rows["antihub"]["mean_norm"]
        assert abs(rows["truncated"]["mean_norm"] - rows["hub"]["mean_norm"]) < 0.2
        assert 0 < rows["hub"]["pass_rate"] < 1 and 0 < rows["hub (paper)"]["pass_rate"] <= 1
        assert rows["hub (paper)"]["threshold"] <= rows["hub (paper)"]["paper_threshold"]
        assert res["num_samples"] == n
    methods = {(r["k"], r["metric"], r["method"]) for r in result["embedding_hubness"]}
    assert (5, "euclidean", "none") in methods and (5, "euclidean", "csls") not in methods
    # Every graph keeps mean N_k = k.
    assert all(abs(r["mean"] - r["k"]) < 1e-6 for r in result["embedding_hubness"])
