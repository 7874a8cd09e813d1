"""Every registered discrete-time process runs through the one scan sampler and the one loss.

The point of UDM (docs/udm.md): a process is a forward/invert/correct triple; `make_sampler` and
`make_loss_fn` never special-case one. With the oracle estimate (x0_hat = x_0, or logits peaked
at x_0) the deterministic / improved design started from x_T = F_T(x_0, eps) returns x_0.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm.losses import make_loss_fn
from udm.processes import PROCESSES, Process
from udm.processes.base import init_params, prior_from_latents
from udm.sampling import make_sampler

SEQ_LEN, VOCAB = 6, 5
KWARGS = {
    "gaussian": dict(schedule="blog", num_timesteps=20),
    "cold_blur": dict(num_timesteps=5),
    "heat": dict(num_timesteps=5, sigma=0.0),
    "masking": dict(seq_len=SEQ_LEN, vocab_size=VOCAB),
    "edit": dict(seq_len=SEQ_LEN, vocab_size=VOCAB),
    "d3pm_uniform": dict(seq_len=SEQ_LEN, vocab_size=VOCAB, num_timesteps=6),
    "d3pm_absorbing": dict(seq_len=SEQ_LEN, vocab_size=VOCAB, num_timesteps=6),
    "encoding": dict(seq_len=SEQ_LEN, vocab_size=VOCAB, latent_dim=8, num_timesteps=20),
    "sde": dict(sde="vp"),
    "flow": dict(prediction="velocity"),
}
ALL = PROCESSES.names()
# The optional methods each capability promises (`udm.processes.base.Capabilities`).
OPTIONAL = {"gaussian_marginals": ("marginal",), "ddpm_variance": ("ddpm_sigma_tilde",),
            "learned_params": ("init_params", "bind", "diagnostics"),
            "latent_state": ("decode",), "fitted_prior": ("fit_prior",),
            "reverse_sde": ("f", "g2", "transition")}


def test_every_registered_process_is_covered():
    assert sorted(KWARGS) == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_every_process_satisfies_the_contract(name):
    """One contract: the Protocol's methods, and exactly the optional methods it declares."""
    process = PROCESSES.get(name)(**KWARGS[name])
    assert isinstance(process, Process)
    for flag, methods in OPTIONAL.items():
        for method in methods:
            assert callable(getattr(process, method, None)) == getattr(
                process.capabilities, flag), (name, flag, method)


@pytest.mark.parametrize("name", ALL)
def test_token_processes_state_their_sequence_length_and_vocabulary(name):
    process = PROCESSES.get(name)(**KWARGS[name])
    if process.capabilities.tokens:
        assert (process.seq_len, process.vocab_size) == (SEQ_LEN, VOCAB), name


@pytest.mark.parametrize("name", ALL)
def test_isotropic_prior_is_prior_std_times_a_standard_normal(name):
    """The flag promises `prior_std` and prior(key, shape) = prior_std * N(0, I) of the state."""
    process = PROCESSES.get(name)(**KWARGS[name])
    assert hasattr(process, "prior_std") == process.capabilities.isotropic_prior, name
    if not process.capabilities.isotropic_prior:
        with pytest.raises(ValueError, match="isotropic"):
            prior_from_latents(process, np.zeros(3, np.float32))
        return
    key = jax.random.PRNGKey(5)
    shape = (3, SEQ_LEN) if process.capabilities.tokens else (3, 8, 8, 1)
    x_T = process.prior(key, shape)
    z = jax.random.normal(key, x_T.shape)
    assert isinstance(process.prior_std, float) and process.prior_std > 0
    np.testing.assert_allclose(np.asarray(x_T), np.asarray(prior_from_latents(process, z)),
                               rtol=1e-6)


def _start(process, x0, eps):
    """x_T = F_T(x_0, eps) at the top time of the process (T, or 1 in continuous time)."""
    top = 1.0 if process.capabilities.continuous_time else process.num_timesteps
    return jax.vmap(process.forward)(jnp.full((x0.shape[0],), top), x0, eps)


def _data(process, key):
    if process.capabilities.tokens:
        return jax.random.randint(key, (4, SEQ_LEN), 0, VOCAB)
    return jax.random.uniform(key, (4, 8, 8, 1), minval=-1.0, maxval=1.0)


def _oracle(process, x0):
    if process.capabilities.tokens:
        return lambda params, xt, t: 100.0 * jax.nn.one_hot(x0, VOCAB)
    return lambda params, xt, t: x0


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("design", ["improved", "baseline"])
def test_process_runs_through_the_generic_sampler(name, design):
    process = PROCESSES.get(name)(**KWARGS[name])
    key_data, key_eps, key_sample = jax.random.split(jax.random.PRNGKey(0), 3)
    x0 = _data(process, key_data)
    eps = process.sample_eps(key_eps, x0.shape, x0.dtype)
    x_T = _start(process, x0, eps)
    # The improved design on every step of the grid; the baseline design (which re-corrupts
    # x0_hat on each step) on a 2-step sub-sequence, where its last step does the work. (The
    # improved design on sub-sequences: test_samplers.py, test_token_processes.py.)
    for num_steps in ((getattr(process, "num_timesteps", 20),) if design == "improved" else (2,)):
        out = make_sampler(process, _oracle(process, x0), num_steps=num_steps,
                           name=design)(init_params(process, None), x_T, key=key_sample).x0
        assert out.shape == x0.shape and out.dtype == x0.dtype
        if process.capabilities.tokens:
            # Both designs end at the oracle's x_0 (the baseline re-corrupts x0_hat = x_0 with
            # F_0 = identity on its last step).
            np.testing.assert_array_equal(np.asarray(out), np.asarray(x0))
        else:
            assert np.all(np.isfinite(np.asarray(out)))
            np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_process_trains_through_the_generic_loss(name):
    process = PROCESSES.get(name)(**KWARGS[name])
    x0 = _data(process, jax.random.PRNGKey(1))
    if process.capabilities.tokens:
        def apply_fn(params, xt, t, key):
            del key
            if jnp.issubdtype(xt.dtype, jnp.floating):  # the encoding model's latents
                return params * xt[..., :VOCAB]
            return params * jnp.ones(xt.shape + (VOCAB,)) + jax.nn.one_hot(
                jnp.minimum(xt, VOCAB - 1), VOCAB)
    else:
        def apply_fn(params, xt, t, key):
            del key
            return params * xt
    loss_fn = jax.jit(make_loss_fn(process, apply_fn))
    params = init_params(process, jnp.float32(0.5))
    (loss, aux), grad = jax.value_and_grad(lambda p: loss_fn(p, x0, key=jax.random.PRNGKey(2)),
                                           has_aux=True)(params)
    assert np.isfinite(float(loss)) and float(loss) > 0
    grads = jax.tree.leaves(grad)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    # A process with learned parameters is trained jointly: its gradient reaches them.
    assert len(grads) == 1 or all(float(jnp.abs(g).max()) > 0 for g in grads)
    assert "unweighted_loss" in aux
    with pytest.raises(ValueError):
        make_loss_fn(process, apply_fn, weighting="no_such_weighting")


@pytest.mark.parametrize("name", ["cold_blur", "masking"])
def test_sampler_path_records_every_state(name):
    """return_path gives the K states of the same run (the last one is x_0)."""
    process = PROCESSES.get(name)(**KWARGS[name])
    x0 = _data(process, jax.random.PRNGKey(3))
    eps = process.sample_eps(jax.random.PRNGKey(4), x0.shape, x0.dtype)
    T = process.num_timesteps
    x_T = jax.vmap(process.forward)(jnp.full((x0.shape[0],), T), x0, eps)
    key = jax.random.PRNGKey(5)
    plain = make_sampler(process, _oracle(process, x0), num_steps=T, name="improved")
    traced = make_sampler(process, _oracle(process, x0), num_steps=T, name="improved",
                          return_path=True)
    result = traced(None, x_T, key=key)
    out, path = result.x0, result.path
    assert path.shape == (T, *x0.shape)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(plain(None, x_T, key=key).x0))
    np.testing.assert_array_equal(np.asarray(path[-1]), np.asarray(out))
    if name == "masking":  # the improved sampler unmasks exactly one position per step
        masks = np.sum(np.asarray(path) == process.mask_id, axis=-1)
        np.testing.assert_array_equal(masks, np.arange(T - 1, -1, -1)[:, None] * np.ones((1, 4)))
