"""A multi-process JAX run on this machine: N processes on loopback, each with its own fake CPUs.

  python -m experiments.launch_local --num_processes=2 --devices_per_process=2
  python -m experiments.launch_local --num_processes=4 -- \
      --config=configs/ddpm_digits.py:smoke --workdir=/tmp/udm_mp --config.train.num_steps=8

Everything after `--` goes to the module run in each process (experiments.main by default,
with the digits :smoke config when nothing is given). Each process gets JAX_PLATFORMS=cpu,
XLA_FLAGS=--xla_force_host_platform_device_count=<devices_per_process> and JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID, which udm.distributed reads; it is the code path of a
multi-host GPU or TPU run, with gloo over loopback in place of the interconnect. Output lines
are prefixed with the rank; the exit status is non-zero if any process fails or the run times
out, and the surviving processes are then stopped.
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence

from absl import app, flags

_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "How many processes.")
_DEVICES = flags.DEFINE_integer("devices_per_process", 2, "Fake CPU devices per process.")
_TIMEOUT = flags.DEFINE_float("timeout", 600.0, "Seconds before every process is killed.")
_MODULE = flags.DEFINE_string("module", "experiments.main", "Python module each process runs.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEVICE_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S+")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(num_devices: int, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of a CPU-only JAX process with `num_devices` fake devices."""
    env = dict(os.environ if base is None else base)
    xla_flags = _DEVICE_FLAG.sub("", env.get("XLA_FLAGS", "")).strip()
    env["XLA_FLAGS"] = f"{xla_flags} --xla_force_host_platform_device_count={num_devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env


def _pump(stream, prefix: str, sink: List[str], echo: bool) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        if echo:
            sys.stdout.write(f"{prefix} {line}")
            sys.stdout.flush()
    stream.close()


def launch(args: Sequence[str], *, num_processes: int, devices_per_process: int,
           module: str = "experiments.main", timeout: float = 600.0, echo: bool = True,
           grace: float = 30.0, env: Optional[Dict[str, str]] = None):
    """Runs `python -m module *args` in num_processes processes joined by jax.distributed.

    Args:
        args: command-line arguments of the module, the same for every process.
        num_processes, devices_per_process: P processes with D fake CPU devices each.
        module: the entry point; it must call udm.distributed.initialize_from_flags_or_env.
        timeout: seconds for the whole run; then every process is killed.
        echo: print every output line, prefixed with "[p<rank>]".
        grace: after the first process fails, seconds the others get to stop by themselves
            (their collectives fail) before they are killed.
        env: base environment (default: this process's).

    Returns:
        (return codes [P], output lines per process [P][...]); a killed process has a negative
        code.
    """
    address = f"127.0.0.1:{free_port()}"
    procs, outputs, pumps = [], [], []
    for rank in range(num_processes):
        proc_env = cpu_env(devices_per_process, env)
        proc_env.update(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(num_processes),
                        JAX_PROCESS_ID=str(rank), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=proc_env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sink: List[str] = []
        pump = threading.Thread(target=_pump, args=(proc.stdout, f"[p{rank}]", sink, echo),
                                daemon=True)
        pump.start()
        procs.append(proc)
        outputs.append(sink)
        pumps.append(pump)
    deadline = time.monotonic() + timeout
    first_failure = None
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        failed = [p for p in procs if p.returncode not in (None, 0)]
        if failed and first_failure is None:
            first_failure = now
        if now > deadline or (first_failure is not None and now > first_failure + grace):
            why = "timed out" if now > deadline else "a process failed and the others did not stop"
            print(f"launch_local: {why}; killing the remaining processes", file=sys.stderr)
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.1)
    codes = [p.wait() for p in procs]
    for pump in pumps:
        pump.join(timeout=5)
    return codes, outputs


def main(argv):
    args = list(argv[1:])
    if not args:
        workdir = tempfile.mkdtemp(prefix="udm_launch_local_")
        args = ["--config=configs/ddpm_digits.py:smoke", f"--workdir={workdir}",
                "--config.train.progress_bar=False"]
    print(f"launch_local: {_NUM_PROCESSES.value} processes x {_DEVICES.value} CPU devices: "
          f"python -m {_MODULE.value} {' '.join(args)}")
    codes, _ = launch(args, num_processes=_NUM_PROCESSES.value,
                      devices_per_process=_DEVICES.value, module=_MODULE.value,
                      timeout=_TIMEOUT.value)
    print(f"launch_local: exit codes {codes}")
    if any(codes):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
