"""The Score SDE paper's table in miniature: VP / sub-VP / VE on the digits, every sampler.

For each SDE: train the eps-network (configs/sde_digits.py) through `udm.pipeline.train.train`, then
* sample with EM (reverse SDE), PC (reverse diffusion + Langevin), probability-flow ODE with
  fixed-step Heun and with adaptive Tsit5, and score the samples by FD-digits (udm.metrics);
* bits/dim of the held-out digits: exact likelihood through the probability-flow ODE (uniform
  dequantisation of the 17 grey levels, Hutchinson divergence) and the discrete-time
  variational bound of a K-step chain on the SDE's marginals with a discretised decoder.

  python -m experiments.reproduce_sde_table --workdir=workdir/sde_table
  python -m experiments.reproduce_sde_table --smoke      # seconds, tiny model

Each model's training resumes from its checkpoints and each finished model's rows are kept in
workdir/<sde>/rows.json, so an interrupted run picks up where it stopped. Writes
experiments/results/sde_table.md and .json (or workdir/ with --smoke).
"""
import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging
from tqdm.auto import tqdm

from configs import sde_digits
from experiments.common import write_json
from udm import likelihood, metrics
from udm.pipeline import evaluate as eval_lib
from udm.pipeline.classifier import load_or_train_classifier
from udm.pipeline import spec as spec_lib
from udm.pipeline import train
from udm.processes.sde import network_score_fn

_WORKDIR = flags.DEFINE_string("workdir", "workdir/sde_table", "Checkpoints and per-model rows.")
_SDES = flags.DEFINE_list("sdes", ["vp", "subvp", "ve"], "Which SDEs (configs/sde_digits.py).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 2500, "Training steps per model.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 300, "Samples per sampler row.")
_EM_STEPS = flags.DEFINE_integer("em_steps", 1000, "Euler-Maruyama steps.")
_PC_STEPS = flags.DEFINE_integer("pc_steps", 500, "Predictor-corrector steps (2 NFE each).")
_HEUN_STEPS = flags.DEFINE_integer("heun_steps", 50, "Fixed-step Heun steps (2 NFE each).")
_RTOL = flags.DEFINE_float("rtol", 1e-5, "Adaptive ODE tolerance (rtol = atol), sampling and NLL.")
_NLL_EXAMPLES = flags.DEFINE_integer("nll_examples", 300, "Held-out digits for the bits/dim.")
_VLB_STEPS = flags.DEFINE_integer("vlb_steps", 1000, "K of the discrete-time variational bound.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny model and budgets: checks the script runs.")
_OUT = flags.DEFINE_string("out", "experiments/results/sde_table", "Output prefix (.md, .json).")

NUM_LEVELS = 17  # scikit-learn digits: grey levels 0..16


def _rtol() -> float:
    """--rtol, or 1e-3 with --smoke (an untrained smoke model's flow is rough: the adaptive
    solves at 1e-5 cost hundreds of evaluations, which the smoke run does not need)."""
    return 1e-3 if _SMOKE.value and not flags.FLAGS["rtol"].present else _RTOL.value


def _spec(kind: str) -> spec_lib.Spec:
    config = sde_digits.get_config(kind + (",smoke" if _SMOKE.value else ""))
    config.eval.enabled = False
    config.eval.batch_size = min(config.eval.batch_size, 304 if not _SMOKE.value else 32)
    if not _SMOKE.value:
        config.train.num_steps = _TRAIN_STEPS.value
    config.sampler.rtol = config.sampler.atol = _rtol()
    return spec_lib.from_config(config)


def _sampler_runs():
    if _SMOKE.value:
        return [("em", 4), ("pc", 2), ("ode_heun", 2), ("ode_adaptive", None)]
    return [("em", _EM_STEPS.value), ("pc", _PC_STEPS.value), ("ode_heun", _HEUN_STEPS.value),
            ("ode_adaptive", None)]


def bits_per_dim(spec, exp, params, images: np.ndarray, *, key) -> dict:
    """ODE NLL and VLB of `images` (in bits/dim), with the probability-flow NFE per batch."""
    sde = exp.process
    _, eval_apply = train.make_apply_fns(exp.model)
    score_fn = network_score_fn(sde, eval_apply, "eps")
    dim = int(np.prod(images.shape[1:]))
    batch = spec.eval.batch_size
    # Exact likelihood of uniformly dequantised data along the probability-flow ODE.
    nll_fn = likelihood.make_ode_log_likelihood(
        sde, score_fn, divergence="hutchinson", probe="rademacher", num_probes=1,
        solver="tsit5", rtol=_rtol(), atol=_rtol())
    deq_key, probe_key, vlb_key = jax.random.split(key, 3)
    nll, nfes = [], []
    for i, out in enumerate(eval_lib.batched(
            lambda x: nll_fn(params, likelihood.dequantize(x, NUM_LEVELS, key=deq_key),
                             key=probe_key), images, batch)):
        if not bool(out.success):
            raise RuntimeError(f"likelihood ODE solve {i} failed after {int(out.nfe)} evaluations")
        nll.append(np.asarray(out.log_likelihood))
        nfes.append(int(out.nfe))
    ll = np.concatenate(nll)[:len(images)]
    ode_bpd = likelihood.bits_per_dim(ll, dim, num_levels=NUM_LEVELS)
    # Discrete-time bound of the K-step chain on the SDE's marginals, discretised decoder.
    k = 4 if _SMOKE.value else _VLB_STEPS.value
    alpha_bar, beta_bar, times = likelihood.sde_chain(sde, k)

    def x0_fn(x, i):
        return sde.x0_from_score(x, times[i], score_fn(params, x, times[i]))

    vlb = jax.jit(lambda x: likelihood.variational_bound(
        alpha_bar, beta_bar, x0_fn, x, key=vlb_key, decoder="discretized",
        num_levels=NUM_LEVELS, prior_std=sde.prior_std).total)
    total = np.concatenate(eval_lib.batched(vlb, images, batch))[:len(images)]
    vlb_bpd = likelihood.vlb_bits_per_dim(total, dim)
    return dict(nll_bpd=float(np.mean(ode_bpd)),
                nll_bpd_sem=float(np.std(ode_bpd) / np.sqrt(len(ode_bpd))),
                nll_nfe=float(np.mean(nfes)), vlb_bpd=float(np.mean(vlb_bpd)),
                vlb_bpd_sem=float(np.std(vlb_bpd) / np.sqrt(len(vlb_bpd))), vlb_steps=k)


def run_model(kind: str, classifier, reference) -> dict:
    """Trains (or resumes) one SDE model and returns its sampler rows and bits/dim."""
    workdir = os.path.join(_WORKDIR.value, kind)
    rows_path = os.path.join(workdir, "rows.json")
    if os.path.exists(rows_path):
        print(f"{kind}: rows already computed, read from {rows_path}")
        return json.load(open(rows_path))
    spec = _spec(kind)
    exp = train.build(spec)
    start = time.perf_counter()
    state = train.train(spec, workdir, experiment=exp)
    train_seconds = time.perf_counter() - start
    params = state.ema_params
    _, eval_apply = train.make_apply_fns(exp.model)
    dataset = exp.dataset
    n = min(_NUM_SAMPLES.value if not _SMOKE.value else 32, len(dataset.test_images))
    prior_key, noise_key, nll_key = jax.random.split(exp.sample_key, 3)
    priors = eval_lib.draw_priors(exp.process, num_samples=n, batch_size=spec.eval.batch_size,
                                  image_shape=dataset.image_shape, key=prior_key, mesh=exp.mesh)
    rows = []
    for name, k in tqdm(_sampler_runs(), desc=f"{kind}: sample", unit="sampler"):
        sample_fn = eval_lib.make_eval_sampler(spec, exp.process, eval_apply, name, k or 0)
        start = time.perf_counter()
        samples, nfe = eval_lib.generate(sample_fn, params, priors, num_samples=n, key=noise_key)
        seconds = time.perf_counter() - start
        scores = eval_lib.score(samples, classifier, reference, dataset.train_images,
                                dataset.test_images)
        rows.append(dict(sde=kind, sampler=eval_lib.sampler_label(spec, name), steps=k,
                         nfe=nfe, fd=scores["fd"], seconds=seconds))
        metrics.save_image_grid(samples[:64], os.path.join(workdir, f"samples_{name}.png"),
                                title=f"{kind}: {eval_lib.sampler_label(spec, name)}")
    images = dataset.test_images[:_NLL_EXAMPLES.value if not _SMOKE.value else 32]
    start = time.perf_counter()
    bpd = bits_per_dim(spec, exp, params, images, key=nll_key)
    bpd["seconds"] = time.perf_counter() - start
    result = dict(sde=kind, train_steps=spec.train.num_steps, train_seconds=train_seconds,
                  num_samples=n, nll_examples=len(images), rows=rows, bits_per_dim=bpd)
    write_json(rows_path, result)
    return result


def markdown(results, real_fd: float, accuracy: float) -> str:
    lines = [
        f"FD-digits of {results[0]['num_samples']} samples against the 300 held-out digits "
        f"(classifier held-out accuracy {accuracy:.4f}; {results[0]['num_samples']} real "
        f"training digits score {real_fd:.2f}). Bits/dim of {results[0]['nll_examples']} "
        f"held-out digits (17 grey levels, so 4.09 bits/dim = uniform): ODE = exact likelihood "
        f"of uniformly dequantised digits along the probability-flow ODE (Tsit5, rtol = atol = "
        f"{_rtol():g}, Hutchinson, 1 Rademacher probe), VLB = the discrete-time bound of a "
        f"K = {results[0]['bits_per_dim']['vlb_steps']} step chain with a discretised decoder; "
        f"± one standard error over examples.",
        "",
        "| SDE | sampler | steps K | NFE | FD-digits ↓ | sampling time (s) |",
        "|---|---|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            steps = "–" if r["steps"] is None else r["steps"]
            lines.append(f"| {r['sde']} | {r['sampler']} | {steps} | {r['nfe']:.0f} | "
                         f"{r['fd']:.2f} | {r['seconds']:.1f} |")
    lines += ["", "| SDE | bits/dim, ODE ↓ | NFE of the ODE | bits/dim, VLB ↓ | training steps | "
              "training time (s) |", "|---|---|---|---|---|---|"]
    for res in results:
        b = res["bits_per_dim"]
        lines.append(f"| {res['sde']} | {b['nll_bpd']:.3f} ± {b['nll_bpd_sem']:.3f} | "
                     f"{b['nll_nfe']:.0f} | {b['vlb_bpd']:.3f} ± {b['vlb_bpd_sem']:.3f} | "
                     f"{res['train_steps']} | {res['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    os.makedirs(_WORKDIR.value, exist_ok=True)
    spec = _spec(_SDES.value[0])
    dataset = train.build(spec).dataset
    classifier = load_or_train_classifier(
        os.path.join(_WORKDIR.value, "classifier"), dataset, seed=spec.seed,
        num_steps=spec.eval.classifier_steps)
    reference = classifier.features(dataset.test_images)
    n = min(_NUM_SAMPLES.value if not _SMOKE.value else 32, len(dataset.test_images))
    real = dataset.train_images[np.random.default_rng(0).choice(len(dataset.train_images), n,
                                                                replace=False)]
    real_fd = float(metrics.frechet_distance(classifier.features(real), reference))
    results = [run_model(kind, classifier, reference) for kind in _SDES.value]
    table = markdown(results, real_fd, classifier.test_accuracy)
    out = os.path.join(_WORKDIR.value, "sde_table") if _SMOKE.value else _OUT.value
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".md", "w") as f:
        f.write(table)
    with open(out + ".json", "w") as f:
        json.dump(dict(real_fd=real_fd, results=results), f, indent=1)
    print(table)


if __name__ == "__main__":
    app.run(main)
