"""The hubness prior for deterministic diffusion samplers, and hubness of real digit embeddings.

docs/hubness.md §3, §7: DDIM (eta = 0) on the digits model of configs/ddpm_digits.py
(workdir/ddpm_digits) and the probability-flow ODE (Heun) on the VP SDE model of
configs/sde_digits.py:vp (workdir/sde_table/vp, reproduce_sde_table.py's model) map z in R^64 to
an 8x8 digit (`udm.pipeline.latent_sampling.latent_generator`). Per generator and seed, n latents
of each set: random, hub, antihub and truncated (`z_space_latent_sets`), and the paper's
variant, N_k counted in the classifier features of the generated pool
(`output_space_hub_set`, one seed). Scores: `latent_sampling.score_samples` (FD-digits against
the held-out digits, confidence, class entropies, memorisation) and the real-digits reference
row (`real_reference_scores`); means over seeds, FD as mean ± sd. Second table: hubness of the
classifier features of all digits before and after each reduction
(`udm.hubness.reduction_reports`).

  python -m experiments.reproduce_hubness_sampling --workdir=workdir
  python -m experiments.reproduce_hubness_sampling --smoke --workdir=/tmp/hub   # seconds

Models are trained if their checkpoints are missing (restored otherwise). Each generator's rows
are kept in <workdir>/hubness_sampling/<generator>.json and the paper pool in
<generator>_paper_pool.npz, so an interrupted run resumes. Writes
experiments/results/hubness_sampling.{md,json,png} (or into --workdir with --smoke).
"""
import json
import os
import time

import jax
import matplotlib
import numpy as np
from absl import app, flags, logging
from tqdm.auto import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from configs import ddpm_digits, sde_digits  # noqa: E402
from experiments.common import write_json  # noqa: E402
from udm import hubness, metrics  # noqa: E402
from udm.pipeline import latent_sampling as ls  # noqa: E402
from udm.pipeline import spec as spec_lib  # noqa: E402
from udm.pipeline import train  # noqa: E402
from udm.pipeline.classifier import load_or_train_classifier  # noqa: E402

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


def _settings() -> dict:
    """Sizes of this run (the smoke run shrinks every one of them)."""
    if _SMOKE.value:
        return dict(n=32, seeds=2, pool=500, threshold=10, paper_pool=128, paper_threshold=50,
                    ddim_steps=5, heun_steps=2, batch=32, real_points=200, ks=(5,))
    return dict(n=_NUM_SAMPLES.value, seeds=_SEEDS.value, pool=_POOL.value,
                threshold=_THRESHOLD.value, paper_pool=_PAPER_POOL.value,
                paper_threshold=_PAPER_THRESHOLD.value, ddim_steps=_DDIM_STEPS.value,
                heun_steps=_HEUN_STEPS.value, batch=512, real_points=None, ks=(5, 10))


def _generator_spec(name: str):
    variant = "smoke" if _SMOKE.value else ""
    if name == "ddim":
        config = ddpm_digits.get_config(variant)
        config.sampler.eta = 0.0
        workdir = os.path.join(_WORKDIR.value, "ddpm_digits")
    elif name == "ode":
        # What reproduce_sde_table.py builds for "vp", so train.train restores its checkpoint.
        config = sde_digits.get_config("vp" + (",smoke" if _SMOKE.value else ""))
        config.sampler.rtol = config.sampler.atol = 1e-5
        workdir = os.path.join(_WORKDIR.value, "sde_table", "vp")
    else:
        raise ValueError(f"unknown generator {name!r}; valid: ddim, ode")
    config.eval.enabled = False
    return spec_lib.from_config(config), workdir


def run_generator(name: str, settings: dict, noise_sets: list, classifier, reference,
                  cache_dir: str) -> dict:
    """Rows of one generator (read back from cache_dir/<name>.json when already done)."""
    path = os.path.join(cache_dir, f"{name}.json")
    if os.path.exists(path):
        print(f"{name}: rows already computed, read from {path}")
        return json.load(open(path))
    spec, workdir = _generator_spec(name)
    exp = train.build(spec)
    sampler, steps = ("ddim", settings["ddim_steps"]) if name == "ddim" else (
            "ode_heun", settings["heun_steps"])
    label = (f"DDIM (eta=0, K={steps}), ddpm_digits" if name == "ddim" else
             f"probability-flow ODE (Heun, {steps} steps), VP SDE")
    gen = ls.latent_generator(spec, workdir, sampler, steps, batch_size=settings["batch"],
                              experiment=exp)
    per_method, grids = {m: [] for m in METHODS}, {}
    start = time.perf_counter()
    paper = ls.output_space_hub_set(
            gen, classifier.features, num_samples=settings["n"],
            pool_size=settings["paper_pool"], k=_K.value, threshold=settings["paper_threshold"],
            key=jax.random.key(4321), cache_path=os.path.join(cache_dir, f"{name}_paper_pool.npz"))
    paper_seconds = time.perf_counter() - start
    todo = [(m, s) for s in range(len(noise_sets)) for m in ("random", "hub", "truncated",
                                                               "antihub")]
    for method, seed in tqdm(todo + [("hub (paper)", 0)], desc=f"{name}: rows", unit="row"):
        noise = paper if method == "hub (paper)" else noise_sets[seed][method]
        t0 = time.perf_counter()
        images = gen(noise["z"], desc=f"{name}: {method}")
        scores = ls.score_samples(images, classifier, reference, exp.dataset)
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
            extra = dict({k: v for k, v in paper.items() if k != "z"},
                         seconds_incl_pool=paper_seconds)
        elif method in ("hub", "antihub"):
            extra = dict(pools_per_seed=[s[method]["pools"] for s in noise_sets],
                         threshold=settings["threshold"] if method == "hub" else 0)
        elif method == "truncated":
            extra = dict(radius_per_seed=[s[method]["radius"] for s in noise_sets])
        rows.append(ls.summarise_seeds(method, per_method[method], extra))
    result = dict(generator=name, label=label, num_samples=settings["n"],
                  seconds=time.perf_counter() - start, train_steps=spec.train.num_steps,
                  rows=rows, per_seed={m: per_method[m] for m in METHODS}, grids=grids)
    write_json(path, result)
    return result


def real_row(dataset, classifier, reference, settings: dict) -> dict:
    """The reference row: FD of n real training digits per seed, held-out digits otherwise."""
    per_seed = ls.real_reference_scores(dataset, classifier, reference,
                                        num_samples=settings["n"], seeds=settings["seeds"])
    row = ls.summarise_seeds("real digits", [dict(s, mean_norm=float("nan"), pass_rate=None)
                                    for s in per_seed], {})
    row["mean_norm"] = None
    return row


# --- outputs ---------------------------------------------------------------------------------

def _fmt(value, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else \
        fmt.format(value)


def _row_label(row: dict) -> str:
    t = row.get("threshold")
    return {"hub": f"hub (z space, N_k > {t})",
            "hub (paper)": f"hub (paper: N_k ≥ {t} in output-feature space, self incl.)",
            "truncated": "truncated (matched mean ‖z‖)",
            "antihub": "antihub (z space, N_k = 0)"}.get(row["method"], row["method"])


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
        noise = ls.pooled_fd_sd(rows.values())
        parts = []
        for m in ("hub", "hub (paper)", "truncated", "antihub"):
            delta, z = ls.fd_difference(rows[m], rnd, noise)
            parts.append(f"{m} {rows[m]['fd']:.2f} (Δ {delta:+.2f}, {z:+.1f} SE)")
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
        delta, z = ls.fd_difference(rows[a], rows[b], noise)
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
    """Sampling and scoring time of one generator (summed when an older run did not keep it)."""
    paper = next(r for r in result["rows"] if r["method"] == "hub (paper)")
    return result.get("seconds", paper["pool_seconds"] + sum(
            s["seconds"] for rows in result["per_seed"].values() for s in rows))


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

    noise_sets = [ls.z_space_latent_sets(
            settings["n"], DIM, pool_size=settings["pool"], k=_K.value,
            threshold=settings["threshold"], max_pools=_MAX_POOLS.value,
            key=jax.random.fold_in(jax.random.key(1234), seed))
        for seed in tqdm(range(settings["seeds"]), desc="noise sets", unit="seed")]
    resumed = [name for name in _GENERATORS.value
               if os.path.exists(os.path.join(cache_dir, f"{name}.json"))]
    results = [run_generator(name, settings, noise_sets, classifier, reference, cache_dir)
               for name in _GENERATORS.value]
    real = real_row(dataset, classifier, reference, settings)

    images = np.concatenate([dataset.train_images, dataset.test_images])
    if settings["real_points"]:
        images = images[:settings["real_points"]]
    features = classifier.features(images)
    embed_rows = hubness.reduction_reports(features, settings["ks"])
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
    out = os.path.join(_WORKDIR.value, "hubness_sampling") if _SMOKE.value else _OUT.value
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
