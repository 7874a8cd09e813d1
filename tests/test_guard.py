"""A run you can leave alone: one run per workdir, a clean stop on SIGTERM / SIGINT that resumes
to the uninterrupted result bit for bit, a restore that steps over unreadable checkpoints, and
metrics that match the checkpoint after a resume."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from udm import checkpoint as ckpt_lib
from udm import parallel
from udm.pipeline import guard
from udm.pipeline import train as train_lib
from udm.pipeline.spec import TrainSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- one run per workdir -------------------------------------------------------------------------

def _hold_lock(workdir):
    """A child process that takes the workdir lock and waits (until killed)."""
    code = textwrap.dedent(f"""
        import time
        from udm.pipeline import guard
        with guard.workdir_lock({str(workdir)!r}):
            print("held", flush=True)
            time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                             env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
                             text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_run_on_a_workdir_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
    child = _hold_lock(tmp_path)
    try:
        with pytest.raises(guard.WorkdirBusyError,
                           match=rf"in use by another udm run \(pid {child.pid} on .*, started "):
            with guard.workdir_lock(str(tmp_path)):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with guard.workdir_lock(str(tmp_path)):   # the kernel released it with the process
        with guard.workdir_lock(str(tmp_path)):   # re-entrant within a process
            pass
        assert json.loads((tmp_path / ".udm.lock").read_text())["pid"] == os.getpid()
    with guard.workdir_lock(str(tmp_path)):   # and released after the outer block
        pass


# --- a clean stop -------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_set_a_flag_and_restore_the_handlers(signum):
    before = signal.getsignal(signum)
    with guard.StopSignals() as stop:
        assert stop.should_stop(1) is None
        os.kill(os.getpid(), signum)
        assert stop.should_stop(2) == signum   # the process is alive, the flag is set
    assert signal.getsignal(signum) is before


class _State(NamedTuple):
    step: jax.Array
    params: dict
    ema_params: dict
    opt_state: object


_DIM = 6


def _fit_setup(signal_at=None):
    """A linear denoiser trained by `fit` (small compile); a SIGTERM sent to this process by a
    host callback during step `signal_at` (0-based)."""
    optimizer = optax.adam(1e-2)
    data = np.random.default_rng(0).normal(size=(64, _DIM)).astype(np.float32)

    def init(key):
        params = {"w": 0.1 * jax.random.normal(key, (_DIM, _DIM))}
        return train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                    ema_params=jax.tree.map(jnp.copy, params),
                                    opt_state=optimizer.init(params))

    def loss_fn(params, x0, *, key):
        noisy = x0 + jax.random.normal(key, x0.shape)
        loss = jnp.mean((noisy @ params["w"] - x0) ** 2)
        return loss, {}

    return dict(init=init, init_key=jax.random.key(0), loss_fn=loss_fn, optimizer=optimizer,
                train_key=jax.random.key(1), mesh=parallel.data_mesh(jax.devices()[:1]),
                data=data, seed=0, record={})


def _spec(num_steps):
    return TrainSpec(num_steps=num_steps, batch_size=8, log_every=1, checkpoint_every=5,
                     progress_bar=False)


def test_sigterm_checkpoints_the_current_step_and_the_rerun_ends_bitwise_equal(tmp_path,
                                                                               monkeypatch):
    reference = train_lib.fit(_spec(12), str(tmp_path / "whole"), **_fit_setup())
    real = guard.StopSignals.should_stop
    asked = []

    def should_stop(self, step):   # the scheduler's SIGTERM arrives during step 7
        asked.append(step)
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, step)

    monkeypatch.setattr(guard.StopSignals, "should_stop", should_stop)
    with pytest.raises(guard.Stopped, match="stopped by SIGTERM at step 7") as stopped:
        train_lib.fit(_spec(12), str(tmp_path / "run"), **_fit_setup())
    assert stopped.value.exit_code == 143 and stopped.value.step == 7
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints"))
    assert checkpointer.all_steps() == [5, 7]   # the periodic one, and the one at the stop
    checkpointer.close()
    monkeypatch.setattr(guard.StopSignals, "should_stop", real)
    resumed = train_lib.fit(_spec(12), str(tmp_path / "run"), **_fit_setup())
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps = [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert steps == list(range(1, 13))   # each step logged once


# --- metrics after a resume -----------------------------------------------------------------------

def test_resume_drops_metrics_logged_after_the_restored_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps(dict(step=s, loss=0.1 * s)) + "\n" for s in range(1, 7)]
    path.write_text("".join(rows) + '{"step": 7, "lo')   # a line cut short by a crash
    writer = train_lib.MetricWriter(str(tmp_path), resume_step=4)
    writer.write(5, dict(loss=9.0))
    writer.close()
    logged = [json.loads(line) for line in open(path)]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5] and logged[-1]["loss"] == 9.0


# --- unreadable checkpoints ---------------------------------------------------------------------

def _saved_steps(directory, steps=(1, 2, 3)):
    state = _State(jnp.zeros((), jnp.int32), {"w": jnp.arange(6.0)}, {"w": jnp.arange(6.0)}, ())
    checkpointer = ckpt_lib.Checkpointer(str(directory), max_to_keep=5)
    for step in steps:
        checkpointer.save(step, state._replace(params={"w": jnp.arange(6.0) * step}),
                          dict(note="test"))
    checkpointer.close()
    return state


def _files(path, name):
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f == name]


def _truncate_arrays(step_dir):
    for d, _, fs in os.walk(step_dir):
        for f in fs:
            if "d" == os.path.basename(d) or f.endswith(".zarray") or "ocdbt" in d:
                p = os.path.join(d, f)
                with open(p, "r+b") as handle:
                    handle.truncate(max(0, os.path.getsize(p) // 2))


CORRUPTIONS = {
    "zeroed _METADATA": lambda step_dir: [open(p, "wb").write(b"\0" * 16)
                                          for p in _files(step_dir, "_METADATA")],
    "missing item": lambda step_dir: __import__("shutil").rmtree(os.path.join(step_dir, "state")),
    "truncated array files": _truncate_arrays,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_an_unreadable_newest_checkpoint_is_moved_aside_and_the_one_before_restored(
        tmp_path, capsys, corruption):
    directory = tmp_path / "checkpoints"
    template = _saved_steps(directory)
    CORRUPTIONS[corruption](str(directory / "3"))
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
    checkpointer, state, step = guard.restore_newest_intact(
        lambda: ckpt_lib.Checkpointer(str(directory)),
        lambda c, s: c.restore(s, target), keep_errors=(ckpt_lib.ShapeMismatchError,))
    checkpointer.close()
    assert step == 2
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.arange(6.0) * 2)
    moved = os.listdir(tmp_path / "checkpoints.unreadable")
    assert len(moved) == 1 and moved[0].startswith("3-")   # kept, not deleted
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("udm:")]
    assert len(lines) == 1 and "checkpoint at step 3" in lines[0] and "cannot be read" in lines[0]


def test_no_intact_checkpoint_is_refused_not_restarted(tmp_path):
    directory = tmp_path / "checkpoints"
    template = _saved_steps(directory, steps=(1, 2))
    for step in (1, 2):
        CORRUPTIONS["missing item"](str(directory / str(step)))
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
    with pytest.raises(guard.NoIntactCheckpointError, match="refusing to start again from "
                                                            "scratch"):
        guard.restore_newest_intact(lambda: ckpt_lib.Checkpointer(str(directory)),
                                    lambda c, s: c.restore(s, target))
    assert len(os.listdir(tmp_path / "checkpoints.unreadable")) == 2


def test_a_shape_mismatch_is_not_taken_for_damage(tmp_path):
    directory = tmp_path / "checkpoints"
    _saved_steps(directory, steps=(1,))

    def restore(checkpointer, step):
        checkpointer.check_compatible(step, {"w": jnp.zeros(7)})

    with pytest.raises(ckpt_lib.ShapeMismatchError):
        guard.restore_newest_intact(lambda: ckpt_lib.Checkpointer(str(directory)), restore,
                                    keep_errors=(ckpt_lib.ShapeMismatchError,))
    assert not (tmp_path / "checkpoints.unreadable").exists()
