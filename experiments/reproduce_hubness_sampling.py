"""The hubness prior for deterministic diffusion samplers, and hubness of real digit embeddings.

docs/hubness.md §3 (kexue.fm/archives/9147; Liang et al., ICML 2022, arXiv 2206.06014): latents
with a large k-occurrence N_k are said to give better samples. udm has two deterministic
generators that map Gaussian noise z in R^64 to an 8x8 digit:

* DDIM (eta = 0, K = 50 steps) on the discrete Gaussian model of configs/ddpm_digits.py
  (workdir/ddpm_digits), and
* the probability-flow ODE (fixed-step Heun, 50 steps, 101 NFE) on the VP SDE model of
  configs/sde_digits.py:vp (workdir/sde_table/vp, the model of reproduce_sde_table.py).

For each generator, sets of n initial noises (same n for every row):

* random      z ~ N(0, I), repeated with several seeds to measure the noise of every score;
* hub         `hubness.hub_select` in z space, the post's settings: pools of 10000, k = 5,
              N_k > 50 (strict, self excluded); pools are drawn until n pass;
* hub (paper) the paper's variant: N_k >= t counted in a mapped space, here the generator's
              output: every latent of one pool is generated and N_k is counted in the digits
              classifier's penultimate features (our analogue of StyleGAN's W space), self
              included as in the paper's kneighbors_graph; t = 50 when n pass, else the n-th
              largest N_k of the pool (reported);
* truncated   `hubness.truncated_normal_matched`: z ~ N(0, I) conditioned on ||z|| <= r with
              r chosen so the mean norm equals the hub set's (the truncation trick at a
              matched mean norm);
* antihub     z with N_k = 0 in the same z-space pools (a contrast).

The samplers are deterministic, so the noise keys (the same for every row) do not matter.
Scores per row (udm.pipeline.evaluate.score): FD-digits against the held-out digits, classifier
confidence (mean max probability) and predicted-class entropy, class-histogram entropy and
largest class fraction (diversity), mean distance to the nearest training image and the
memorised fraction, and the filter's pass rate. The reference row: FD of n real training
digits per seed, the other columns of the held-out digits. Means over seeds, FD as mean ± sd.

Second table: hubness of real embeddings, the classifier's penultimate features of all digits
(train + test), k = 5 and 10, Euclidean and cosine, before and after each reduction of
`hubness.REDUCTIONS` (`hubness.reduce_and_report`).

  python -m experiments.reproduce_hubness_sampling --workdir=workdir
  python -m experiments.reproduce_hubness_sampling --smoke --workdir=/tmp/hub   # seconds

Models are trained by `udm.pipeline.train.train` if their checkpoints are missing (restored otherwise).
Each finished generator's rows are kept in <workdir>/hubness_sampling/<generator>.json and the
paper pool's features in <generator>_paper_pool.npz, so an interrupted run resumes. Writes
experiments/results/hubness_sampling.{md,json,png} (or into --workdir with --smoke).
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import app, flags, logging
from tqdm.auto import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from configs import ddpm_digits, sde_digits  # noqa: E402
from experiments.common import write_json  # noqa: E402
from udm import hubness, metrics, parallel  # noqa: E402
from udm.pipeline import evaluate as eval_lib  # noqa: E402
from udm.pipeline.classifier import load_or_train_classifier  # noqa: E402
from udm.pipeline import spec as spec_lib  # noqa: E402
from udm.pipeline import train  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Parent of the model workdirs "
                               "(ddpm_digits/, sde_table/vp/) and of hubness_sampling/.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Smoke configs, tiny pools: checks the script runs; "
                           "everything goes into --workdir.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 500, "Initial noises (samples) per row.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds of the random / hub / truncated / antihub rows.")
_POOL = flags.DEFINE_integer("pool_size", 10000, "Pool size of the z-space hub filter.")
_K = flags.DEFINE_integer("k", 5, "Neighbourhood size of both filters.")
_THRESHOLD = flags.DEFINE_integer("threshold", 50, "z-space filter: keep N_k > threshold.")
_PAPER_POOL = flags.DEFINE_integer("paper_pool_size", 10000,
                                   "Pool of the paper variant (every latent is generated).")
_PAPER_THRESHOLD = flags.DEFINE_integer("paper_threshold", 50,
                                        "Paper variant: keep N_k >= threshold (if n pass).")
_MAX_POOLS = flags.DEFINE_integer("max_pools", 100, "Most z-space pools per seed.")
_DDIM_STEPS = flags.DEFINE_integer("ddim_steps", 50, "K of DDIM (eta = 0).")
_HEUN_STEPS = flags.DEFINE_integer("heun_steps", 50, "Steps of the probability-flow Heun ODE.")
_GENERATORS = flags.DEFINE_list("generators", ["ddim", "ode"], "ddim and/or ode.")
_OUT = flags.DEFINE_string("out", "experiments/results/hubness_sampling",
                           "Output prefix (.md, .json, .png).")

DIM = 64  # 8 x 8 x 1 digits: the noise z lives in R^64
GRID = 16  # samples per row of the PNG
METHODS = ("random", "hub", "hub (paper)", "truncated", "antihub")


def _smoke() -> bool:
    return _SMOKE.value


def _settings() -> dict:
    """Sizes of this run (the smoke run shrinks every one of them)."""
    if _smoke():
        return dict(n=32, seeds=2, pool=500, threshold=10, paper_pool=128, paper_threshold=50,
                    ddim_steps=5, heun_steps=2, batch=32, real_points=200, ks=(5,))
    return dict(n=_NUM_SAMPLES.value, seeds=_SEEDS.value, pool=_POOL.value,
                threshold=_THRESHOLD.value, paper_pool=_PAPER_POOL.value,
                paper_threshold=_PAPER_THRESHOLD.value, ddim_steps=_DDIM_STEPS.value,
                heun_steps=_HEUN_STEPS.value, batch=512, real_points=None, ks=(5, 10))


# --- the two generators ----------------------------------------------------------------------

def _generator_spec(name: str):
    variant = "smoke" if _smoke() else ""
    if name == "ddim":
        config = ddpm_digits.get_config(variant)
        config.sampler.eta = 0.0
        workdir = os.path.join(_WORKDIR.value, "ddpm_digits")
    elif name == "ode":
        # What reproduce_sde_table.py builds for "vp", so train.train restores its checkpoint.
        config = sde_digits.get_config("vp" + (",smoke" if _smoke() else ""))
        config.sampler.rtol = config.sampler.atol = 1e-5
        workdir = os.path.join(_WORKDIR.value, "sde_table", "vp")
    else:
        raise ValueError(f"unknown generator {name!r}; valid: ddim, ode")
    config.eval.enabled = False
    return spec_lib.from_config(config), workdir


class Generator:
    """A trained model and its deterministic sampler: z [M, 64] ~ N(0, I) -> images [M, 8, 8, 1]."""

    def __init__(self, name: str, settings: dict):
        self.name = name
        spec, workdir = self.spec, self.workdir = _generator_spec(name)
        self.exp = exp = train.build(spec)
        self.params = train.train(spec, workdir, experiment=exp).ema_params
        _, eval_apply = train.make_apply_fns(exp.model)
        if name == "ddim":
            sampler, steps = "ddim", settings["ddim_steps"]
            self.label = f"DDIM (eta=0, K={steps}), ddpm_digits"
        else:
            sampler, steps = "ode_heun", settings["heun_steps"]
            self.label = f"probability-flow ODE (Heun, {steps} steps), VP SDE"
        self.sample_fn = eval_lib.make_eval_sampler(spec, exp.process, eval_apply, sampler,
                                                    steps)
        # x_T = prior_std z: the discrete process's prior is N(0, I), the VP SDE's N(0, s^2 I).
        self.scale = float(getattr(exp.process, "prior_std", 1.0))
        self.batch = settings["batch"]
        _, self.noise_key = jax.random.split(exp.sample_key)

    def __call__(self, z: np.ndarray, desc: str = "") -> np.ndarray:
        """Images [M, 8, 8, 1] of the latents z [M, 64], in batches (the last one padded)."""
        z = np.asarray(z, np.float32)
        m = len(z)
        padded = -(-m // self.batch) * self.batch
        x_T = (self.scale * np.concatenate([z, z[:padded - m]] if padded > m else [z])
               ).reshape(padded, *self.exp.dataset.image_shape)
        out = []
        batches = range(padded // self.batch)
        for i in tqdm(batches, desc=f"{self.name}: {desc}", unit="batch", leave=False,
                      disable=len(batches) < 4):
            chunk = parallel.shard_batch(x_T[i * self.batch:(i + 1) * self.batch], self.exp.mesh)
            images, _ = eval_lib.generate(self.sample_fn, self.params, [chunk],
                                          num_samples=self.batch,
                                          key=jax.random.fold_in(self.noise_key, i))
            out.append(images)
        return np.concatenate(out)[:m]


# --- the noise sets --------------------------------------------------------------------------

def z_space_sets(settings: dict, seed: int) -> dict:
    """random, hub, antihub and truncated noise sets of one seed (generator-independent)."""
    n, pool_size, k, t = settings["n"], settings["pool"], _K.value, settings["threshold"]
    key = jax.random.fold_in(jax.random.key(1234), seed)
    random_key, pool_key, trunc_key = jax.random.split(key, 3)
    sets = {"random": dict(z=np.asarray(jax.random.normal(random_key, (n, DIM))),
                           pass_rate=None)}
    hubs, antihubs, drawn = [], [], 0
    bar = tqdm(total=n, desc=f"seed {seed}: z-space hubs (N_k > {t})", unit="z", leave=False)
    while sum(len(h) for h in hubs) < n or sum(len(a) for a in antihubs) < n:
        if drawn // pool_size >= _MAX_POOLS.value:
            raise RuntimeError(f"fewer than {n} latents with N_k > {t} in {_MAX_POOLS.value} "
                               f"pools of {pool_size}: raise --max_pools or lower --threshold")
        pool = jax.random.normal(jax.random.fold_in(pool_key, drawn // pool_size),
                                 (pool_size, DIM))
        drawn += pool_size
        selection = hubness.hub_select(pool=pool, k=k, threshold=t, strict=True)
        hubs.append(np.asarray(selection.latents))
        nk = np.asarray(hubness.k_occurrence_of(pool, k))
        antihubs.append(np.asarray(pool)[nk == 0])
        bar.update(min(len(hubs[-1]), n - bar.n))
    bar.close()
    hub_all, anti_all = np.concatenate(hubs), np.concatenate(antihubs)
    # Pass rates over the pools drawn until *both* sets were full.
    sets["hub"] = dict(z=hub_all[:n], pass_rate=len(hub_all) / drawn, pools=drawn // pool_size)
    sets["antihub"] = dict(z=anti_all[:n], pass_rate=len(anti_all) / drawn,
                           pools=drawn // pool_size)
    hub_norm = float(np.linalg.norm(sets["hub"]["z"], axis=1).mean())
    sets["truncated"] = dict(
            z=np.asarray(hubness.truncated_normal_matched(n, DIM, hub_norm, key=trunc_key)),
            pass_rate=None, radius=hubness.truncation_radius(DIM, hub_norm))
    return sets


def paper_set(gen: Generator, classifier, settings: dict, cache_dir: str) -> dict:
    """The paper's variant: N_k >= t of the generated images' classifier features (one pool).

    The pool's latents, features and N_k are cached in cache_dir (generating the pool is the
    costly part of the whole run).
    """
    n, size, k, t = settings["n"], settings["paper_pool"], _K.value, settings["paper_threshold"]
    path = os.path.join(cache_dir, f"{gen.name}_paper_pool.npz")
    if os.path.exists(path):
        cached = np.load(path)
        pool, features, seconds = cached["z"], cached["features"], float(cached["seconds"])
    else:
        pool = np.asarray(jax.random.normal(jax.random.key(4321), (size, DIM)))
        start = time.perf_counter()
        features = classifier.features(gen(pool, desc=f"paper pool of {size}"))
        seconds = time.perf_counter() - start
        np.savez(path + ".tmp.npz", z=pool, features=features, seconds=seconds)
        os.replace(path + ".tmp.npz", path)
    nk = np.asarray(hubness.k_occurrence_of(features, k, include_self=True))
    passed_at_t = int(np.sum(nk >= t))
    # Too few pass the paper's t in this space: lower t to the n-th largest N_k of the pool.
    used_t = t if passed_at_t >= n else int(np.sort(nk)[::-1][n - 1])
    selection = hubness.hub_select(pool=pool, map_fn=lambda _: features, k=k,
                                   threshold=used_t, strict=False, include_self=True,
                                   num_wanted=n)
    return dict(z=np.asarray(selection.latents), pass_rate=int(np.sum(nk >= used_t)) / size,
                paper_pass_rate=passed_at_t / size, paper_threshold=t, threshold=used_t,
                pool=size, pool_seconds=seconds, nk_max=int(nk.max()),
                nk_skewness=float(hubness.skewness(jnp.asarray(nk))),
                corr_nk_norm=float(np.corrcoef(nk, np.linalg.norm(pool, axis=1))[0, 1]))


# --- scores ----------------------------------------------------------------------------------

def score_images(images, classifier, reference, dataset) -> dict:
    scores = eval_lib.score(images, classifier, reference, dataset.train_images,
                            dataset.test_images)
    scores["confidence"] = float(np.mean(np.max(classifier.probs(images), axis=1)))
    return scores


_SCORE_KEYS = ("fd", "confidence", "class_entropy", "histogram_entropy", "max_class_fraction",
               "nn_train_distance", "memorised_fraction")


def summarise(method: str, per_seed: list, extra: dict) -> dict:
    """One table row: the mean of each score over seeds, and the FD's spread."""
    row = dict(method=method, seeds=len(per_seed), **extra)
    for key in _SCORE_KEYS + ("mean_norm",):
        row[key] = float(np.mean([s[key] for s in per_seed]))
    fds = np.array([s["fd"] for s in per_seed])
    row["fd_sd"] = float(fds.std(ddof=1)) if len(fds) > 1 else None
    row["fd_per_seed"] = [float(f) for f in fds]
    rates = [s["pass_rate"] for s in per_seed if s.get("pass_rate") is not None]
    row["pass_rate"] = float(np.mean(rates)) if rates else None
    return row


def run_generator(name: str, settings: dict, noise_sets: list, classifier, reference,
                  cache_dir: str) -> dict:
    """Rows of one generator (read back from cache_dir/<name>.json when already done)."""
    path = os.path.join(cache_dir, f"{name}.json")
    if os.path.exists(path):
        print(f"{name}: rows already computed, read from {path}")
        return json.load(open(path))
    gen = Generator(name, settings)
    dataset = gen.exp.dataset
    per_method, grids = {m: [] for m in METHODS}, {}
    start = time.perf_counter()
    paper = paper_set(gen, classifier, settings, cache_dir)
    paper_seconds = time.perf_counter() - start
    todo = [(m, s) for s in range(len(noise_sets)) for m in ("random", "hub", "truncated",
                                                               "antihub")]
    todo.append(("hub (paper)", 0))
    for method, seed in tqdm(todo, desc=f"{name}: rows", unit="row"):
        noise = paper if method == "hub (paper)" else noise_sets[seed][method]
        t0 = time.perf_counter()
        images = gen(noise["z"], desc=method)
        scores = score_images(images, classifier, reference, dataset)
        scores.update(seed=seed, pass_rate=noise.get("pass_rate"),
                      mean_norm=float(np.linalg.norm(noise["z"], axis=1).mean()),
                      seconds=time.perf_counter() - t0)
        per_method[method].append(scores)
        if seed == 0:
            grids[method] = images[:GRID].tolist()
    rows = []
    for method in METHODS:
        extra = {}
        if method == "hub (paper)":
            extra = {k: v for k, v in paper.items() if k != "z"}
            extra["seconds_incl_pool"] = paper_seconds
        elif method in ("hub", "antihub"):
            extra = dict(pools_per_seed=[s[method]["pools"] for s in noise_sets],
                         threshold=settings["threshold"] if method == "hub" else 0)
        elif method == "truncated":
            extra = dict(radius_per_seed=[s[method]["radius"] for s in noise_sets])
        rows.append(summarise(method, per_method[method], extra))
    result = dict(generator=name, label=gen.label, num_samples=settings["n"],
                  seconds=time.perf_counter() - start,
                  train_steps=gen.spec.train.num_steps, rows=rows,
                  per_seed={m: per_method[m] for m in METHODS}, grids=grids)
    write_json(path, result)
    return result


def real_rows(dataset, classifier, reference, settings: dict) -> dict:
    """The reference row, what a perfect model would score (as in udm.pipeline.evaluate.evaluate).

    FD of n real training digits against the held-out set, one draw per seed; the other columns
    describe the held-out digits themselves (training digits are at distance 0 from the
    training set).
    """
    held_out = score_images(dataset.test_images, classifier, reference, dataset)
    per_seed = []
    for seed in range(settings["seeds"]):
        rng = np.random.default_rng(seed)
        real = dataset.train_images[rng.choice(len(dataset.train_images), settings["n"],
                                               replace=False)]
        fd = float(metrics.frechet_distance(classifier.features(real), reference))
        per_seed.append(dict(held_out, fd=fd, mean_norm=float("nan"), pass_rate=None))
    row = summarise("real digits", per_seed, {})
    row["mean_norm"] = None
    return row


# --- hubness of real embeddings --------------------------------------------------------------

def embedding_hubness(features: np.ndarray, ks) -> list:
    """reduce_and_report for each k, both metrics, every reduction that accepts the metric."""
    rows = []
    combos = [(k, metric, method) for k in ks for metric in hubness.METRICS
              for method in sorted(hubness.REDUCTIONS.names(), key=lambda m: m != "none")
              if not (metric == "euclidean" and method in ("csls", "centering"))]
    for k, metric, method in tqdm(combos, desc="real embeddings: reductions", unit="graph"):
        t0 = time.perf_counter()
        report = hubness.reduce_and_report(features, k, method, metric=metric)
        rows.append(dict(report, metric=metric, seconds=time.perf_counter() - t0))
    return rows


# --- outputs ---------------------------------------------------------------------------------

def _fmt(value, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else \
        fmt.format(value)


def _row_label(row: dict) -> str:
    m = row["method"]
    if m == "hub":
        return f"hub (z space, N_k > {row['threshold']})"
    if m == "hub (paper)":
        return (f"hub (paper: N_k ≥ {row['threshold']} in output-feature space, self incl.)")
    if m == "truncated":
        return "truncated (matched mean ‖z‖)"
    if m == "antihub":
        return "antihub (z space, N_k = 0)"
    return m


def sampling_table(results: list, real: dict) -> list:
    head = ("| generator | noise set | seeds | mean ‖z‖ | pass rate | FD-digits ↓ (mean ± sd) | "
            "FD per seed | confidence ↑ | class entropy (nats) ↓ | class-histogram entropy "
            "(max 2.303) | largest class fraction | mean NN distance to train | memorised "
            "fraction |")
    lines = [head, "|" + "---|" * 13]

    def line(gen_label, row):
        fd = _fmt(row["fd"], "{:.2f}") + (f" ± {row['fd_sd']:.2f}" if row.get("fd_sd") else "")
        per_seed = ", ".join(f"{f:.2f}" for f in row["fd_per_seed"])
        return (f"| {gen_label} | {_row_label(row)} | {row['seeds']} | "
                f"{_fmt(row['mean_norm'], '{:.2f}')} | {_fmt(row['pass_rate'], '{:.4f}')} | "
                f"{fd} | {per_seed} | {row['confidence']:.3f} | {row['class_entropy']:.3f} | "
                f"{row['histogram_entropy']:.3f} | {row['max_class_fraction']:.3f} | "
                f"{row['nn_train_distance']:.3f} | {row['memorised_fraction']:.3f} |")

    lines.append(line("–", real))
    for res in results:
        for row in res["rows"]:
            lines.append(line(res["generator"], row))
    return lines


def embedding_table(rows: list) -> list:
    lines = ["| k | metric | reduction | skewness S_{N_k} | antihub occurrence (N_k = 0) | "
             "hub occurrence (N_k ≥ 2k) | Robin Hood | max N_k |", "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['k']} | {r['metric']} | {r['method']} | {r['skewness']:.2f} | "
                     f"{r['frac_zero']:.3f} | {r['hub_occurrence']:.3f} | "
                     f"{r['robin_hood']:.3f} | {r['max']} |")
    return lines


def findings(results: list, real: dict) -> list:
    """Sentences computed from the numbers: each filter's FD against random, in noise units."""
    out = []
    for res in results:
        rows = {r["method"]: r for r in res["rows"]}
        rnd = rows["random"]
        # The noise of one n-sample FD: the seed-to-seed sd pooled over every multi-seed row
        # (each row's own mean differs, its spread estimates the same sampling noise).
        variances = [np.var(r["fd_per_seed"], ddof=1) for r in rows.values() if r["seeds"] > 1]
        noise = float(np.sqrt(np.mean(variances))) if variances else float("nan")
        parts = []
        for m in ("hub", "hub (paper)", "truncated", "antihub"):
            r = rows[m]
            delta = r["fd"] - rnd["fd"]
            se = noise * np.sqrt(1.0 / r["seeds"] + 1.0 / rnd["seeds"])
            parts.append(f"{m} {r['fd']:.2f} (Δ {delta:+.2f}, {delta / se:+.1f} SE)")
        out.append(f"* **{res['generator']}** ({res['label']}): FD of random noise "
                   f"{rnd['fd']:.2f} (seeds: {', '.join(f'{f:.2f}' for f in rnd['fd_per_seed'])}"
                   f"); pooled seed-to-seed sd of one FD {noise:.2f}; Δ to random in standard "
                   f"errors of the difference of the two means: " + "; ".join(parts)
                   + f". Class-histogram entropy random {rnd['histogram_entropy']:.3f}, hub "
                   f"{rows['hub']['histogram_entropy']:.3f}, hub (paper) "
                   f"{rows['hub (paper)']['histogram_entropy']:.3f}, truncated "
                   f"{rows['truncated']['histogram_entropy']:.3f}; confidence random "
                   f"{rnd['confidence']:.3f}, hub {rows['hub']['confidence']:.3f}, hub (paper) "
                   f"{rows['hub (paper)']['confidence']:.3f}, truncated "
                   f"{rows['truncated']['confidence']:.3f}.")
        out.append("  " + _verdict(rows, noise))
    return out


def _verdict(rows: dict, noise: float) -> str:
    """Plain words for the comparisons docs/hubness.md asks about (docs/hubness.md §6), |z| > 2 SE."""
    def compare(a: str, b: str) -> tuple:
        ra, rb = rows[a], rows[b]
        delta = ra["fd"] - rb["fd"]
        z = delta / (noise * np.sqrt(1.0 / ra["seeds"] + 1.0 / rb["seeds"]))
        words = ("within the noise" if abs(z) <= 2 else
                 "worse (higher FD)" if z > 0 else "better (lower FD)")
        return f"{words}: Δ FD {delta:+.2f} = {z:+.1f} SE", z

    hub_vs_random, z_hub = compare("hub", "random")
    paper_vs_random, z_paper = compare("hub (paper)", "random")
    hub_vs_trunc, _ = compare("hub", "truncated")
    hub, rnd = rows["hub"], rows["random"]
    found = ("The hubness prior does not improve FD here." if z_hub > -2 and z_paper > -2
             else "A hub filter improves FD here.")
    return (f"Verdict: {found} Hub vs random {hub_vs_random}; hub (paper) vs random "
            f"{paper_vs_random}; hub vs truncated at matched mean norm {hub_vs_trunc}. Hub "
            f"noise raises classifier confidence ({rnd['confidence']:.3f} → "
            f"{hub['confidence']:.3f}) and brings samples nearer the training set (mean NN "
            f"distance {rnd['nn_train_distance']:.3f} → {hub['nn_train_distance']:.3f}; "
            f"memorised fraction {rnd['memorised_fraction']:.3f} → "
            f"{hub['memorised_fraction']:.3f}).")


def write_png(results: list, path: str) -> None:
    """One strip of GRID samples per noise set (rows) and generator (columns)."""
    fig, axes = plt.subplots(len(METHODS), len(results), squeeze=False,
                             figsize=(7.5 * len(results), 1.0 * len(METHODS) + 0.8))
    for col, res in enumerate(results):
        rows = {r["method"]: r for r in res["rows"]}
        for i, method in enumerate(METHODS):
            ax = axes[i, col]
            ax.imshow(metrics.image_grid(np.asarray(res["grids"][method]), ncols=GRID),
                      interpolation="nearest")
            r = rows[method]
            ax.set_title(f"{_row_label(r)}: mean ‖z‖ {r['mean_norm']:.2f}, FD {r['fd']:.1f}",
                         fontsize=8)
            ax.axis("off")
        axes[0, col].text(0.5, 1.6, res["label"], transform=axes[0, col].transAxes,
                          ha="center", fontsize=10, weight="bold")
    fig.suptitle("Initial noise chosen by the hubness prior vs random, truncated and antihub: "
                 f"the first {GRID} samples of seed 0 (FD: mean over seeds)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _generator_seconds(result: dict) -> float:
    """Sampling and scoring time of one generator when its rows were computed."""
    if "seconds" in result:
        return result["seconds"]
    paper = next(r for r in result["rows"] if r["method"] == "hub (paper)")
    return paper["pool_seconds"] + sum(s["seconds"] for rows in result["per_seed"].values()
                                       for s in rows)


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    settings = _settings()
    start = time.perf_counter()
    cache_dir = os.path.join(_WORKDIR.value, "hubness_sampling")
    os.makedirs(cache_dir, exist_ok=True)
    # One classifier for every score: the FD-digits classifier of ddpm_digits.
    spec, ddpm_workdir = _generator_spec("ddim")
    dataset = train.build(spec).dataset
    classifier = load_or_train_classifier(
        os.path.join(ddpm_workdir, "classifier"), dataset, seed=spec.seed,
        num_steps=spec.eval.classifier_steps)
    reference = classifier.features(dataset.test_images)
    settings["n"] = min(settings["n"], len(dataset.train_images))

    noise_sets = [z_space_sets(settings, seed) for seed in
                  tqdm(range(settings["seeds"]), desc="noise sets", unit="seed")]
    resumed = [name for name in _GENERATORS.value
               if os.path.exists(os.path.join(cache_dir, f"{name}.json"))]
    results = [run_generator(name, settings, noise_sets, classifier, reference, cache_dir)
               for name in _GENERATORS.value]
    real = real_rows(dataset, classifier, reference, settings)

    images = np.concatenate([dataset.train_images, dataset.test_images])
    if settings["real_points"]:
        images = images[:settings["real_points"]]
    features = classifier.features(images)
    embed_rows = embedding_hubness(features, settings["ks"])
    seconds = time.perf_counter() - start

    n = settings["n"]
    hub_rates = [s["hub"]["pass_rate"] for s in noise_sets]
    header = [
        f"# Hubness-prior sampling of the digits diffusion models (docs/hubness.md §3)",
        "",
        f"n = {n} initial noises z ∈ R^64 per row and seed; scores of the generated digits "
        f"against the {len(dataset.test_images)} held-out digits with the FD-digits classifier "
        f"(held-out accuracy {classifier.test_accuracy:.4f}). Rows are means over seeds; FD is "
        f"mean ± sd over seeds (the sd of the random row is the noise level of a {n}-sample FD). "
        f"z-space hub filter: pools of {settings['pool']}, k = {_K.value}, N_k > "
        f"{settings['threshold']} (strict, self excluded): pass rate "
        f"{np.mean(hub_rates):.4f} per pool in 64 dimensions. Paper variant: one pool of "
        f"{settings['paper_pool']} latents generated, N_k (k = {_K.value}, self included) of "
        f"their classifier features; the real row is {n} training digits per seed (FD of real "
        f"data at this n). Compute: "
        + "; ".join(f"{r['generator']} {_generator_seconds(r):.0f} s (paper pool "
                    f"{next(x for x in r['rows'] if x['method'] == 'hub (paper)')['pool_seconds']:.0f} s)"
                    for r in results)
        + f"; this invocation {seconds:.0f} s"
        + (f" (rows of {', '.join(resumed)} read back from {cache_dir})" if resumed else "")
        + ".",
        "",
        "## What was found",
        "",
        *findings(results, real),
    ]
    for res in results:
        p = next(r for r in res["rows"] if r["method"] == "hub (paper)")
        header.append(
            f"* {res['generator']}, paper variant: in the output-feature space N_k ≥ "
            f"{p['paper_threshold']} was reached by {p['paper_pass_rate']:.4f} of the pool "
            f"(max N_k = {p['nk_max']}, skewness {p['nk_skewness']:.2f}), so the threshold "
            f"used is {p['threshold']} (pass rate {p['pass_rate']:.4f}); corr(N_k in feature "
            f"space, ‖z‖) = {p['corr_nk_norm']:+.3f}; pool generation {p['pool_seconds']:.0f} s.")
    header.append(
        "* Caveats: the paper counts N_k in StyleGAN's W = mapping(z), which costs nothing "
        "before synthesis; here the mapped space is the generated digit's classifier features, "
        "so the paper row selects *after* generating (closer to a-posteriori cherry-picking), "
        "from one pool and one seed, with a lowered threshold when few reach the paper's. FD is "
        "measured against only the held-out digits; the real-digits row shows the floor of an "
        "n-sample FD and its own spread over seeds.")
    lines = header + ["", "## Samples from each noise set", ""] + sampling_table(results, real)
    emb_n = len(features)
    lines += ["", f"## Hubness of real embeddings: classifier penultimate features "
              f"({features.shape[1]}-d) of {emb_n} digits (train + test), before and after each "
              f"reduction of `udm.hubness.REDUCTIONS`", "",
              "antihub occurrence = fraction with N_k = 0; hub occurrence = share of k-NN "
              "slots taken by points with N_k ≥ 2k (scikit-hubness); csls and centering are "
              "cosine-only.", ""] + embedding_table(embed_rows)
    md = "\n".join(lines) + "\n"
    out = os.path.join(_WORKDIR.value, "hubness_sampling") if _smoke() else _OUT.value
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".md", "w") as f:
        f.write(md)
    payload = dict(settings=dict(settings, k=_K.value), seconds=seconds,
                   classifier_test_accuracy=classifier.test_accuracy, real=real,
                   z_space_pass_rates=dict(hub=hub_rates,
                                           antihub=[s["antihub"]["pass_rate"] for s in noise_sets]),
                   results=[{k: v for k, v in r.items() if k != "grids"} for r in results],
                   embedding_hubness=embed_rows)
    write_json(out + ".json", payload)
    write_png(results, out + ".png")
    print(md)


if __name__ == "__main__":
    app.run(main)
