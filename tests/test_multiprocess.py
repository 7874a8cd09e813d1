"""One code path from one CPU to many devices and many processes, checked by real runs.

Every run is a subprocess (its own XLA_FLAGS device count; the 2-process run joined through
jax.distributed over loopback with gloo collectives), all started together to share the two
cores: the digits :smoke model trains 4 steps at global batch 16 from the same seed.

Tolerances, measured on XLA:CPU with jax 0.10.2: the gradient all-reduce sums the per-device
partial gradients in an order that depends on the device count and, across processes, on
gloo, so results agree to float32 rounding, not bitwise. Logged losses and gradient norms
agreed to 1 ulp (rtol 1e-6 below); after 4 AdamW steps the largest difference of any
parameter / EMA / optimizer-state element was 1.8e-6 (2 processes x 2 devices vs 1 x 4) and
2.2e-6 (1 vs 4 devices), against atol 1e-5 below.
"""
import concurrent.futures
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import launch_local

# Opt-in until an intermittent hang is understood: in 2 of about 10 full-suite runs on the 2-core
# machine, process 1 of the 2 x 2 run stayed inside a train step while process 0 finished and
# timed out at jax.distributed's shutdown barrier (both exit -6, "Shutdown barrier has failed").
# Run with UDM_MULTIPROCESS_TESTS=1 (passed alone in every run so far).
pytestmark = pytest.mark.skipif(
    os.environ.get("UDM_MULTIPROCESS_TESTS") != "1",
    reason="opt-in (UDM_MULTIPROCESS_TESTS=1): intermittent shutdown-barrier hang under load")

STEPS = 4
PARAM_ATOL = 1e-5   # measured max |difference| 2.2e-6
LOSS_RTOL = 1e-6    # measured: equal or 1 ulp apart


def _args(workdir):
    return ["--config=configs/ddpm_digits.py:smoke", f"--workdir={workdir}",
            "--config.train.progress_bar=False", "--config.eval.enabled=False",
            f"--config.train.num_steps={STEPS}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: workdir} of the 2 x 2 run and the single-process runs on 1, 2, 4, 8 devices."""
    jobs = {"2x2": (2, 2)} | {f"1x{d}": (1, d) for d in (1, 2, 4, 8)}
    root = tmp_path_factory.mktemp("multiprocess")

    def run(name):
        num_processes, devices = jobs[name]
        codes, outputs = launch_local.launch(
            _args(root / name), num_processes=num_processes, devices_per_process=devices,
            timeout=600, echo=False)
        assert codes == [0] * num_processes, f"{name}: {codes}\n" + "".join(
            "".join(lines[-40:]) for lines in outputs)
        return outputs

    # At most 3 runs at a time: all 6 processes at once on 2 busy cores failed once (the
    # processes exited non-zero under a load average of about 11; not reproduced since).
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        outputs = dict(zip(jobs, pool.map(run, jobs)))
    return {name: root / name for name in jobs}, outputs


def _state(workdir):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                    item_names=("state", "record"))
    assert manager.latest_step() == STEPS
    restored = manager.restore(STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]


def _logged(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _assert_close(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(leaves_a) > 100
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=PARAM_ATOL)


def test_two_processes_train_like_one_process_with_as_many_devices(runs):
    workdirs, outputs = runs
    multi, single = workdirs["2x2"], workdirs["1x4"]
    # Process 0 alone logs and prints; the checkpoint written together restores.
    logged = _logged(multi)
    assert [m["step"] for m in logged] == [2, 4]
    assert len(os.listdir(multi / "tensorboard")) == 1
    assert sum("udm: new run" in line for lines in outputs["2x2"] for line in lines) == 1
    reference = _logged(single)
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([m[key] for m in logged], [m[key] for m in reference],
                                   rtol=LOSS_RTOL)
    a, b = _state(multi), _state(single)
    assert int(a["step"]) == int(b["step"]) == STEPS
    _assert_close(a, b)
    # and training moved the parameters well beyond the tolerance
    initial_gap = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(a["opt_state"]))
    assert initial_gap > 100 * PARAM_ATOL


@pytest.mark.parametrize("devices", [1, 2, 8])
def test_training_does_not_depend_on_the_device_count(runs, devices):
    workdirs, _ = runs
    ours, reference = workdirs[f"1x{devices}"], workdirs["1x4"]
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([m[key] for m in _logged(ours)],
                                   [m[key] for m in _logged(reference)], rtol=LOSS_RTOL)
    _assert_close(_state(ours), _state(reference))
