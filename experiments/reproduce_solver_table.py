"""Quality per network evaluation: FD-digits of fast solvers at NFE = 5 ... 50 on one trained model.

The demo's model (configs/ddpm_digits.py: eps-UNet, T = 1000) is sampled by DDIM, DPM-Solver-2/3,
DPM-Solver++(2M/3M) on the uniform grid and on the grid uniform in log-SNR, UniPC and EDM's Heun
on Karras's grid, each at NFE = 5, 8, 10, 15, 20, 50 network evaluations, from the same x_T
batches; the flow-matching model (configs/flow_digits.py, its own training) by Euler and Heun on
the probability-flow ODE and by DPM-Solver++(2M) on the log-SNR grid. Every cell is FD-digits of the samples against the held-out digits
(udm.metrics, the classifier of the demo); the reference is DDIM with all 1000 steps. The last
column is the smallest NFE of the grid whose FD is within 1 point of that reference.

  python -m experiments.reproduce_solver_table --workdir=workdir/solver_table
  python -m experiments.reproduce_solver_table --demo_workdir=workdir/ddpm_digits  # reuse `make demo`
  python -m experiments.reproduce_solver_table --smoke                              # tiny models
  python -m experiments.reproduce_solver_table --dataset=mnist5k --workdir=workdir/solver_table_mnist5k

--dataset=mnist5k makes the same table on the 28x28 MNIST digits (configs/ddpm_mnist5k.py and
configs/flow_digits.py:mnist5k, its own evaluation classifier) and writes
experiments/results/solver_table_mnist5k.*.

Training resumes from checkpoints and every finished cell is kept in workdir/cells.json, so an
interrupted run picks up where it stopped. Writes experiments/results/solver_table.{md,json,png}
(or into the workdir with --smoke).
"""
import json
import os
import time
from typing import NamedTuple, Optional

import jax
import matplotlib
import numpy as np
from absl import app, flags, logging
from tqdm.auto import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from configs import ddpm_digits, ddpm_mnist5k, flow_digits  # noqa: E402
from experiments.common import write_json  # noqa: E402
from udm import metrics  # noqa: E402
from udm.pipeline import evaluate as eval_lib  # noqa: E402
from udm.pipeline import spec as spec_lib  # noqa: E402
from udm.pipeline import train  # noqa: E402
from udm.pipeline.classifier import load_or_train_classifier  # noqa: E402
from udm.sampling import SAMPLERS  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "workdir/solver_table", "Checkpoints and cells.")
_DEMO_WORKDIR = flags.DEFINE_string(
    "demo_workdir", "", "Workdir of a finished `make demo` run to take the DDPM model from "
    "(default: train it in <workdir>/ddpm with the demo's config).")
_NFES = flags.DEFINE_list("nfes", ["5", "8", "10", "15", "20", "50"], "Network evaluations.")
_REFERENCE_STEPS = flags.DEFINE_integer("reference_steps", 1000, "Steps of the DDIM reference.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 500, "Samples per cell.")
_FLOW_TRAIN_STEPS = flags.DEFINE_integer("flow_train_steps", 0,
                                         "Flow model's training steps (0: its config's).")
_DATASET = flags.DEFINE_enum("dataset", "digits", ["digits", "mnist5k"],
                              "digits: scikit-learn's 8x8 digits (the demo's model); mnist5k: "
                              "the 28x28 MNIST digits.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny models and budgets: checks the script runs.")
_OUT = flags.DEFINE_string("out", "", "Output prefix (.md, .json, .png); default "
                           "experiments/results/solver_table (_mnist5k with --dataset=mnist5k).")
_CONFIGS = {"digits": ddpm_digits, "mnist5k": ddpm_mnist5k}


class Row(NamedTuple):
    """One line of the table: a sampler of one model on one grid."""
    label: str
    model: str      # "ddpm" (the demo's model) or "flow"
    sampler: str    # a udm.sampling.SAMPLERS name
    spacing: str    # a udm.sampling.grids spacing


ROWS = [
    Row("DDIM", "ddpm", "ddim", "uniform"),
    Row("DPM-Solver-2", "ddpm", "dpm_solver_2", "uniform"),
    Row("DPM-Solver-3", "ddpm", "dpm_solver_3", "uniform"),
    Row("DPM-Solver++(2M)", "ddpm", "dpm_solver_pp_2m", "uniform"),
    Row("DPM-Solver++(2M), log-SNR grid", "ddpm", "dpm_solver_pp_2m", "logsnr"),
    Row("DPM-Solver++(3M)", "ddpm", "dpm_solver_pp_3m", "uniform"),
    Row("DPM-Solver++(3M), log-SNR grid", "ddpm", "dpm_solver_pp_3m", "logsnr"),
    Row("UniPC (bh2)", "ddpm", "unipc_bh2", "uniform"),
    Row("Heun (EDM), Karras grid", "ddpm", "heun_edm", "karras"),
    Row("flow matching, Euler", "flow", "ode_euler", "uniform"),
    Row("flow matching, Heun", "flow", "ode_heun", "uniform"),
    Row("flow matching, DPM-Solver++(2M), log-SNR grid", "flow", "dpm_solver_pp_2m", "logsnr"),
]
# Network evaluations of K steps: per_step * K + offset (continuous time ends with one more
# evaluation, the x_0 estimate at t_min; EDM's Heun takes an Euler last step).
_NFE_OF_STEPS = {"heun_edm": (2, -1), "ode_heun": (2, 0)}


def steps_for(sampler: str, nfe: int, *, continuous: bool) -> int:
    """The largest K whose NFE is at most nfe (at least 1)."""
    per_step, offset = _NFE_OF_STEPS.get(sampler, (1, 0))
    offset += int(continuous)
    return max(1, (nfe - offset) // per_step)


def _ddpm_spec() -> spec_lib.Spec:
    config = _CONFIGS[_DATASET.value].get_config("smoke" if _SMOKE.value else "")
    config.eval.enabled = False
    config.train.progress_bar = True
    return spec_lib.from_config(config)


def _flow_spec() -> spec_lib.Spec:
    variant = ["mnist5k"] if _DATASET.value == "mnist5k" else []
    config = flow_digits.get_config(",".join(variant + (["smoke"] if _SMOKE.value else [])))
    config.eval.enabled = False
    config.train.progress_bar = True
    if _FLOW_TRAIN_STEPS.value:
        config.train.num_steps = _FLOW_TRAIN_STEPS.value
    return spec_lib.from_config(config)


class Model(NamedTuple):
    spec: spec_lib.Spec
    experiment: train.Experiment
    params: object
    eval_apply: object


def trained(spec: spec_lib.Spec, workdir: str) -> Model:
    """The EMA parameters of `spec` trained in workdir (resumed, or read when finished)."""
    exp = train.build(spec)
    state = train.train(spec, workdir, experiment=exp)
    _, eval_apply = train.make_apply_fns(exp.model)
    return Model(spec, exp, state.ema_params, eval_apply)


def fd_cell(model: Model, sampler: str, spacing: str, num_steps: int, priors, *, key, n,
            classifier, reference) -> tuple:
    """FD-digits of n samples of one sampler from the shared x_T batches."""
    sample_fn = eval_lib.make_eval_sampler(model.spec, model.experiment.process, model.eval_apply,
                                           sampler, num_steps, spacing=spacing)
    start = time.perf_counter()
    samples, nfe = eval_lib.generate(sample_fn, model.params, priors, num_samples=n, key=key)
    seconds = time.perf_counter() - start
    dataset = model.experiment.dataset
    scores = eval_lib.score(samples, classifier, reference, dataset.train_images,
                            dataset.test_images)
    return dict(fd=scores["fd"], nfe=nfe, steps=num_steps, seconds=seconds), samples


def _nfes():
    return [3, 4] if _SMOKE.value else [int(k) for k in _NFES.value]


def _reference_steps():
    return 8 if _SMOKE.value else _REFERENCE_STEPS.value


def within_one(cells, row: Row, reference_fd: float) -> Optional[int]:
    """The smallest NFE of the grid whose FD is within 1 point of the reference, else None."""
    for nfe in _nfes():
        cell = cells.get(f"{row.label}|{nfe}")
        if cell is not None and cell["fd"] <= reference_fd + 1.0:
            return int(round(cell["nfe"]))
    return None


def markdown(cells, reference, *, real_fd, accuracy, n, train_steps) -> str:
    nfes = _nfes()
    if _DATASET.value == "digits":
        data, models = "digits", (
            f"DDPM rows: the demo's eps-model ({train_steps['ddpm']} training steps, T = 1000); "
            f"flow rows: the flow-matching velocity model ({train_steps['flow']} steps).")
    else:
        data, models = "MNIST digits (mnist5k)", (
            f"DDPM rows: the eps-model of configs/ddpm_mnist5k.py ({train_steps['ddpm']} "
            f"training steps, T = 1000); flow rows: configs/flow_digits.py:mnist5k, the "
            f"velocity model with the same UNet ({train_steps['flow']} steps).")
    lines = [
        f"FD ↓ of {n} samples against the held-out {data}, in the features of the "
        f"evaluation classifier (held-out accuracy {accuracy:.4f}; {n} real training images "
        f"score {real_fd:.2f}). {models} Every cell starts from the same x_T; x_0 estimates "
        f"clipped to [-1, 1]. A cell shows the NFE it used in brackets when the sampler cannot "
        f"use exactly the column's number.", "",
        f"Reference: DDIM with {reference['nfe']:.0f} steps, FD {reference['fd']:.2f}.", "",
        "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " | NFE to within 1 of the "
        "reference |", "|---|" + "---|" * (len(nfes) + 1)]
    for row in ROWS:
        cells_of_row = []
        for k in nfes:
            cell = cells.get(f"{row.label}|{k}")
            if cell is None:
                cells_of_row.append("–")
                continue
            text = f"{cell['fd']:.2f}"
            if round(cell["nfe"]) != k:
                text += f" ({cell['nfe']:.0f})"
            cells_of_row.append(text)
        reached = within_one(cells, row, reference["fd"])
        lines.append(f"| {row.label} | " + " | ".join(cells_of_row) +
                     f" | {reached if reached is not None else '> ' + str(max(nfes))} |")
    return "\n".join(lines) + "\n"


def plot(cells, reference, path: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in ROWS:
        points = [cells[f"{row.label}|{k}"] for k in _nfes() if f"{row.label}|{k}" in cells]
        ax.plot([p["nfe"] for p in points], [p["fd"] for p in points],
                "s--" if row.model == "flow" else "o-", label=row.label)
    ax.axhline(reference["fd"], color="k", lw=1, label=f"DDIM, {reference['nfe']:.0f} steps")
    ax.axhline(reference["fd"] + 1.0, color="k", lw=1, ls=":", label="reference + 1")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel("FD ↓")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    missing = sorted({row.sampler for row in ROWS} - set(SAMPLERS))
    if missing:
        raise SystemExit(f"samplers not registered: {missing}")
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    models = {"ddpm": trained(_ddpm_spec(), _DEMO_WORKDIR.value or os.path.join(workdir, "ddpm")),
              "flow": trained(_flow_spec(), os.path.join(workdir, "flow"))}
    demo = models["ddpm"]
    dataset = demo.experiment.dataset
    classifier = load_or_train_classifier(os.path.join(workdir, "classifier"), dataset, seed=0,
                                          num_steps=demo.spec.eval.classifier_steps)
    reference_features = classifier.features(dataset.test_images)
    n = 32 if _SMOKE.value else _NUM_SAMPLES.value
    rng = np.random.default_rng(0)
    real = dataset.train_images[rng.choice(len(dataset.train_images), n, replace=False)]
    real_fd = float(metrics.frechet_distance(classifier.features(real), reference_features))

    prior_key, noise_key = jax.random.split(demo.experiment.sample_key)
    batch = 32 if _SMOKE.value else 256
    priors = eval_lib.draw_priors(demo.experiment.process, num_samples=n, batch_size=batch,
                                  image_shape=dataset.image_shape, key=prior_key,
                                  mesh=demo.experiment.mesh)
    score_args = dict(key=noise_key, n=n, classifier=classifier, reference=reference_features)
    cells_path = os.path.join(workdir, "cells.json")
    cells = json.load(open(cells_path)) if os.path.exists(cells_path) else {}
    if "reference" not in cells:
        cells["reference"], _ = fd_cell(demo, "ddim", "uniform", _reference_steps(), priors,
                                        **score_args)
        write_json(cells_path, cells)
    todo = [(row, k) for row in ROWS for k in _nfes() if f"{row.label}|{k}" not in cells]
    for row, k in tqdm(todo, desc="cells", unit="cell"):
        cells[f"{row.label}|{k}"], samples = fd_cell(
            models[row.model], row.sampler, row.spacing,
            steps_for(row.sampler, k, continuous=row.model == "flow"), priors,
            **score_args)
        if k == 10:
            metrics.save_image_grid(samples[:64], os.path.join(
                workdir, f"samples_{row.sampler}_{row.spacing}_{k}.png"), title=f"{row.label}, NFE {k}")
        write_json(cells_path, cells)

    train_steps = {name: m.spec.train.num_steps for name, m in models.items()}
    table = markdown(cells, cells["reference"], real_fd=real_fd,
                     accuracy=classifier.test_accuracy, n=n, train_steps=train_steps)
    default_out = "solver_table" + ("" if _DATASET.value == "digits" else "_" + _DATASET.value)
    out = (os.path.join(workdir, default_out) if _SMOKE.value else
           _OUT.value or os.path.join("experiments", "results", default_out))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    command = "python -m experiments.reproduce_solver_table " + " ".join(
        flags.FLAGS[name].serialize()
        for name in ("dataset", "nfes", "num_samples", "reference_steps")
        if flags.FLAGS[name].present)
    with open(out + ".md", "w") as f:
        f.write(f"Made by `{command.strip()}`.\n\n" + table)
    write_json(out + ".json", dict(real_fd=real_fd, reference=cells["reference"], cells=cells,
                                   train_steps=train_steps))
    plot(cells, cells["reference"], out + ".png")
    print(table)


if __name__ == "__main__":
    app.run(main)
