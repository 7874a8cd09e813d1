"""Hubness grows with dimension: the k-occurrence table of Radovanović et al. (docs/hubness.md §4).

  python -m experiments.reproduce_hubness_skew [--n=10000] [--dims=3,20,100,512] [--ks=5,10]
      [--metrics=euclidean,cosine] [--distributions=uniform,normal] [--seeds=10] [--smoke]

For i.i.d. uniform [0, 1]^d and standard normal data, N points, each d, k and metric: the
distribution of N_k (self excluded, `udm.hubness.knn`): its mean (= k), skewness S_{N_k}, max,
the fractions N_k > 50 and N_k = 0, hub occurrence, Robin Hood and Gini indices, and its Pearson
correlation with the distance to the data mean and with the norm.

Data protocol (docs/hubness.md §4): the normal rows draw `rng = np.random.default_rng(0)` once,
then `X = rng.standard_normal((N, d))` for the dims in the order given (3, 20, 100, 512
reproduces the documented draws); the uniform rows do the same with `default_rng(1)` and
`rng.random`. The normal / k = 5 / Euclidean rows are printed beside the documented reference
numbers. One k-NN search with the largest k serves every k (the lists are sorted, ties to the
lower index, so their first k entries are the k-NN lists).

Seed spread (`--seeds=S`, 0 to skip): the normal / k = 5 / Euclidean rows again for seeds
1000 .. 1000 + S - 1, each (seed, d) with a fresh `default_rng(seed).standard_normal((N, d))`
(this protocol reproduces the documented spread exactly; one generator per seed drawing the dims in
order gives a different, equally valid sample), with the median and range of the skewness and
max and the mean correlation, beside the documented spread.

Writes a Markdown table to `--out` and the numbers to the same path with `.json`;
`--smoke` (N = 400, 2 seeds) writes `hubness_skew.md` / `.json` under `--workdir` instead.
"""
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags
from tqdm import tqdm

from experiments.common import write_json
from udm import hubness

_N = flags.DEFINE_integer("n", 10000, "Points per data set.")
_DIMS = flags.DEFINE_list("dims", ["3", "20", "100", "512"], "Dimensions, in drawing order.")
_KS = flags.DEFINE_list("ks", ["5", "10"], "Neighbourhood sizes k.")
_METRICS = flags.DEFINE_list("metrics", ["euclidean", "cosine"], "Distances.")
_DISTRIBUTIONS = flags.DEFINE_list("distributions", ["uniform", "normal"],
                                   "Data: uniform [0, 1]^d and/or standard normal.")
_SEEDS = flags.DEFINE_integer("seeds", 10, "Seeds 1000.. for the spread of the normal, k = 5, "
                              "Euclidean rows (0: skip).")
_BLOCK_SIZE = flags.DEFINE_integer("block_size", 1024, "Query rows per k-NN block.")
_THRESHOLD = flags.DEFINE_integer("threshold", 50, "Hub threshold of the column N_k > t.")
_OUT = flags.DEFINE_string("out", "experiments/results/hubness_skew.md",
                           "Markdown output; the JSON goes next to it.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/hubness_skew",
                               "Output directory of --smoke runs.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Seconds-long run: N = 400, 2 seeds, to --workdir.")

# docs/hubness.md §4 (N = 10000, k = 5, Euclidean, default_rng(0) drawn for d = 3, 20, 100, 512).
SPEC_TABLE = {
    3: dict(mean=5.0, skewness=0.12, max=12, frac_gt_threshold=0.0, frac_zero=0.002,
            corr_norm=-0.10),
    20: dict(mean=5.0, skewness=2.08, max=57, frac_gt_threshold=0.0001, frac_zero=0.156,
             corr_norm=-0.81),
    100: dict(mean=5.0, skewness=11.0, max=418, frac_gt_threshold=0.0130, frac_zero=0.383,
              corr_norm=-0.57),
    512: dict(mean=5.0, skewness=39.3, max=1686, frac_gt_threshold=0.0172, frac_zero=0.493,
              corr_norm=-0.39),
}
# docs/hubness.md §4, over default_rng(1000) .. default_rng(1009).
SPEC_SPREAD = {
    100: "median skew 9.5",
    512: "skew 9.8-23.2 (median 13.1), max 441-1025 (median 590), corr -0.52..-0.41 "
         "(mean -0.48)",
}
_SPREAD_SEED0 = 1000


def _draw(distribution: str, rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    if distribution == "normal":
        return rng.standard_normal((n, d))
    if distribution == "uniform":
        return rng.random((n, d))
    raise ValueError(f"unknown distribution {distribution!r}; valid: normal, uniform")


def _measure(x: np.ndarray, ks, metric: str, block_size: int, threshold: int) -> list:
    """Hubness measures of x for every k in ks from one k-NN search with max(ks)."""
    indices, _ = hubness.knn(x, max(ks), metric=metric, block_size=block_size)
    rows = []
    for k in ks:
        nk = hubness.k_occurrence(indices[:, :k], x.shape[0])
        rows.append(hubness.hubness_measures(nk, k, x, threshold=threshold))
    return rows


def _main_table(rows, threshold):
    head = (f"| data | metric | d | k | mean N_k | skewness | max N_k | frac N_k > {threshold} | "
            f"frac N_k = 0 | hub occ. | Robin Hood | Gini | corr(N_k, ‖x − x̄‖) | "
            f"corr(N_k, ‖x‖) |")
    lines = [head, "|" + " --- |" * 14]
    for r in rows:
        lines.append(
                f"| {r['distribution']} | {r['metric']} | {r['d']} | {r['k']} | "
                f"{r['mean']:.2f} | {r['skewness']:.2f} | {r['max']} | "
                f"{r['frac_gt_threshold']:.4f} | {r['frac_zero']:.3f} | "
                f"{r['hub_occurrence']:.3f} | {r['robin_hood']:.3f} | {r['gini']:.3f} | "
                f"{r['corr_dist_to_mean']:.2f} | {r['corr_norm']:.2f} |")
    return lines


def _spec_table(rows, threshold):
    lines = [f"| d | skewness (docs) | max N_k (docs) | frac N_k > {threshold} (docs) | "
             f"frac N_k = 0 (docs) | corr(N_k, ‖x‖) (docs) |", "|" + " --- |" * 6]
    for r in rows:
        s = SPEC_TABLE.get(r["d"])
        if s is None:
            continue
        lines.append(
                f"| {r['d']} | {r['skewness']:.2f} ({s['skewness']}) | {r['max']} ({s['max']}) | "
                f"{r['frac_gt_threshold']:.4f} ({s['frac_gt_threshold']:.4f}) | "
                f"{r['frac_zero']:.3f} ({s['frac_zero']}) | "
                f"{r['corr_norm']:.2f} ({s['corr_norm']:.2f}) |")
    return lines


def _spread(per_seed, dims):
    """Median / range over seeds of each d's measures."""
    out = []
    for d in dims:
        rs = [r for r in per_seed if r["d"] == d]
        skew = np.array([r["skewness"] for r in rs])
        mx = np.array([r["max"] for r in rs])
        corr = np.array([r["corr_norm"] for r in rs])
        gt = np.array([r["frac_gt_threshold"] for r in rs])
        zero = np.array([r["frac_zero"] for r in rs])
        out.append(dict(d=d, seeds=[r["seed"] for r in rs],
                        skew_median=float(np.median(skew)), skew_min=float(skew.min()),
                        skew_max=float(skew.max()), max_median=float(np.median(mx)),
                        max_min=int(mx.min()), max_max=int(mx.max()),
                        corr_mean=float(corr.mean()), corr_min=float(corr.min()),
                        corr_max=float(corr.max()), frac_gt_mean=float(gt.mean()),
                        frac_gt_rel_spread=float(np.ptp(gt) / 2 / max(gt.mean(), 1e-12)),
                        frac_zero_mean=float(zero.mean()),
                        frac_zero_rel_spread=float(np.ptp(zero) / 2 / max(zero.mean(), 1e-12))))
    return out


def _spread_table(spread, threshold):
    lines = ["| d | skew median [min, max] | max N_k median [min, max] | corr(N_k, ‖x‖) mean "
             f"[min, max] | frac N_k > {threshold} mean (± half-range) | frac N_k = 0 mean "
             "(± half-range) | spec |", "|" + " --- |" * 7]
    for s in spread:
        lines.append(
                f"| {s['d']} | {s['skew_median']:.2f} [{s['skew_min']:.2f}, {s['skew_max']:.2f}] | "
                f"{s['max_median']:.0f} [{s['max_min']}, {s['max_max']}] | "
                f"{s['corr_mean']:.2f} [{s['corr_min']:.2f}, {s['corr_max']:.2f}] | "
                f"{s['frac_gt_mean']:.4f} (± {100 * s['frac_gt_rel_spread']:.0f}%) | "
                f"{s['frac_zero_mean']:.3f} (± {100 * s['frac_zero_rel_spread']:.0f}%) | "
                f"{SPEC_SPREAD.get(s['d'], '')} |")
    return lines


def main(argv):
    del argv
    n, seeds = _N.value, _SEEDS.value
    if _SMOKE.value:
        n, seeds = 400, min(seeds, 2)
        os.makedirs(_WORKDIR.value, exist_ok=True)
        out = os.path.join(_WORKDIR.value, "hubness_skew.md")
    else:
        out = _OUT.value
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    dims = [int(d) for d in _DIMS.value]
    ks = [int(k) for k in _KS.value]
    threshold, block = _THRESHOLD.value, _BLOCK_SIZE.value
    start = time.time()

    # Each distribution's generator is created once and draws the dims in order (spec protocol).
    generator_seed = {"normal": 0, "uniform": 1}
    cells = [(dist, d) for dist in _DISTRIBUTIONS.value for d in dims]
    spread_cells = [(s, d) for s in range(_SPREAD_SEED0, _SPREAD_SEED0 + seeds) for d in dims]
    rows, per_seed = [], []
    rngs = {dist: np.random.default_rng(generator_seed[dist]) for dist in _DISTRIBUTIONS.value}
    with tqdm(total=len(cells) + len(spread_cells), desc="hubness cells") as bar:
        for dist, d in cells:
            x = _draw(dist, rngs[dist], n, d).astype(np.float32)
            for metric in _METRICS.value:
                for r in _measure(x, ks, metric, block, threshold):
                    rows.append(dict(distribution=dist, metric=metric, d=d, **r))
            bar.update()
        for seed, d in spread_cells:
            x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
            (r,) = _measure(x, [5], "euclidean", block, threshold)
            per_seed.append(dict(seed=seed, d=d, **r))
            bar.update()
    seconds = time.time() - start

    spec_rows = [r for r in rows
                 if r["distribution"] == "normal" and r["k"] == 5 and r["metric"] == "euclidean"]
    spread = _spread(per_seed, dims) if seeds else []
    device = f"{jax.device_count()} x {jax.devices()[0].platform}"
    command = " ".join(["python -m experiments.reproduce_hubness_skew", *sys.argv[1:]])
    lines = [
        "# Hubness of i.i.d. data: the k-occurrence N_k grows skewed with dimension (docs/hubness.md)",
        "",
        f"N = {n} points, N_k with self excluded (`udm.hubness.knn`, exact, float32, ties to the "
        f"lower index). Normal rows: `default_rng(0)` drawn once for d = "
        f"{', '.join(map(str, dims))} in order; uniform [0, 1]^d rows: `default_rng(1)` likewise. "
        f"hub occ. = share of the N k neighbour slots held by points with N_k >= 2k "
        f"(scikit-hubness); corr = Pearson correlation of N_k with the distance to the data "
        f"mean / with the norm.",
        "",
        *_main_table(rows, threshold),
        "",
        "## Normal, k = 5, Euclidean beside the documented reference (section 4; docs values in brackets)",
        "",
        *_spec_table(spec_rows, threshold),
    ]
    if spread:
        lines += [
            "",
            f"## Seed spread: normal, k = 5, Euclidean over default_rng({_SPREAD_SEED0}) .. "
            f"default_rng({_SPREAD_SEED0 + seeds - 1})",
            "",
            "A fresh `default_rng(seed)` per (seed, d).",
            "",
            *_spread_table(spread, threshold),
        ]
    lines += ["", f"Command: `{command}`", "",
              f"Run time: {seconds:.0f} s on {device}."]
    text = "\n".join(lines) + "\n"
    with open(out + ".tmp", "w") as f:
        f.write(text)
    os.replace(out + ".tmp", out)
    write_json(os.path.splitext(out)[0] + ".json", dict(
            config=dict(n=n, dims=dims, ks=ks, metrics=list(_METRICS.value),
                        distributions=list(_DISTRIBUTIONS.value), seeds=seeds,
                        threshold=threshold, block_size=block, command=command),
            rows=rows, spec_reference={str(d): v for d, v in SPEC_TABLE.items()},
            seed_spread=spread, per_seed=per_seed, seconds=seconds, device=device))
    print(text)
    print(f"Wrote {out} and {os.path.splitext(out)[0]}.json")


if __name__ == "__main__":
    app.run(main)
