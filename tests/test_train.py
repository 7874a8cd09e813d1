"""train_and_evaluate with the :smoke config on 8 fake devices, resume, bad input; the training
loop on 1, 2 and 8 devices. In `make test`: the refusals of bad configs and the training loop on
1, 2 and 8 devices. The end-to-end runs (the shared :smoke run and what starts from its
checkpoints: outputs, bitwise resume, NaN stop, shape refusal; the smokes of the other model
families) are marked slow and run by `make test-slow`."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ddpm_digits
from udm import checkpoint as ckpt_lib
from udm import parallel
from udm.pipeline import train as train_lib
from udm.pipeline.spec import from_config



def _smoke(**overrides):
    config = ddpm_digits.get_config("smoke")
    config.train.progress_bar = False
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def _listing(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One train_and_evaluate of the :smoke config (4 steps, checkpoints at 2 and 4, eval): the
    resume, NaN and shape tests start from copies of its checkpoints instead of training again.
    (tests/conftest.py puts this module first, so under xdist its tests go to one worker in
    the first chunk and the run happens once.)"""
    workdir = tmp_path_factory.mktemp("smoke")
    results = train_lib.train_and_evaluate(from_config(_smoke()), str(workdir))
    return workdir, results


def _copy_checkpoints(smoke_workdir, workdir, *, keep):
    """workdir/checkpoints holds the smoke run's checkpoints of the steps in `keep`."""
    shutil.copytree(smoke_workdir / "checkpoints", workdir / "checkpoints")
    for step in ckpt_lib.Checkpointer(str(workdir / "checkpoints")).all_steps():
        if step not in keep:
            shutil.rmtree(workdir / "checkpoints" / str(step))
    assert ckpt_lib.Checkpointer(str(workdir / "checkpoints")).all_steps() == sorted(keep)


@pytest.mark.slow  # starts from the shared end-to-end run: `make test-slow`
def test_smoke_train_and_evaluate_writes_everything(smoke_run):
    assert jax.device_count() == 8
    workdir, results = smoke_run
    ckpt = ckpt_lib.Checkpointer(str(workdir / "checkpoints"))
    assert ckpt.all_steps() == [2, 4]
    for name in ["samples.png", "samples_ddpm_5.png", "samples_ddim_5.png", "real.png",
                 "results.md", "results.json", "metrics.jsonl"]:
        assert (workdir / name).stat().st_size > 0, name
    assert os.listdir(workdir / "tensorboard")
    logged = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [m["step"] for m in logged] == [2, 4] and all(np.isfinite(m["loss"]) for m in logged)
    rows = results["rows"]
    assert [r["samples"] for r in rows] == ["real digits", "ddpm", "ddim (eta=0)"]
    assert all(np.isfinite(r["fd"]) and r["fd"] >= 0 for r in rows)
    assert "| real digits |" in open(workdir / "results.md").read()


def _state_at(config, workdir, step):
    exp = train_lib.build(from_config(config))
    abstract = jax.eval_shape(lambda k: train_lib.init_state(
        exp.model, exp.optimizer, exp.dataset.train_images, k), exp.init_key)
    return ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")).restore(step, abstract)


@pytest.mark.slow  # starts from the shared end-to-end run: `make test-slow`
def test_resume_is_bitwise_exact(smoke_run, tmp_path, capsys):
    """Restarted from the step-2 checkpoint, training reaches the uninterrupted run's step-4
    state bit for bit (same batches, step keys, optimizer and EMA state)."""
    smoke_workdir, _ = smoke_run
    _copy_checkpoints(smoke_workdir, tmp_path, keep=[2])
    full = _smoke(**{"eval.enabled": False, "train.checkpoint_every": 100})
    train_lib.train(from_config(full), str(tmp_path))                 # resumes at step 2
    assert "resumed from step 2" in capsys.readouterr().out
    a = _state_at(full, str(smoke_workdir), 4)
    b = _state_at(full, str(tmp_path), 4)
    assert int(a.step) == int(b.step) == 4
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # and training moved the parameters between the two checkpoints
    before = _state_at(full, str(tmp_path), 2)
    assert any(np.any(np.asarray(x) != np.asarray(y))
               for x, y in zip(jax.tree.leaves(before.params), jax.tree.leaves(a.params)))


@pytest.mark.parametrize("field,value,message", [
    ("process.schedule", "sigmoid", "unknown schedule 'sigmoid'; valid names: blog, cosine, linear"),
    ("sampler.name", "euler", "unknown sampler 'euler'; valid names: baseline, ddim, ddpm"),
    ("sampler.num_steps", 0, r"config.sampler.num_steps must be in \[1, T=1000\], got 0"),
    ("sampler.num_steps", 1001, r"config.sampler.num_steps must be in \[1, T=1000\], got 1001"),
    ("train.batch_size", 12, r"config.train.batch_size=12 must be divisible by the number of devices \(8\)"),
    ("process.prediction", "score", "unknown prediction target 'score'"),
    ("train.loss_weighting", "p2", "unknown loss weighting 'p2'"),
    ("model.attention_scale", "nope", "unknown attention scale 'nope'; valid names: entropy_invariant"),
])
def test_bad_config_fails_before_writing(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        train_lib.train_and_evaluate(from_config(_smoke(**{field: value})), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # starts from the shared end-to-end run: `make test-slow`
def test_checkpoint_of_other_model_shape_is_refused(smoke_run, tmp_path):
    _copy_checkpoints(smoke_run[0], tmp_path, keep=[2, 4])
    before = _listing(tmp_path)
    wider = _smoke(**{"eval.enabled": False, "train.num_steps": 6, "model.channels": 16})
    with pytest.raises(ckpt_lib.ShapeMismatchError, match="different parameter shapes"):
        train_lib.train(from_config(wider), str(tmp_path))
    assert _listing(tmp_path) == before


@pytest.mark.slow  # starts from the shared end-to-end run: `make test-slow`
def test_nan_loss_stops_and_keeps_last_good_checkpoint(smoke_run, tmp_path, monkeypatch):
    _copy_checkpoints(smoke_run[0], tmp_path, keep=[2])
    real_load = train_lib.load_dataset

    def poisoned(*args, **kwargs):
        ds = real_load(*args, **kwargs)
        ds.train_images[:] = np.nan
        return ds

    monkeypatch.setattr(train_lib, "load_dataset", poisoned)
    config = _smoke(**{"eval.enabled": False, "train.num_steps": 6})
    with pytest.raises(FloatingPointError, match=r"at step 3; training stopped.*step 2"):
        train_lib.train(from_config(config), str(tmp_path))
    assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [2]


def test_training_loop_does_not_depend_on_the_device_count(tmp_path):
    """`fit` on 1, 2 and 8 of the fake devices: the same batches, step keys and state, up to
    float32 rounding of the gradient all-reduce (the multi-process runs of test_multiprocess.py,
    marked slow, check the same with the UNet across processes). A linear denoiser keeps the
    compiles small; the batch is sharded over the mesh and the loss noise is drawn inside it."""
    spec = from_config(_smoke(**{"train.num_steps": 4, "train.checkpoint_every": 100}))
    exp = train_lib.build(spec)
    data = exp.dataset.train_images
    d = int(np.prod(data.shape[1:]))

    def init(key):
        params = {"w": 0.1 * jax.random.normal(key, (d, d)), "b": jnp.zeros((d,))}
        return train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                    ema_params=jax.tree.map(jnp.copy, params),
                                    opt_state=exp.optimizer.init(params))

    def loss_fn(params, x0, *, key):
        x = x0.reshape(x0.shape[0], d)
        noisy = x + jax.random.normal(key, x.shape)
        loss = jnp.mean((noisy @ params["w"] + params["b"][None] - x) ** 2)
        return loss, {"x_mean": jnp.mean(x)}

    runs = {}
    for n in (1, 2, 8):
        workdir = tmp_path / f"{n}_devices"
        state = train_lib.fit(spec.train, str(workdir), init=init, init_key=exp.init_key,
                              loss_fn=loss_fn, optimizer=exp.optimizer, train_key=exp.train_key,
                              mesh=parallel.data_mesh(jax.devices()[:n]), data=data,
                              seed=spec.seed, record={})
        assert int(state.step) == 4
        runs[n] = state, [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    reference, logged = runs[1]
    assert [m["step"] for m in logged] == [2, 4]
    for n in (2, 8):
        state, other = runs[n]
        for key in ("loss", "grad_norm", "x_mean"):   # same batches, same noise
            np.testing.assert_allclose([m[key] for m in other], [m[key] for m in logged],
                                       rtol=1e-6, err_msg=f"{n} devices: {key}")
        for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(reference)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)
    # and training moved the parameters well beyond that tolerance
    assert float(jnp.max(jnp.abs(reference.params["b"]))) > 1e-3


@pytest.mark.slow  # a further training smoke: `make test-slow`
def test_sde_smoke_train_and_evaluate(tmp_path):
    """A continuous-time VE model trains (likelihood-weighted, importance-sampled t) and samples
    through the same entry point, with NFE reported per row."""
    from configs import sde_digits
    config = sde_digits.get_config("ve,smoke")
    config.train.progress_bar = False
    config.train.loss_weighting, config.train.time_sampling = "likelihood", "importance"
    config.eval.samplers = ("em", "ode_adaptive")
    results = train_lib.train_and_evaluate(from_config(config), str(tmp_path))
    rows = {r["samples"]: r for r in results["rows"]}
    assert rows["em"]["steps"] == 5 and rows["em"]["nfe"] == 6   # K steps + the Tweedie step
    adaptive = rows["ode_adaptive (tsit5, rtol=0.001)"]
    assert adaptive["steps"] is None and adaptive["nfe"] > 7 and (adaptive["nfe"] - 2) % 6 == 0
    assert all(np.isfinite(r["fd"]) for r in results["rows"])
    for name in ["samples.png", "samples_em_5.png", "samples_ode_adaptive.png"]:
        assert (tmp_path / name).stat().st_size > 0, name


@pytest.mark.slow  # a further training smoke: `make test-slow`
def test_flow_smoke_train_and_evaluate(tmp_path):
    """Flow matching (docs/flow_matching.md) trains its velocity-predicting UNet through the same
    entry point and samples with rectified flow's Euler sampler and the adaptive ODE solver."""
    from configs import flow_digits
    config = flow_digits.get_config("smoke")
    config.train.progress_bar = False
    results = train_lib.train_and_evaluate(from_config(config), str(tmp_path))
    rows = {r["samples"]: r for r in results["rows"]}
    assert rows["ode_euler"]["steps"] == 5 and rows["ode_euler"]["nfe"] == 6  # + the x_0 step
    adaptive = rows["ode_adaptive (tsit5, rtol=0.001)"]
    assert adaptive["steps"] is None and (adaptive["nfe"] - 2) % 6 == 0
    assert all(np.isfinite(r["fd"]) for r in results["rows"])
    for name in ["samples.png", "samples_ode_euler_5.png", "samples_ode_adaptive.png"]:
        assert (tmp_path / name).stat().st_size > 0, name


@pytest.mark.slow  # a further training smoke: `make test-slow`
def test_cold_blur_smoke_trains_and_samples_both_designs(tmp_path):
    """Cold diffusion trains through the same entry point (x_0-predicting UNet, l1 loss) and
    samples with the naive and improved designs from a prior fitted to F_T(data)."""
    from configs import cold_digits
    config = cold_digits.get_config("noisy,smoke")
    config.train.progress_bar = False
    results = train_lib.train_and_evaluate(from_config(config), str(tmp_path))
    rows = {r["samples"]: r for r in results["rows"]}
    assert set(rows) == {"real digits", "baseline", "improved"}
    assert all(np.isfinite(r["fd"]) for r in results["rows"])
    assert (tmp_path / "samples_improved_5.png").stat().st_size > 0


@pytest.mark.slow  # a further training smoke: `make test-slow`
@pytest.mark.parametrize("config_name", ["masking_arithmetic", "edit_lee", "d3pm_uniform_arithmetic"])
def test_token_process_smoke_trains_and_samples(tmp_path, config_name):
    """Token processes train (TokenDenoiser, cross-entropy) and sample (both designs) through
    train_and_evaluate; samples are decoded to text and scored."""
    import importlib
    config = importlib.import_module(f"configs.{config_name}").get_config("smoke")
    config.train.progress_bar = False
    results = train_lib.train_and_evaluate(from_config(config), str(tmp_path))
    rows = {r["samples"]: r for r in results["rows"]}
    assert set(rows) == {"real sequences", "baseline", "improved"}
    assert all(np.isfinite(r["sample_perplexity"]) for r in results["rows"])
    k = config.eval.step_counts[0]
    lines = (tmp_path / f"samples_improved_{k}.txt").read_text().splitlines()
    assert len(lines) == config.eval.grid_size and all(len(x) == config.data.seq_len for x in lines)


@pytest.mark.slow  # a further training smoke: `make test-slow`
def test_encoding_model_trains_its_encoder_jointly_and_resumes(tmp_path):
    """The encoding model (docs/processes.md B5): params = {network, process}, the encoder moves, the
    guard keeps its scale, the checkpoint of both resumes, DDPM sampling decodes to text."""
    from configs import encoding_lee
    config = encoding_lee.get_config("smoke")
    config.train.progress_bar = False
    config.eval.samplers = ("ddpm",)
    config.eval.step_counts = (5,)
    state = train_lib.train(from_config(config), str(tmp_path))
    assert set(state.params) == {"network", "process"}
    exp = train_lib.build(from_config(config))
    initial = exp.process.init_params()["embedding"]
    assert float(jnp.abs(state.params["process"]["embedding"] - initial).max()) > 0
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    np.testing.assert_allclose([m["encoder_rms"] for m in logged], 1.0, rtol=1e-5)
    config.train.num_steps += 2
    results = train_lib.train_and_evaluate(from_config(config), str(tmp_path))  # resumes from step 4
    assert [r["samples"] for r in results["rows"]] == ["real sequences", "ddpm"]
    lines = (tmp_path / "samples_ddpm_5.txt").read_text().splitlines()
    assert len(lines) == config.eval.grid_size and all(len(x) == config.data.seq_len for x in lines)


# --- optimal reverse variances (docs/optimal_variance.md): NPR / SN heads and the analytic sigma_bar ---

def _head_smoke(module, **overrides):
    config = module.get_config("smoke")
    config.train.progress_bar = False
    config.eval.samplers = ("ddpm",)            # the primary sampler only: one row, faster
    for dotted, value in overrides.items():
        section, leaf = dotted.split(".")
        config[section][leaf] = value
    return config


def _lines(path):
    return open(path).read().splitlines()


@pytest.mark.slow  # a further training smoke: `make test-slow`
def test_npr_head_smoke_trains_evaluates_and_resumes_without_retraining(tmp_path):
    from configs import npr_digits
    config = _head_smoke(npr_digits)
    results = train_lib.train_and_evaluate(from_config(config), str(tmp_path))
    head_dir = tmp_path / "variance_head"
    head_ckpt = ckpt_lib.Checkpointer(str(head_dir / "checkpoints"))
    assert head_ckpt.latest_step() == config.variance.head_steps == 4
    assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 4
    head_log = [json.loads(line) for line in _lines(head_dir / "metrics.jsonl")]
    assert [m["step"] for m in head_log] == [2, 4] and all(np.isfinite(m["loss"]) for m in head_log)
    saved = json.load(open(tmp_path / "results.json"))
    assert [r["samples"] for r in saved["rows"]] == ["real digits", "ddpm, npr variance"]
    assert [r["samples"] for r in results["rows"]] == [r["samples"] for r in saved["rows"]]
    assert all(np.isfinite(r["fd"]) for r in saved["rows"])
    assert (tmp_path / "samples_ddpm_5.png").stat().st_size > 0
    # Rerun: both stages resume at their last step (nothing retrained, no new log lines) and
    # the head is restored for sampling: the same samples, so the same scores.
    mean_log_before = _lines(tmp_path / "metrics.jsonl")
    head_log_before = _lines(head_dir / "metrics.jsonl")
    again = train_lib.train_and_evaluate(from_config(config), str(tmp_path))
    assert ckpt_lib.Checkpointer(str(head_dir / "checkpoints")).all_steps() == [2, 4]
    assert _lines(head_dir / "metrics.jsonl") == head_log_before
    assert _lines(tmp_path / "metrics.jsonl") == mean_log_before
    assert [r["fd"] for r in again["rows"]] == [r["fd"] for r in saved["rows"]]


@pytest.mark.slow  # a further training smoke: `make test-slow`
def test_sn_head_smoke_resumes_the_head_stage(tmp_path):
    # Stage 2 stopped at step 2 (eval off), then the full run: the head resumes at step 2 and
    # trains to 4 (one new log line), the mean model is not touched.
    from configs import sn_digits
    train_lib.train_and_evaluate(from_config(_head_smoke(sn_digits, **{"variance.head_steps": 2,
                                                           "eval.enabled": False})), str(tmp_path))
    head_dir = tmp_path / "variance_head"
    assert ckpt_lib.Checkpointer(str(head_dir / "checkpoints")).all_steps() == [2]
    assert not (tmp_path / "results.json").exists()
    mean_log = _lines(tmp_path / "metrics.jsonl")
    results = train_lib.train_and_evaluate(from_config(_head_smoke(sn_digits)), str(tmp_path))
    # (a fresh Checkpointer: orbax caches the step listing of an open one)
    assert ckpt_lib.Checkpointer(str(head_dir / "checkpoints")).all_steps() == [2, 4]
    assert [json.loads(line)["step"] for line in _lines(head_dir / "metrics.jsonl")] == [2, 4]
    assert _lines(tmp_path / "metrics.jsonl") == mean_log
    saved = json.load(open(tmp_path / "results.json"))
    assert [r["samples"] for r in saved["rows"]] == ["real digits", "ddpm, sn variance"]
    assert [r["samples"] for r in results["rows"]] == [r["samples"] for r in saved["rows"]]
    assert all(np.isfinite(r["fd"]) for r in saved["rows"])


@pytest.mark.slow  # a further training smoke: `make test-slow`
def test_analytic_variance_smoke_caches_sigma_bar(tmp_path, monkeypatch):
    from udm import variance
    config = _smoke(**{"sampler.variance": "analytic", "eval.samplers": ("ddim",),
                       "variance.mc_samples": 64, "variance.mc_batch_size": 32})
    results = train_lib.train_and_evaluate(from_config(config), str(tmp_path))
    assert [r["samples"] for r in results["rows"]] == ["real digits",
                                                      "ddim (eta=0), analytic variance"]
    assert all(np.isfinite(r["fd"]) for r in results["rows"])
    cached = sorted((tmp_path / "variance").glob("analytic_step*.npz"))
    assert [p.name for p in cached] == ["analytic_step4.npz"]
    with np.load(cached[0]) as f:
        times, sigma_bar = f["timesteps"], f["sigma_bar"]
        assert int(f["mc_samples"]) == 64
    np.testing.assert_array_equal(times, [200, 400, 600, 800, 1000])   # the K = 5 grid
    assert sigma_bar[0] == 0 and np.all(np.isfinite(sigma_bar[times]))
    assert np.all((sigma_bar[times] >= 0) & (sigma_bar[times] <= 1))   # max_var = 1
    # Second run: the cache is read, not recomputed (estimation would raise) nor rewritten.
    mtime = cached[0].stat().st_mtime_ns

    def no_estimate(*args, **kwargs):
        raise AssertionError("sigma_bar was re-estimated despite the cache")

    monkeypatch.setattr(variance, "estimate_sigma_bar", no_estimate)
    again = train_lib.train_and_evaluate(from_config(config), str(tmp_path))
    assert cached[0].stat().st_mtime_ns == mtime
    assert [r["fd"] for r in again["rows"]] == [r["fd"] for r in results["rows"]]
