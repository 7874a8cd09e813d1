"""One code path from one CPU to many devices and many processes, checked by real runs.

Every run is a subprocess (its own XLA_FLAGS device count; the 2- and 4-process runs joined
through jax.distributed over loopback with gloo collectives): the digits :smoke model trains 4
steps at global batch 16 from the same seed, then samples (ddpm and ddim rows) with the
Analytic-DPM variance, whose Monte Carlo is sharded like the sampling batch.

Tolerances, measured on XLA:CPU with jax 0.10.2: the gradient all-reduce sums the per-device
partial gradients in an order that depends on the device count and, across processes, on
gloo, so results agree to float32 rounding, not bitwise. Logged losses and gradient norms
agreed to 1 ulp (rtol 1e-6 below); after 4 AdamW steps the largest difference of any
parameter / EMA / optimizer-state element was 1.8e-6 (2 processes x 2 devices vs 1 x 4),
5.0e-6 (4 processes x 2 devices vs 1 x 8) and 2.2e-6 (1 vs 4 devices), against atol 1e-5 below. The evaluation's figures of the samples
(FD, class entropy, nearest-neighbour distance) agreed to 1e-7 relative and the Analytic-DPM
tables exactly, against rtol 1e-5 below. A run killed after its step-2 checkpoint and resumed
by all processes ended bitwise equal to the uninterrupted run (checked to atol 1e-5 below).
"""
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import launch_local

# Real multi-process runs and the kill / resume run (minutes): `make test-slow`.
pytestmark = pytest.mark.slow

STEPS = 4
PARAM_ATOL = 1e-5   # measured max |difference| 5.0e-6
LOSS_RTOL = 1e-6    # measured: equal or 1 ulp apart
EVAL_RTOL = 1e-5    # measured: 1e-7
HEARTBEAT_SECONDS = 10  # jax's default is 100; survivors of a killed process stop this long after


def _train_args(workdir):
    return ["--config=configs/ddpm_digits.py:smoke", f"--workdir={workdir}",
            "--config.train.progress_bar=False", f"--config.train.num_steps={STEPS}"]


def _args(workdir):
    """Training, then the two sampler rows with the (sharded) Analytic-DPM Monte Carlo."""
    return _train_args(workdir) + [
        "--config.sampler.variance=analytic", "--config.variance.mc_samples=64",
        "--config.variance.mc_batch_size=32", "--config.eval.samplers=('ddpm',)"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: workdir} of the 2 x 2 and 4 x 2 (training only) runs and the single-process runs
    on 1, 2, 4, 8 devices."""
    jobs = {"2x2": (2, 2), "4x2": (4, 2)} | {f"1x{d}": (1, d) for d in (1, 2, 4, 8)}
    root = tmp_path_factory.mktemp("multiprocess")

    def run(name):
        num_processes, devices = jobs[name]
        args = _args(root / name)
        if name == "4x2":
            args = _train_args(root / name) + ["--config.eval.enabled=False"]
        codes, outputs = launch_local.launch(
            args, num_processes=num_processes, devices_per_process=devices,
            timeout=600, echo=False)
        assert codes == [0] * num_processes, f"{name}: {codes}\n" + "".join(
            "".join(lines[-60:]) for lines in outputs)
        return outputs

    # At most 3 runs at a time on the 2 cores.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        outputs = dict(zip(jobs, pool.map(run, jobs)))
    return {name: root / name for name in jobs}, outputs


def _state(workdir, step=STEPS):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                    item_names=("state", "record"))
    assert manager.latest_step() == step
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]


def _logged(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _assert_close(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(leaves_a) > 100
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=PARAM_ATOL)


def _assert_same_training(ours, reference):
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([m[key] for m in _logged(ours)],
                                   [m[key] for m in _logged(reference)], rtol=LOSS_RTOL)
    _assert_close(_state(ours), _state(reference))


def _assert_same_samples(ours, reference):
    """The Analytic-DPM table and the figures of each sampler row's samples agree."""
    tables = [np.load(os.path.join(w, "variance", f"analytic_step{STEPS}.npz"))
              for w in (ours, reference)]
    np.testing.assert_array_equal(tables[0]["timesteps"], tables[1]["timesteps"])
    np.testing.assert_allclose(tables[0]["sigma_bar"], tables[1]["sigma_bar"], rtol=EVAL_RTOL)
    rows = [json.load(open(os.path.join(w, "results.json")))["rows"] for w in (ours, reference)]
    assert [r["samples"] for r in rows[0]] == [r["samples"] for r in rows[1]]
    assert len(rows[0]) == 3  # real digits, ddpm, ddim
    for a, b in zip(*rows):
        for key in ("fd", "class_entropy", "nn_train_distance"):
            np.testing.assert_allclose(a[key], b[key], rtol=EVAL_RTOL, err_msg=a["samples"])


def test_two_processes_train_and_sample_like_one_process_with_as_many_devices(runs):
    workdirs, outputs = runs
    multi, single = workdirs["2x2"], workdirs["1x4"]
    # Process 0 alone logs, prints and writes the evaluation; the checkpoint written together
    # restores.
    assert [m["step"] for m in _logged(multi)] == [2, 4]
    assert len(os.listdir(multi / "tensorboard")) == 1
    for text in ("udm: new run", "Evaluation of digits"):
        assert sum(text in line for lines in outputs["2x2"] for line in lines) == 1
    assert not any("Evaluation" in line for line in outputs["2x2"][1])
    _assert_same_training(multi, single)
    _assert_same_samples(multi, single)
    # and training moved the optimizer state well beyond the tolerance
    initial_gap = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(_state(multi)["opt_state"]))
    assert initial_gap > 100 * PARAM_ATOL


def test_four_processes_train_like_one_process_with_as_many_devices(runs):
    workdirs, outputs = runs
    assert sum("udm: new run" in line for lines in outputs["4x2"] for line in lines) == 1
    _assert_same_training(workdirs["4x2"], workdirs["1x8"])


@pytest.mark.parametrize("devices", [1, 2, 8])
def test_training_and_sampling_do_not_depend_on_the_device_count(runs, devices):
    workdirs, _ = runs
    _assert_same_training(workdirs[f"1x{devices}"], workdirs["1x4"])
    _assert_same_samples(workdirs[f"1x{devices}"], workdirs["1x4"])


# Process 1 starts its first train step LATE_SECONDS after process 0 (gloo gives a process 30 s
# to join a new device group: this failed, then hung, before udm.distributed set the groups up
# at start), and stops right after the checkpoint of step 2 is written, waiting to be killed.
LATE_SECONDS = 35
_STALL_MAIN = f'''
import os, pathlib, time
from absl import app
from udm import checkpoint
from udm.pipeline import train
late = os.environ["JAX_PROCESS_ID"] == "1"
_make_train_step = train.make_train_step
def make_train_step(*args, **kwargs):
    step_fn = _make_train_step(*args, **kwargs)
    def delayed(state, batch):  # runs once, while jit traces it
        if late:
            time.sleep({LATE_SECONDS})
        return step_fn(state, batch)
    return delayed
train.make_train_step = make_train_step
_save = checkpoint.Checkpointer.save
def save(self, step, state, record):
    _save(self, step, state, record)
    if late and step == 2:
        pathlib.Path(os.environ["STALL_MARKER"]).touch()
        while True:
            time.sleep(1)
checkpoint.Checkpointer.save = save
from experiments import main
app.run(main.main)
'''


def test_killed_process_stops_the_others_and_a_restart_resumes_from_its_checkpoint(
        runs, tmp_path):
    """Also: a process LATE_SECONDS late at its first train step is waited for."""
    workdirs, _ = runs
    workdir, marker = tmp_path / "run", tmp_path / "stalled"
    (tmp_path / "stall_main.py").write_text(_STALL_MAIN)
    address = f"127.0.0.1:{launch_local.free_port()}"
    procs, logs = [], []
    for rank in range(2):
        env = launch_local.cpu_env(2)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
        env.update(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(rank), PYTHONUNBUFFERED="1", STALL_MARKER=str(marker),
                   UDM_HEARTBEAT_TIMEOUT_SECONDS=str(HEARTBEAT_SECONDS))
        logs.append(tmp_path / f"p{rank}.log")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "stall_main", *_train_args(workdir),
             "--config.eval.enabled=False"],
            cwd=launch_local.ROOT, env=env, stdout=open(logs[-1], "w"),
            stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():  # process 1 saved step 2 with process 0
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code = procs[0].wait(timeout=HEARTBEAT_SECONDS + 60)  # TimeoutExpired = a hang
        waited = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert code != 0
    log = logs[0].read_text()
    assert "stopped sending heartbeats" in log, log[-3000:]
    assert waited < HEARTBEAT_SECONDS + 60
    # The checkpoint of step 2 is intact; all processes started again resume from it and end
    # where the uninterrupted run ended.
    assert ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).latest_step() == 2
    codes, outputs = launch_local.launch(
        _train_args(workdir) + ["--config.eval.enabled=False"], num_processes=2,
        devices_per_process=2, timeout=600, echo=False)
    assert codes == [0, 0], "".join("".join(lines[-60:]) for lines in outputs)
    assert any("udm: resumed from step 2" in line for line in outputs[0])
    assert [m["step"] for m in _logged(workdir)] == [2, 4]
    _assert_close(_state(workdir), _state(workdirs["2x2"]))
