"""Build, train (a model, then optionally its variance head), and train_and_evaluate, from a Spec.

Every function here takes the typed `udm.pipeline.spec.Spec` (made from a spec by
`spec.from_config`, which validates it), never a ConfigDict; it turns the spec into typed objects
(process, model, optimizer) and hands them to the pure functions of the library.
"""
import json
import os
import time
from typing import Any, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from udm import checkpoint as ckpt_lib
from udm import distributed, parallel
from udm.data import TEXT_DATASETS, batch_at_step, load_dataset, load_text_dataset
from udm import losses, variance_heads
from udm.nn import TokenDenoiser, UNet, VarianceHead, count_params
from udm.processes import base as process_base
from udm.pipeline import evaluate as eval_lib
from udm.pipeline import guard
from udm.pipeline.spec import Spec, TrainSpec, head_train_spec, make_process

PyTree = Any


class TrainState(NamedTuple):
    """Everything a step changes. Randomness is derived from (seed, step), so no key is stored."""
    step: jax.Array
    params: PyTree
    ema_params: PyTree
    opt_state: PyTree


# --- building blocks -------------------------------------------------------------------------

def make_model(spec: Spec, process=None):
    """The network of spec.model: the UNet (images), or with model.name = "token_denoiser"
    the bidirectional TokenDenoiser, whose vocabularies come from the token process."""
    model_kwargs = dict(spec.model.kwargs)
    name = spec.model.name
    if name == "token_denoiser":
        if process is None or not process.capabilities.tokens:
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


def make_optimizer(train_spec: TrainSpec) -> optax.GradientTransformation:
    """AdamW with linear warm-up to a constant rate and global-norm gradient clipping."""
    schedule = optax.linear_schedule(0.0, train_spec.learning_rate,
                                     max(train_spec.warmup_steps, 1))
    return optax.chain(
        optax.clip_by_global_norm(train_spec.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=train_spec.weight_decay))


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
    if num_classes_of(model) is None:
        params = model.init(key, dummy_x, jnp.ones((1,), jnp.int32))["params"]
    else:
        params = model.init(key, dummy_x, jnp.ones((1,), jnp.int32),
                            jnp.zeros((1,), jnp.int32))["params"]
    if process is not None:
        params = process_base.init_params(process, params)
    # A copy, not an alias: the train step donates the state, and one buffer cannot go twice.
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=optimizer.init(params))


def make_train_step(loss_fn, optimizer, *, ema_decay: float, train_key):
    """One optimisation step; the step's key is fold_in(train_key, step).

    `train_step(state, x0)`, or `train_step(state, x0, labels)` for a class-conditional loss.
    """
    def train_step(state: TrainState, x0, labels=None):
        key = jax.random.fold_in(train_key, state.step)
        if labels is None:
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                    state.params, x0, key=key)
        else:
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                    state.params, x0, key=key, labels=labels)
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


def num_classes_of(model) -> Optional[int]:
    """The class count of a class-conditional network (its null label), None otherwise."""
    return getattr(model, "num_classes", None)


def null_labels(batch_size: int, num_classes: int) -> jax.Array:
    """int32 [batch_size] of the null label num_classes (the unconditional branch)."""
    return jnp.full((batch_size,), num_classes, jnp.int32)


def make_apply_fns(model):
    """(train_apply, eval_apply) with the signatures the loss and the sampler expect.

    For a class-conditional model (num_classes set): `train_apply(params, xt, t, key, labels)`
    and `eval_apply(params, xt, t, labels=None)`, where labels=None means the null label for
    every example, so the pipeline's evaluation samples the unconditional branch
    (udm.pipeline.conditional gives the class-conditional and guided predictors).
    """
    num_classes = num_classes_of(model)
    if num_classes is None:
        def train_apply(params, xt, t, key):
            return model.apply({"params": params}, xt, t, train=True, rngs={"dropout": key})

        def eval_apply(params, xt, t):
            return model.apply({"params": params}, xt, t)

        return train_apply, eval_apply

    def train_apply(params, xt, t, key, labels=None):
        return model.apply({"params": params}, xt, t, labels, train=True, rngs={"dropout": key})

    def eval_apply(params, xt, t, labels=None):
        if labels is None:
            labels = null_labels(xt.shape[0], num_classes)
        return model.apply({"params": params}, xt, t, labels)

    return train_apply, eval_apply


# --- logging ---------------------------------------------------------------------------------

class MetricWriter:
    """JSON lines (always) plus TensorBoard event files (tensorboardX).

    With enabled=False (every process but the first of a multi-process run) nothing is opened
    or written: all processes hold the same replicated metrics, one copy is enough.

    resume_step: the step training restarts from. What was logged after it (steps the run will
    do again, since their checkpoint was never written) is dropped, so every step appears once
    and matches the checkpoint: metrics.jsonl is rewritten without those rows (and without a
    line cut short by a crash), TensorBoard hides their events (tensorboardX's purge_step).
    """

    def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
        self._enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter
        path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(path):
            _truncate_metrics(path, resume_step)
        self._jsonl = open(path, "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                 purge_step=resume_step + 1 if resume_step else None)

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


def _truncate_metrics(path: str, last_step: int) -> None:
    """Rewrites metrics.jsonl (atomically) with only the complete rows of steps <= last_step."""
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
                keep = line.endswith("\n") and int(row["step"]) <= last_step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
    if dropped:
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)


# --- the entry points ------------------------------------------------------------------------

class Experiment(NamedTuple):
    """The typed objects a spec describes."""
    dataset: Any
    process: Any
    model: UNet
    optimizer: optax.GradientTransformation
    mesh: Any
    init_key: jax.Array
    train_key: jax.Array
    sample_key: jax.Array


def build(spec: Spec) -> Experiment:
    """Turns a spec (validated by `spec.from_config`) into typed objects; nothing is written."""
    if spec.data.name in TEXT_DATASETS:
        dataset = load_text_dataset(spec.data.name, seq_len=spec.data.seq_len or None,
                                    seed=spec.seed, test_fraction=spec.data.test_fraction)
    else:
        dataset = load_dataset(spec.data.name, seed=spec.seed,
                               test_fraction=spec.data.test_fraction,
                               path=spec.data.path or None)
    # The "rbg" generator: on XLA:CPU threefry keys make compiling the model init and the
    # train step several times slower, for no statistical benefit here.
    root = jax.random.key(spec.seed, impl="rbg")
    init_key, train_key, sample_key = jax.random.split(root, 3)
    process = make_process(spec)
    if process.capabilities.tokens != dataset.tokens:
        raise ValueError(f"process {spec.process.name!r} and data {spec.data.name!r} do not "
                         f"fit: token processes need a text dataset and the others images")
    if process.capabilities.fitted_prior:  # cold / heat: x_T ~ a Gaussian fitted to F_T(data)
        process = process.fit_prior(dataset.train_data)
    if dataset.tokens and (process.seq_len, process.vocab_size) != (
            dataset.seq_len, dataset.vocab_size):
        raise ValueError(f"config.process (seq_len={process.seq_len}, vocab_size="
                         f"{process.vocab_size}) must match the data {dataset.name!r} (seq_len="
                         f"{dataset.seq_len}, vocab_size={dataset.vocab_size})")
    model = make_model(spec, process)
    check_labels(model, dataset)  # before anything compiles
    return Experiment(dataset, process, model, make_optimizer(spec.train), parallel.data_mesh(),
                      init_key, train_key, sample_key)


def check_labels(model, dataset) -> None:
    """ValueError unless a class-conditional model's dataset has labels that fit it."""
    num_classes = num_classes_of(model)
    if num_classes is None:
        return
    if getattr(dataset, "train_labels", None) is None:
        raise ValueError(f"config.model.num_classes={num_classes} (a class-conditional model) "
                         f"needs a dataset with labels; {dataset.name!r} has none")
    if dataset.num_classes > num_classes:
        raise ValueError(f"config.model.num_classes={num_classes} is smaller than the "
                         f"{dataset.num_classes} classes of {dataset.name!r} (labels must lie "
                         f"in [0, num_classes); num_classes itself is the null label)")


_SYNC_EVERY = 10  # steps between host waits on the loss, whatever log_every is


def fit(train_spec: TrainSpec, workdir: str, *, init, init_key, loss_fn, optimizer, train_key, mesh,
        data: np.ndarray, seed: int, record: Dict[str, Any], desc: str = "train",
        labels: Optional[np.ndarray] = None, evaluate_only: bool = False) -> TrainState:
    """The training loop shared by every stage: resume, step, log, checkpoint, stop on NaN.

    Args:
        train_spec: spec.train (num_steps, batch_size, ema_decay, log/checkpoint cadence).
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
        labels: None, or int [N] labels of data for a class-conditional loss_fn: each batch's
            labels are taken at the same indices and sharded like the batch, and the step
            calls `loss_fn(params, x0, key=..., labels=...)`.
        evaluate_only: restore the latest checkpoint and return it without training
            (FileNotFoundError if workdir holds none).

    Returns:
        The TrainState at train_spec.num_steps.
    """
    # Shapes and shardings of the state, without computing it yet.
    abstract = jax.eval_shape(init, init_key)
    state_sharding = jax.tree.map(lambda _: parallel.replicated(mesh), abstract)
    restore_target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding)
    directory = os.path.join(workdir, "checkpoints")

    def open_checkpointer():
        return ckpt_lib.Checkpointer(directory, max_to_keep=train_spec.keep_checkpoints)

    def restore(checkpointer, step):
        checkpointer.check_compatible(step, abstract.params)  # ShapeMismatchError propagates
        return checkpointer.restore(step, restore_target)

    _refuse_other_shapes(open_checkpointer, abstract.params)  # before anything is written
    with guard.workdir_lock(workdir), guard.StopSignals() as stop:
        checkpointer, state, latest = guard.restore_newest_intact(
            open_checkpointer, restore, keep_errors=(ckpt_lib.ShapeMismatchError,))
        if evaluate_only:
            checkpointer.close()
            if latest is None:
                raise FileNotFoundError(f"evaluate-only: no checkpoint in {directory} to "
                                        f"evaluate; train first (without --evaluate_only)")
            if distributed.is_primary():
                print(f"udm: evaluating the checkpoint of step {latest} in {workdir} "
                      f"(no training)")
            return state
        return _fit_loop(train_spec, workdir, checkpointer, stop, state=state, latest=latest,
                         init=init, init_key=init_key, state_sharding=state_sharding,
                         loss_fn=loss_fn, optimizer=optimizer, train_key=train_key, mesh=mesh,
                         data=data, seed=seed, record=record, desc=desc, labels=labels)


def _refuse_other_shapes(open_checkpointer, params) -> None:
    """ShapeMismatchError if the newest checkpoint is of another model (read-only; a checkpoint
    that cannot be read at all is left to `guard.restore_newest_intact`)."""
    checkpointer = open_checkpointer()
    try:
        latest = checkpointer.latest_step()
        if latest is not None:
            checkpointer.check_compatible(latest, params)
    except ckpt_lib.ShapeMismatchError:
        raise
    except Exception:  # noqa: BLE001 - unreadable: healed under the workdir lock
        pass
    finally:
        checkpointer.close()


def _fit_loop(train_spec: TrainSpec, workdir: str, checkpointer, stop, *, state, latest, init,
              init_key, state_sharding, loss_fn, optimizer, train_key, mesh, data, seed, record,
              desc, labels) -> TrainState:
    """`fit` after the restore: under the workdir lock and the stop signals."""
    os.makedirs(workdir, exist_ok=True)
    primary = distributed.is_primary()
    if latest is None:
        state = jax.jit(init, out_shardings=state_sharding)(init_key)
        if primary:
            print(f"udm: new run in {workdir}; model has {count_params(state.params):,} parameters")
    elif primary:
        print(f"udm: resumed from step {latest} in {workdir}")

    batch_shardings = (parallel.batch_sharded(mesh),) * (1 if labels is None else 2)
    train_step = jax.jit(
        make_train_step(loss_fn, optimizer, ema_decay=train_spec.ema_decay,
                        train_key=train_key),
        in_shardings=(state_sharding, *batch_shardings),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=0)

    start = int(state.step)
    num_steps = train_spec.num_steps
    writer = MetricWriter(workdir, enabled=primary, resume_step=start)
    # This process's rows of every global batch: all of it with one process.
    rows = parallel.process_rows(train_spec.batch_size, mesh)
    pending = []
    try:
        bar = tqdm(range(start, num_steps), initial=start, total=num_steps, desc=desc,
                   unit="step", disable=not (train_spec.progress_bar and primary))
        t_last = time.perf_counter()
        for step in bar:
            idx = batch_at_step(len(data), train_spec.batch_size, step, seed=seed)[rows]
            batch = parallel.global_batch(data[idx], mesh, train_spec.batch_size)
            if labels is None:
                state, metrics = train_step(state, batch)
            else:
                state, metrics = train_step(
                        state, batch,
                        parallel.global_batch(labels[idx], mesh, train_spec.batch_size))
            pending.append(metrics)
            done = step + 1
            if done % _SYNC_EVERY == 0:
                # Cheap steps dispatched far ahead can stall fake-device all-reduces: block.
                jax.block_until_ready(metrics["loss"])
            stop_signal = stop.should_stop(done)
            save_now = (done % train_spec.checkpoint_every == 0 or done == num_steps
                        or stop_signal is not None)
            if done % train_spec.log_every == 0 or save_now:
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
                summary["images_per_second"] = len(host) * train_spec.batch_size / (now - t_last)
                t_last = now
                writer.write(done, summary)
                bar.set_postfix(loss=f"{summary['loss']:.4f}")
                if save_now:
                    guard.save_checkpoint(checkpointer, done, state, record)
            if stop_signal is not None:
                bar.close()
                error = guard.Stopped(stop_signal, done, checkpointer.directory)
                if primary:
                    print(f"udm: {error}", flush=True)
                raise error
        bar.close()
    finally:
        writer.close()
        checkpointer.close()
    return state


def train(spec: Spec, workdir: str, *, experiment: Optional[Experiment] = None,
          evaluate_only: bool = False) -> TrainState:
    """Trains to spec.train.num_steps, resuming from the latest checkpoint in workdir.

    Writes workdir/checkpoints/, metrics.jsonl and tensorboard/. A checkpoint of another model
    shape is refused before anything is written. A non-finite loss stops
    training with FloatingPointError; the last good checkpoint stays. A class-conditional model
    (config.model.num_classes) trains on the dataset's labels with spec.train.label_dropout.
    evaluate_only: return the latest checkpoint without training (`fit`).
    """
    exp = build(spec) if experiment is None else experiment
    data = exp.dataset.train_data

    def init(key):
        return init_state(exp.model, exp.optimizer, data, key, process=exp.process)

    train_apply, _ = make_apply_fns(exp.model)
    num_classes = num_classes_of(exp.model)
    if num_classes is None:
        loss_fn = losses.make_loss_fn(exp.process, train_apply,
                                      weighting=spec.train.loss_weighting,
                                      time_sampling=spec.train.time_sampling)
        labels = None
    else:
        check_labels(exp.model, exp.dataset)  # an experiment built elsewhere, too
        loss_fn = losses.make_loss_fn(exp.process, train_apply,
                                      weighting=spec.train.loss_weighting,
                                      time_sampling=spec.train.time_sampling,
                                      num_classes=num_classes,
                                      label_dropout=spec.train.label_dropout)
        labels = exp.dataset.train_labels
    return fit(spec.train, workdir, init=init, init_key=exp.init_key, loss_fn=loss_fn,
               optimizer=exp.optimizer, train_key=exp.train_key, mesh=exp.mesh,
               data=data, seed=spec.seed,
               record=dict(config=spec.record, dataset=exp.dataset.name), labels=labels,
               evaluate_only=evaluate_only)


def make_variance_head(spec: Spec, experiment: Experiment):
    """(head module, head_apply(head_params, features), mean_features_fn) of a spec."""
    head = VarianceHead(
        out_channels=experiment.dataset.train_images.shape[-1], width=spec.variance.head_width)

    def head_apply(head_params, features):
        return head.apply({"params": head_params}, features)

    return head, head_apply, variance_heads.mean_features_fn(experiment.process, experiment.model)


def train_variance_head(spec: Spec, workdir: str, mean_params, *,
                        experiment: Optional[Experiment] = None,
                        evaluate_only: bool = False) -> TrainState:
    """Stage 2 of NPR-DPM / SN-DPM (docs/optimal_variance.md §3.7): trains only the variance head, mean frozen.

    Writes workdir/variance_head/{checkpoints, metrics.jsonl, tensorboard}; resumes like
    `train` (evaluate_only: restores it without training). spec.variance.head names the kind
    ("npr" or "sn").
    """
    exp = build(spec) if experiment is None else experiment
    kind = variance_heads.check_kind(spec.variance.head)
    head, head_apply, features_fn = make_variance_head(spec, exp)
    head_config = head_train_spec(spec)
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
               data=exp.dataset.train_images, seed=spec.seed + 1,
               record=dict(config=spec.record, dataset=exp.dataset.name, stage="variance_head"),
               desc=f"train {kind} head", evaluate_only=evaluate_only)


def trained_variance_head(spec: Spec, workdir: str, mean_params, *,
                          experiment: Optional[Experiment] = None,
                          evaluate_only: bool = False) -> variance_heads.HeadModel:
    """`train_variance_head` (trains, or restores from workdir), ready for the sampler.

    Returns:
      HeadModel(spec.variance.head, mean features_fn, head_apply, the head's EMA params).
    """
    exp = build(spec) if experiment is None else experiment
    state = train_variance_head(spec, workdir, mean_params, experiment=exp,
                                evaluate_only=evaluate_only)
    _, head_apply, features_fn = make_variance_head(spec, exp)
    return variance_heads.HeadModel(spec.variance.head, features_fn, head_apply,
                                    state.ema_params)


def train_and_evaluate(spec: Spec, workdir: str, *,
                       evaluate_only: bool = False) -> Dict[str, Any]:
    """Trains (resuming from the latest checkpoint in workdir), then samples and evaluates.

    evaluate_only: no training; the latest checkpoint(s) in workdir are evaluated
    (FileNotFoundError where there are none). Holds the workdir lock throughout.

    Writes into workdir: checkpoints/, metrics.jsonl, tensorboard/, samples*.png, real.png,
    results.md and results.json; with spec.variance.head ("npr" / "sn") a second stage trains
    the variance head into workdir/variance_head/ after the mean model. Returns the
    evaluation results (see udm.pipeline.evaluate).
    """
    with guard.workdir_lock(workdir):  # one run per workdir, evaluation included
        return _train_and_evaluate(spec, workdir, evaluate_only)


def _train_and_evaluate(spec: Spec, workdir: str, evaluate_only: bool) -> Dict[str, Any]:
    exp = build(spec)
    state = train(spec, workdir, experiment=exp, evaluate_only=evaluate_only)
    head = None
    if spec.variance.head:  # stage 2: NPR-DPM / SN-DPM head on the frozen EMA mean model
        head = trained_variance_head(spec, workdir, state.ema_params, experiment=exp,
                                     evaluate_only=evaluate_only)
    if not spec.eval.enabled:
        return {}
    _, eval_apply = make_apply_fns(exp.model)
    return eval_lib.evaluate(spec, workdir, process=exp.process, eval_apply=eval_apply,
                             params=state.ema_params, dataset=exp.dataset, mesh=exp.mesh,
                             sample_key=exp.sample_key, head=head)
