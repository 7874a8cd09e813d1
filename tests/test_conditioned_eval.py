"""Conditioning from the config: config.sampler.guidance_scale / guidance_interval (a
class-conditional model) and config.sampler.inpaint (a known part of held-out examples) through
the pipeline's predictor, the per-batch conditions, the refusals, and an evaluation of the masking
process that fills arithmetic equations from their prefix "ab+cd=". The image end-to-end run is
the conditional command-line smoke in test_conditional.py (slow)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ddpm_digits, encoding_arithmetic, masking_arithmetic, sde_digits
from udm import parallel
from udm.nn import UNet
from udm.pipeline import conditional
from udm.pipeline import evaluate as eval_lib
from udm.pipeline import train as train_lib
from udm.pipeline.spec import from_config
from udm.processes import GaussianProcess
from udm.sampling import classifier_free_guidance, make_sampler, network_predictor

_KW = dict(channels=8, channel_mults=(1,), num_groups=4, attention_resolutions=())


def _config(module, variant, **overrides):
    config = module.get_config(variant)
    config.train.progress_bar = False
    for dotted, value in overrides.items():
        section, leaf = dotted.split(".")
        config[section][leaf] = value
    return config


# --- known parts -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,rows,cols", [
    ("top_half", slice(0, 4), slice(None)), ("bottom_half", slice(4, 8), slice(None)),
    ("left_half", slice(None), slice(0, 3)), ("right_half", slice(None), slice(4, 7)),
])
def test_image_halves(name, rows, cols):
    mask = conditional.known_mask(name, (8, 7, 2))
    expected = np.zeros((8, 7, 2), bool)
    expected[rows, cols] = True   # an odd width keeps the middle column unknown
    np.testing.assert_array_equal(mask, expected)


def test_token_prefix():
    np.testing.assert_array_equal(conditional.known_mask("prefix:6", (9,)),
                                  [True] * 6 + [False] * 3)


@pytest.mark.parametrize("value,tokens,message", [
    ("top", False, "does not name a known part of images; valid: top_half, bottom_half"),
    ("prefix:3", False, "does not name a known part of images"),
    ("top_half", True, "does not name a known part of token sequences; valid: prefix:N"),
    ("prefix:0", True, r"the prefix must keep 0 < N < l = 9"),
    ("prefix:9", True, r"the prefix must keep 0 < N < l = 9"),
    ("prefix:-1", True, "does not name a known part of token sequences"),
])
def test_inpaint_names_are_checked(value, tokens, message):
    with pytest.raises(ValueError, match=message):
        conditional.check_inpaint(value, tokens=tokens, seq_len=9)


# --- per-batch conditions ----------------------------------------------------------------------

def test_batch_conditions_balance_classes_and_shard_like_the_batch():
    mesh = parallel.data_mesh()   # the eight fake devices
    examples = np.arange(5 * 4 * 4 * 1, dtype=np.float32).reshape(5, 4, 4, 1)
    labels = np.array([3, 1, 4, 1, 5], np.int32)
    plain = conditional.batch_conditions(num_samples=20, batch_size=8, num_classes=10,
                                         inpaint="", test_examples=examples,
                                         test_labels=labels, mesh=mesh)
    assert len(plain.batches) == 3 and plain.mask is None and plain.known is None
    np.testing.assert_array_equal(plain.labels, np.arange(20) % 10)
    first = plain.batches[1]["labels"]
    assert first.sharding.is_equivalent_to(parallel.batch_sharded(mesh), 1)
    np.testing.assert_array_equal(np.asarray(first), np.arange(8, 16) % 10)

    filled = conditional.batch_conditions(num_samples=12, batch_size=8, num_classes=10,
                                          inpaint="top_half", test_examples=examples,
                                          test_labels=labels, mesh=mesh)
    source = np.arange(12) % 5   # sample i completes held-out example i mod N
    np.testing.assert_array_equal(filled.labels, labels[source])   # the source's own class
    np.testing.assert_array_equal(filled.known, examples[source])
    np.testing.assert_array_equal(np.asarray(filled.batches[1]["known"]),
                                  examples[np.arange(8, 16) % 5])
    assert filled.mask.shape == (4, 4, 1) and filled.mask.sum() == 8


# --- the pipeline's predictor ------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_models():
    process = GaussianProcess.from_schedule("linear", 100)
    x = jnp.zeros((8, 8, 8, 1))
    t = jnp.ones((8,), jnp.int32)
    out = {}
    for num_classes in (None, 3):
        model = UNet(num_classes=num_classes, **_KW)
        args = (x, t) if num_classes is None else (x, t, jnp.zeros((8,), jnp.int32))
        params = jax.jit(model.init)(jax.random.key(0), *args)["params"]
        leaves, tree = jax.tree.flatten(params)   # non-zero output layer and label embedding
        keys = jax.random.split(jax.random.key(5), len(leaves))
        params = jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(k, p.shape)
                                           for p, k in zip(leaves, keys)])
        out[num_classes] = model, params
    return process, out


def test_inpainting_keeps_the_known_part_and_an_empty_mask_is_the_plain_sampler(small_models):
    process, models = small_models
    model, params = models[None]
    _, eval_apply = train_lib.make_apply_fns(model)
    x_T = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
    known = jnp.clip(jax.random.normal(jax.random.key(2), (8, 8, 8, 1)), -1, 1)
    key = jax.random.key(3)
    for name in ("ddim", "dpm_solver_pp_2m"):
        mask = conditional.known_mask("left_half", (8, 8, 1))
        predictor = conditional.conditioned_predictor(process, eval_apply, mask=mask)
        sample = jax.jit(make_sampler(process, predictor, name, num_steps=4, clip_x0=1.0))
        out = sample((params, {"known": known}), x_T, key=key)
        np.testing.assert_array_equal(np.asarray(out.x0)[:, mask], np.asarray(known)[:, mask])
        assert np.max(np.abs(np.asarray(out.x0 - known)[:, ~mask])) > 1e-2
        nothing = conditional.conditioned_predictor(process, eval_apply,
                                                    mask=np.zeros((8, 8, 1), bool))
        plain = make_sampler(process, network_predictor(process, eval_apply), name,
                             num_steps=4, clip_x0=1.0)(params, x_T, key=key)
        free = make_sampler(process, nothing, name, num_steps=4, clip_x0=1.0)(
            (params, {"known": known}), x_T, key=key)
        np.testing.assert_array_equal(free.x0, plain.x0)


def test_guided_predictor_of_the_pipeline_is_classifier_free_guidance(small_models):
    process, models = small_models
    model, params = models[3]
    _, eval_apply = train_lib.make_apply_fns(model)
    x_T = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
    labels = jnp.arange(8, dtype=jnp.int32) % 3
    cond, uncond = conditional.class_predictors(process, eval_apply, 3)
    for scale, interval in ((0.0, None), (2.0, None), (2.0, (30, 70))):
        ours = conditional.conditioned_predictor(process, eval_apply, num_classes=3, scale=scale,
                                                 interval=interval)
        theirs = classifier_free_guidance(cond, uncond, scale, interval=interval)
        for t in (10, 50, 90):
            np.testing.assert_array_equal(ours((params, {"labels": labels}), x_T, t),
                                          theirs((params, labels), x_T, t))


# --- the config --------------------------------------------------------------------------------

@pytest.mark.parametrize("module,variant,fields,message", [
    (ddpm_digits, "smoke", {"sampler.guidance_scale": 2.0},
     r"guidance_scale / guidance_interval need a class-conditional model: set "
     r"config.model.num_classes"),
    (ddpm_digits, "conditional,smoke", {"sampler.guidance_scale": -1.0},
     "config.sampler.guidance_scale must be a finite number >= 0, got -1.0"),
    (ddpm_digits, "conditional,smoke", {"sampler.guidance_scale": float("nan")},
     "config.sampler.guidance_scale must be a finite number >= 0"),
    (ddpm_digits, "conditional,smoke", {"sampler.guidance_interval": (800, 200)},
     r"config.sampler.guidance_interval must be \(\) \(always\) or \(t_lo, t_hi\)"),
    (ddpm_digits, "conditional,smoke", {"sampler.guidance_interval": (1, 2, 3)},
     r"config.sampler.guidance_interval must be"),
    (ddpm_digits, "smoke", {"sampler.inpaint": "top"},
     "config.sampler.inpaint='top' does not name a known part of images; valid: top_half"),
    (ddpm_digits, "smoke", {"sampler.inpaint": "top_half", "sampler.variance": "analytic"},
     "config.sampler.variance='analytic' is not supported with guidance or inpainting"),
    (masking_arithmetic, "smoke", {"sampler.inpaint": "prefix:9"},
     r"config.sampler.inpaint='prefix:9': the prefix must keep 0 < N < l = 9"),
    (masking_arithmetic, "smoke", {"sampler.inpaint": "left_half"},
     "does not name a known part of token sequences; valid: prefix:N"),
    (encoding_arithmetic, "smoke", {"sampler.inpaint": "prefix:6"},
     "config.sampler.inpaint is not supported for the 'encoding' process"),
])
def test_conditioning_config_errors_name_the_field(module, variant, fields, message):
    with pytest.raises(ValueError, match=message):
        from_config(_config(module, variant, **fields))


def test_conditioning_configs_that_are_valid():
    from_config(_config(ddpm_digits, "conditional,smoke", **{"sampler.guidance_scale": 4.0,
                                                             "sampler.guidance_interval": (0, 500),
                                                             "sampler.inpaint": "bottom_half"}))
    from_config(_config(sde_digits, "smoke", **{"sampler.inpaint": "right_half"}))
    from_config(_config(masking_arithmetic, "smoke", **{"sampler.inpaint": "prefix:6"}))


# --- an evaluation ----------------------------------------------------------------------------

def test_masking_evaluation_fills_arithmetic_sums_and_keeps_the_prefix(tmp_path):
    """The masking process after the smoke's 4 training steps fills "ab+cd=" of held-out
    equations: the prefix comes back token for token, and the table reports it (known tokens
    changed 0.000)."""
    spec = from_config(_config(masking_arithmetic, "smoke", **{"sampler.inpaint": "prefix:6",
                                                               "eval.num_samples": 40}))
    exp = train_lib.build(spec)
    state = train_lib.train(spec, str(tmp_path), experiment=exp)
    _, eval_apply = train_lib.make_apply_fns(exp.model)
    results = eval_lib.evaluate(spec, str(tmp_path), process=exp.process, eval_apply=eval_apply,
                                params=state.ema_params, dataset=exp.dataset, mesh=exp.mesh,
                                sample_key=exp.sample_key)
    table = open(tmp_path / "results.md").read()
    assert "Samples conditioned: inpainting with prefix:6 of each held-out example known" in table
    assert "known tokens changed" in table
    rows = [r for r in results["rows"] if r["samples"] != "real sequences"]
    assert rows and all(r["known_changed"] == 0.0 for r in rows)
    decoded = open(tmp_path / f"samples_{spec.sampler.name}_{rows[0]['steps']}.txt").read()
    heldout = exp.dataset.decode(exp.dataset.test_tokens[:3])
    assert [line[:6] for line in decoded.splitlines()[:3]] == [h[:6] for h in heldout]
    assert json.load(open(tmp_path / "results.json"))["rows"][1]["known_changed"] == 0.0
