"""The encoding model (docs/processes.md B5): a learned encoder + hot diffusion in its latent.

Closed forms and exact identities: the noise is recovered by `invert`; with F one-hot times c
the marginal of x_T is N(0, I) only when alpha_bar_T c << 1, and the exact posterior recovers
x_0 at small t and large c; the correct step keeps the marginals (A6) for every sigma_tilde;
with the exact posterior of i.i.d. tokens every design samples the data distribution exactly
(docs/udm.md A2: estimate x0_hat ~ q(x_0 | x_t), then any marginal-keeping correction).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm.losses import make_loss_fn
from udm.nn import TokenDenoiser
from udm.processes import PROCESSES, EncodingProcess
from udm.processes.base import decode, init_params, split_params
from udm.processes.encoding import encoding
from udm.sampling import make_sampler

L, V = 6, 5


def _one_hot_process(c, *, schedule="blog", num_timesteps=100, estimate="sample"):
    """F(v) = c e_v (D = V), the encoder of the documented test, fixed (no normalisation)."""
    p = encoding(L, V, latent_dim=V, schedule=schedule, num_timesteps=num_timesteps,
                 normalize=False, estimate=estimate)
    return dataclasses.replace(p, embedding=c * jnp.eye(V))


def _tokens(key, n, probs=None):
    probs = jnp.full((V,), 1.0 / V) if probs is None else jnp.asarray(probs)
    return jax.random.categorical(key, jnp.log(probs), shape=(n, L)).astype(jnp.int32)


def test_registered_and_invert_recovers_the_noise():
    p = PROCESSES.get("encoding")(seq_len=L, vocab_size=V, latent_dim=8, num_timesteps=50)
    x0 = _tokens(jax.random.PRNGKey(0), 16)
    eps = p.sample_eps(jax.random.PRNGKey(1), x0.shape)
    assert eps.shape == (16, L, 8)
    for t in (1, 10, 50):
        xt = p.forward(t, x0, eps)
        np.testing.assert_allclose(np.asarray(p.invert(t, x0, xt)), np.asarray(eps),
                                   atol=2e-3 if t == 1 else 1e-5)
    np.testing.assert_allclose(np.asarray(p.forward(0, x0, eps)), np.asarray(p.encode(x0)))
    np.testing.assert_array_equal(np.asarray(decode(p, p.encode(x0))), np.asarray(x0))


def test_normalisation_fixes_the_encoder_norm():
    p = encoding(L, V, latent_dim=8, init_scale=7.0)
    norms = np.linalg.norm(np.asarray(p.codebook()), axis=-1)
    np.testing.assert_allclose(norms, np.sqrt(8.0), rtol=1e-6)
    bound = p.bind({"embedding": 100.0 * p.embedding})  # any scale of the raw table
    np.testing.assert_allclose(np.asarray(bound.codebook()), np.asarray(p.codebook()), rtol=1e-5)
    raw = dataclasses.replace(p, normalize=False)
    np.testing.assert_allclose(np.asarray(raw.codebook()), np.asarray(p.embedding))


@pytest.mark.parametrize("c, close_to_standard", [(1.0, True), (1000.0, False)])
def test_x_T_is_standard_normal_only_when_alpha_bar_T_c_is_small(c, close_to_standard):
    """docs/processes.md (B5): blog schedule alpha_bar_T = 0.0065, so c = 1 gives N(0, I), c = 1000 does not."""
    p = _one_hot_process(c, num_timesteps=1000)
    T = p.num_timesteps
    np.testing.assert_allclose(float(p.gaussian.alpha_bar[T]), 0.0065, atol=5e-5)
    n = 4000
    x0 = _tokens(jax.random.PRNGKey(2), n)
    x_T = p.forward(T, x0, p.sample_eps(jax.random.PRNGKey(3), x0.shape))
    mean = np.asarray(jnp.mean(x_T, axis=(0, 1)))          # per latent dimension
    var = np.asarray(jnp.var(x_T, axis=(0, 1)))
    # Exact moments: mean = alpha_bar_T c / V, var = beta_bar_T^2 + alpha_bar_T^2 c^2 (1/V)(1 - 1/V).
    a, b = float(p.gaussian.alpha_bar[T]), float(p.gaussian.beta_bar[T])
    np.testing.assert_allclose(mean, a * c / V, atol=5 * np.sqrt(var / (n * L)).max())
    np.testing.assert_allclose(var, b ** 2 + (a * c) ** 2 * (1 / V) * (1 - 1 / V), rtol=0.06)
    standard = np.all(np.abs(mean) < 0.05) and np.all(np.abs(var - 1) < 0.06)
    assert standard == close_to_standard


def test_exact_posterior_recovers_x0_at_small_t_and_large_c():
    x0 = _tokens(jax.random.PRNGKey(4), 2000)
    accuracy = {}
    for c in (0.02, 0.06, 20.0):  # beta_bar_t = 0.033 at t = 10 of the blog schedule, T = 1000
        p = _one_hot_process(c, num_timesteps=1000)
        xt = p.forward(10, x0, p.sample_eps(jax.random.PRNGKey(5), x0.shape))
        logits = p.posterior_logits(10, xt, jnp.log(jnp.full((V,), 1.0 / V)))
        accuracy[c] = float(jnp.mean(jnp.argmax(logits, axis=-1) == x0))
    assert accuracy[0.02] < accuracy[0.06] < accuracy[20.0]
    assert accuracy[20.0] == 1.0 and accuracy[0.02] < 0.9


@pytest.mark.parametrize("sigma_tilde", [0.0, 0.5, 1.0])
def test_correct_step_keeps_the_marginals(sigma_tilde):
    """A6 by Monte Carlo with x0_hat = x_0: x_t ~ q(x_t | x_0) -> x_s ~ q(x_s | x_0)."""
    p = encoding(L, V, latent_dim=4, num_timesteps=100)
    n, t, s = 20000, 70, 30
    x0 = jnp.broadcast_to(jnp.arange(L) % V, (n, L)).astype(jnp.int32)
    xt = p.forward(t, x0, p.sample_eps(jax.random.PRNGKey(6), x0.shape))
    oracle = 1e4 * jax.nn.one_hot(x0, V)
    xs = p.correct(t, s, xt, oracle, sigma_tilde=sigma_tilde, key=jax.random.PRNGKey(7))
    target_mean = np.asarray(p.gaussian.alpha_bar[s] * p.encode(x0[0]))
    # 5 standard errors of the mean, 4% on the std (n = 20000 per coordinate).
    np.testing.assert_allclose(np.asarray(jnp.mean(xs, 0)), target_mean,
                               atol=5 * float(p.gaussian.beta_bar[s]) / np.sqrt(n))
    np.testing.assert_allclose(np.asarray(jnp.std(xs, 0)), float(p.gaussian.beta_bar[s]),
                               rtol=0.04)


@pytest.mark.parametrize("name", ["improved", "ddim", "ddpm", "baseline"])
def test_oracle_returns_x0_exactly(name):
    p = encoding(L, V, latent_dim=8, num_timesteps=40)
    x0 = _tokens(jax.random.PRNGKey(8), 8)
    predictor = lambda params, xt, t: 1e4 * jax.nn.one_hot(x0, V)  # noqa: E731
    x_T = p.prior(jax.random.PRNGKey(9), x0.shape)
    # Every step and a 3-step sub-sequence for improved and ddim; the 3-step sub-sequence for
    # ddpm and baseline (fewer compiles).
    for k in ((40, 3) if name in ("improved", "ddim") else (3,)):
        out = make_sampler(p, predictor, num_steps=k, name=name)(
            init_params(p, None), x_T, key=jax.random.PRNGKey(10)).x0
        assert out.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(out), np.asarray(x0))


@pytest.mark.parametrize("name", ["improved", "ddpm", "baseline"])
def test_exact_posterior_samples_the_data_distribution_with_any_design(name):
    """With q(x_0 | x_t) exact and x0_hat drawn from it, p(x_0) comes out for any K (A2, A6).

    I.i.d. tokens with probabilities pi = (0.4, 0.3, 0.15, 0.1, 0.05): the per-token frequency of
    1000 x 6 sampled tokens matches pi within 5 binomial standard errors, with K = 4 steps.
    """
    probs = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    p = _one_hot_process(1.5, schedule="cosine", num_timesteps=200)
    log_prior = jnp.log(jnp.asarray(probs, jnp.float32))
    predictor = lambda params, xt, t: p.posterior_logits(t, xt, log_prior)  # noqa: E731
    n = 1000
    x_T = p.prior(jax.random.PRNGKey(11), (n, L))
    out = make_sampler(p, predictor, num_steps=4, name=name)(
        init_params(p, None), x_T, key=jax.random.PRNGKey(12)).x0
    freq = np.bincount(np.asarray(out).ravel(), minlength=V) / out.size
    tolerance = 5 * np.sqrt(probs * (1 - probs) / out.size)
    assert np.all(np.abs(freq - probs) < tolerance), (freq, probs)


def test_mean_estimate_is_not_exact_in_few_steps():
    """The posterior-mean latent (a DDIM-style estimate) is biased: the same check fails.

    With K = 2 deterministic steps the most frequent token comes out too often (measured:
    0.48 instead of 0.40 with these seeds, > 20 standard errors of 5000 x 6 tokens).
    """
    probs = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    p = _one_hot_process(1.5, schedule="cosine", num_timesteps=200, estimate="mean")
    log_prior = jnp.log(jnp.asarray(probs, jnp.float32))
    predictor = lambda params, xt, t: p.posterior_logits(t, xt, log_prior)  # noqa: E731
    out = make_sampler(p, predictor, num_steps=2, name="improved")(
        init_params(p, None), p.prior(jax.random.PRNGKey(11), (5000, L)),
        key=jax.random.PRNGKey(12)).x0
    freq = np.bincount(np.asarray(out).ravel(), minlength=V) / out.size
    tolerance = 5 * np.sqrt(probs * (1 - probs) / out.size)
    assert freq[0] - probs[0] > tolerance[0], (freq, probs)


def test_loss_is_the_cross_entropy_and_trains_the_encoder_jointly():
    p = encoding(L, V, latent_dim=8, num_timesteps=50)
    model = TokenDenoiser(input_vocab_size=None, output_vocab_size=V, width=16, depth=1,
                          num_heads=2, max_time=50)
    x0 = _tokens(jax.random.PRNGKey(13), 8)
    network = jax.jit(model.init)(jax.random.PRNGKey(14), jnp.zeros((1, L, 8)),
                                  jnp.ones((1,), jnp.int32))
    params = init_params(p, network["params"])
    assert set(params) == {"network", "process"}

    def apply_fn(net, xt, t, key):
        del key
        return model.apply({"params": net}, xt, t)

    loss_fn = make_loss_fn(p, apply_fn)
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda q: loss_fn(q, x0, key=jax.random.PRNGKey(15)), has_aux=True))
    (loss, _), grads = value_and_grad(params)
    # The logit layer starts at zero: the cross-entropy is exactly log V.
    np.testing.assert_allclose(float(loss), np.log(V), rtol=1e-6)
    # ... and the encoder's gradient is zero then too; one step on the network changes that.
    net_step = jax.tree.map(lambda w, g: w - 0.1 * g, params, grads)
    _, grads2 = value_and_grad(net_step)
    assert float(jnp.abs(grads2["process"]["embedding"]).max()) > 0
    bound, _ = split_params(p, net_step)
    assert isinstance(bound, EncodingProcess)


def test_token_denoiser_reads_vectors_when_it_has_no_input_vocabulary():
    model = TokenDenoiser(input_vocab_size=None, output_vocab_size=V, width=16, depth=1,
                          num_heads=2)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((2, L, 8)), jnp.ones((2,)))
    assert jax.jit(model.apply)(variables, jnp.ones((2, L, 8)), jnp.ones((2,))).shape == (2, L, V)
    with pytest.raises(ValueError, match="float vectors"):
        jax.eval_shape(model.apply, variables, jnp.ones((2, L, 8), jnp.int32), jnp.ones((2,)))


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="estimate"):
        encoding(L, V, estimate="mode")
    with pytest.raises(ValueError, match="latent_dim"):
        encoding(L, V, latent_dim=0)
    p = encoding(L, V, latent_dim=8)
    with pytest.raises(ValueError, match="embedding"):
        dataclasses.replace(p, embedding=jnp.zeros((V + 1, 8)))
    with pytest.raises(ValueError, match="latents"):
        p.forward(3, jnp.zeros((2, L), jnp.int32), jnp.zeros((2, L, 4)))
    with pytest.raises(ValueError, match="logits"):
        p.correct(3, 2, jnp.zeros((2, L, 8)), jnp.zeros((2, L, V + 1)), sigma_tilde=0.0,
                  key=jax.random.PRNGKey(0))
