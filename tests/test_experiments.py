"""The table-reproduction scripts run end to end in their --smoke mode and write their tables."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

# Whole experiment scripts in subprocesses (minutes): `make test-slow`.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reproduce_sde_table_smoke(tmp_path):
    cmd = [sys.executable, "-m", "experiments.reproduce_sde_table", "--smoke", "--sdes=ve",
           f"--workdir={tmp_path}"]
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "sde_table.md").read_text()
    assert "| ve | ode_adaptive" in table and "bits/dim, ODE" in table
    result = json.loads((tmp_path / "sde_table.json").read_text())["results"][0]
    assert [r["sampler"].split()[0] for r in result["rows"]] == ["em", "pc", "ode_heun",
                                                               "ode_adaptive"]
    assert all(np.isfinite(r["fd"]) for r in result["rows"])
    bpd = result["bits_per_dim"]
    # An untrained model: finite, positive bits/dim; the bound is an upper bound in expectation,
    # not per batch, so only finiteness is checked for it.
    assert np.isfinite(bpd["nll_bpd"]) and bpd["nll_bpd"] > 0 and np.isfinite(bpd["vlb_bpd"])
    # A rerun reads the finished model's rows instead of recomputing them.
    again = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "rows already computed" in again.stdout


def test_reproduce_variance_tables_smoke(tmp_path):
    cmd = [sys.executable, "-m", "experiments.reproduce_variance_tables", "--smoke",
           f"--workdir={tmp_path}"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "variance_tables.md").read_text()
    assert "| K | DDPM, fixed small |" in table and "| K | DDPM | DDIM |" in table
    cells = json.loads((tmp_path / "variance_tables.json").read_text())["cells"]
    assert len(cells) == 7 + 9  # one row K = 3: every NLL and FD column
    # Even the untrained smoke model's heads give a finite bound (their variance floor).
    assert all(np.isfinite(c["bpd"]) for k, c in cells.items() if k.startswith("nll"))
    assert all(np.isfinite(c["fd"]) for k, c in cells.items() if k.startswith("fd"))
    assert (tmp_path / "variance_tables.png").exists()
    # A rerun resumes: every cell is read back, none recomputed.
    mtime = os.path.getmtime(tmp_path / "cells.json")
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert os.path.getmtime(tmp_path / "cells.json") == mtime


def test_reproduce_udm_examples_smoke(tmp_path):
    cmd = [sys.executable, "-m", "experiments.reproduce_udm_examples", "--smoke",
           "--models=cold_digits,encoding_arithmetic", f"--workdir={tmp_path}"]
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "udm_examples.md").read_text()
    assert "| cold (blur) | baseline (naive) | 5 |" in table
    assert "| cold (blur) | improved | 5 |" in table
    assert "| encoding | DDPM | 200 |" in table and "| encoding | improved | 200 |" in table
    assert "encoding (arithmetic): RMS per latent dimension 1.00" in table  # normalised encoder
    results = json.loads((tmp_path / "udm_examples.json").read_text())["results"]
    assert [r["model"] for r in results] == ["cold_digits", "encoding_arithmetic"]


def test_reproduce_length_extrapolation_smoke(tmp_path):
    out = tmp_path / "length_extrapolation.md"
    cmd = [sys.executable, "-m", "experiments.reproduce_length_extrapolation", "--smoke",
           "--steps=3", f"--out={out}"]
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    assert "| scale \\ n (train n=64) | 64 | 128 |" in table
    assert "| standard | " in table and "| entropy_invariant | " in table
    assert ("Task: Task(num_filler=32, num_keys=8, num_values=16, num_pairs=6, num_queries=4)."
            in table)
    record = json.loads((tmp_path / "length_extrapolation.json").read_text())
    accuracy = record["accuracy_percent"]
    assert sorted(accuracy) == ["entropy_invariant", "standard"]
    # 16 sequences x 4 targets per length: each accuracy is a whole number of 64ths of 100%.
    for per_seed in accuracy.values():
        for value in per_seed["0"].values():
            assert 0.0 <= value <= 100.0 and (value * 64 / 100).is_integer()


def test_reproduce_solver_table_smoke(tmp_path):
    cmd = [sys.executable, "-m", "experiments.reproduce_solver_table", "--smoke",
           f"--workdir={tmp_path}"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "solver_table.md").read_text()
    assert "| DPM-Solver++(2M), log-SNR grid |" in table and "Reference: DDIM" in table
    result = json.loads((tmp_path / "solver_table.json").read_text())
    cells = {k: v for k, v in result["cells"].items() if k != "reference"}
    # 12 rows x 2 NFE columns, every FD finite, every cell within its column's NFE budget.
    assert len(cells) == 24 and all(np.isfinite(c["fd"]) for c in cells.values())
    assert all(c["nfe"] <= int(k.rsplit("|", 1)[1]) for k, c in cells.items())
    assert (tmp_path / "solver_table.png").stat().st_size > 0
    # A rerun finds every cell done and trains nothing.
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and (tmp_path / "solver_table.md").read_text() == table


def test_reproduce_conditional_smoke(tmp_path):
    cmd = [sys.executable, "-m", "experiments.reproduce_conditional", "--smoke",
           f"--workdir={tmp_path}", "--scales=0,2"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "conditional.json").read_text())
    assert [(r["sampler"], r["scale"]) for r in result["guidance"]] == [
        ("DDIM", 0.0), ("DDIM", 2.0), ("DPM-Solver++(2M)", 0.0), ("DPM-Solver++(2M)", 2.0)]
    assert all(0 <= r["accuracy"] <= 1 and np.isfinite(r["per_class_fd"])
               for r in result["guidance"])
    inpainting = result["inpainting"]
    # exact where the sampler ends on an x_0 estimate (DDIM) and for the pasted rows; the
    # improved design of cold / heat adds x_t - F_t(x0_hat) to its last estimate
    assert len(inpainting) == 8 and all(r["known_changed"] == 0.0 for r in inpainting
                                        if r["method"] != "correct step" or "hot" in r["process"])
    assert all(np.isfinite(r["known_changed"]) for r in inpainting)
    for part in ("infilling", "lee"):
        assert list(dict.fromkeys(r["process"] for r in result[part])) == [
            "masking", "edit v2", "D3PM absorbing", "D3PM uniform"]
    assert all(0 <= r["filled"] <= 1 for r in result["infilling"])
    # a perplexity: >= 1, and above V = 41 for text the 3-gram model finds unlikely
    assert all(1 <= r["filled"] < np.inf and r["known"] == 16 for r in result["lee"])
    for name in ("conditional_guidance.png", "conditional_inpainting.png", "conditional.md"):
        assert (tmp_path / name).exists()
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and json.loads((tmp_path / "conditional.json").read_text()) == result
