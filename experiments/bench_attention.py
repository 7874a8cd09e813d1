"""Entropy-invariant attention vs standard attention: jitted forward+backward time ratio.

  python -m experiments.bench_attention [--batch=8] [--heads=8] [--length=1024] [--head_dim=64]

Same shapes for both; medians of interleaved runs measured side by side in one run.
Target: ratio <= 1.05, unmasked and with a padding mask (per-example n). Prints, asserts nothing.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from udm.nn.attention import attention

_BATCH = flags.DEFINE_integer("batch", 8, "Batch size B.")
_HEADS = flags.DEFINE_integer("heads", 8, "Heads H.")
_LENGTH = flags.DEFINE_integer("length", 1024, "Sequence length n (queries = keys).")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Head dimension d.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed repetitions per variant (median reported).")


def _forward_backward(scale):
    # The mask is an argument, not a closed-over constant, so XLA does not constant-fold it.
    def loss(q, k, v, mask):
        return jnp.sum(attention(q, k, v, mask=mask, scale=scale) ** 2)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def _ratio(fns, args, repeats):
    """Median times of each fn, alternating calls so both see the same machine load."""
    for fn in fns:
        jax.block_until_ready(fn(*args))
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ts.append(time.perf_counter() - start)
    return [float(np.median(ts)) for ts in times]


def main(argv):
    del argv
    b, h, n, d = _BATCH.value, _HEADS.value, _LENGTH.value, _HEAD_DIM.value
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((b, n, h, d)), jnp.float32) for _ in range(3))
    lengths = rng.integers(n // 2, n + 1, size=b)
    mask = jnp.asarray(np.arange(n)[None, None, None, :] < lengths[:, None, None, None])
    mask = jnp.broadcast_to(mask, (b, 1, n, n))
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; "
          f"B={b} H={h} n={n} d={d}; forward+backward, median of {_REPEATS.value}")
    for label, m in (("unmasked", None), ("padding mask", mask)):
        fns = [_forward_backward("standard"), _forward_backward("entropy_invariant")]
        t_std, t_inv = _ratio(fns, (q, k, v, m), _REPEATS.value)
        print(f"{label}: standard {t_std * 1e3:.1f} ms; entropy_invariant {t_inv * 1e3:.1f} ms; "
              f"ratio {t_inv / t_std:.3f} (target <= 1.05)")


if __name__ == "__main__":
    app.run(main)
