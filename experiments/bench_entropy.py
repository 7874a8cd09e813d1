"""Entropy-normalisation benchmark: batched Newton (udm.entropy) vs per-row scipy brentq.

  python -m experiments.bench_entropy [--rows=4096] [--vocab=32000] [--brentq_rows=64]

Prints, measured in one run on the default JAX device:
1. The batch: rows x vocab Gaussian logits with a random per-row temperature, float32, and a
   random target entropy per row.
2. Wall time of the jitted `entropy_normalize` (tol 1e-6, median of repeats, compile excluded),
   the Newton iterations per row (mean / max) and the achieved |H - H*| in nats, recomputed in
   float64 from the returned probabilities on a subset of rows.
3. Wall time of scipy.optimize.brentq on the exact entropy-vs-exponent curve (N2), float64,
   timed on --brentq_rows rows and extrapolated linearly to all rows (stated in the output),
   the largest |exponent_newton / exponent_brentq - 1| on those rows, and the speed ratio
   brentq / Newton (the documented target is >= 100x).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.special

from experiments.timing import median_time
from udm.entropy import entropy_normalize


def _entropy_of_power(log_p: np.ndarray, gamma: float) -> float:
    """(N2) in float64: the entropy of softmax(gamma log p)."""
    log_q = gamma * log_p
    log_q = log_q - scipy.special.logsumexp(log_q)
    return float(-np.sum(np.exp(log_q) * log_q))


def _brentq_exponent(logits: np.ndarray, target: float) -> float:
    log_p = logits - scipy.special.logsumexp(logits)
    return scipy.optimize.brentq(lambda g: _entropy_of_power(log_p, g) - target, 1e-4, 1e4,
                                 xtol=1e-12, rtol=1e-12)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096, help="Batch rows.")
    parser.add_argument("--vocab", type=int, default=32000, help="Categories per row.")
    parser.add_argument("--brentq_rows", type=int, default=64,
                        help="Rows solved with brentq (time extrapolated to --rows).")
    parser.add_argument("--check_rows", type=int, default=256,
                        help="Rows whose achieved entropy is recomputed in float64.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed repetitions (median).")
    args = parser.parse_args()

    logits_key, temperature_key, target_key = jax.random.split(jax.random.PRNGKey(0), 3)
    temperature = jax.random.uniform(temperature_key, (args.rows, 1), minval=0.5, maxval=4.0)
    logits = jax.random.normal(logits_key, (args.rows, args.vocab)) * temperature
    log_n = float(np.log(args.vocab))
    targets = jax.random.uniform(target_key, (args.rows,), minval=0.1 * log_n,
                                 maxval=0.9 * log_n)
    print(f"device: {jax.devices()[0].platform} ({jax.devices()[0].device_kind}); batch "
          f"[{args.rows}, {args.vocab}] float32 Gaussian logits, per-row temperature in "
          f"[0.5, 4]; targets uniform in [0.1, 0.9] x log {args.vocab} = [{0.1 * log_n:.3f}, "
          f"{0.9 * log_n:.3f}] nats")

    normalize = jax.jit(lambda t, z: entropy_normalize(t, logits=z, tol=1e-6))
    start = time.perf_counter()
    result = jax.block_until_ready(normalize(targets, logits))
    first = time.perf_counter() - start
    newton_s = median_time(lambda: normalize(targets, logits), args.repeats)
    iterations = np.asarray(result.iterations)
    check = min(args.check_rows, args.rows)
    probs = np.asarray(result.probs[:check], np.float64)
    achieved = -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0),
                       axis=-1)
    error = np.abs(achieved - np.asarray(targets[:check], np.float64))
    print(f"newton (jit, tol 1e-6): {newton_s * 1e3:.1f} ms for {args.rows} rows "
          f"({newton_s / args.rows * 1e6:.1f} us/row; first call incl. compile "
          f"{first:.2f} s)")
    print(f"  iterations per row: mean {iterations.mean():.2f}, max {iterations.max()}; "
          f"rows at the cap: {int(np.sum(iterations >= 20))}")
    print(f"  achieved |H - H*| (float64 recomputation, {check} rows): max {error.max():.2e}, "
          f"mean {error.mean():.2e} nats; float32 self-reported max "
          f"{float(jnp.max(jnp.abs(result.entropy - targets))):.2e}")

    brentq_rows = min(args.brentq_rows, args.rows)
    logits64 = np.asarray(logits[:brentq_rows], np.float64)
    targets64 = np.asarray(targets[:brentq_rows], np.float64)
    start = time.perf_counter()
    exact = np.array([_brentq_exponent(z, t) for z, t in zip(logits64, targets64)])
    brentq_per_row = (time.perf_counter() - start) / brentq_rows
    brentq_s = brentq_per_row * args.rows
    mismatch = np.max(np.abs(np.asarray(result.exponent[:brentq_rows], np.float64) / exact - 1))
    print(f"brentq (scipy, float64, xtol 1e-12): {brentq_per_row * 1e3:.2f} ms/row measured on "
          f"{brentq_rows} rows, extrapolated to {args.rows} rows: {brentq_s:.2f} s")
    print(f"  max |exponent_newton / exponent_brentq - 1| on those rows: {mismatch:.2e}")
    print(f"speed ratio brentq / newton: {brentq_s / newton_s:.1f}x (target >= 100x)")


if __name__ == "__main__":
    main()
