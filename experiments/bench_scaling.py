"""Data-parallel scaling at a fixed global batch: training step time on 1, 2, 4, 8 devices and
on 2 processes vs 1, printed as ratios measured in one run.

  python -m experiments.bench_scaling [--config=configs/ddpm_digits.py] [--steps=20]

Each device count runs in its own subprocess (fake CPU devices need their own XLA_FLAGS); the
multi-process row is 2 processes x 2 devices through jax.distributed on loopback (gloo), against
1 process x 4 devices. On one CPU the fake devices share the same cores, so these ratios measure
the overhead of sharding and of the all-reduce (and of gloo between processes), not a speed-up:
a ratio near 1 means the parallel code path costs nothing; real speed-ups need real devices.
"""
import json
import re
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/ddpm_digits.py", "Model config.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed training steps (after 2 warm-up steps).")
_WORKER = flags.DEFINE_bool("worker", False, "Internal: time the step in this process.")

_RESULT = re.compile(r"BENCH (\{.*\})")


def _time_steps(config, steps: int) -> dict:
    """Median seconds per training step of the config's model on every device (of all processes)."""
    import jax
    import numpy as np

    from udm import distributed, losses, parallel
    from udm.pipeline import spec as spec_lib
    from udm.pipeline import train
    from udm.data import batch_at_step

    distributed.initialize_from_flags_or_env()
    spec = spec_lib.from_config(config)
    exp = train.build(spec)
    data = exp.dataset.train_data
    mesh, bs = exp.mesh, spec.train.batch_size
    replicated = parallel.replicated(mesh)
    state = jax.jit(lambda k: train.init_state(exp.model, exp.optimizer, data, k,
                                                process=exp.process),
                    out_shardings=replicated)(exp.init_key)
    train_apply, _ = train.make_apply_fns(exp.model)
    loss_fn = losses.make_loss_fn(exp.process, train_apply, weighting=spec.train.loss_weighting)
    step = jax.jit(train.make_train_step(loss_fn, exp.optimizer, ema_decay=spec.train.ema_decay,
                                         train_key=exp.train_key),
                   in_shardings=(replicated, parallel.batch_sharded(mesh)),
                   out_shardings=(replicated, replicated), donate_argnums=0)
    rows = parallel.process_rows(bs, mesh)
    batches = [parallel.global_batch(data[batch_at_step(len(data), bs, i, seed=0)[rows]], mesh, bs)
               for i in range(steps + 2)]
    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics["loss"])
        if i >= 2:
            times.append(time.perf_counter() - start)
    return dict(devices=jax.device_count(), processes=jax.process_count(),
                seconds_per_step=float(np.median(times)))


def _run(num_processes: int, devices_per_process: int, argv) -> dict:
    from experiments import launch_local
    codes, outputs = launch_local.launch(
        [*argv, "--worker"], num_processes=num_processes, devices_per_process=devices_per_process,
        module="experiments.bench_scaling", timeout=900, echo=False)
    if any(codes):
        sys.exit(f"bench_scaling: {num_processes} x {devices_per_process} failed:\n"
                 + "".join(outputs[0][-30:]))
    return json.loads(next(m.group(1) for line in outputs[0] if (m := _RESULT.search(line))))


def main(argv):
    if _WORKER.value:
        print("BENCH " + json.dumps(_time_steps(_CONFIG.value, _STEPS.value)), flush=True)
        return
    forwarded = [a for a in sys.argv[1:] if not a.startswith("--worker")]
    bs = _CONFIG.value.train.batch_size
    print(f"training step at global batch {bs}, median of {_STEPS.value} steps, fake CPU devices")
    single = {d: _run(1, d, forwarded) for d in (1, 2, 4, 8) if bs % d == 0}
    base = single[1]["seconds_per_step"]
    for d, r in single.items():
        print(f"1 process  x {d} devices: {r['seconds_per_step'] * 1e3:8.1f} ms/step; "
              f"ratio to 1 device {r['seconds_per_step'] / base:.2f}")
    multi = _run(2, 2, forwarded)
    ratio = multi["seconds_per_step"] / single[4]["seconds_per_step"]
    print(f"2 processes x 2 devices: {multi['seconds_per_step'] * 1e3:8.1f} ms/step; "
          f"ratio to 1 process x 4 devices {ratio:.2f}")


if __name__ == "__main__":
    app.run(main)
