"""Many processes, one program: start jax.distributed before JAX touches a device.

After `initialize_from_flags_or_env` every process sees the same global `jax.devices()`, so the
data mesh of udm.parallel spans all hosts and the training code is the single-process code.
With one process (nothing set) it does nothing.
"""
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from udm import parallel

# The environment a launcher sets for each process when it does not pass the flags.
# JAX itself reads JAX_COORDINATOR_ADDRESS; the other two are named to match.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
# Seconds without a heartbeat after which a process counts as dead (jax's default: 100).
ENV_HEARTBEAT_TIMEOUT = "UDM_HEARTBEAT_TIMEOUT_SECONDS"

AUTO = "auto"  # coordinator_address="auto": jax detects a managed cluster (Cloud TPU, SLURM, MPI)


def _int_or_none(value) -> Optional[int]:
    return None if value in (None, "") else int(value)


def initialize_from_flags_or_env(coordinator_address: Optional[str] = None,
                                 num_processes: Optional[int] = None,
                                 process_id: Optional[int] = None, *,
                                 heartbeat_timeout_seconds: Optional[int] = None,
                                 initialization_timeout: int = 300) -> bool:
    """Joins this process to a multi-process JAX run; a no-op for a single process.

    Each argument falls back to its environment variable (JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES, JAX_PROCESS_ID). coordinator_address="auto" lets jax.distributed detect
    a managed cluster (Cloud TPU pod, SLURM, Open MPI) and fill in everything itself. On CPU the
    cross-process collectives go through gloo.

    Must run before the first JAX computation or device query of the process.

    Args:
        coordinator_address: "host:port" of process 0's coordinator service, or "auto".
        num_processes: how many processes take part.
        process_id: this process's rank in [0, num_processes).
        heartbeat_timeout_seconds: a process silent this long (it crashed, was killed or
            lost its host) is declared dead, and every other process aborts with "tasks are
            unhealthy (stopped sending heartbeats)" instead of waiting forever in a collective.
            Default: $UDM_HEARTBEAT_TIMEOUT_SECONDS, else 100.
        initialization_timeout: how long to wait for every process to join.

    Returns:
        True if jax.distributed was initialized, False for a single-process run.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _int_or_none(os.environ.get(ENV_NUM_PROCESSES))
    if process_id is None:
        process_id = _int_or_none(os.environ.get(ENV_PROCESS_ID))
    if coordinator_address is None and num_processes in (None, 1):
        return False
    if coordinator_address != AUTO:
        missing = [name for name, v in [("coordinator_address", coordinator_address),
                                        ("num_processes", num_processes),
                                        ("process_id", process_id)] if v is None]
        if missing:
            raise ValueError(f"a multi-process run needs coordinator_address, num_processes and "
                             f"process_id (flags or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, "
                             f"{ENV_PROCESS_ID}); missing: {', '.join(missing)}")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"process_id must be in [0, num_processes={num_processes}), "
                             f"got {process_id}")
        if num_processes == 1:
            return False
    # Only the CPU backend reads this (without it, CPU devices of other processes cannot take
    # part in a collective); GPUs and TPUs keep NCCL / ICI. Set unconditionally because asking
    # for the platform here would start the backend before initialize.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if heartbeat_timeout_seconds is None:
        heartbeat_timeout_seconds = int(os.environ.get(ENV_HEARTBEAT_TIMEOUT, 100))
    kwargs = dict(heartbeat_timeout_seconds=heartbeat_timeout_seconds,
                  initialization_timeout=initialization_timeout)
    if coordinator_address == AUTO:
        jax.distributed.initialize(**kwargs)
    else:
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
    if jax.default_backend() == "cpu":
        warm_up_cpu_collectives()
    return True


def barrier(name: str, timeout_seconds: int = 1800) -> None:
    """Waits until every process reaches `name` (jax's coordination service, not a collective).

    A no-op with one process. Each name may be used once per run.
    """
    if jax.process_count() == 1:
        return
    # jax has no public barrier on the coordination service; orbax reaches it the same way.
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
    jax_distributed.global_state.client.wait_at_barrier(name, timeout_seconds * 1000)


def warm_up_cpu_collectives() -> None:
    """Creates the gloo communicators of the data mesh while all processes are in step.

    gloo sets up a group of devices at its first collective and gives the other processes 30
    seconds to join (not configurable in jax 0.10); once set up, a collective waits as long as
    XLA's CPU collective timeout. Without this, a process that compiles its first train step
    more than 30 s after another (a busy machine) fails with "Gloo context initialization
    failed: DEADLINE_EXCEEDED", and the other waits in the collective until jax's shutdown
    barrier times out. Run right after jax.distributed.initialize: an all-reduce over every
    device (the data mesh of training, sampling and k-NN) and an all-gather of one value per
    process (orbax's and multihost_utils' barriers), each started after a coordination-service
    barrier.
    """
    mesh = parallel.data_mesh()
    ones = parallel.shard_batch(np.ones(mesh.devices.size, np.float32), mesh)
    total = jax.jit(jnp.sum, out_shardings=parallel.replicated(mesh)).lower(ones).compile()
    barrier("udm_warm_up_all_reduce")
    if float(total(ones)) != mesh.devices.size:
        raise RuntimeError("the warm-up all-reduce over all devices returned a wrong sum")
    barrier("udm_warm_up_all_gather")
    multihost_utils.sync_global_devices("udm_warm_up_all_gather")


def is_primary() -> bool:
    """Whether this process writes files and prints (process 0; always true single-process)."""
    return jax.process_index() == 0
