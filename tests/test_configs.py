"""Configs: every default validates, the CIFAR-10 config has the DDPM paper's model size, and the
command-line entry point runs the smoke variant end to end."""
import importlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import (base, cold_digits, ddpm_cifar10, ddpm_digits, ddpm_mnist5k, flow_digits, heat_digits,
                     sde_digits)
from udm.pipeline import train as train_lib
from udm.pipeline.spec import from_config, make_process
from udm.nn import count_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module,variant", [
    (ddpm_digits, ""), (ddpm_digits, "smoke"), (ddpm_digits, "conditional"),
    (ddpm_digits, "conditional,smoke"), (ddpm_cifar10, "smoke"), (sde_digits, ""),
    (sde_digits, "subvp"), (sde_digits, "ve,smoke"), (sde_digits, "blog"), (cold_digits, ""),
    (cold_digits, "noisy,smoke"), (heat_digits, ""), (heat_digits, "smoke"), (flow_digits, ""),
    (flow_digits, "smoke"), (flow_digits, "mnist5k"), (flow_digits, "mnist5k,smoke"), (flow_digits, "x0,logit_normal,smoke"), (flow_digits, "eps"),
    (ddpm_mnist5k, ""), (ddpm_mnist5k, "smoke")])
def test_configs_validate(module, variant):
    config = module.get_config(variant)
    config.data.name = "digits"      # validation does not need the dataset itself
    from_config(config)


def test_ddpm_digits_conditional_variant_combines_with_smoke():
    plain, cond = ddpm_digits.get_config(""), ddpm_digits.get_config("conditional")
    assert plain.model.num_classes is None
    assert cond.model.num_classes == 10 and cond.train.label_dropout == 0.1
    both = ddpm_digits.get_config("conditional,smoke")
    assert both.to_dict() == ddpm_digits.get_config("smoke,conditional").to_dict()
    smoke = ddpm_digits.get_config("smoke")
    assert both.model.channels == smoke.model.channels and both.train.num_steps == 4
    assert both.model.num_classes == 10 and smoke.model.num_classes is None
    spec = from_config(both)
    assert dict(spec.model.kwargs)["num_classes"] == 10 and spec.train.label_dropout == 0.1
    for bad in ("conditional,tiny", "smoke,smoke"):
        with pytest.raises(ValueError, match="valid: smoke, conditional"):
            ddpm_digits.get_config(bad)


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="valid: smoke"):
        ddpm_digits.get_config("tiny")
    with pytest.raises(ValueError, match="ddpm_mnist5k; valid: smoke"):
        ddpm_mnist5k.get_config("tiny")
    with pytest.raises(ValueError, match="valid: one of vp, subvp, ve, blog"):
        sde_digits.get_config("vp,ve")
    with pytest.raises(ValueError, match="valid: at most one of velocity, x0, eps"):
        flow_digits.get_config("x0,eps")


@pytest.mark.parametrize("field,value,message", [
    ("process.sde", "vq", "unknown SDE 'vq'"),
    ("process.beta_max", None, None),
    ("sampler.name", "euler", "unknown sampler 'euler'; valid names: baseline, ddim, ddpm, dpm_solver_1, .*, em"),
    ("sampler.spacing", "leading", "config.sampler.spacing: spacing 'leading' is not defined in "
                                   "continuous time; valid: karras, logsnr, quadratic, uniform"),
    ("eval.step_counts", (10, 0), r"config.eval.step_counts entries must be >= 1, got 0"),
    ("process.t_min", 0.0, r"config.process \('sde'\) is invalid: t_min must be in \(0, 1\)"),
    ("train.loss_weighting", "min_snr_5",
     "config.train.loss_weighting / time_sampling: unknown DSM weighting 'min_snr_5'; "
     "valid: none, likelihood"),
    ("train.time_sampling", "importance", "time_sampling='importance' needs weighting='likelihood'"),
    ("sampler.noise_scale", -1.0, "noise_scale must be >= 0"),
])
def test_sde_config_errors_name_the_field(field, value, message):
    config = sde_digits.get_config()
    section, leaf = field.split(".")
    if value is None:  # a hyperparameter the SDE does not have
        config.process.sigma_max = 3.0
        message = "unknown hyperparameters \\['sigma_max'\\] for the 'vp' SDE"
    else:
        config[section][leaf] = value
    with pytest.raises(ValueError, match=message):
        from_config(config)


@pytest.mark.parametrize("field,value,message", [
    ("process.prediction", "v", r"config.process \('flow'\) is invalid: unknown prediction "
                                r"target 'v' for the flow process; valid: velocity, x0, eps"),
    ("process.t_min", 1.0, r"config.process \('flow'\) is invalid: t_min must be in \(0, 1\)"),
    ("process.time_input_scale", 0.0, "time_input_scale must be > 0"),
    ("process.sigma_max", 3.0, r"unknown hyperparameters \['sigma_max'\] for the flow process"),
    ("train.time_sampling", "importance", "config.train.loss_weighting / time_sampling: unknown "
                                          "time sampling 'importance' for the flow process; "
                                          "valid: uniform, logit_normal"),
    ("train.loss_weighting", "likelihood", "unknown loss weighting 'likelihood' for the flow "
                                           "process; valid: none"),
    ("sampler.name", "em", r"sampler 'em' needs a reverse-time SDE.*the FlowProcess samples "
                           r"with: baseline, ddim, ddpm, dpm_solver_1, .*, improved, "
                           r"ode_adaptive, ode_ddim, ode_euler, ode_heun"),
    ("sampler.name", "heun_edm", r"sampler 'heun_edm' works in sigma = beta_bar / alpha_bar, "
                                 r"which is infinite at the top of this process .*the "
                                 r"FlowProcess samples with: baseline, ddim, ddpm, "),
    ("sampler.name", "euler_ancestral", r"sampler 'euler_ancestral' works in sigma"),
    ("sampler.spacing", "leading", "spacing 'leading' is not defined in continuous time; "
                                   "valid: karras, logsnr, quadratic, uniform"),
    ("sampler.num_steps", 0, "config.sampler.num_steps must be >= 1, got 0"),
])
def test_flow_config_errors_name_the_field(field, value, message):
    config = flow_digits.get_config()
    section, leaf = field.split(".")
    config[section][leaf] = value
    with pytest.raises(ValueError, match=message):
        from_config(config)


def test_cifar10_config_is_the_ddpm_paper_model():
    config = ddpm_cifar10.get_config()
    model = train_lib.make_model(from_config(config))
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0, impl="rbg"), x, t)
    assert abs(count_params(variables["params"]) - 35.7e6) / 35.7e6 < 0.01
    assert jax.eval_shape(model.apply, variables, x, t).shape == (1, 32, 32, 3)


@pytest.mark.parametrize("variant,num_params", [("", 280_177), ("smoke", 71_033)])
def test_mnist5k_config_fits_28x28(variant, num_params):
    """The mnist5k UNet halves 28 -> 14 -> 7 and keeps the output shape; the full model is small."""
    config = ddpm_mnist5k.get_config(variant)
    assert config.data.name == "mnist5k" and config.process.prediction == "eps"
    assert config.process.num_timesteps == 1000
    assert config.process.schedule == ddpm_digits.get_config().process.schedule
    model = train_lib.make_model(from_config(config))
    x = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0, impl="rbg"), x, t)
    assert count_params(variables["params"]) == num_params
    assert jax.eval_shape(model.apply, variables, x, t).shape == (1, 28, 28, 1)


@pytest.mark.slow  # a training smoke of the 32x32 model (minutes on 2 cores)
def test_cifar10_smoke_on_user_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny_cifar.npz"
    np.savez(path, images=rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8),
             labels=np.repeat(np.arange(10), 10)[:96])
    config = ddpm_cifar10.get_config("smoke")
    config.data.name, config.data.path = "npz", str(path)
    config.train.progress_bar = False
    state = train_lib.train(from_config(config), str(tmp_path / "run"))   # sampling is covered by the digits smoke
    assert int(state.step) == 2 and (tmp_path / "run" / "checkpoints" / "2").exists()
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))


@pytest.mark.slow  # an experiment script, end to end
def test_command_line_smoke_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "experiments.main", "--config=configs/ddpm_digits.py:smoke",
           f"--workdir={tmp_path}", "--config.train.num_steps=2", "--config.sampler.num_steps=3",
           "--config.eval.step_counts=(3,)", "--config.eval.samplers=('ddim',)",
           "--config.train.progress_bar=False"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| ddim (eta=0) | 3 |" in done.stdout
    assert (tmp_path / "samples.png").exists() and (tmp_path / "checkpoints" / "2").exists()


@pytest.mark.parametrize("variant", ["", "smoke"])
def test_variance_head_configs_validate(variant):
    from configs import npr_digits, sn_digits
    for module, kind in ((npr_digits, "npr"), (sn_digits, "sn")):
        config = module.get_config(variant)
        assert config.variance.head == config.sampler.variance == kind
        from_config(config)


@pytest.mark.parametrize("module,fields,message", [
    (ddpm_digits, {"sampler.variance": "optimal"},
     r"config\.sampler\.variance must be one of fixed_small, fixed_large, analytic, "
     r"ml_isotropic, npr, sn, got 'optimal'"),
    (ddpm_digits, {"sampler.variance": "npr"},
     r"config\.sampler\.variance='npr' needs a trained head: set config\.variance\.head='npr'"),
    (ddpm_digits, {"sampler.variance": "sn", "variance.head": "npr"},
     r"config\.sampler\.variance='sn' needs a trained head: set config\.variance\.head='sn' "
     r"\(got 'npr'\)"),
    (ddpm_digits, {"variance.head": "nll"}, r"config\.variance\.head must be '' or one of"),
    (ddpm_digits, {"sampler.variance": "analytic", "sampler.name": "baseline"},
     r"config\.sampler\.variance='analytic' works with the ddpm and ddim samplers only, "
     r"got \['baseline'\]"),
    (ddpm_digits, {"sampler.variance": "fixed_large", "eval.samplers": ("ddim", "baseline")},
     r"config\.sampler\.variance='fixed_large' works with the ddpm and ddim samplers only"),
    (sde_digits, {"sampler.variance": "analytic"},
     r"config\.sampler\.variance / config\.variance\.head apply to the discrete Gaussian "
     r"process, got process 'sde'"),
    (sde_digits, {"variance.head": "sn"}, r"apply to the discrete Gaussian process"),
    (ddpm_digits, {"variance.mc_samples": 100, "variance.mc_batch_size": 64},
     r"config\.variance\.mc_samples must be a positive multiple of "
     r"config\.variance\.mc_batch_size, got 100 and 64"),
    (ddpm_digits, {"sampler.clip_pixel": -1.0}, r"config\.sampler\.clip_pixel must be >= 0"),
])
def test_variance_config_errors_name_the_field(module, fields, message):
    config = module.get_config()
    from_config(config)                    # valid before the change
    for dotted, value in fields.items():
        section, leaf = dotted.split(".")
        config[section][leaf] = value
    with pytest.raises(ValueError, match=message):
        from_config(config)


@pytest.mark.parametrize("fields,message", [
    ({"sampler.name": "ddim"}, "the LinearDegradationProcess samples with: baseline, improved"),
    ({"train.loss_weighting": "min_snr_5"}, "weighting"),
    ({"process.kernel_std": -1.0}, "config.process"),
])
def test_cold_config_errors_name_the_field(fields, message):
    config = cold_digits.get_config("smoke")
    for dotted, value in fields.items():
        section, leaf = dotted.split(".")
        setattr(getattr(config, section), leaf, value)
    with pytest.raises(ValueError, match=message):
        from_config(config)


@pytest.mark.parametrize("name", [f"{p}_{d}" for p in ("masking", "edit", "d3pm_uniform",
                                                        "d3pm_absorbing", "encoding")
                                  for d in ("arithmetic", "lee")])
@pytest.mark.parametrize("variant", ["", "smoke"])
def test_token_configs_validate(name, variant):
    module = importlib.import_module(f"configs.{name}")
    from_config(module.get_config(variant))


def test_token_process_and_data_must_fit():
    from configs import masking_arithmetic
    config = masking_arithmetic.get_config("smoke")
    config.process.vocab_size = 13
    with pytest.raises(ValueError, match="must match the data"):
        train_lib.build(from_config(config))
    config = masking_arithmetic.get_config("smoke")
    config.data.name = "digits"
    with pytest.raises(ValueError, match="do not fit"):
        train_lib.build(from_config(config))


def test_token_target_entropy_is_a_config_field():
    """--config.process.target_entropy reaches the masking / edit draws (docs/entropy_attention.md B.5)."""
    from configs import edit_arithmetic, masking_arithmetic
    for module in (masking_arithmetic, edit_arithmetic):
        config = module.get_config("smoke")
        assert make_process(from_config(config)).target_entropy is None
        config.process.target_entropy = 0.5
        assert make_process(from_config(config)).target_entropy == 0.5


@pytest.mark.parametrize("module,fields", [
    (ddpm_digits, {"sampler.spacing": "karras", "sampler.rho": 5.0}),
    (ddpm_digits, {"sampler.spacing": "logsnr", "eval.samplers": ("heun_edm", "euler_ancestral")}),
    (ddpm_digits, {"sampler.spacing": "leading"}),
    (ddpm_digits, {"sampler.spacing": "linspace", "sampler.name": "heun_edm", "sampler.churn": 5.0,
                   "sampler.churn_tmin": 0.05, "sampler.churn_tmax": 50.0}),
    (ddpm_digits, {"process.zero_terminal_snr": True, "process.prediction": "v"}),
    (ddpm_digits, {"sampler.threshold": 0.995, "sampler.clip_x0": False}),
    (sde_digits, {"sampler.spacing": "karras", "sampler.name": "heun_edm"}),
    (sde_digits, {"sampler.spacing": "quadratic", "eval.samplers": ("ode_heun", "em")}),
])
def test_grid_and_edm_options_are_accepted(module, fields):
    config = module.get_config()
    for dotted, value in fields.items():
        section, leaf = dotted.split(".")
        config[section][leaf] = value
    spec = from_config(config)
    for dotted, value in fields.items():
        section, leaf = dotted.split(".")
        if section == "sampler":
            assert getattr(spec.sampler, leaf) == value


@pytest.mark.parametrize("module,fields,message", [
    (ddpm_digits, {"process.zero_terminal_snr": True},
     r"config\.process \('gaussian'\) is invalid: zero_terminal_snr=True needs prediction 'v' or "
     r"'x0'"),
    (ddpm_digits, {"sampler.threshold": 0.995},
     r"config\.sampler\.threshold replaces the static clip: set config\.sampler\.clip_x0=False"),
    (ddpm_digits, {"sampler.threshold": 1.5, "sampler.clip_x0": False},
     r"config\.sampler\.threshold must be in \(0, 1\), got 1\.5"),
    (ddpm_digits, {"sampler.churn": -1.0}, r"config\.sampler\.churn, churn_noise must be >= 0"),
    (ddpm_digits, {"sampler.rho": 0.0}, r"config\.sampler\.rho must be > 0"),
    (ddpm_digits, {"sampler.spacing": "cubic"},
     r"unknown time spacing 'cubic'; valid names: karras, leading, linspace, logsnr, quadratic"),
    (sde_digits, {"sampler.spacing": "linspace"},
     r"config\.sampler\.spacing: spacing 'linspace' is not defined in continuous time"),
    (cold_digits, {"sampler.spacing": "karras"},
     r"config\.sampler\.spacing: spacing 'karras' reads log\(alpha_bar / beta_bar\)"),
    (cold_digits, {"sampler.name": "heun_edm"},
     r"sampler 'heun_edm' needs a process with Gaussian marginals"),
])
def test_grid_and_edm_options_are_refused_naming_the_field(module, fields, message):
    config = module.get_config()
    for dotted, value in fields.items():
        section, leaf = dotted.split(".")
        config[section][leaf] = value
    with pytest.raises(ValueError, match=message):
        from_config(config)
