"""A trained model's deterministic sampler as a map from Gaussian latents to samples, and the
latent sets of the hubness-prior experiment (docs/hubness.md §3, §7).

A deterministic sampler (DDIM with eta = 0, a probability-flow ODE solver) started from
x_T = prior_std z is a function of z ~ N(0, I) alone, like a GAN's generator, so latent filters
such as the hubness prior can be compared on it. The prior's scale comes from the process
contract (`Capabilities.isotropic_prior`, docs/architecture.md).
"""
import dataclasses
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from udm import hubness, metrics, parallel
from udm.pipeline import evaluate as eval_lib
from udm.pipeline import train
from udm.pipeline.spec import Spec
from udm.processes.base import prior_from_latents

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LatentGenerator:
    """z [M, dim] ~ N(0, I) -> samples [M, *state_shape] through a deterministic sampler.

    Attributes:
      process: the process; it must declare `isotropic_prior` (x_T = prior_std z).
      sample_fn: sample(params, x_T, *, key) -> SampleOutput, e.g. from `make_eval_sampler`.
        It should be deterministic: otherwise the samples also depend on noise_key.
      params: the sampler's params (the EMA params of a trained model, or anything an oracle
        predictor ignores).
      state_shape: the shape of one x_T, e.g. (8, 8, 1); dim = its size.
      mesh: the device mesh the batches are sharded over (`udm.parallel.data_mesh()`).
      batch_size: latents per sampler call; a multiple of the mesh's device count.
      noise_key: the key of batch i is fold_in(noise_key, i) (unused by a deterministic sampler).
    """
    process: Any
    sample_fn: Callable
    params: Any
    state_shape: tuple
    mesh: Any
    batch_size: int
    noise_key: Array

    def __post_init__(self):
        if not self.process.capabilities.isotropic_prior:
            raise ValueError(f"{type(self.process).__name__} has no isotropic Gaussian prior "
                             f"(Capabilities.isotropic_prior): no latent z maps to its x_T")

    @property
    def dim(self) -> int:
        """The size of one latent z (the state's size)."""
        return math.prod(self.state_shape)

    def __call__(self, z, *, desc: str = "") -> np.ndarray:
        """Samples [M, *state_shape] of the latents z [M, dim], in batches.

        The last batch is filled up by repeating z cyclically (as np.resize does) and the
        extra samples are dropped, so a sampler whose step size is shared by the batch sees
        latents of the same law.
        """
        z = np.asarray(z, np.float32)
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must be [M, {self.dim}], got {z.shape}")
        m = len(z)
        padded = -(-m // self.batch_size) * self.batch_size
        x_T = prior_from_latents(self.process, np.resize(z, (padded, self.dim))).reshape(
                padded, *self.state_shape)
        batches = range(padded // self.batch_size)
        out = []
        for i in tqdm(batches, desc=desc, unit="batch", leave=False, disable=len(batches) < 4):
            chunk = parallel.shard_batch(x_T[i * self.batch_size:(i + 1) * self.batch_size],
                                         self.mesh)
            samples, _ = eval_lib.generate(self.sample_fn, self.params, [chunk],
                                           num_samples=self.batch_size,
                                           key=jax.random.fold_in(self.noise_key, i))
            out.append(samples)
        return np.concatenate(out)[:m]


def latent_generator(spec: Spec, workdir: str, sampler: str, num_steps: int, *,
                     batch_size: int, experiment: Optional[train.Experiment] = None
                     ) -> LatentGenerator:
    """The deterministic generator of a trained spec: trains, or restores, then wraps a sampler.

    `udm.pipeline.train.train` trains to spec.train.num_steps in workdir, or restores the
    checkpoint there; the sampler is `make_eval_sampler(spec, ..., sampler, num_steps)` on the
    EMA params, so spec.sampler's options (eta, clip_x0, rtol, ...) apply. Choose a
    deterministic one (ddim with spec.sampler.eta = 0, an ODE solver).

    Args:
      spec: the validated spec of an image model whose process declares `isotropic_prior`.
      workdir: the model's workdir (checkpoints).
      sampler, num_steps: a name of `udm.sampling.SAMPLERS` and its K.
      batch_size: latents per sampler call.
      experiment: `train.build(spec)` when the caller has it already.

    Returns:
      The LatentGenerator (its noise_key: the second half of the experiment's sample_key).
    """
    exp = train.build(spec) if experiment is None else experiment
    params = train.train(spec, workdir, experiment=exp).ema_params
    _, eval_apply = train.make_apply_fns(exp.model)
    sample_fn = eval_lib.make_eval_sampler(spec, exp.process, eval_apply, sampler, num_steps)
    _, noise_key = jax.random.split(exp.sample_key)
    return LatentGenerator(exp.process, sample_fn, params, tuple(exp.dataset.image_shape),
                           exp.mesh, batch_size, noise_key)


# --- latent sets -----------------------------------------------------------------------------

def z_space_latent_sets(num_samples: int, dim: int, *, pool_size: int, k: int, threshold: int,
                        max_pools: int, key: Array) -> Dict[str, Dict[str, Any]]:
    """The random, hub, anti-hub and truncated latent sets of docs/hubness.md §7 (one seed).

    random: z ~ N(0, I_dim); hub / antihub: `hubness.hub_antihub_select` (N_k > threshold /
    N_k = 0 in z space, self excluded, pools drawn until both sets are full); truncated:
    `hubness.truncated_normal_matched` at the hub set's mean norm (the truncation trick).

    Args:
      num_samples: latents per set.
      dim: latent dimension.
      pool_size, k, threshold, max_pools: of the z-space filter.
      key: split into the random, pool and truncation keys.

    Returns:
      {"random", "hub", "antihub", "truncated"}: dicts with z [num_samples, dim] (numpy), the
      filter's pass_rate over the pools drawn (None for random and truncated), pools (hub,
      antihub) and the truncation radius (truncated).
    """
    random_key, pool_key, trunc_key = jax.random.split(key, 3)
    sets = {"random": dict(z=np.asarray(jax.random.normal(random_key, (num_samples, dim))),
                           pass_rate=None)}
    selections = hubness.hub_antihub_select(dim=dim, num_wanted=num_samples,
                                            pool_size=pool_size, k=k, threshold=threshold,
                                            max_rounds=max_pools, key=pool_key)
    for name, sel in zip(("hub", "antihub"), selections):
        sets[name] = dict(z=np.asarray(sel.latents), pass_rate=sel.num_passed / sel.num_drawn,
                          pools=sel.num_rounds)
    hub_norm = float(np.linalg.norm(sets["hub"]["z"], axis=1).mean())
    sets["truncated"] = dict(
            z=np.asarray(hubness.truncated_normal_matched(num_samples, dim, hub_norm,
                                                          key=trunc_key)),
            pass_rate=None, radius=hubness.truncation_radius(dim, hub_norm))
    return sets


def output_space_hub_set(generator: LatentGenerator, features_fn: Callable, *,
                         num_samples: int, pool_size: int, k: int, threshold: int, key: Array,
                         cache_path: Optional[str] = None) -> Dict[str, Any]:
    """The paper's variant of the hubness prior: N_k >= t counted in a space of the samples.

    One pool z ~ N(0, I) of pool_size (drawn with key) is generated, mapped by features_fn
    (e.g. a classifier's penultimate features, the analogue of StyleGAN's W), and its N_k is
    counted there with the point itself included, as in the paper's code (docs/hubness.md
    §3.2). When fewer than num_samples reach t, t is lowered to the num_samples-th largest N_k
    of the pool (reported as `threshold`, the paper's as `paper_threshold`). Generating the pool
    is the costly part: with cache_path its latents, features and seconds are kept there (npz)
    and read back.

    Args:
      generator: the latents-to-samples map.
      features_fn: samples [P, ...] -> features [P, d].
      num_samples: latents wanted.
      pool_size, k, threshold: the pool, the neighbourhood size and the paper's t.
      key: PRNG key of the pool.
      cache_path: optional .npz path of the pool's cache.

    Returns:
      dict: z [num_samples, dim], pass_rate (at the threshold used), paper_pass_rate,
      paper_threshold, threshold, pool, pool_seconds, nk_max, nk_skewness and corr_nk_norm
      (correlation of N_k with ||z|| over the pool).
    """
    if cache_path is not None and os.path.exists(cache_path):
        cached = np.load(cache_path)
        pool, features, seconds = cached["z"], cached["features"], float(cached["seconds"])
    else:
        pool = np.asarray(jax.random.normal(key, (pool_size, generator.dim)))
        start = time.perf_counter()
        features = features_fn(generator(pool, desc=f"paper pool of {pool_size}"))
        seconds = time.perf_counter() - start
        if cache_path is not None:
            np.savez(cache_path + ".tmp.npz", z=pool, features=features, seconds=seconds)
            os.replace(cache_path + ".tmp.npz", cache_path)
    nk = np.asarray(hubness.k_occurrence_of(features, k, include_self=True))
    passed_at_t = int(np.sum(nk >= threshold))
    used_t = threshold if passed_at_t >= num_samples else int(np.sort(nk)[::-1][num_samples - 1])
    selection = hubness.hub_select(pool=pool, map_fn=lambda _: features, k=k, threshold=used_t,
                                   strict=False, include_self=True, num_wanted=num_samples)
    return dict(z=np.asarray(selection.latents), pass_rate=int(np.sum(nk >= used_t)) / pool_size,
                paper_pass_rate=passed_at_t / pool_size, paper_threshold=threshold,
                threshold=used_t, pool=pool_size, pool_seconds=seconds, nk_max=int(nk.max()),
                nk_skewness=float(hubness.skewness(jnp.asarray(nk))),
                corr_nk_norm=float(np.corrcoef(nk, np.linalg.norm(pool, axis=1))[0, 1]))


# --- scores ----------------------------------------------------------------------------------

def score_samples(samples: np.ndarray, classifier, reference_features, dataset
                  ) -> Dict[str, Any]:
    """`evaluate.score` of image samples plus the classifier's confidence (mean max probability).

    Args:
      samples: [M, H, W, C] images.
      classifier: the FD-digits classifier (`load_or_train_classifier`).
      reference_features: [N, d] its features of the held-out images.
      dataset: the image dataset (train_images, test_images).
    """
    scores = eval_lib.score(samples, classifier, reference_features, dataset.train_images,
                            dataset.test_images)
    scores["confidence"] = float(np.mean(np.max(classifier.probs(samples), axis=1)))
    return scores


def real_reference_scores(dataset, classifier, reference_features, *, num_samples: int,
                          seeds: int) -> List[Dict[str, Any]]:
    """The scores of real data per seed, what a perfect generator would score.

    As the reference row of `evaluate.evaluate`: the FD of num_samples real training images
    (drawn with np.random.default_rng(seed)) against the held-out set; the other scores are
    those of the held-out images themselves (training images are at distance 0 from the
    training set).

    Returns:
      [seeds] dicts of `score_samples` keys with that seed's fd.
    """
    held_out = score_samples(dataset.test_images, classifier, reference_features, dataset)
    per_seed = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        real = dataset.train_images[rng.choice(len(dataset.train_images), num_samples,
                                               replace=False)]
        fd = float(metrics.frechet_distance(classifier.features(real), reference_features))
        per_seed.append(dict(held_out, fd=fd))
    return per_seed


SCORE_KEYS = ("fd", "confidence", "class_entropy", "histogram_entropy", "max_class_fraction",
              "nn_train_distance", "memorised_fraction")


def summarise_seeds(name: str, per_seed: List[Dict[str, Any]], extra: Dict[str, Any]
                    ) -> Dict[str, Any]:
    """One table row from the scores of several seeds: means, and the FD's spread.

    Args:
      name: the row's `method`.
      per_seed: dicts with SCORE_KEYS, mean_norm and pass_rate (None where no filter ran).
      extra: entries placed after method and seeds.

    Returns:
      dict: method, seeds, *extra, the mean of each of SCORE_KEYS and mean_norm, fd_sd (sample
      sd over seeds; None for one seed), fd_per_seed and the mean pass_rate (None if none).
    """
    row = dict(method=name, seeds=len(per_seed), **extra)
    for key in SCORE_KEYS + ("mean_norm",):
        row[key] = float(np.mean([s[key] for s in per_seed]))
    fds = np.array([s["fd"] for s in per_seed])
    row["fd_sd"] = float(fds.std(ddof=1)) if len(fds) > 1 else None
    row["fd_per_seed"] = [float(f) for f in fds]
    rates = [s["pass_rate"] for s in per_seed if s.get("pass_rate") is not None]
    row["pass_rate"] = float(np.mean(rates)) if rates else None
    return row


def pooled_fd_sd(rows) -> float:
    """The noise of one FD: the seed-to-seed sd pooled over every row with several seeds.

    Each row's mean differs, but its spread over seeds estimates the same sampling noise of an
    FD of that many samples: sqrt(mean of the rows' sample variances); nan without such a row.
    """
    variances = [np.var(r["fd_per_seed"], ddof=1) for r in rows if r["seeds"] > 1]
    return float(np.sqrt(np.mean(variances))) if variances else float("nan")


def fd_difference(row_a: Dict[str, Any], row_b: Dict[str, Any], noise: float):
    """(Δ = FD_a - FD_b, Δ in standard errors of the difference of the two seed means).

    SE = noise sqrt(1 / seeds_a + 1 / seeds_b), noise from `pooled_fd_sd`.
    """
    delta = row_a["fd"] - row_b["fd"]
    return delta, delta / (noise * np.sqrt(1.0 / row_a["seeds"] + 1.0 / row_b["seeds"]))
