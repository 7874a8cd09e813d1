"""Sampler and training benchmarks; prints ratios measured side by side in one run.

  python -m experiments.bench_sampler [--batch=64] [--config=configs/ddpm_digits.py]

1. Sampler overhead: time of the jitted K=100 DDIM sampler / (100 x one jitted UNet forward)
   at the same batch (target <= 1.10).
2. Compile time of the sampler at K=1000 / at K=10 (target <= 1.5: the steps are a scan).
3. Training throughput in images per second with the config's model and batch size.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments.timing import median_time
from udm import parallel
from udm.data import batch_at_step, load_dataset
from udm.losses import make_loss_fn
from udm.sampling import make_sampler, network_predictor
from udm.pipeline.spec import from_config, make_process
from udm.pipeline.train import (init_state, make_apply_fns, make_model, make_optimizer,
                                make_train_step)

_CONFIG = config_flags.DEFINE_config_file("config", "configs/ddpm_digits.py", "Model config.")
_BATCH = flags.DEFINE_integer("batch", 64, "Sampling batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions (the median is reported).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 30, "Timed training steps.")


def main(argv):
    del argv
    spec = from_config(_CONFIG.value)
    batch = _BATCH.value
    process = make_process(spec)
    model = make_model(spec)
    dataset = load_dataset(spec.data.name, seed=spec.seed, path=spec.data.path or None)
    shape = dataset.train_images.shape[1:]
    optimizer = make_optimizer(spec.train)
    state = init_state(model, optimizer, dataset.train_images, jax.random.PRNGKey(0))
    # Perturb the zero-initialised output layers so the network does real work.
    params = jax.tree.map(lambda p: p + 0.01 * jnp.ones_like(p), state.params)
    train_apply, eval_apply = make_apply_fns(model)
    predictor = network_predictor(process, eval_apply, clip=1.0)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, *shape))
    key = jax.random.PRNGKey(2)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; batch {batch}; "
          f"image {shape}")

    # 1. Overhead of the scan sampler over K bare network calls.
    forward = jax.jit(lambda p, x: predictor(p, x, 500))
    jax.block_until_ready(forward(params, x))
    t_forward = median_time(lambda: forward(params, x), 10 * _REPEATS.value)
    sampler = make_sampler(process, predictor, num_steps=100, name="ddim")
    jax.block_until_ready(sampler(params, x, key=key))
    t_sampler = median_time(lambda: sampler(params, x, key=key), _REPEATS.value)
    overhead = t_sampler / (100 * t_forward)
    print(f"one forward {t_forward * 1e3:.2f} ms; K=100 DDIM sampler {t_sampler * 1e3:.1f} ms; "
          f"overhead ratio {overhead:.3f} (target <= 1.10)")

    # 2. Compile time does not grow with K.
    compile_times = {}
    for k in (10, 1000):
        fn = make_sampler(process, predictor, num_steps=k, name="ddpm")
        start = time.perf_counter()
        fn.lower(params, x, key=key).compile()
        compile_times[k] = time.perf_counter() - start
    ratio = compile_times[1000] / compile_times[10]
    print(f"compile K=10 {compile_times[10]:.2f} s; K=1000 {compile_times[1000]:.2f} s; "
          f"ratio {ratio:.3f} (target <= 1.5)")

    # 3. Training throughput, data parallel over all devices.
    mesh = parallel.data_mesh()
    bs = spec.train.batch_size
    loss_fn = make_loss_fn(process, train_apply, weighting=spec.train.loss_weighting)
    step = jax.jit(make_train_step(loss_fn, optimizer, ema_decay=spec.train.ema_decay,
                                   train_key=jax.random.PRNGKey(3)), donate_argnums=0)
    state = jax.device_put(state, parallel.replicated(mesh))

    def batch_at(i):
        idx = batch_at_step(len(dataset.train_images), bs, i, seed=0)
        return parallel.shard_batch(dataset.train_images[idx], mesh)

    state, m = step(state, batch_at(0))
    jax.block_until_ready(m)
    start = time.perf_counter()
    for i in range(1, _TRAIN_STEPS.value + 1):
        state, m = step(state, batch_at(i))
        if i % 5 == 0:
            jax.block_until_ready(m)
    jax.block_until_ready(m)
    seconds = time.perf_counter() - start
    print(f"training: {_TRAIN_STEPS.value * bs / seconds:.0f} images/s "
          f"(batch {bs}, {seconds / _TRAIN_STEPS.value * 1e3:.0f} ms/step)")


if __name__ == "__main__":
    app.run(main)
