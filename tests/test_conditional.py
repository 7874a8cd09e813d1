"""Class-conditional training and sampling: the UNet's label embedding, label dropout, labels
through the loss and the training loop (sharded like the batch), the refusals, the predictors
that classifier-free guidance composes, and that the unconditional path is unchanged. The end to
end run of configs/ddpm_digits.py:conditional,smoke from the command line is marked slow."""
import hashlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ddpm_digits
from udm import checkpoint as ckpt_lib
from udm import losses, parallel
from udm.nn import UNet
from udm.pipeline import conditional
from udm.pipeline import train as train_lib
from udm.pipeline.spec import from_config
from udm.processes import GaussianProcess
from udm.sampling import classifier_free_guidance, make_sampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_KW = dict(channels=8, channel_mults=(1,), num_groups=4, attention_resolutions=())


def _config(variant="conditional,smoke", **overrides):
    config = ddpm_digits.get_config(variant)
    config.train.progress_bar = False
    for dotted, value in overrides.items():
        section, leaf = dotted.split(".")
        config[section][leaf] = value
    return config


def _perturbed(params, key, scale=0.1):
    """params plus Gaussian noise: non-zero output convolution and label embedding."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])


# --- the network -------------------------------------------------------------------------------

def test_conditional_unet_adds_only_a_zero_initialised_label_embedding():
    x, t = jnp.ones((3, 8, 8, 1)), jnp.array([1, 400, 1000])
    plain = jax.jit(UNet(**_KW).init)(jax.random.key(0), x, t)["params"]
    cond = dict(jax.jit(UNet(num_classes=10, **_KW).init)(jax.random.key(0), x, t,
                                                          jnp.array([0, 9, 10]))["params"])
    embedding = cond.pop("label_embedding")["embedding"]
    assert embedding.shape == (11, 32) and not np.any(np.asarray(embedding))  # C + 1 rows, 4 * 8
    # Every other parameter is the unconditional network's, bit for bit (same init streams).
    assert jax.tree.structure(cond) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(cond), jax.tree.leaves(plain)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_conditional_unet_output_depends_on_the_label():
    model = UNet(num_classes=10, **_KW)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    t = jnp.array([10, 200, 500, 900])
    params = jax.jit(model.init)(jax.random.key(0), x, t, jnp.zeros((4,), jnp.int32))["params"]
    params = _perturbed(params, jax.random.key(2))
    apply = jax.jit(model.apply)

    def out(labels):
        return np.asarray(apply({"params": params}, x, t, jnp.asarray(labels, jnp.int32)))

    a, b, null = out([1] * 4), out([2] * 4), out([10] * 4)
    assert np.all(np.isfinite(null)) and null.shape == x.shape
    for other in (b, null):
        assert np.max(np.abs(a - other)) > 1e-3
    # per example: only the examples whose label changed change
    mixed = out([1, 2, 1, 2])
    np.testing.assert_allclose(mixed[0::2], a[0::2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(mixed[1::2], b[1::2], rtol=0, atol=1e-6)
    # A zero embedding row adds nothing: the network is then the unconditional one.
    zeroed = dict(params, label_embedding={"embedding": jnp.zeros((11, 32))})
    plain = dict(params)
    plain.pop("label_embedding")
    np.testing.assert_allclose(
            np.asarray(apply({"params": zeroed}, x, t, jnp.full((4,), 10, jnp.int32))),
            np.asarray(jax.jit(UNet(**_KW).apply)({"params": plain}, x, t)), rtol=0, atol=1e-6)


def test_unet_label_refusals():
    x, t = jnp.ones((2, 8, 8, 1)), jnp.ones((2,), jnp.int32)
    with pytest.raises(ValueError, match="labels were given to an unconditional UNet"):
        UNet(**_KW).init(jax.random.key(0), x, t, jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match=r"needs labels \[B\]; pass the null label 10"):
        UNet(num_classes=10, **_KW).init(jax.random.key(0), x, t)
    with pytest.raises(ValueError, match="labels must be integers"):
        UNet(num_classes=10, **_KW).init(jax.random.key(0), x, t, jnp.zeros((2,)))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="UNet.num_classes must be None or an int >= 1"):
            UNet(num_classes=bad, **_KW)


# --- label dropout and the loss ----------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_label_dropout_rate_matches_within_binomial_tolerance(rate):
    n = 200_000
    labels = jnp.arange(n, dtype=jnp.int32) % 10
    dropped = np.asarray(losses.drop_labels(jax.random.key(3), labels, rate, 10))
    is_null = dropped == 10
    # Binomial(n, rate): the fraction's standard deviation is sqrt(rate (1 - rate) / n)
    # (6.7e-4 at rate 0.1); 5 of them is a false-failure probability below 1e-6.
    assert abs(is_null.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
    np.testing.assert_array_equal(dropped[~is_null], np.asarray(labels)[~is_null])
    assert dropped.dtype == np.int32


def test_label_dropout_extremes():
    labels = jnp.arange(1000, dtype=jnp.int32) % 10
    np.testing.assert_array_equal(losses.drop_labels(jax.random.key(0), labels, 0.0, 10), labels)
    assert np.all(np.asarray(losses.drop_labels(jax.random.key(0), labels, 1.0, 10)) == 10)


def test_loss_feeds_dropped_labels_to_the_network():
    """What the network sees through make_loss_fn: the dataset's labels, a label_dropout share of
    them replaced by the null label, fresh draws per key."""
    process = GaussianProcess.from_schedule("linear", 100)
    seen = []

    def apply_fn(params, xt, t, key, labels):
        seen.append(np.asarray(labels))
        return jnp.zeros_like(xt)

    batch = 4000
    loss_fn = losses.make_loss_fn(process, apply_fn, num_classes=10, label_dropout=0.2)
    labels = jnp.arange(batch, dtype=jnp.int32) % 10
    x0 = jnp.zeros((batch, 2, 2, 1))
    for step in range(5):
        loss_fn({}, x0, key=jax.random.fold_in(jax.random.key(0), step), labels=labels)
    seen = np.stack(seen)
    n = seen.size
    assert abs((seen == 10).mean() - 0.2) < 5 * np.sqrt(0.2 * 0.8 / n)
    kept = seen != 10
    np.testing.assert_array_equal(seen[kept], np.broadcast_to(np.asarray(labels), seen.shape)[kept])
    assert not np.array_equal(seen[0] == 10, seen[1] == 10)


def test_loss_refuses_missing_or_unexpected_labels():
    process = GaussianProcess.from_schedule("linear", 100)
    x0, key = jnp.zeros((2, 2, 2, 1)), jax.random.key(0)
    plain = losses.make_loss_fn(process, lambda p, x, t, k: jnp.zeros_like(x))
    with pytest.raises(ValueError, match="labels must be given exactly when"):
        plain({}, x0, key=key, labels=jnp.zeros((2,), jnp.int32))
    cond = losses.make_loss_fn(process, lambda p, x, t, k, l: jnp.zeros_like(x), num_classes=10)
    with pytest.raises(ValueError, match="labels must be given exactly when"):
        cond({}, x0, key=key)
    with pytest.raises(ValueError, match=r"label_dropout must be in \[0, 1\]"):
        losses.make_loss_fn(process, None, num_classes=10, label_dropout=1.5)


# --- the unconditional path is unchanged -------------------------------------------------------

# Recorded on the code before class-conditional training existed: the sha256 of the smoke
# model's initial parameters (init_state with the rbg key 0) and the loss on the first 8
# training digits with the rbg key 1.
_UNCONDITIONAL_INIT_SHA256 = "9f411815565261e16f8a11a9717a7a6770b6522dfeea9452430bc27479b6e056"
_UNCONDITIONAL_LOSS = float.fromhex("0x1.d51e000000000p-1")


def test_unconditional_init_and_loss_are_those_before_conditioning_existed():
    spec = from_config(_config("smoke"))
    exp = train_lib.build(spec)
    assert exp.model.num_classes is None
    params = train_lib.init_state(exp.model, exp.optimizer, exp.dataset.train_data,
                                  jax.random.key(0, impl="rbg"), process=exp.process).params
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.asarray(leaf).tobytes())
    assert digest.hexdigest() == _UNCONDITIONAL_INIT_SHA256
    train_apply, _ = train_lib.make_apply_fns(exp.model)
    loss, _ = jax.jit(losses.make_loss_fn(exp.process, train_apply))(
            params, jnp.asarray(exp.dataset.train_data[:8]), key=jax.random.key(1, impl="rbg"))
    # Bitwise on the machine that recorded it; a little slack for other CPUs' convolutions.
    np.testing.assert_allclose(float(loss), _UNCONDITIONAL_LOSS, rtol=1e-6)


# --- the pipeline ------------------------------------------------------------------------------

def test_conditional_model_needs_a_labelled_dataset(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "unlabelled.npz", images=images)
    spec = from_config(_config(**{"data.name": "npz",
                                  "data.path": str(tmp_path / "unlabelled.npz")}))
    with pytest.raises(ValueError, match="needs a dataset with labels; 'npz:.*unlabelled.npz' has none"):
        train_lib.build(spec)
    with pytest.raises(ValueError, match="num_classes=5 is smaller than the 10 classes"):
        train_lib.build(from_config(_config(**{"model.num_classes": 5})))


@pytest.mark.parametrize("fields,message", [
    ({"train.label_dropout": 1.5}, r"config.train.label_dropout must be in \[0, 1\]"),
    ({"model.num_classes": 0}, "config.model.num_classes must be None or an int >= 1"),
    ({"variance.head": "npr", "sampler.variance": "npr"}, "not supported with a class-conditional"),
])
def test_conditional_config_errors_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        from_config(_config(**fields))


def test_training_loop_shards_labels_like_the_batch(tmp_path):
    """`fit` with labels on 1 and 8 devices: each example meets its own label (a linear
    denoiser with a per-class bias keeps the compile small), and the runs agree."""
    spec = from_config(_config(**{"train.checkpoint_every": 100}))
    exp = train_lib.build(spec)
    data, labels = exp.dataset.train_data, exp.dataset.train_labels
    d = int(np.prod(data.shape[1:]))

    def init(key):
        params = {"w": 0.1 * jax.random.normal(key, (d, d)), "b": jnp.zeros((11, d))}
        return train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                    ema_params=jax.tree.map(jnp.copy, params),
                                    opt_state=exp.optimizer.init(params))

    def loss_fn(params, x0, *, key, labels):
        x = x0.reshape(x0.shape[0], d)
        noisy = x + jax.random.normal(key, x.shape)
        loss = jnp.mean((noisy @ params["w"] + params["b"][labels] - x) ** 2)
        return loss, {"label_mean": jnp.mean(labels.astype(jnp.float32))}

    runs = {}
    for n in (1, 8):
        state = train_lib.fit(spec.train, str(tmp_path / str(n)), init=init,
                              init_key=exp.init_key, loss_fn=loss_fn, optimizer=exp.optimizer,
                              train_key=exp.train_key, mesh=parallel.data_mesh(jax.devices()[:n]),
                              data=data, seed=spec.seed, record={}, labels=labels)
        runs[n] = state, [json.loads(line) for line in open(tmp_path / str(n) / "metrics.jsonl")]
    (ref, logged), (state, other) = runs[1], runs[8]
    expected = [np.mean([labels[train_lib.batch_at_step(len(data), 16, s, seed=spec.seed)].mean()
                         for s in steps]) for steps in ((0, 1), (2, 3))]
    np.testing.assert_allclose([m["label_mean"] for m in logged], expected, rtol=1e-6)
    np.testing.assert_allclose([m["loss"] for m in other], [m["loss"] for m in logged], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)
    # only the classes met so far moved their bias rows; the null row (10) never did
    assert not np.any(np.asarray(ref.params["b"][10]))


# --- sampling ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_conditional():
    process = GaussianProcess.from_schedule("linear", 100)
    model = UNet(num_classes=3, **_KW)
    x = jnp.zeros((4, 8, 8, 1))
    params = jax.jit(model.init)(jax.random.key(0), x, jnp.ones((4,), jnp.int32),
                                 jnp.zeros((4,), jnp.int32))["params"]
    return process, model, _perturbed(params, jax.random.key(5))


def test_class_predictors_give_labels_per_example_and_the_null_label(small_conditional):
    process, model, params = small_conditional
    _, eval_apply = train_lib.make_apply_fns(model)
    cond, uncond = conditional.class_predictors(process, eval_apply, 3)
    xt = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    labels = jnp.array([0, 1, 2, 3], jnp.int32)
    t_in = jnp.full((4,), process.network_time(50))
    x0_c = cond((params, labels), xt, 50)
    np.testing.assert_array_equal(
            x0_c, process.x0_from_output(50, xt, eval_apply(params, xt, t_in, labels)))
    # the unconditional branch: the null label for everyone, what eval_apply's default gives
    np.testing.assert_array_equal(uncond((params, labels), xt, 50),
                                  process.x0_from_output(50, xt, eval_apply(params, xt, t_in)))
    np.testing.assert_allclose(uncond((params, labels), xt, 50)[3], x0_c[3], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"labels must be integers of shape \[B\] = \(4,\)"):
        cond((params, labels[:2]), xt, 50)
    with pytest.raises(ValueError, match="must be the pair"):
        cond(params, xt, 50)


def test_guided_class_sampling_runs_under_jit(small_conditional):
    process, model, params = small_conditional
    _, eval_apply = train_lib.make_apply_fns(model)
    cond, uncond = conditional.class_predictors(process, eval_apply, 3)
    x_T = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    labels = jnp.array([0, 1, 2, 0], jnp.int32)
    key = jax.random.key(3)
    guided = conditional.guided_predictor(process, eval_apply, 3, 2.0)
    out = make_sampler(process, guided, "ddim", num_steps=3, clip_x0=1.0)(
            (params, labels), x_T, key=key)
    assert out.x0.shape == x_T.shape and np.all(np.isfinite(np.asarray(out.x0)))
    # scale 0 is the conditional sampler, exactly
    plain = make_sampler(process, cond, "ddim", num_steps=3, clip_x0=1.0)((params, labels), x_T,
                                                                          key=key)
    zero = make_sampler(process, classifier_free_guidance(cond, uncond, 0.0), "ddim",
                        num_steps=3, clip_x0=1.0)((params, labels), x_T, key=key)
    np.testing.assert_array_equal(zero.x0, plain.x0)
    assert np.max(np.abs(np.asarray(out.x0) - np.asarray(plain.x0))) > 1e-4


# --- end to end --------------------------------------------------------------------------------

@pytest.mark.slow  # a further training smoke: `make test-slow`
def test_conditional_smoke_trains_checkpoints_and_resumes_from_the_command_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    base = [sys.executable, "-m", "experiments.main",
            "--config=configs/ddpm_digits.py:conditional,smoke", f"--workdir={tmp_path}",
            "--config.train.progress_bar=False", "--config.sampler.num_steps=3",
            "--config.eval.step_counts=(3,)", "--config.eval.samplers=('ddim',)"]
    first = subprocess.run(base + ["--config.train.num_steps=2",
                                   "--config.sampler.guidance_scale=2.0",
                                   "--config.sampler.inpaint=bottom_half"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "| ddim (eta=0) | 3 |" in first.stdout
    assert ("Samples conditioned: class-conditional, guidance scale 2; inpainting with "
            "bottom_half of each held-out example known.") in first.stdout
    rows = json.load(open(tmp_path / "results.json"))["rows"]
    assert [r["known_changed"] for r in rows[1:]] == [0.0]   # the known half, pixel for pixel
    assert 0.0 <= rows[1]["class_accuracy"] <= 1.0 and (tmp_path / "known.png").exists()
    second = subprocess.run(base + ["--config.train.num_steps=4", "--config.eval.enabled=False"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from step 2" in second.stdout + second.stderr
    assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [2, 4]
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [m["step"] for m in logged] == [2, 4] and all(np.isfinite(m["loss"]) for m in logged)
    spec = from_config(_config())
    exp = train_lib.build(spec)
    state = train_lib.train(spec, str(tmp_path), experiment=exp)   # restores step 4
    assert int(state.step) == 4
    assert np.any(np.asarray(state.params["label_embedding"]["embedding"]))
