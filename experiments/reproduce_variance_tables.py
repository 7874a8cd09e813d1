"""Analytic-DPM's two tables in miniature: bits/dim and FD-digits vs the number of steps K.

One DDPM eps-model on the digits (configs/ddpm_digits.py), then an NPR-DPM and an SN-DPM variance
head on it (mean model frozen), with the Monte Carlo sigma_bar tables
(`udm.pipeline.variance_models.trained_variance_models`), then for every K on a uniform
sub-sequence of the T = 1000 steps:

* NLL: the K-step variational bound of the held-out digits in bits/dim (`bound_bits_per_dim`;
  discretised decoder on the 17 grey levels), for each reverse variance with the DDPM (eta = 1)
  kernel: fixed small, fixed large, Analytic-DPM (V3), ML-isotropic (V5), NPR-DPM (V7), SN-DPM
  (V8). DDIM (eta = 0) has no bound: its forward process is deterministic given x_0.
* FD-digits of samples from DDPM, DDIM, Analytic-DDPM, Analytic-DDIM, NPR-/SN-DDPM and -DDIM
  (same x_T for every cell; pixel clip of docs/optimal_variance.md §2.5 and a mean-only final step for every
  non-fixed variance).

  python -m experiments.reproduce_variance_tables --workdir=workdir/variance_tables
  python -m experiments.reproduce_variance_tables --smoke      # seconds, tiny model

Training resumes from checkpoints; Monte Carlo moments are cached in the workdir; every finished
cell is kept in workdir/cells.json, so an interrupted run picks up where it stopped. Writes
experiments/results/variance_tables.{md,json,png} (or into the workdir with --smoke).
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

from configs import ddpm_digits  # noqa: E402
from experiments.common import write_json  # noqa: E402
from udm import metrics, variance  # noqa: E402
from udm.pipeline import evaluate as eval_lib  # noqa: E402
from udm.pipeline import spec as spec_lib  # noqa: E402
from udm.pipeline import variance_models  # noqa: E402
from udm.pipeline.classifier import load_or_train_classifier  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "workdir/variance_tables", "Checkpoints, caches, cells.")
_STEPS = flags.DEFINE_list("step_counts", ["10", "25", "50", "100", "200", "1000"], "Rows K.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 2500, "Training steps of the mean model.")
_HEAD_STEPS = flags.DEFINE_integer("head_steps", 1500, "Training steps of each variance head.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 300, "Samples per FD cell.")
_NLL_EXAMPLES = flags.DEFINE_integer("nll_examples", 300, "Held-out digits for the bits/dim.")
_MC_SAMPLES = flags.DEFINE_integer("mc_samples", 512, "Monte Carlo examples per t (Gamma_t).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny model and budgets: checks the script runs.")
_OUT = flags.DEFINE_string("out", "experiments/results/variance_tables",
                           "Output prefix (.md, .json, .png).")

NUM_LEVELS = 17  # scikit-learn digits: grey levels 0..16
# (column label, sampler, reverse variance, time sequence: uniform or the optimal trajectory)
FD_COLUMNS = [("DDPM", "ddpm", "fixed_small", "uniform"), ("DDIM", "ddim", "fixed_small", "uniform"),
              ("Analytic-DDPM", "ddpm", "analytic", "uniform"),
              ("Analytic-DDIM", "ddim", "analytic", "uniform"),
              ("NPR-DDPM", "ddpm", "npr", "uniform"), ("NPR-DDIM", "ddim", "npr", "uniform"),
              ("SN-DDPM", "ddpm", "sn", "uniform"), ("SN-DDIM", "ddim", "sn", "uniform"),
              ("Analytic-DDPM, OT", "ddpm", "analytic", "optimal")]
NLL_COLUMNS = [("DDPM, fixed small", "ddpm", "fixed_small", "uniform"),
               ("DDPM, fixed large", "ddpm", "fixed_large", "uniform"),
               ("Analytic-DDPM", "ddpm", "analytic", "uniform"),
               ("ML-isotropic DDPM", "ddpm", "ml_isotropic", "uniform"),
               ("NPR-DDPM", "ddpm", "npr", "uniform"), ("SN-DDPM", "ddpm", "sn", "uniform"),
               ("Analytic-DDPM, OT", "ddpm", "analytic", "optimal")]
BIN_WIDTH = 2.0 / (NUM_LEVELS - 1)


def _spec(variance_name: str = "fixed_small", sampler: str = "ddpm") -> spec_lib.Spec:
    config = ddpm_digits.get_config("smoke" if _SMOKE.value else "")
    config.eval.enabled = False
    config.train.progress_bar = True
    if not _SMOKE.value:
        config.train.num_steps = _TRAIN_STEPS.value
        config.variance.head_steps = _HEAD_STEPS.value
        config.variance.mc_samples = _MC_SAMPLES.value
    else:
        config.variance.head_steps = 4
        config.variance.mc_samples = config.variance.mc_batch_size = 16
    config.sampler.name, config.sampler.eta = sampler, 0.0
    config.sampler.variance = variance_name
    if variance_name in variance.HEAD_VARIANCES:
        config.variance.head = variance_name
    return spec_lib.from_config(config)


def _step_counts():
    return [3] if _SMOKE.value else [int(k) for k in _STEPS.value]


def fd_cell(models, sampler: str, variance_name: str, trajectory: str, k: int, priors, *, key,
            n, classifier, reference):
    """FD-digits of n samples of one sampler and variance from the shared x_T batches."""
    sample_fn, params = variance_models.variance_sampler(
            models, _spec(variance_name, sampler), sampler, k,
            spacing=models.spacing(trajectory, k, bin_width=BIN_WIDTH))
    start = time.perf_counter()
    samples, _ = eval_lib.generate(sample_fn, params, priors, num_samples=n, key=key)
    seconds = time.perf_counter() - start
    dataset = models.experiment.dataset
    scores = eval_lib.score(samples, classifier, reference, dataset.train_images,
                            dataset.test_images)
    return dict(fd=scores["fd"], seconds=seconds), samples


def _fmt(cell, key, sem=None):
    if cell is None:
        return "–"
    text = f"{cell[key]:.3f}" if key == "bpd" else f"{cell[key]:.2f}"
    return text + (f" ± {cell[sem]:.3f}" if sem else "")


def markdown(cells, *, real_fd, accuracy, n, nll_examples, train_steps, head_steps) -> str:
    ks = _step_counts()
    lines = [
        f"Mean model: DDPM eps-UNet on the digits, {train_steps} training steps; NPR / SN heads "
        f"{head_steps} steps each on the frozen model. NLL: K-step variational bound of "
        f"{nll_examples} held-out digits in bits/dim (17 grey levels: uniform = 4.09), ± one "
        f"standard error over examples.", "",
        "| K | " + " | ".join(column[0] for column in NLL_COLUMNS) + " |",
        "|---|" + "---|" * len(NLL_COLUMNS)]
    for k in ks:
        lines.append(f"| {k} | " + " | ".join(
            _fmt(cells.get(f"nll|{column[0]}|{k}"), "bpd", "sem") for column in NLL_COLUMNS) + " |")
    lines += ["", f"FD-digits ↓ of {n} samples against the 300 held-out digits (classifier "
              f"held-out accuracy {accuracy:.4f}; {n} real training digits score "
              f"{real_fd:.2f}); DDIM columns have eta = 0.", "",
              "| K | " + " | ".join(column[0] for column in FD_COLUMNS) + " |",
              "|---|" + "---|" * len(FD_COLUMNS)]
    for k in ks:
        lines.append(f"| {k} | " + " | ".join(
            _fmt(cells.get(f"fd|{column[0]}|{k}"), "fd") for column in FD_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot(cells, path: str) -> None:
    ks = _step_counts()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, *_ in NLL_COLUMNS:
        axes[0].plot(ks, [cells[f"nll|{label}|{k}"]["bpd"] for k in ks], "o-", label=label)
    for label, *_ in FD_COLUMNS:
        axes[1].plot(ks, [cells[f"fd|{label}|{k}"]["fd"] for k in ks], "o-", label=label)
    for ax, title in zip(axes, ["variational bound (bits/dim) ↓", "FD-digits ↓"]):
        ax.set_xscale("log")
        ax.set_xlabel("steps K")
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    models = variance_models.trained_variance_models(_spec, workdir)
    exp = models.experiment
    dataset = exp.dataset
    classifier = load_or_train_classifier(
        os.path.join(workdir, "classifier"), dataset, seed=0,
        num_steps=_spec().eval.classifier_steps)
    reference = classifier.features(dataset.test_images)
    n = min(32 if _SMOKE.value else _NUM_SAMPLES.value, len(dataset.test_images))
    real = dataset.train_images[np.random.default_rng(0).choice(len(dataset.train_images), n,
                                                                replace=False)]
    real_fd = float(metrics.frechet_distance(classifier.features(real), reference))
    images = dataset.test_images[:32 if _SMOKE.value else _NLL_EXAMPLES.value]

    cells_path = os.path.join(workdir, "cells.json")
    cells = json.load(open(cells_path)) if os.path.exists(cells_path) else {}
    prior_key, noise_key, nll_key = jax.random.split(exp.sample_key, 3)
    priors = eval_lib.draw_priors(exp.process, num_samples=n, batch_size=32 if _SMOKE.value else 304,
                                  image_shape=dataset.image_shape, key=prior_key, mesh=exp.mesh)
    todo = [("nll", *column, k) for k in _step_counts() for column in NLL_COLUMNS]
    todo += [("fd", *column, k) for k in _step_counts() for column in FD_COLUMNS]
    for table, label, sampler, v, trajectory, k in tqdm(todo, desc="cells", unit="cell"):
        key = f"{table}|{label}|{k}"
        if key in cells:
            continue
        if table == "nll":
            cells[key] = variance_models.bound_bits_per_dim(
                    models, v, k, images, num_levels=NUM_LEVELS, key=nll_key,
                    batch_size=32 if _SMOKE.value else 304,
                    spacing=models.spacing(trajectory, k, bin_width=BIN_WIDTH))
        else:
            cells[key], samples = fd_cell(models, sampler, v, trajectory, k, priors,
                                          key=noise_key, n=n, classifier=classifier,
                                          reference=reference)
            if k == min(_step_counts()):
                metrics.save_image_grid(samples[:64], os.path.join(workdir, f"samples_{label}_{k}.png"),
                                        title=f"{label}, K={k}")
        write_json(cells_path, cells)

    spec = _spec()
    table = markdown(cells, real_fd=real_fd, accuracy=classifier.test_accuracy, n=n,
                     nll_examples=len(images), train_steps=spec.train.num_steps,
                     head_steps=spec.variance.head_steps)
    out = os.path.join(workdir, "variance_tables") if _SMOKE.value else _OUT.value
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".md", "w") as f:
        f.write(table)
    write_json(out + ".json", dict(real_fd=real_fd, cells=cells,
                                   train_seconds=models.train_seconds))
    plot(cells, out + ".png")
    print(table)


if __name__ == "__main__":
    app.run(main)
