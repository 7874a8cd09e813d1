"""The command line reports mistakes and a failing environment in one `udm:` line (the traceback
only with --traceback), with the nearest valid names for a misspelt config field."""
import errno
import os
import subprocess
import sys

import pytest

from experiments.errors import command_line_error, one_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=configs/ddpm_digits.py:smoke"


def _run(*args):
    return subprocess.run([sys.executable, "-m", "experiments.main", *args], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("override,message", [
    ("--config.train.num_step=1", "unknown config field config.train.num_step; did you mean "
                                  "config.train.num_steps"),
    ("--config.train.nonexistent=1", "unknown config field config.train.nonexistent; valid: "
                                     "batch_size, checkpoint_every"),
    ("--config.trian.num_steps=1", "unknown config field config.trian; did you mean "
                                   "config.train, "),
    ("--config.sampler.schedule=karras", "unknown config field config.sampler.schedule; did you "
                                         "mean config.sampler.spacing (the time grid"),
])
def test_unknown_config_fields_name_the_nearest_valid_ones(override, message):
    argv = ["main", CONFIG, "--workdir=/tmp/unused", override]
    assert command_line_error(argv, AttributeError("whatever ml_collections says")).startswith(
        message)


def test_environment_failures_say_the_cause_and_the_path():
    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/checkpoints/4")
    wrapped = RuntimeError("Save failed")
    wrapped.__cause__ = ValueError("tensorstore write error")
    wrapped.__cause__.__context__ = full
    assert one_line(wrapped) == ("cannot write /data/run/checkpoints/4: the disk is full (No "
                                 "space left on device)")
    assert one_line(FileExistsError(errno.EEXIST, "File exists", "/tmp/x")).startswith(
        "cannot write /tmp/x: a file is in the way")
    assert one_line(ValueError("config.x must be > 0\nmore")) == "config.x must be > 0"


@pytest.mark.slow  # four subprocesses: `make test-slow`
def test_command_line_errors_are_one_line(tmp_path):
    bad = _run(CONFIG, f"--workdir={tmp_path}", "--config.train.num_step=1")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "udm: unknown config field config.train.num_step; did you mean config.train.num_steps, "
        "config.train.warmup_steps?"]
    zero = _run(CONFIG, f"--workdir={tmp_path}", "--config.train.num_steps=0")
    assert zero.returncode == 2 and zero.stderr.strip().startswith(
        "udm: config.train.num_steps must be >= 1, got 0 (0 would evaluate an untrained model")
    afile = tmp_path / "a_file"
    afile.write_text("")
    blocked = _run(CONFIG, f"--workdir={afile}")
    assert blocked.returncode == 1 and blocked.stderr.strip().splitlines() == [
        f"udm: cannot write {afile}: a file is in the way (File exists)"]
    nothing = _run(CONFIG, f"--workdir={tmp_path / 'empty'}", "--evaluate_only")
    assert nothing.returncode == 1 and "evaluate-only: no checkpoint in" in nothing.stderr
    assert len(nothing.stderr.strip().splitlines()) == 1
