"""Analytic-DPM's Monte Carlo Gamma_t: one jitted program against the reference's Python loops.

  python -m experiments.bench_variance [--num_t=100] [--num_samples=512] [--batch=256]
      [--channels=16] [--repeats=3]

Both estimate Gamma_t = E||eps_theta(alpha_bar_t x_0 + beta_bar_t eps, t)||^2 / d over the
digits for `num_t` timesteps with `num_samples` examples each, in batches of `batch`, with the
digits UNet (random weights: the cost is the same):

* jitted: `udm.variance.estimate_gamma`, `lax.map` over t and `lax.scan` over batches, one XLA
  program;
* loop: the released PyTorch code's structure, a Python loop over t and batches, each batch
  one jitted network call, the batch statistic brought to the host (`.item()` there).

Printed: seconds per estimate (median of `repeats`, both compiled beforehand), the ratio
loop / jitted (target >= 1: the jitted program must not be slower), and the largest difference
of the two estimates in units of their Monte Carlo standard error (independent draws).
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from udm import variance
from udm.data import load_dataset
from udm.nn import UNet
from udm.processes import GaussianProcess

_NUM_T = flags.DEFINE_integer("num_t", 100, "Timesteps (uniform over 1..T).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 512, "Examples per timestep.")
_BATCH = flags.DEFINE_integer("batch", 256, "Examples per network call.")
_CHANNELS = flags.DEFINE_integer("channels", 16, "UNet base width (16: the demo model).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (the median is reported).")


def main(argv):
    del argv
    process = GaussianProcess.from_schedule("blog", 1000)
    data = load_dataset("digits").train_images
    model = UNet(channels=_CHANNELS.value, channel_mults=(1, 2), num_groups=8)
    key = jax.random.key(0, impl="rbg")
    params = model.init(key, jnp.zeros((1, *data.shape[1:])), jnp.ones((1,), jnp.int32))["params"]
    # Random weights output ~0 at init (zero last layer): perturb them so eps_theta is not 0.
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(key, p.shape), params)

    def eps_fn(params, xt, t):
        return model.apply({"params": params}, xt, jnp.full((xt.shape[0],), t, jnp.int32))

    timesteps = np.linspace(1, 1000, _NUM_T.value).round().astype(np.int32)
    n, b = _NUM_SAMPLES.value, _BATCH.value
    data_dev = jnp.asarray(data)

    def jitted(seed):
        return jax.block_until_ready(variance.estimate_gamma(
            process, eps_fn, params, data_dev, timesteps, key=jax.random.key(seed, impl="rbg"),
            num_samples=n, batch_size=b, return_stderr=True))

    net = jax.jit(eps_fn)

    def loop(seed):
        rng = np.random.default_rng(seed)
        out = []
        for t in timesteps:
            total = 0.0
            for _ in range(n // b):
                x0 = data[rng.integers(0, len(data), b)]
                eps = rng.standard_normal(x0.shape).astype(np.float32)
                xt = process.alpha_bar[t] * x0 + process.beta_bar[t] * eps
                total += float(jnp.mean(net(params, xt, jnp.int32(t)) ** 2)) * b
            out.append(total / n)
        return np.asarray(out)

    jitted(0), loop(0)  # compile both
    times = {}
    for name, fn in (("jitted", jitted), ("loop", loop)):
        runs = []
        for r in range(_REPEATS.value):
            start = time.perf_counter()
            result = fn(r + 1)
            runs.append(time.perf_counter() - start)
        times[name] = float(np.median(runs))
        if name == "jitted":
            gamma, stderr = (np.asarray(v) for v in result)
        else:
            gamma_loop = result
    z = np.max(np.abs(gamma - gamma_loop) / (np.sqrt(2) * np.maximum(stderr, 1e-12)))
    print(f"Gamma_t over {len(timesteps)} timesteps x {n} examples (batch {b}), UNet "
          f"channels={_CHANNELS.value}, {jax.devices()[0].platform}:")
    print(f"  jitted (lax.map over t, lax.scan over batches): {times['jitted']:.2f} s")
    print(f"  Python loop, one jitted network call per batch:  {times['loop']:.2f} s")
    print(f"  ratio loop / jitted: {times['loop'] / times['jitted']:.2f}x (target >= 1.0)")
    print(f"  max |difference| / MC standard error of the difference: {z:.2f} "
          f"(independent draws; ~N(0,1) per t)")


if __name__ == "__main__":
    app.run(main)
