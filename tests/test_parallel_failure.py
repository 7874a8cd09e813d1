"""A multi-process run whose process dies (SIGKILL) stops the others with a clear error rather
than leaving them blocked in a collective forever."""
import os
import signal
import subprocess
import sys
import time

from experiments import launch_local

HEARTBEAT_SECONDS = 10  # jax's default is 100; the survivors stop this long after the death


def test_killed_process_stops_the_others_with_a_clear_error(tmp_path):
    address = f"127.0.0.1:{launch_local.free_port()}"
    args = ["--config=configs/ddpm_digits.py:smoke", f"--workdir={tmp_path}",
            "--config.train.progress_bar=False", "--config.eval.enabled=False",
            "--config.train.num_steps=100000", "--config.train.checkpoint_every=100000",
            "--config.train.log_every=2"]
    procs, logs = [], []
    for rank in range(2):
        env = launch_local.cpu_env(2)
        env.update(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(rank), PYTHONUNBUFFERED="1",
                   UDM_HEARTBEAT_TIMEOUT_SECONDS=str(HEARTBEAT_SECONDS))
        logs.append(tmp_path / f"p{rank}.log")
        procs.append(subprocess.Popen([sys.executable, "-m", "experiments.main", *args],
                                      cwd=launch_local.ROOT, env=env, stdout=open(logs[-1], "w"),
                                      stderr=subprocess.STDOUT))
    try:
        metrics, deadline = tmp_path / "metrics.jsonl", time.monotonic() + 300
        while not (metrics.exists() and metrics.stat().st_size):  # both are in the train loop
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                logs[0].read_text()[-3000:]
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
