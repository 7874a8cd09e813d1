"""One mean model and every reverse variance of docs/optimal_variance.md: the trained mean model,
its NPR / SN heads and its Monte Carlo sigma_bar tables, and for each variance choice its
sampler and its K-step variational bound in bits/dim.

Every function takes typed `Spec`s, never a ConfigDict; `spec_for(name)` gives the spec whose
spec.sampler.variance is `name` (and spec.variance.head for a head), the mean model's for
"fixed_small".
"""
import dataclasses
import os
import time
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np

from udm import likelihood, variance, variance_heads
from udm.pipeline import evaluate as eval_lib
from udm.pipeline import train
from udm.pipeline.spec import Spec
from udm.sampling import network_predictor, time_grid
from udm.variance_heads import HeadModel

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VarianceModels:
    """A trained mean model with everything each reverse variance needs.

    Attributes:
      experiment: `train.build` of the mean model's spec.
      params: the mean model's EMA params.
      eval_apply: eval_apply(params, x_t, t) of the mean model.
      heads: {"npr", "sn"} -> the trained HeadModel on the frozen mean model.
      sigma_bar: {"analytic", "ml_isotropic"} -> [T + 1] sigma_bar tables (every t).
      train_seconds: time spent training (or restoring) the mean model and the heads.
    """
    experiment: train.Experiment
    params: Any
    eval_apply: Callable
    heads: Dict[str, HeadModel]
    sigma_bar: Dict[str, Array]
    train_seconds: float
    # The optimal trajectories computed so far, by (K, bin_width): a memo, not state.
    _trajectories: Dict[Any, np.ndarray] = dataclasses.field(default_factory=dict, repr=False,
                                                            compare=False)

    def spacing(self, trajectory: str, num_steps: int, *, bin_width: Optional[float] = None):
        """"uniform", or ("optimal") the K-step trajectory with the smallest bound under the
        analytic variance (`variance.optimal_trajectory`, docs/optimal_variance.md §5)."""
        if trajectory == "uniform":
            return "uniform"
        if trajectory != "optimal":
            raise ValueError(f"trajectory must be 'uniform' or 'optimal', got {trajectory!r}")
        if (num_steps, bin_width) not in self._trajectories:
            self._trajectories[num_steps, bin_width] = variance.optimal_trajectory(
                    self.experiment.process, self.sigma_bar["analytic"] ** 2, num_steps,
                    bin_width=bin_width)
        return self._trajectories[num_steps, bin_width]

    def sampler_params(self, variance_name: str):
        """The sampler's params: {"mean", "head"} for a head variance, else the mean's."""
        if variance_name in self.heads:
            return {"mean": self.params, "head": self.heads[variance_name].params}
        return self.params


def trained_variance_models(spec_for: Callable[[str], Spec], workdir: str) -> VarianceModels:
    """Trains (or restores) the mean model and its heads; estimates (or reads) sigma_bar.

    The mean model goes to workdir/mean, each head of `variance.HEAD_VARIANCES` to
    workdir/<kind> (`train.trained_variance_head`), and the Monte Carlo tables of "analytic" and
    "ml_isotropic" at every t are cached next to the mean model (`evaluate.estimate_sigma_bar`).

    Args:
      spec_for: variance name -> its spec (see the module docstring).
      workdir: the parent of mean/, npr/, sn/.
    """
    spec = spec_for("fixed_small")
    exp = train.build(spec)
    start = time.perf_counter()
    params = train.train(spec, os.path.join(workdir, "mean"), experiment=exp).ema_params
    _, eval_apply = train.make_apply_fns(exp.model)
    heads = {kind: train.trained_variance_head(spec_for(kind), os.path.join(workdir, kind),
                                               params, experiment=exp)
             for kind in variance.HEAD_VARIANCES}
    train_seconds = time.perf_counter() - start
    times = np.arange(1, exp.process.num_timesteps + 1)  # an optimal trajectory may visit any t
    sigma_bar = {name: eval_lib.estimate_sigma_bar(
                         spec_for(name), os.path.join(workdir, "mean"), process=exp.process,
                         eval_apply=eval_apply, params=params, data=exp.dataset.train_images,
                         timesteps=times, key=jax.random.fold_in(exp.sample_key, 7),
                         mesh=exp.mesh)
                 for name in ("analytic", "ml_isotropic")}
    return VarianceModels(exp, params, eval_apply, heads, sigma_bar, train_seconds)


def variance_sampler(models: VarianceModels, spec: Spec, sampler: str, num_steps: int, *,
                     spacing="uniform"):
    """(sample_fn, params) of `sampler` with K steps and spec.sampler.variance.

    `evaluate.make_eval_sampler` with the models' sigma_bar table or head for that variance.
    """
    name = spec.sampler.variance
    sample_fn = eval_lib.make_eval_sampler(
            spec, models.experiment.process, models.eval_apply, sampler, num_steps,
            sigma_bar=models.sigma_bar.get(name), head=models.heads.get(name), spacing=spacing)
    return sample_fn, models.sampler_params(name)


def bound_bits_per_dim(models: VarianceModels, variance_name: str, num_steps: int,
                       images: np.ndarray, *, num_levels: int, batch_size: int, key,
                       spacing="uniform") -> Dict[str, float]:
    """The K-step variational bound of images in bits/dim with a reverse variance (eta = 1).

    The bound of `likelihood.variational_bound` with the discretised decoder on num_levels
    grey levels, on the chain of the K-step grid (docs/optimal_variance.md §2.6). The x_0
    estimate is clipped to [-1, 1]; a head variance is floored at one 8-bit grey level
    (`variance.pixel_clip_var(1)`, §2.5) where the head says "certain", since the decoder needs
    a positive variance. One noise draw, `key`, is shared by every batch.

    Args:
      models: the trained models.
      variance_name: a name of `variance.VARIANCES` or a head kind.
      num_steps: K.
      images: [N, H, W, C] in [-1, 1].
      num_levels: grey levels of the data.
      batch_size: images per jitted call (the last batch padded by repetition).
      key: PRNG key of the bound's noise.
      spacing: "uniform" or an explicit sub-sequence (`VarianceModels.spacing`).

    Returns:
      dict: bpd (mean), sem (its standard error over images), seconds, tau_1 (the first step).
    """
    process = models.experiment.process
    grid = time_grid(process, num_steps, spacing)
    alpha_bar, beta_bar, times = variance.chain_from_grid(process, grid)
    reverse_var = None
    if variance_name in models.heads:
        head = models.heads[variance_name]
        predictor = variance_heads.head_predictor(
            process, head.features_fn, head.head_apply, kind=head.kind, clip=1.0, max_var=1.0,
            min_var=variance.pixel_clip_var(1.0))
    else:
        predictor = network_predictor(process, models.eval_apply, clip=1.0)
        reverse_var = variance.chain_reverse_var(variance.reverse_variance(
            variance_name, process, grid, eta=1.0, sigma_bar=models.sigma_bar.get(variance_name)))
    params = models.sampler_params(variance_name)

    def x0_fn(x, i):
        return predictor(params, x, times[i])

    bound = jax.jit(lambda x: likelihood.variational_bound(
        alpha_bar, beta_bar, x0_fn, x, key=key, decoder="discretized", num_levels=num_levels,
        reverse_var=reverse_var).total)
    start = time.perf_counter()
    total = np.concatenate(eval_lib.batched(bound, images, batch_size))[:len(images)]
    bpd = likelihood.vlb_bits_per_dim(total, int(np.prod(images.shape[1:])))
    return dict(bpd=float(np.mean(bpd)), sem=float(np.std(bpd) / np.sqrt(len(bpd))),
                seconds=time.perf_counter() - start, tau_1=int(grid[-1, 0]))
