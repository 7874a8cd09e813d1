"""Sample with several samplers and step counts, score the samples, write a table and grids.

Every function takes the typed `udm.pipeline.spec.Spec`, never a ConfigDict.

Scores (udm.metrics): FD-digits (Fréchet distance in the penultimate features of a classifier
trained by udm on the same data), the classifier's predicted-class entropy and class histogram,
and nearest-training-image distances that flag memorisation. The same scores of real held-out
images are the reference row.
"""
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from udm import distributed, metrics, parallel, sampling, variance, variance_heads
from udm.sampling import make_sampler, network_predictor, time_grid
from udm.pipeline import conditional
from udm.pipeline.classifier import load_or_train_classifier
from udm.pipeline.spec import Spec
from udm.variance_heads import HeadModel


def draw_priors(process, *, num_samples: int, batch_size: int, image_shape, key, mesh) -> list:
    """The x_T batches, sharded over the mesh; drawn once and shared by every sampler row."""
    draw = jax.jit(lambda k: process.prior(k, (batch_size, *image_shape)),
                   out_shardings=parallel.batch_sharded(mesh))
    return [draw(jax.random.fold_in(key, i)) for i in range(math.ceil(num_samples / batch_size))]


def generate(sample_fn, params, priors: list, *, num_samples: int, key,
             conditions: Optional[list] = None):
    """Runs the sampler on each x_T batch (noise keys fold_in(key, batch)).

    conditions: None, or one condition per batch, passed as params = (params, condition) (the
    samplers of `conditional.conditioned_predictor`).

    Returns:
      (samples [num_samples, ...], function evaluations per sample: the mean over batches, since
      an adaptive solver's count varies). Raises RuntimeError if a solve failed.
    """
    chunks, nfes = [], []
    for i, x_T in enumerate(priors):
        batch_params = params if conditions is None else (params, conditions[i])
        out = sample_fn(batch_params, x_T, key=jax.random.fold_in(key, i))
        if not bool(out.success):
            raise RuntimeError(f"sampling batch {i} failed after {int(out.nfe)} function "
                               f"evaluations (adaptive solver step limit?)")
        nfes.append(int(out.nfe))
        chunks.append(parallel.to_host(out.x0))  # gathers the shards of other processes
    return np.concatenate(chunks)[:num_samples], float(np.mean(nfes))


def batched(fn, x: np.ndarray, batch_size: int) -> list:
    """fn applied to x in batches of batch_size, the last one padded by repeating its own rows
    (so fn sees one shape and compiles once); the host outputs, padding included."""
    outs = []
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        pad = batch_size - len(chunk)
        chunk = np.concatenate([chunk, chunk[:pad]]) if pad else chunk
        outs.append(jax.device_get(fn(chunk)))
    return outs


def sampler_eta(spec: Spec, name: str) -> float:
    """The eta a discrete sampler runs with: 1 for ddpm, spec.sampler.eta for ddim."""
    return {"ddpm": 1.0, "ddim": spec.sampler.eta}.get(name, 0.0)


def estimate_sigma_bar(spec: Spec, workdir: str, *, process, eval_apply, params, data,
                       timesteps: np.ndarray, key, mesh=None) -> Optional[Any]:
    """The [T + 1] sigma_bar of spec.sampler.variance (analytic / ml_isotropic), else None.

    The Monte Carlo moments (spec.variance.mc_samples per t over the training images) are
    cached in workdir/variance/ next to the checkpoints and reused when the variance name, the
    timesteps and the sample count match (delete the file after retraining in place). With a
    mesh each Monte Carlo batch is split over its devices (all processes compute the table).
    """
    name, vc = spec.sampler.variance, spec.variance
    if name not in variance.MONTE_CARLO_VARIANCES:
        return None
    path = os.path.join(workdir, "variance", f"{name}_step{spec.train.num_steps}.npz")
    timesteps = np.asarray(sorted(set(int(t) for t in timesteps)), np.int32)
    if os.path.exists(path):
        cached = np.load(path)
        if (np.array_equal(cached["timesteps"], timesteps)
                and int(cached["mc_samples"]) == vc.mc_samples):
            return jax.numpy.asarray(cached["sigma_bar"])
    eps_fn = variance.eps_fn_from_x0_predictor(process, network_predictor(process, eval_apply))
    sigma_bar = variance.estimate_sigma_bar(
        name, process, eps_fn, params, data, timesteps, key=key, num_samples=vc.mc_samples,
        batch_size=vc.mc_batch_size, max_var=1.0, mesh=mesh)
    if distributed.is_primary():  # every process computes the same table; one writes it
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(path + ".tmp.npz", timesteps=timesteps, mc_samples=vc.mc_samples,
                 sigma_bar=np.asarray(sigma_bar))
        os.replace(path + ".tmp.npz", path)
    return sigma_bar


def make_eval_sampler(spec: Spec, process, eval_apply, name: str, num_steps: int, *,
                      sigma_bar=None, head: Optional[HeadModel] = None, spacing=None,
                      mask: Optional[np.ndarray] = None):
    """The sampler of one table row, for any process (`udm.sampling.make_sampler`).

    With spec.sampler.clip_x0 the x_0 estimates (the final samples, for the SDE / ODE
    solvers) are clipped to the data range [-1, 1]; token processes predict logits, which are
    not clipped. A ddpm / ddim row runs with spec.sampler.variance (docs/optimal_variance.md): sigma_bar is
    the [T + 1] table of analytic / ml_isotropic (`estimate_sigma_bar`), head the NPR / SN head
    (the sampler's params are then {"mean": ..., "head": ...}). spacing overrides
    spec.sampler.spacing (e.g. with an explicit sub-sequence from optimal_trajectory).
    """
    sc = spec.sampler
    spacing = sc.spacing if spacing is None else spacing
    tokens = process.capabilities.tokens
    clip = 1.0 if sc.clip_x0 and not tokens else None
    eta = sampler_eta(spec, name)
    options = dict(eta=eta, spacing=spacing, clip_x0=clip, noise_scale=sc.noise_scale,
                   snr=sc.snr, corrector_steps=sc.corrector_steps, solver=sc.solver,
                   rtol=sc.rtol, atol=sc.atol, max_steps=sc.max_steps, rho=sc.rho,
                   threshold=None if tokens else sc.threshold, churn=sc.churn,
                   churn_tmin=sc.churn_tmin, churn_tmax=sc.churn_tmax,
                   churn_noise=sc.churn_noise)
    num_classes = num_classes_of(spec)
    if num_classes is not None or mask is not None:
        predictor = conditional.conditioned_predictor(
            process, eval_apply, num_classes=num_classes, scale=sc.guidance_scale,
            interval=sc.guidance_interval or None, mask=mask)
    else:
        predictor = network_predictor(process, eval_apply)
    if sc.variance == "fixed_small":
        return make_sampler(process, predictor, name, num_steps=num_steps, **options)
    grid = time_grid(process, num_steps, spacing, rho=sc.rho)
    cap = variance.std_cap(process, grid, eta=eta, clip_pixel=sc.clip_pixel or None,
                           clip_sigma_idx=sc.clip_sigma_idx)
    table = None
    if sc.variance in variance.HEAD_VARIANCES:
        if head is None or head.kind != sc.variance:
            raise ValueError(f"config.sampler.variance={sc.variance!r} needs a trained "
                             f"{sc.variance} head (config.variance.head)")
        predictor = variance_heads.head_predictor(process, head.features_fn, head.head_apply,
                                                  kind=head.kind, clip=clip, max_var=1.0)
    else:
        table = variance.sampling_sigma_bar(sc.variance, process, grid, eta=eta,
                                            sigma_bar=sigma_bar)
    return make_sampler(process, predictor, name, num_steps=num_steps, sigma_bar=table,
                        std_cap=cap, **options)


def num_classes_of(spec: Spec) -> Optional[int]:
    """The class count of the spec's class-conditional model, None for an unconditional one."""
    return dict(spec.model.kwargs).get("num_classes")


def condition_label(spec: Spec) -> str:
    """What the samples were conditioned on, for table headers ("" when unconditioned)."""
    parts = []
    if num_classes_of(spec) is not None:
        interval = spec.sampler.guidance_interval
        parts.append(f"class-conditional, guidance scale {spec.sampler.guidance_scale:g}"
                     + (f" for {interval[0]:g} <= t <= {interval[1]:g}" if interval else ""))
    if spec.sampler.inpaint:
        parts.append(f"inpainting with {spec.sampler.inpaint} of each held-out example known")
    return "; ".join(parts)


def sampler_label(spec: Spec, name: str) -> str:
    """How a sampler row is named in the table."""
    if name in ("ddpm", "ddim") and spec.sampler.variance != "fixed_small":
        base = "ddpm" if name == "ddpm" else f"ddim (eta={spec.sampler.eta:g})"
        return f"{base}, {spec.sampler.variance} variance"
    if name == "ddim":
        return f"ddim (eta={spec.sampler.eta:g})"
    if name == "em" and spec.sampler.noise_scale != 1.0:
        return f"em (lambda={spec.sampler.noise_scale:g})"
    if name == "pc":
        return f"pc (snr={spec.sampler.snr:g})"
    if name == "ode_adaptive":
        return f"ode_adaptive ({spec.sampler.solver}, rtol={spec.sampler.rtol:g})"
    return name


def score(samples: np.ndarray, classifier, reference_features, train_images: np.ndarray,
          held_out: np.ndarray) -> Dict[str, Any]:
    """All scores of one set of images against the held-out reference.

    Without labels there is no classifier (classifier is None): only the pixel-space
    memorisation scores are computed.
    """
    memo = metrics.memorisation_report(samples, train_images, held_out)
    scores = dict(fd=None, class_entropy=None, histogram_entropy=None, max_class_fraction=None,
                  nn_train_distance=memo["sample_nn_mean"],
                  memorised_fraction=memo["memorised_fraction"])
    if classifier is not None:
        stats = metrics.class_statistics(classifier.probs(samples))
        scores.update(
            fd=float(metrics.frechet_distance(classifier.features(samples), reference_features)),
            class_entropy=stats["mean_entropy_nats"],
            histogram_entropy=stats["histogram_entropy_nats"],
            max_class_fraction=stats["max_class_fraction"])
    return scores


_COLUMNS = [
    ("samples", "{}"), ("steps", "{}"), ("nfe", "{:g}"), ("fd", "{:.2f}"), ("class_entropy", "{:.3f}"),
    ("histogram_entropy", "{:.3f}"), ("max_class_fraction", "{:.3f}"),
    ("nn_train_distance", "{:.3f}"), ("memorised_fraction", "{:.3f}"), ("seconds", "{:.1f}"),
]
_HEADERS = ["samples", "steps K", "NFE", "FD-digits ↓", "class entropy (nats) ↓",
            "class-histogram entropy (nats, max ln 10 = 2.303)", "largest class fraction",
            "mean NN distance to train", "memorised fraction", "sampling time (s)"]


def markdown_table(rows: List[Dict[str, Any]], columns=_COLUMNS, headers=_HEADERS) -> str:
    """One markdown row per dict; `columns` are (key, format) pairs, "–" where a value is None."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [fmt.format(row[k]) if row.get(k) is not None else "–" for k, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sample_rows(spec: Spec, workdir: str, runs, *, process, eval_apply, params, dataset, mesh,
                sample_key, num_samples: int, head: Optional[HeadModel] = None):
    """Samples num_samples examples with every (sampler, K) of `runs`, from the same x_T.

    Returns ({(name, K): (samples, NFE per sample, seconds)}, conditions), conditions the
    `conditional.Conditions` of a class-conditional model or spec.sampler.inpaint (None
    otherwise). With an Analytic-DPM / ML Monte Carlo variance its sigma_bar table is estimated
    first (`estimate_sigma_bar`).
    """
    ec = spec.eval
    # Same x_T for every row.
    prior_key, noise_key = jax.random.split(sample_key)
    priors = draw_priors(process, num_samples=num_samples, batch_size=ec.batch_size,
                         image_shape=dataset.train_data.shape[1:], key=prior_key, mesh=mesh)
    conditions = None
    if num_classes_of(spec) is not None or spec.sampler.inpaint:
        test_examples = dataset.test_tokens if dataset.tokens else dataset.test_images
        conditions = conditional.batch_conditions(
            num_samples=num_samples, batch_size=ec.batch_size, num_classes=num_classes_of(spec),
            inpaint=spec.sampler.inpaint, test_examples=test_examples,
            test_labels=getattr(dataset, "test_labels", None), mesh=mesh)
    sigma_bar, sample_params = None, params
    if spec.sampler.variance in variance.MONTE_CARLO_VARIANCES:
        grid_times = np.concatenate([time_grid(process, k, spec.sampler.spacing,
                                               rho=spec.sampler.rho)[:, 0]
                                     for _, k in runs])
        sigma_bar = estimate_sigma_bar(spec, workdir, process=process, eval_apply=eval_apply,
                                       params=params, data=dataset.train_data,
                                       timesteps=grid_times, key=jax.random.fold_in(sample_key, 7),
                                       mesh=mesh)
    if head is not None and spec.sampler.variance == head.kind:
        sample_params = {"mean": params, "head": head.params}
    generated = {}
    for name, k in tqdm(runs, desc="sample", unit="run",
                        disable=not (spec.train.progress_bar and distributed.is_primary())):
        sample_fn = make_eval_sampler(spec, process, eval_apply, name, k or 0,
                                      sigma_bar=sigma_bar, head=head,
                                      mask=None if conditions is None else conditions.mask)
        start = time.perf_counter()
        samples, nfe = generate(sample_fn, sample_params, priors, num_samples=num_samples,
                                key=noise_key,
                                conditions=None if conditions is None else conditions.batches)
        generated[name, k] = samples, nfe, time.perf_counter() - start
    return generated, conditions


def evaluate(spec: Spec, workdir: str, *, process, eval_apply, params, dataset, mesh,
             sample_key, head: Optional[HeadModel] = None) -> Dict[str, Any]:
    """Samples with every (sampler, K) of spec.eval, scores them, writes results.md/json.

    The scores and files depend on the data, not on the process: the dataset picks its
    evaluator (`EVALUATORS`, images or text). head: the trained NPR / SN head when
    spec.sampler.variance is "npr" / "sn". In a multi-process run every process samples (the
    batches are sharded over all devices) and gathers the samples; process 0 alone then scores
    and writes, the others return {}. Sampling comes first so that no process waits in a
    collective while process 0 trains the classifier or scores.
    """
    evaluator = EVALUATORS[dataset.tokens]
    n, runs = evaluator.plan(spec, dataset)
    generated, conditions = sample_rows(
        spec, workdir, runs, process=process, eval_apply=eval_apply, params=params,
        dataset=dataset, mesh=mesh, sample_key=sample_key, num_samples=n, head=head)
    if not distributed.is_primary():  # process 0 alone scores and writes
        return {}
    return evaluator.report(spec, workdir, dataset, generated, n, conditions)


def _row_steps(name: str, k: int) -> Optional[int]:
    """The K of a table row: None for a sampler that picks its own steps."""
    return None if sampling.SAMPLERS.get(name).adaptive else k


def _primary_row(spec: Spec):
    """The (sampler, K) of samples.png."""
    return spec.sampler.name, _row_steps(spec.sampler.name, spec.sampler.num_steps)


def _image_plan(spec: Spec, dataset):
    """(samples per row, [(sampler, K)]) of an image evaluation: the eval grid plus the
    sampler of samples.png; an adaptive solver picks its own steps (one row, K = None)."""
    ec = spec.eval
    n = min(ec.num_samples, len(dataset.test_images))
    runs = list(dict.fromkeys([(name, _row_steps(name, k))
                               for name in ec.samplers for k in ec.step_counts]))
    primary = _primary_row(spec)
    if primary not in runs:
        runs.append(primary)
    return n, runs


def conditioning_scores(samples: np.ndarray, conditions, classifier=None) -> Dict[str, Any]:
    """How well samples meet their conditions: the classifier's accuracy on the requested (or,
    inpainting, the source) labels, and how much the samples changed the known part: the
    fraction of known tokens changed, or the mean |change| of known pixels (0 where the sampler
    ends on an x_0 estimate, docs/inpainting.md)."""
    scores = {}
    if conditions is None:
        return scores
    if conditions.labels is not None and classifier is not None:
        predicted = np.argmax(classifier.probs(samples), axis=-1)
        scores["class_accuracy"] = float(np.mean(predicted == conditions.labels[:len(samples)]))
    if conditions.mask is not None:
        known = conditions.known[:len(samples)]
        change = np.abs(samples.astype(np.float64) - known.astype(np.float64))[:, conditions.mask]
        tokens = np.issubdtype(known.dtype, np.integer)
        scores["known_changed"] = float(np.mean(change > 0) if tokens else np.mean(change))
    return scores


def _condition_columns(conditions, columns, headers, *, classifier=True):
    """The table's columns with those of `conditioning_scores` appended where they apply."""
    columns, headers = list(columns), list(headers)
    if conditions is not None and conditions.labels is not None and classifier:
        columns.insert(-1, ("class_accuracy", "{:.3f}"))
        headers.insert(-1, "agreement with the completed example's label ↑"
                       if conditions.mask is not None else "accuracy of the requested class ↑")
    if conditions is not None and conditions.mask is not None:
        tokens = np.issubdtype(conditions.known.dtype, np.integer)
        columns.insert(-1, ("known_changed", "{:.3f}" if tokens else "{:.2e}"))
        headers.insert(-1, "known tokens changed" if tokens else "known pixels, mean |change|")
    return columns, headers


def _image_report(spec: Spec, workdir: str, dataset, generated, n: int,
                  conditions=None) -> Dict[str, Any]:
    """Scores image samples (FD-digits, class statistics, memorisation), writes grids and tables.

    With conditions (a class-conditional model, inpainting) the table adds the accuracy of the
    requested class and the mean |change| of the known pixels (`conditioning_scores`), and
    inpainting writes known.png, the held-out examples with their unknown part grey."""
    ec = spec.eval
    held_out = dataset.test_images
    grid_n = min(ec.grid_size, n)
    primary = _primary_row(spec)

    classifier = reference = None
    if dataset.num_classes is not None:
        classifier = load_or_train_classifier(
            os.path.join(workdir, "classifier"), dataset, seed=spec.seed,
            num_steps=ec.classifier_steps)
        reference = classifier.features(held_out)
    # Reference row, what a perfect model would score with n samples: FD of n real training
    # images against the held-out set; the other columns describe the held-out images themselves
    # (their class statistics and their distance to the nearest training image).
    rng = np.random.default_rng(spec.seed)
    real = dataset.train_images[rng.choice(len(dataset.train_images), n, replace=False)]
    real_row = score(held_out, classifier, reference, dataset.train_images, held_out)
    if classifier is not None:
        real_row["fd"] = float(metrics.frechet_distance(classifier.features(real), reference))
    rows = [dict(samples="real digits", steps=None, seconds=None, **real_row)]
    for (name, k), (samples, nfe, seconds) in generated.items():
        label = sampler_label(spec, name)
        rows.append(dict(samples=label, steps=k, nfe=nfe,
                         seconds=seconds,
                         **score(samples, classifier, reference, dataset.train_images, held_out),
                         **conditioning_scores(samples, conditions, classifier)))
        suffix = f"{name}_{k}" if k is not None else name
        title = f"{label}, K={k}" if k is not None else label
        metrics.save_image_grid(samples[:grid_n], os.path.join(workdir, f"samples_{suffix}.png"),
                                title=title)
        if (name, k) == primary:
            metrics.save_image_grid(samples[:grid_n], os.path.join(workdir, "samples.png"),
                                    title=title)
    metrics.save_image_grid(real[:grid_n], os.path.join(workdir, "real.png"), title="real digits")
    if conditions is not None and conditions.mask is not None:
        shown = np.where(conditions.mask, conditions.known[:grid_n], 0.0)
        metrics.save_image_grid(shown, os.path.join(workdir, "known.png"),
                                title=f"known part ({spec.sampler.inpaint})")

    header = (f"Evaluation of {dataset.name} at training step {spec.train.num_steps}: "
              f"{n} samples per row against {len(held_out)} held-out images; "
              + (f"classifier held-out accuracy {classifier.test_accuracy:.4f}. " if classifier
                 else "no labels, so no classifier scores. ")
              + f"Real row: FD of {n} training images vs the held-out set; other columns of "
              f"the held-out images."
              + (f" Samples conditioned: {condition_label(spec)}." if conditions is not None
                 else ""))
    columns, headers = _condition_columns(conditions, _COLUMNS, _HEADERS,
                                          classifier=classifier is not None)
    table = header + "\n\n" + markdown_table(rows, columns, headers) + "\n"
    results = dict(classifier_test_accuracy=classifier.test_accuracy if classifier else None,
                   num_samples=n, rows=rows)
    _atomic_write(os.path.join(workdir, "results.md"), table)
    _atomic_write(os.path.join(workdir, "results.json"), json.dumps(results, indent=1))
    print(table)
    return results


_TEXT_COLUMNS = [
    ("samples", "{}"), ("steps", "{}"), ("validity", "{:.3f}"), ("sample_perplexity", "{:.2f}"),
    ("distinct_1", "{:.3f}"), ("distinct_2", "{:.3f}"), ("unique_fraction", "{:.3f}"),
    ("train_copy_fraction", "{:.3f}"), ("seconds", "{:.1f}"),
]
_TEXT_HEADERS = ["samples", "steps K", "validity ↑", "perplexity under held-out 3-gram ↓",
                 "distinct-1", "distinct-2", "unique fraction", "copies of training sequences",
                 "sampling time (s)"]


def _text_plan(spec: Spec, dataset):
    """(samples per row, [(sampler, K)]) of a text evaluation: the eval grid."""
    ec = spec.eval
    n = min(ec.num_samples, len(dataset.train_tokens))
    return n, list(dict.fromkeys([(name, k) for name in ec.samplers for k in ec.step_counts]))


def _text_report(spec: Spec, workdir: str, dataset, generated, n: int,
                 conditions=None) -> Dict[str, Any]:
    """Token samples scored by udm.metrics.text_report; writes results.md / results.json and
    samples_<sampler>_<K>.txt (decoded).

    Headline numbers: validity (the arithmetic language, checked exactly), the perplexity of the
    samples under a character 3-gram model fitted on the held-out split, distinct-1/2. The
    reference row scores as many real training sequences the same way. With inpainting
    ("prefix:N") each sample completes a held-out sequence and the table adds the fraction of
    known tokens changed (validity of arithmetic is then the exactness of the filled sums).
    """
    ec = spec.eval
    reference = metrics.fit_reference_model(dataset)
    rng = np.random.default_rng(spec.seed)
    real = dataset.train_tokens[rng.choice(len(dataset.train_tokens), n, replace=False)]
    rows = [dict(samples="real sequences", steps=None, seconds=None,
                 **metrics.text_report(real, dataset, reference, seed=spec.seed))]
    for (name, k), (samples, _, seconds) in generated.items():
        rows.append(dict(samples=sampler_label(spec, name), steps=k, seconds=seconds,
                         **metrics.text_report(samples, dataset, reference, seed=spec.seed),
                         **conditioning_scores(samples, conditions)))
        _atomic_write(os.path.join(workdir, f"samples_{name}_{k}.txt"),
                      "\n".join(dataset.decode(samples[:ec.grid_size])) + "\n")
    table = (f"Evaluation of {dataset.name} (l = {dataset.seq_len}, V = {dataset.vocab_size}) at "
             f"training step {spec.train.num_steps}: {n} samples per row; held-out 3-gram "
             f"perplexity of held-out text under a train-fitted model "
             f"{rows[0]['heldout_perplexity']:.2f}, of uniform random text "
             f"{rows[0]['random_perplexity']:.2f}."
             + (f" Samples conditioned: {condition_label(spec)}." if conditions is not None else "")
             + "\n\n"
             + markdown_table(rows, *_condition_columns(conditions, _TEXT_COLUMNS, _TEXT_HEADERS,
                                                        classifier=False)) + "\n")
    results = dict(num_samples=n, rows=rows)
    _atomic_write(os.path.join(workdir, "results.md"), table)
    _atomic_write(os.path.join(workdir, "results.json"), json.dumps(results, indent=1))
    print(table)
    return results


class Evaluator(NamedTuple):
    """What an evaluation does for one kind of data: which rows, and how they are scored."""
    plan: Callable      # plan(spec, dataset) -> (samples per row, [(sampler, K)])
    report: Callable    # report(spec, workdir, dataset, generated, n) -> results dict


# Chosen by the dataset (`dataset.tokens`): images or token sequences.
EVALUATORS = {False: Evaluator(_image_plan, _image_report),
              True: Evaluator(_text_plan, _text_report)}


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
