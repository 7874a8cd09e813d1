"""k-occurrence N_k of N points: udm.hubness (jitted, blocked) against scikit-learn brute force.

  python -m experiments.bench_knn [--n=10000] [--d=512] [--k=5] [--block_size=1024]
      [--repeats=3] [--smoke]

Both compute the exact k-NN lists of N standard normal points in d dimensions (Euclidean,
self excluded) and their k-occurrence N_k (docs/hubness.md H1):

* udm: `udm.hubness.knn` (query blocks of `block_size` rows under `jax.lax.map`) then
  `k_occurrence` (scatter-add);
* sklearn: `NearestNeighbors(algorithm="brute", n_neighbors=k + 1).fit(X).kneighbors(X)`, the
  point itself dropped from its list (or the last entry, if a tie pushed it out), then
  `np.bincount`.

Printed: the first udm call (compile + run) apart, the median wall time of each over `repeats`,
the ratio sklearn / udm, the peak memory of each, and how many N_k and neighbour lists differ
(float32 rounding can reorder near-ties; the distances at such rows are compared too).

Memory: the resident set size (RSS) of this process is sampled every 2 ms with psutil during one
call of each, and its peak minus the RSS just before the call is reported (both methods, same
measure); for sklearn also the tracemalloc peak (numpy / Python allocations only, not native
buffers). Allocators keep freed memory, so a later call's RSS delta can be smaller than its
working set: sklearn is measured on its first call (its warm-up is the memory run), udm on its
first call (which includes compilation) and on a second, steady-state call.
"""
import threading
import time
import tracemalloc

import jax
import numpy as np
import psutil
from absl import app, flags
from sklearn.neighbors import NearestNeighbors

from udm import hubness

_N = flags.DEFINE_integer("n", 10000, "Points.")
_D = flags.DEFINE_integer("d", 512, "Dimension.")
_K = flags.DEFINE_integer("k", 5, "Neighbours per point.")
_BLOCK_SIZE = flags.DEFINE_integer("block_size", 1024, "udm query rows per block.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (the median is reported).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Seconds-long run: n = 1000, d = 64, 1 repeat.")

_MiB = 2 ** 20


class PeakRSS:
    """Context manager: peak RSS of this process above its value at entry (sampled, bytes)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self._process = psutil.Process()

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self.start = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        self.delta = self.peak - self.start


def _udm(x, k, block_size):
    indices, distances = hubness.knn(x, k, block_size=block_size)
    nk = hubness.k_occurrence(indices, x.shape[0])
    return jax.block_until_ready((indices, distances, nk))


def _sklearn(x, k):
    nn = NearestNeighbors(algorithm="brute", n_neighbors=k + 1).fit(x)
    distances, indices = nn.kneighbors(x)
    n = x.shape[0]
    is_self = indices == np.arange(n)[:, None]
    # Drop the point itself; if a tie pushed it out of the k + 1, drop the farthest instead.
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones_like(indices, dtype=bool)
    keep[np.arange(n), drop] = False
    indices = indices[keep].reshape(n, k)
    distances = distances[keep].reshape(n, k)
    return indices, distances, np.bincount(indices.ravel(), minlength=n)


def _timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def main(argv):
    del argv
    n, d, k, repeats = _N.value, _D.value, _K.value, _REPEATS.value
    if _SMOKE.value:
        n, d, repeats = 1000, 64, 1
    block = _BLOCK_SIZE.value
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)

    with PeakRSS() as udm_first_mem:
        start = time.perf_counter()
        _udm(x, k, block)
        first = time.perf_counter() - start
    with PeakRSS() as udm_mem:
        _udm(x, k, block)
    udm_time, (idx, dist, nk) = _timed(lambda: _udm(x, k, block), repeats)
    idx, dist, nk = (np.asarray(a) for a in (idx, dist, nk))

    # sklearn's memory on its first call: later calls reuse memory the allocator kept.
    tracemalloc.start()
    with PeakRSS() as sk_mem:
        _sklearn(x, k)
    _, sk_traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sk_time, (sk_idx, sk_dist, sk_nk) = _timed(lambda: _sklearn(x, k), repeats)

    nk_mismatch = int(np.sum(nk != sk_nk))
    row_mismatch = np.any(np.sort(idx, axis=1) != np.sort(sk_idx, axis=1), axis=1)
    dist_gap = float(np.max(np.abs(dist - sk_dist)))
    kth_gap = (float(np.max(np.abs(dist[row_mismatch, -1] - sk_dist[row_mismatch, -1])))
               if row_mismatch.any() else 0.0)
    print(f"k-occurrence of N = {n} standard normal points, d = {d}, k = {k} (Euclidean, self "
          f"excluded), {jax.devices()[0].platform}, udm block_size = {block}:")
    print(f"  | method | wall s (median of {repeats}) | ratio to udm | peak RSS delta MiB "
          f"(psutil, sampled) | tracemalloc peak MiB |")
    print("  | --- | --- | --- | --- | --- |")
    print(f"  | udm.hubness (jit) | {udm_time:.3f} | 1.00 | {udm_mem.delta / _MiB:.1f} "
          f"(first call: {udm_first_mem.delta / _MiB:.1f}) | n/a (XLA buffers are untraced) |")
    print(f"  | sklearn brute | {sk_time:.3f} | {sk_time / udm_time:.2f} | "
          f"{sk_mem.delta / _MiB:.1f} (first call) | {sk_traced / _MiB:.1f} (first call) |")
    print(f"  udm first call (compile + run): {first:.3f} s")
    print(f"  speed ratio sklearn / udm: {sk_time / udm_time:.2f}x")
    print(f"  udm working set, theory: a [{min(block, n)}, {n}] float32 distance block = "
          f"{min(block, n) * n * 4 / _MiB:.1f} MiB per live copy")
    print(f"  N_k mismatches: {nk_mismatch} of {n} points; neighbour sets differing: "
          f"{int(row_mismatch.sum())} rows; max |distance difference|: {dist_gap:.2e}; at the "
          f"differing rows, max |k-th distance difference|: {kth_gap:.2e} (near-ties)")
    print(f"  sum N_k: udm {int(nk.sum())}, sklearn {int(sk_nk.sum())} (N k = {n * k})")


if __name__ == "__main__":
    app.run(main)
