"""Fault injection on the command line (`make test-slow`): kill -9 and SIGTERM at random moments,
a corrupted newest checkpoint, a second run on the same workdir and a full disk. Each run ends
bitwise equal to an uninterrupted one where it can finish, or stops with one `udm:` line."""
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import ddpm_digits
from udm import checkpoint as ckpt_lib
from udm.pipeline import train as train_lib
from udm.pipeline.spec import from_config

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12


def _command(workdir, num_steps=STEPS):
    return [sys.executable, "-m", "experiments.main", "--config=configs/ddpm_digits.py:smoke",
            f"--workdir={workdir}", f"--config.train.num_steps={num_steps}",
            "--config.train.checkpoint_every=1", "--config.train.log_every=1",
            "--config.eval.enabled=False", "--config.train.progress_bar=False"]


def _env():
    return dict(os.environ, PYTHONPATH=ROOT)


def _run(workdir, num_steps=STEPS):
    return subprocess.run(_command(workdir, num_steps), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)


def _state(workdir, num_steps=STEPS):
    config = ddpm_digits.get_config("smoke")
    config.train.num_steps = num_steps
    return train_lib.train(from_config(config), str(workdir), evaluate_only=True)


def _assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    done = _run(workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    return _state(workdir)


def _start(workdir):
    """A run in the background, once it has printed that it started training."""
    process = subprocess.Popen(_command(workdir), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if line.startswith("udm: new run") or line.startswith("udm: resumed"):
            return process
    return process   # ended before training (finished already)


def test_random_kills_and_terminations_resume_to_the_uninterrupted_result(reference, tmp_path):
    """SIGKILL and SIGTERM alternately, each at a random moment of training (every step saves, so
    many land inside a save); then the run is completed. Measured: the final state is bitwise
    the uninterrupted one."""
    rng = np.random.default_rng(0)
    codes = []
    for attempt in range(4):
        process = _start(tmp_path)
        time.sleep(rng.uniform(0.0, 2.0))
        signum = signal.SIGKILL if attempt % 2 == 0 else signal.SIGTERM
        process.send_signal(signum)
        process.stdout.read()
        codes.append(process.wait(timeout=300))
    assert all(code in (-signal.SIGKILL, 143, 0) for code in codes), codes
    assert codes.count(-signal.SIGKILL) + codes.count(143) >= 2, codes   # really interrupted
    print("exit codes of the interrupted runs:", codes)
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_equal(_state(tmp_path), reference)
    steps = [int(line.split('"step": ')[1].split(",")[0])
             for line in open(tmp_path / "metrics.jsonl")]
    assert steps == list(range(1, STEPS + 1))   # each step logged once


def test_sigterm_checkpoints_and_a_second_run_is_refused(tmp_path):
    first = _start(tmp_path)
    second = _run(tmp_path)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [line for line in second.stderr.strip()
                                                  .splitlines() if line.startswith("udm:")]
    assert f"is in use by another udm run (pid {first.pid} on " in second.stderr
    first.send_signal(signal.SIGTERM)
    output = first.stdout.read()
    code = first.wait(timeout=300)
    if code == 0:   # it finished before the signal: nothing to stop
        pytest.skip("the run finished before SIGTERM arrived")
    assert code == 143 and "stopped by SIGTERM at step" in output
    step = int(output.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == step


def test_a_corrupted_newest_checkpoint_is_moved_aside(reference, tmp_path):
    done = _run(tmp_path, num_steps=4)
    assert done.returncode == 0, done.stderr[-2000:]
    for folder, _, files in os.walk(tmp_path / "checkpoints" / "4"):
        for name in files:
            if "ocdbt" in folder or os.path.basename(folder) == "d":
                path = os.path.join(folder, name)
                with open(path, "r+b") as handle:
                    handle.truncate(os.path.getsize(path) // 2)
    rerun = _run(tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    lines = [line for line in (rerun.stdout + rerun.stderr).splitlines() if line.strip()]
    assert lines[0].startswith("udm: checkpoint at step 4 in ") and "cannot be read" in lines[0]
    assert lines[1].startswith("udm: resumed from step 3") and len(lines) == 2
    assert [n.split("-")[0] for n in os.listdir(tmp_path / "checkpoints.unreadable")] == ["4"]
    _assert_equal(_state(tmp_path), reference)


def test_a_full_disk_stops_with_one_line(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        done = _run(mount / "run", num_steps=8)
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"udm: cannot write {mount / 'run'}")
        assert lines[0].endswith("the disk is full (No space left on device)")
        steps = ckpt_lib.Checkpointer(str(mount / "run" / "checkpoints")).all_steps()
        assert steps and all((mount / "run" / "checkpoints" / str(s)).is_dir() for s in steps)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
        shutil.rmtree(mount, ignore_errors=True)
