"""train_and_evaluate: train a UDM x_0 predictor on images, checkpoint, sample, evaluate.

The ConfigDict stops here: it is validated, then turned into typed objects (process, model,
optimizer, sampler) that the pure functions below receive.
"""
import json
import os
import time
from typing import Any, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from udm import checkpoint as ckpt_lib
from udm import distributed, parallel
from udm.data import TEXT_DATASETS, TextDataset, batch_at_step, load_dataset, load_text_dataset
from udm import losses, variance, variance_heads
from udm.nn import ATTENTION_SCALES, TokenDenoiser, UNet, VarianceHead, count_params
from udm.processes import LOSS_WEIGHTINGS, PREDICTION_TARGETS, PROCESSES, TOKEN_PROCESSES
from udm.processes import base as process_base
from udm.samplers import SAMPLERS, SPACINGS
from udm.sde_samplers import CONTINUOUS_SAMPLERS

PyTree = Any


class TrainState(NamedTuple):
    """Everything a step changes. Randomness is derived from (seed, step), so no key is stored."""
    step: jax.Array
    params: PyTree
    ema_params: PyTree
    opt_state: PyTree


# --- config checks: fail before anything compiles or is written ------------------------------

def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def is_continuous(config: ml_collections.ConfigDict) -> bool:
    """Whether the config describes a continuous-time SDE (process.name == "sde")."""
    return config.process.name == "sde"


def _validate_process_and_samplers(config) -> None:
    PROCESSES.get(config.process.name)
    if is_continuous(config):
        sde = make_process(config)  # unknown SDE names and hyperparameters fail here
        _check(0.0 < sde.t_min < 1.0, f"config.process.t_min must be in (0, 1), got {sde.t_min}")
        _check(config.train.loss_weighting in losses.DSM_WEIGHTINGS,
               f"config.train.loss_weighting of an SDE must be one of "
               f"{', '.join(losses.DSM_WEIGHTINGS)}, got {config.train.loss_weighting!r}")
        _check(config.train.time_sampling in losses.TIME_SAMPLINGS,
               f"config.train.time_sampling must be one of {', '.join(losses.TIME_SAMPLINGS)}, "
               f"got {config.train.time_sampling!r}")
        _check(config.train.time_sampling == "uniform"
               or config.train.loss_weighting == "likelihood",
               "config.train.time_sampling='importance' needs "
               "config.train.loss_weighting='likelihood'")
        for name in (config.sampler.name, *config.eval.samplers):
            CONTINUOUS_SAMPLERS.get(name)
        for name, k in [("config.sampler.num_steps", config.sampler.num_steps)] + [
                ("config.eval.step_counts entries", k) for k in config.eval.step_counts]:
            _check(k >= 1, f"{name} must be >= 1, got {k}")
        _check(config.sampler.noise_scale >= 0,
               f"config.sampler.noise_scale must be >= 0, got {config.sampler.noise_scale}")
        return
    if config.process.name == "gaussian":
        T = config.process.num_timesteps
        _check(T >= 1, f"config.process.num_timesteps must be >= 1, got {T}")
        from udm import schedules  # noqa: F401  (registry lookup below)
        schedules.SCHEDULES.get(config.process.schedule)
        PREDICTION_TARGETS.get(config.process.prediction)
        LOSS_WEIGHTINGS.get(config.train.loss_weighting)
    else:
        try:
            process = make_process(config)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config.process ({config.process.name!r}) is invalid: {e}") from e
        T = process.num_timesteps
        process.check_weighting(config.train.loss_weighting)
        # ddpm / ddim need DDPM's variance; every process has the two UDM designs (spec 01 A5).
        designs = ("baseline", "improved") + (
            ("ddpm", "ddim") if hasattr(process, "ddpm_sigma_tilde") else ())
        bad = [n for n in (config.sampler.name, *config.eval.samplers) if n not in designs]
        names = [repr(d) for d in designs]
        _check(not bad, f"process {config.process.name!r} samples with "
                        f"{', '.join(names[:-1])} or {names[-1]} (spec 01 A5), got {bad}")
    SAMPLERS.get(config.sampler.name)
    SPACINGS.get(config.sampler.spacing)
    for name in config.eval.samplers:
        SAMPLERS.get(name)
    _check(1 <= config.sampler.num_steps <= T,
           f"config.sampler.num_steps must be in [1, T={T}], got {config.sampler.num_steps}")
    for k in config.eval.step_counts:
        _check(1 <= k <= T, f"config.eval.step_counts entries must be in [1, T={T}], got {k}")
    _check(0.0 <= config.sampler.eta <= 1.0,
           f"config.sampler.eta must be in [0, 1], got {config.sampler.eta}")


def _validate_variance(config) -> None:
    sc, vc = config.sampler, config.variance
    _check(sc.variance in variance.SAMPLING_VARIANCES,
           f"config.sampler.variance must be one of {', '.join(variance.SAMPLING_VARIANCES)}, "
           f"got {sc.variance!r}")
    _check(vc.head in ("",) + variance_heads.HEAD_KINDS,
           f"config.variance.head must be '' or one of {', '.join(variance_heads.HEAD_KINDS)}, "
           f"got {vc.head!r}")
    if sc.variance in variance_heads.HEAD_KINDS:
        _check(vc.head == sc.variance,
               f"config.sampler.variance={sc.variance!r} needs a trained head: set "
               f"config.variance.head={sc.variance!r} (got {vc.head!r})")
    if sc.variance != "fixed_small" or vc.head:
        _check(config.process.name == "gaussian",
               f"config.sampler.variance / config.variance.head apply to the discrete Gaussian "
               f"process, got process {config.process.name!r}")
    if sc.variance != "fixed_small":
        bad = [n for n in (sc.name, *config.eval.samplers) if n not in ("ddpm", "ddim")]
        _check(not bad, f"config.sampler.variance={sc.variance!r} works with the ddpm and ddim "
                        f"samplers only, got {bad}")
    _check(sc.clip_pixel >= 0, f"config.sampler.clip_pixel must be >= 0, got {sc.clip_pixel}")
    _check(sc.clip_sigma_idx >= 0,
           f"config.sampler.clip_sigma_idx must be >= 0, got {sc.clip_sigma_idx}")
    _check(vc.head_steps >= 0, f"config.variance.head_steps must be >= 0, got {vc.head_steps}")
    _check(vc.mc_samples >= 1 and vc.mc_batch_size >= 1 and vc.mc_samples % vc.mc_batch_size == 0,
           f"config.variance.mc_samples must be a positive multiple of config.variance."
           f"mc_batch_size, got {vc.mc_samples} and {vc.mc_batch_size}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the field for every bad value we can see without running."""
    _validate_process_and_samplers(config)
    _validate_variance(config)
    ATTENTION_SCALES.get(config.model.attention_scale)
    _check(config.train.num_steps >= 0,
           f"config.train.num_steps must be >= 0, got {config.train.num_steps}")
    _check(config.train.batch_size >= 1,
           f"config.train.batch_size must be >= 1, got {config.train.batch_size}")
    _check(config.train.learning_rate > 0,
           f"config.train.learning_rate must be > 0, got {config.train.learning_rate}")
    _check(0.0 <= config.train.ema_decay < 1.0,
           f"config.train.ema_decay must be in [0, 1), got {config.train.ema_decay}")
    _check(config.train.log_every >= 1, f"config.train.log_every must be >= 1, got {config.train.log_every}")
    _check(config.train.checkpoint_every >= 1,
           f"config.train.checkpoint_every must be >= 1, got {config.train.checkpoint_every}")
    mesh = parallel.data_mesh()
    parallel.check_divisible(config.train.batch_size, mesh, "config.train.batch_size")
    parallel.check_divisible(config.eval.batch_size, mesh, "config.eval.batch_size")
    if config.sampler.variance in variance.MONTE_CARLO_VARIANCES:
        parallel.check_divisible(config.variance.mc_batch_size, mesh,
                                 "config.variance.mc_batch_size")


# --- building blocks -------------------------------------------------------------------------

def make_process(config):
    kwargs = {k: v for k, v in config.process.items() if k != "name"}
    return PROCESSES.get(config.process.name)(**kwargs)


def make_model(config, process=None):
    """The network of config.model: the UNet (images), or with model.name = "token_denoiser"
    the bidirectional TokenDenoiser, whose vocabularies come from the token process."""
    model_kwargs = dict(config.model)
    name = model_kwargs.pop("name", "unet")
    if name == "token_denoiser":
        if process is None or not isinstance(process, TOKEN_PROCESSES):
            raise ValueError("config.model.name='token_denoiser' needs a token process "
                             "(masking, edit, encoding, d3pm_uniform, d3pm_absorbing)")
        return TokenDenoiser(input_vocab_size=process.num_input_tokens,
                             output_vocab_size=process.vocab_size, max_time=process.num_timesteps,
                             **model_kwargs)
    if name != "unet":
        raise ValueError(f"config.model.name must be 'unet' or 'token_denoiser', got {name!r}")
    for key in ("channel_mults", "attention_resolutions"):
        model_kwargs[key] = tuple(model_kwargs[key])
    return UNet(**model_kwargs)


def training_data(dataset) -> np.ndarray:
    """The training array of a dataset: images [N, H, W, C] or token sequences [N, l]."""
    return dataset.train_tokens if isinstance(dataset, TextDataset) else dataset.train_images



def make_optimizer(train_config) -> optax.GradientTransformation:
    """AdamW with linear warm-up to a constant rate and global-norm gradient clipping."""
    schedule = optax.linear_schedule(0.0, train_config.learning_rate,
                                     max(train_config.warmup_steps, 1))
    return optax.chain(
        optax.clip_by_global_norm(train_config.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=train_config.weight_decay))


def init_state(model, optimizer, example, key, *, process=None) -> TrainState:
    """A fresh TrainState; `example` [N, ...] gives the data shape and dtype (images or tokens).

    With `process`, the network input is shaped like the process's states x_t (its prior
    draw; the encoding model's latents differ from its tokens), and a process with learned
    parameters adds them: params = {"network": ..., "process": ...}.
    """
    shape = (1, *example.shape[1:])
    if process is None:
        dummy_x = jnp.zeros(shape, example.dtype)
    else:
        dummy_x = jnp.zeros_like(process.prior(key, shape))
    params = model.init(key, dummy_x, jnp.ones((1,), jnp.int32))["params"]
    if process is not None:
        params = process_base.init_params(process, params)
    # A copy, not an alias: the train step donates the state, and one buffer cannot go twice.
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=optimizer.init(params))


def make_train_step(loss_fn, optimizer, *, ema_decay: float, train_key):
    """One optimisation step; the step's key is fold_in(train_key, step)."""
    def train_step(state: TrainState, x0):
        key = jax.random.fold_in(train_key, state.step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, x0, key=key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # EMA warm-up: early on, average over the steps so far rather than keeping a 1 - decay
        # share of the (zero-output) initial weights for thousands of steps.
        step = state.step.astype(jnp.float32)
        decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads), **aux)
        return TrainState(state.step + 1, params, ema, opt_state), metrics

    return train_step


def make_apply_fns(model):
    """(train_apply, eval_apply) with the signatures the loss and the sampler expect."""
    def train_apply(params, xt, t, key):
        return model.apply({"params": params}, xt, t, train=True, rngs={"dropout": key})

    def eval_apply(params, xt, t):
        return model.apply({"params": params}, xt, t)

    return train_apply, eval_apply


# --- logging ---------------------------------------------------------------------------------

class MetricWriter:
    """JSON lines (always) plus TensorBoard event files (tensorboardX).

    With enabled=False (every process but the first of a multi-process run) nothing is opened
    or written: all processes hold the same replicated metrics, one copy is enough.
    """

    def __init__(self, workdir: str, *, enabled: bool = True):
        self._enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Dict[str, float]) -> None:
        if not self._enabled:
            return
        self._jsonl.write(json.dumps(dict(step=step, **metrics)) + "\n")
        self._jsonl.flush()
        for k, v in metrics.items():
            self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def close(self) -> None:
        if not self._enabled:
            return
        self._jsonl.close()
        self._tb.close()


# --- the entry points ------------------------------------------------------------------------

class Experiment(NamedTuple):
    """The typed objects a config describes."""
    dataset: Any
    process: Any
    model: UNet
    optimizer: optax.GradientTransformation
    mesh: Any
    init_key: jax.Array
    train_key: jax.Array
    sample_key: jax.Array


def build(config: ml_collections.ConfigDict) -> Experiment:
    """Validates the config and turns it into typed objects (nothing is written)."""
    validate_config(config)
    if config.data.name in TEXT_DATASETS:
        dataset = load_text_dataset(config.data.name, seq_len=config.data.get("seq_len") or None,
                                    seed=config.seed, test_fraction=config.data.test_fraction)
    else:
        dataset = load_dataset(config.data.name, seed=config.seed,
                               test_fraction=config.data.test_fraction,
                               path=config.data.path or None)
    # The "rbg" generator: on XLA:CPU threefry keys make compiling the model init and the
    # train step several times slower, for no statistical benefit here.
    root = jax.random.key(config.seed, impl="rbg")
    init_key, train_key, sample_key = jax.random.split(root, 3)
    process = make_process(config)
    if hasattr(process, "fit_prior"):  # cold / heat: x_T ~ a Gaussian fitted to F_T(data)
        process = process.fit_prior(dataset.train_images)
    if isinstance(process, TOKEN_PROCESSES) != isinstance(dataset, TextDataset):
        raise ValueError(f"process {config.process.name!r} and data {config.data.name!r} do not "
                         f"fit: token processes need a text dataset and the others images")
    if isinstance(dataset, TextDataset) and (process.seq_len, process.vocab_size) != (
            dataset.seq_len, dataset.vocab_size):
        raise ValueError(f"config.process (seq_len={process.seq_len}, vocab_size="
                         f"{process.vocab_size}) must match the data {dataset.name!r} (seq_len="
                         f"{dataset.seq_len}, vocab_size={dataset.vocab_size})")
    return Experiment(dataset, process, make_model(config, process),
                      make_optimizer(config.train), parallel.data_mesh(),
                      init_key, train_key, sample_key)


_SYNC_EVERY = 10  # steps between host waits on the loss, whatever log_every is


def fit(train_config, workdir: str, *, init, init_key, loss_fn, optimizer, train_key, mesh,
        data: np.ndarray, seed: int, record: Dict[str, Any], desc: str = "train") -> TrainState:
    """The training loop shared by every stage: resume, step, log, checkpoint, stop on NaN.

    Args:
        train_config: config.train (num_steps, batch_size, ema_decay, log/checkpoint cadence).
        workdir: gets checkpoints/, metrics.jsonl and tensorboard/.
        init: `init(key) -> TrainState`; its shapes are checked against a checkpoint in workdir
            before anything is written.
        init_key, train_key: PRNG keys (step keys are fold_in(train_key, step)).
        loss_fn: `loss_fn(params, x0, *, key) -> (loss, aux)`.
        optimizer: optax transformation (the one `init` used).
        mesh: the data mesh; batches are sharded over it, the state replicated. In a
            multi-process run it spans every process; each process reads only the rows of
            each batch that its devices hold, and process 0 alone logs (checkpoints are
            written by all processes together through orbax).
        data: [N, ...] training examples (images or token sequences); batch order from
            (seed, step), the same on every process.
        seed: data-order seed.
        record: JSON-able dict stored with every checkpoint.
        desc: progress-bar label.

    Returns:
        The TrainState at train_config.num_steps.
    """
    # Shapes and shardings of the state, without computing it yet.
    abstract = jax.eval_shape(init, init_key)
    state_sharding = jax.tree.map(lambda _: parallel.replicated(mesh), abstract)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         max_to_keep=train_config.keep_checkpoints)
    latest = checkpointer.latest_step()
    if latest is not None:
        checkpointer.check_compatible(latest, abstract.params)  # before anything is written

    os.makedirs(workdir, exist_ok=True)
    primary = distributed.is_primary()
    if latest is None:
        state = jax.jit(init, out_shardings=state_sharding)(init_key)
        if primary:
            print(f"udm: new run in {workdir}; model has {count_params(state.params):,} parameters")
    else:
        restore_target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding)
        state = checkpointer.restore(latest, restore_target)
        if primary:
            print(f"udm: resumed from step {latest} in {workdir}")

    train_step = jax.jit(
        make_train_step(loss_fn, optimizer, ema_decay=train_config.ema_decay,
                        train_key=train_key),
        in_shardings=(state_sharding, parallel.batch_sharded(mesh)),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=0)

    start = int(state.step)
    num_steps = train_config.num_steps
    writer = MetricWriter(workdir, enabled=primary)
    # This process's rows of every global batch: all of it with one process.
    rows = parallel.process_rows(train_config.batch_size, mesh)
    pending = []
    try:
        bar = tqdm(range(start, num_steps), initial=start, total=num_steps, desc=desc,
                   unit="step", disable=not (train_config.progress_bar and primary))
        t_last = time.perf_counter()
        for step in bar:
            idx = batch_at_step(len(data), train_config.batch_size, step, seed=seed)[rows]
            batch = parallel.global_batch(data[idx], mesh, train_config.batch_size)
            state, metrics = train_step(state, batch)
            pending.append(metrics)
            done = step + 1
            if done % _SYNC_EVERY == 0:
                # Cheap steps dispatched far ahead can stall fake-device all-reduces: block.
                jax.block_until_ready(metrics["loss"])
            save_now = done % train_config.checkpoint_every == 0 or done == num_steps
            if done % train_config.log_every == 0 or save_now:
                # Blocking here every few steps also keeps fake-device all-reduces in step.
                host = jax.device_get(pending)
                pending = []
                loss_values = np.array([m["loss"] for m in host])
                if not np.all(np.isfinite(loss_values)):
                    bad = done - len(loss_values) + int(np.argmin(np.isfinite(loss_values)))
                    raise FloatingPointError(
                        f"loss became {loss_values[~np.isfinite(loss_values)][0]} at step {bad + 1}; "
                        f"training stopped. The last good checkpoint "
                        f"(step {checkpointer.latest_step()}) in {checkpointer.directory} is kept.")
                now = time.perf_counter()
                summary = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
                summary["images_per_second"] = len(host) * train_config.batch_size / (now - t_last)
                t_last = now
                writer.write(done, summary)
                bar.set_postfix(loss=f"{summary['loss']:.4f}")
                if save_now:
                    checkpointer.save(done, state, record)
        bar.close()
    finally:
        writer.close()
        checkpointer.close()
    return state


def train(config: ml_collections.ConfigDict, workdir: str, *,
          experiment: Optional[Experiment] = None) -> TrainState:
    """Trains to config.train.num_steps, resuming from the latest checkpoint in workdir.

    Writes workdir/checkpoints/, metrics.jsonl and tensorboard/. Bad configs and a checkpoint
    of another model shape are refused before anything is written. A non-finite loss stops
    training with FloatingPointError; the last good checkpoint stays.
    """
    exp = build(config) if experiment is None else experiment
    data = training_data(exp.dataset)

    def init(key):
        return init_state(exp.model, exp.optimizer, data, key, process=exp.process)

    train_apply, _ = make_apply_fns(exp.model)
    if is_continuous(config):
        loss_fn = losses.make_dsm_loss_fn(exp.process, train_apply,
                                          weighting=config.train.loss_weighting,
                                          time_sampling=config.train.time_sampling)
    else:
        loss_fn = losses.make_loss_fn(exp.process, train_apply,
                                      weighting=config.train.loss_weighting)
    return fit(config.train, workdir, init=init, init_key=exp.init_key, loss_fn=loss_fn,
               optimizer=exp.optimizer, train_key=exp.train_key, mesh=exp.mesh,
               data=data, seed=config.seed,
               record=dict(config=config.to_dict(), dataset=exp.dataset.name))


def head_train_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """config.train with the variance head's step count and learning rate."""
    head = ml_collections.ConfigDict(config.train.to_dict())
    head.num_steps = config.variance.head_steps
    head.learning_rate = config.variance.head_learning_rate
    return head


def make_variance_head(config, experiment: Experiment):
    """(head module, head_apply(head_params, features), mean_features_fn) of a config."""
    head = VarianceHead(
        out_channels=experiment.dataset.train_images.shape[-1], width=config.variance.head_width)

    def head_apply(head_params, features):
        return head.apply({"params": head_params}, features)

    return head, head_apply, variance_heads.mean_features_fn(experiment.process, experiment.model)


def train_variance_head(config: ml_collections.ConfigDict, workdir: str, mean_params, *,
                        experiment: Optional[Experiment] = None) -> TrainState:
    """Stage 2 of NPR-DPM / SN-DPM (spec 04 §3.7): trains only the variance head, mean frozen.

    Writes workdir/variance_head/{checkpoints, metrics.jsonl, tensorboard}; resumes like
    `train`. config.variance.head names the kind ("npr" or "sn").
    """
    exp = build(config) if experiment is None else experiment
    kind = variance_heads.check_kind(config.variance.head)
    head, head_apply, features_fn = make_variance_head(config, exp)
    head_config = head_train_config(config)
    optimizer = make_optimizer(head_config)
    image_shape = exp.dataset.train_images.shape[1:]

    def init(key):
        _, _, features = jax.eval_shape(
            features_fn, mean_params, jnp.zeros((1, *image_shape), jnp.float32),
            jnp.ones((1,), jnp.int32))
        params = head.init(key, jnp.zeros(features.shape, features.dtype))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          ema_params=jax.tree.map(jnp.copy, params),
                          opt_state=optimizer.init(params))

    loss_fn = variance_heads.make_head_loss_fn(exp.process, features_fn, head_apply, mean_params,
                                               kind=kind)
    init_key, train_key = jax.random.split(jax.random.fold_in(exp.init_key, 1))
    return fit(head_config, os.path.join(workdir, "variance_head"), init=init, init_key=init_key,
               loss_fn=loss_fn, optimizer=optimizer, train_key=train_key, mesh=exp.mesh,
               data=exp.dataset.train_images, seed=config.seed + 1,
               record=dict(config=config.to_dict(), dataset=exp.dataset.name, stage="variance_head"),
               desc=f"train {kind} head")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
    """Trains (resuming from the latest checkpoint in workdir), then samples and evaluates.

    Writes into workdir: checkpoints/, metrics.jsonl, tensorboard/, samples*.png, real.png,
    results.md and results.json; with config.variance.head ("npr" / "sn") a second stage trains
    the variance head into workdir/variance_head/ after the mean model. Returns the evaluation results (see udm.evaluate).
    """
    from udm import evaluate as eval_lib

    exp = build(config)
    state = train(config, workdir, experiment=exp)
    head = None
    if config.variance.head:  # stage 2: NPR-DPM / SN-DPM head on the frozen EMA mean model
        head_state = train_variance_head(config, workdir, state.ema_params, experiment=exp)
        _, head_apply, features_fn = make_variance_head(config, exp)
        head = eval_lib.HeadModel(config.variance.head, features_fn, head_apply,
                                  head_state.ema_params)
    if not config.eval.enabled:
        return {}
    _, eval_apply = make_apply_fns(exp.model)
    return eval_lib.evaluate(config, workdir, process=exp.process, eval_apply=eval_apply,
                             params=state.ema_params, dataset=exp.dataset, mesh=exp.mesh,
                             sample_key=exp.sample_key, head=head)
