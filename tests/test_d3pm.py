"""D3PM (docs/processes.md C2): closed-form Q_bar_t and posterior against explicit matrices, marginals and
marginal consistency (A6) by Monte Carlo, the oracle through the generic sampler and loss."""
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm.losses import make_loss_fn
from udm.processes.d3pm import D3PMProcess, d3pm_absorbing, d3pm_uniform
from udm.sampling import make_sampler

T = 6
ORACLE_SCALE = 100.0  # logit gap of the oracle: exp(-100) is 0 in float32


def _make(kind, seq_len, vocab_size=4, num_timesteps=T, schedule="cosine"):
    if kind == "absorbing":
        return d3pm_absorbing(seq_len, vocab_size, num_timesteps)
    return d3pm_uniform(seq_len, vocab_size, num_timesteps, schedule=schedule)


def _reference_matrices(kind, vocab_size, num_timesteps):
    """Q_1..Q_T built independently in float64 from the stated betas: list of [K, K]."""
    if kind == "absorbing":
        k = vocab_size + 1
        m = np.eye(k)[vocab_size]
        betas = [1.0 / (num_timesteps - t + 1) for t in range(1, num_timesteps + 1)]
    else:
        k = vocab_size
        m = np.full(k, 1.0 / k)
        t = np.arange(num_timesteps + 1) / num_timesteps
        f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
        betas = list(1.0 - f[1:] / f[:-1])
    return [(1 - b) * np.eye(k) + b * np.outer(np.ones(k), m) for b in betas]


def _product(mats, k):
    out = np.eye(k)
    for q in mats:
        out = out @ q
    return out


def _oracle_logits(x0, vocab_size):
    return ORACLE_SCALE * jax.nn.one_hot(x0, vocab_size, dtype=jnp.float32)


# --- Q_bar_t -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_cumulative_matrix_rows_sum_to_one_and_equal_product(kind):
    process = _make(kind, seq_len=2)
    qs = _reference_matrices(kind, 4, T)
    k = process.num_states
    for t in range(T + 1):
        q_bar = np.asarray(process.cumulative_matrix(t), np.float64)
        assert q_bar.shape == (k, k)
        assert np.all(q_bar >= 0.0)
        np.testing.assert_allclose(q_bar.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(q_bar, _product(qs[:t], k), atol=1e-6)
        if t >= 1:
            np.testing.assert_allclose(process.transition_matrix(t), qs[t - 1], atol=1e-5)


def test_absorbing_mask_probability_is_t_over_T_exactly_and_by_monte_carlo():
    process = d3pm_absorbing(seq_len=4, vocab_size=5, num_timesteps=T)
    assert process.num_states == 6 and process.mask_id == 5
    x0 = jnp.tile(jnp.arange(4, dtype=jnp.int32)[None], (5000, 1))
    forward = jax.jit(process.forward)
    for t in range(T + 1):
        np.testing.assert_allclose(process.cumulative_matrix(t)[:5, 5], t / T, atol=1e-6)
        eps = process.sample_eps(jax.random.PRNGKey(t), x0.shape)
        xt = forward(t, x0, eps)
        # Every token is either kept or MASK; 20000 Bernoulli(t/T): 5 sigma <= 0.018.
        assert bool(jnp.all((xt == x0) | (xt == 5)))
        assert abs(float(jnp.mean(xt == 5)) - t / T) < 0.02
    assert bool(jnp.all(forward(T, x0, eps) == 5))


# --- forward marginals ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_forward_marginals_match_x0_Q_bar_t(kind):
    n = 20000  # per-frequency std <= 0.5 / sqrt(n) = 0.0035; tolerance 0.02 is > 5 sigma
    process = _make(kind, seq_len=4)
    x0 = jnp.tile(jnp.array([[0, 1, 2, 3]], jnp.int32), (n, 1))
    forward = jax.jit(process.forward)
    for t in (1, 3, T):
        eps = process.sample_eps(jax.random.PRNGKey(10 + t), x0.shape)
        xt = forward(t, x0, eps)
        freq = jnp.mean(jax.nn.one_hot(xt, process.num_states), axis=0)  # [l, K]
        expected = process.cumulative_matrix(t)[x0[0]]
        np.testing.assert_allclose(freq, expected, atol=0.02)


# --- posterior --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_posterior_sums_to_one_and_equals_brute_force_bayes(kind):
    vocab_size = 3
    process0 = _make(kind, seq_len=1, vocab_size=vocab_size, num_timesteps=5)
    k = process0.num_states
    qs = _reference_matrices(kind, vocab_size, 5)
    # Every (x_t, x_0) pair as one position of one long sequence.
    pairs = np.array(list(itertools.product(range(k), range(vocab_size))))
    xt, x0 = pairs[:, 0].astype(np.int32), pairs[:, 1].astype(np.int32)
    process = _make(kind, seq_len=len(pairs), vocab_size=vocab_size, num_timesteps=5)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(pairs), vocab_size)).astype(np.float32)
    onehot_logits = np.where(np.eye(vocab_size)[x0] > 0, 0.0, -np.inf).astype(np.float32)
    for t in range(1, 6):
        q_bar_t = _product(qs[:t], k)
        for s in range(t):
            q_bar_s, q_st = _product(qs[:s], k), _product(qs[s:t], k)
            # Brute force (Bayes):
            # q(x_s | x_t, x_0) = Q_bar_s[x_0, x_s] Q_{s->t}[x_s, x_t] / Q_bar_t[x_0, x_t].
            joint = q_bar_s[x0, :] * q_st[:, xt].T  # [n, K]
            feasible = q_bar_t[x0, xt] > 0
            posterior = np.asarray(jnp.exp(process.reverse_log_probs(t, s, xt, onehot_logits)))
            # (An x_t the one-hot x_0 cannot produce has no posterior: absorbing, x_t != x_0, MASK.)
            np.testing.assert_allclose(posterior[feasible].sum(-1), 1.0, atol=1e-5)
            np.testing.assert_allclose(posterior[feasible],
                                       joint[feasible] / q_bar_t[x0, xt][feasible, None],
                                       atol=1e-5)
            # General estimate p(x0), "udm": sum over the x0 that can produce x_t of
            # q(x_s | x_t, x0) p(x0), renormalised; "d3pm": p(x_s | x_t) ∝
            # sum_x0 Q_bar_s[x0, x_s] Q_{s->t}[x_s, x_t] p(x0).
            p0 = np.exp(logits - logits.max(-1, keepdims=True))
            p0 /= p0.sum(-1, keepdims=True)
            q_xt = q_bar_t[:vocab_size, :][:, xt].T                  # [n, V]: q(x_t | x0)
            can = q_xt > 0
            w = np.where(can, p0 / np.where(can, q_xt, 1.0), 0.0)
            forms = {"udm": (w @ q_bar_s[:vocab_size, :]) * q_st[:, xt].T,
                     "d3pm": (p0 @ q_bar_s[:vocab_size, :]) * q_st[:, xt].T}
            for form, mixed in forms.items():
                ok = mixed.sum(-1) > 0
                mixed = mixed[ok] / mixed[ok].sum(-1, keepdims=True)
                reverse = np.asarray(jnp.exp(dataclasses.replace(process, reverse=form)
                                             .reverse_log_probs(t, s, xt, logits)))
                # Finite logits: every x_t but an unmasked one at t = T (never made by forward).
                np.testing.assert_allclose(reverse[ok].sum(-1), 1.0, atol=1e-5)
                np.testing.assert_allclose(reverse[ok], mixed, atol=1e-5)
            if kind == "uniform" and t < 5:  # they differ unless alpha_bar_t = 0 (t = T here)
                udm = np.asarray(jnp.exp(process.reverse_log_probs(t, s, xt, logits)))
                d3pm = np.asarray(jnp.exp(dataclasses.replace(process, reverse="d3pm")
                                          .reverse_log_probs(t, s, xt, logits)))
                assert np.abs(udm - d3pm).max() > 1e-3


# --- marginal consistency (A6) ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_correct_keeps_marginals_with_oracle(kind):
    """x_t ~ forward(t), x_s = correct(t -> s) with oracle logits has the law of forward(s).

    Full-chain steps (t, t - 1) and sub-sequence steps (t, s < t - 1), for the improved
    (sigma_tilde = 0), baseline (1) and mixed (0.5) corrections.
    """
    n = 20000  # frequency std <= 0.5 / sqrt(n) = 0.0035; tolerance 0.02 > 5 sigma
    process = _make(kind, seq_len=4)
    x0 = jnp.tile(jnp.array([[0, 1, 2, 3]], jnp.int32), (n, 1))

    @jax.jit  # t, s, sigma_tilde traced: one compilation for every case
    def run(t, s, sigma, key):
        key_eps, key_correct = jax.random.split(key)
        xt = process.forward(t, x0, process.sample_eps(key_eps, x0.shape))
        xs = process.correct(t, s, xt, _oracle_logits(x0, 4), sigma_tilde=sigma,
                             key=key_correct)
        return xt, xs

    for i, ((t, s), sigma_tilde) in enumerate(
            itertools.product([(4, 3), (1, 0), (T, 2), (3, 0)], [0.0, 1.0, 0.5])):
        xt, xs = run(t, s, jnp.float32(sigma_tilde), jax.random.PRNGKey(i))
        assert xs.dtype == jnp.int32 and xs.shape == x0.shape
        freq = jnp.mean(jax.nn.one_hot(xs, process.num_states), axis=0)
        np.testing.assert_allclose(freq, process.cumulative_matrix(s)[x0[0]], atol=0.02,
                                   err_msg=f"t={t} s={s} sigma_tilde={sigma_tilde}")
        if kind == "absorbing" and sigma_tilde == 0.0:
            # The improved step never re-masks or changes an unmasked token.
            assert bool(jnp.all(jnp.where(xt != process.mask_id, xs == xt, True)))


# --- the oracle through the generic sampler ---------------------------------------------------

@pytest.mark.parametrize("kind,name,num_steps", [
    ("absorbing", "improved", T), ("absorbing", "improved", 2), ("absorbing", "baseline", 3),
    ("uniform", "improved", T)])
def test_oracle_sampler_from_prior_returns_x0(kind, name, num_steps):
    """Every MASK (absorbing) / noise token (uniform) is resolved to the oracle's token."""
    process = _make(kind, seq_len=5)
    x0 = jax.random.randint(jax.random.PRNGKey(3), (16, 5), 0, 4, jnp.int32)

    def predictor(params, xt, t):
        del params, xt, t
        return _oracle_logits(x0, 4)

    sample = make_sampler(process, predictor, num_steps=num_steps, name=name)
    prior_key, sample_key = jax.random.split(jax.random.PRNGKey(4))
    x_T = process.prior(prior_key, x0.shape)
    if kind == "absorbing":
        assert bool(jnp.all(x_T == process.mask_id))
    else:
        assert bool(jnp.all((x_T >= 0) & (x_T < 4)))
    out = sample(None, x_T, key=sample_key).x0
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out, x0)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
@pytest.mark.parametrize("name,num_steps", [("improved", 20), ("improved", 4), ("baseline", 4)])
def test_exact_posterior_samples_the_data_distribution(kind, name, num_steps):
    """With the exact q(x_0 | x_t) of i.i.d. tokens, both designs sample p(x_0) (A2, A6).

    Tokens i.i.d. from pi; per position q(x_0 = v | x_t = u) ∝ pi_v (alpha_bar_t [u = v] +
    (1 - alpha_bar_t) m_u). The per-token frequencies of 2000 x 6 samples match pi within 5
    binomial standard errors: a bias in the correct step (the D3PM posterior of "improved")
    would show here, whatever a trained network does.
    """
    vocab = 5
    probs = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    process = _make(kind, seq_len=6, vocab_size=vocab, num_timesteps=20)
    m = process.noise_distribution()
    log_pi = jnp.log(jnp.asarray(probs, jnp.float32))

    def predictor(params, xt, t):
        del params
        a = process.alpha_bar[t]
        same = jax.nn.one_hot(xt, process.num_states, dtype=jnp.float32)[..., :vocab]
        likelihood = a * same + (1.0 - a) * m[xt][..., None]
        return log_pi.reshape(1, 1, vocab) + jnp.log(likelihood)

    prior_key, sample_key = jax.random.split(jax.random.PRNGKey(7))
    x_T = process.prior(prior_key, (2000, 6))

    def frequencies(p):
        out = make_sampler(p, predictor, num_steps=num_steps, name=name)(
            None, x_T, key=sample_key).x0
        return np.bincount(np.asarray(out).ravel(), minlength=vocab) / out.size

    tolerance = 5 * np.sqrt(probs * (1 - probs) / (2000 * 6))
    freq = frequencies(process)
    assert np.all(np.abs(freq - probs) < tolerance), (freq, probs)
    if kind == "uniform" and name == "improved":
        # D3PM's parameterisation is biased towards the uniform noise here (measured with
        # these seeds: the most frequent token at 0.30-0.33 instead of 0.40).
        freq = frequencies(dataclasses.replace(process, reverse="d3pm"))
        assert probs[0] - freq[0] > tolerance[0], (freq, probs)


def test_absorbing_network_predictor_accepts_mask_logit_and_ignores_it():
    process = d3pm_absorbing(seq_len=3, vocab_size=4, num_timesteps=T)
    x0 = jnp.array([[1, 0, 3]], jnp.int32)
    full = jnp.concatenate([_oracle_logits(x0, 4), jnp.full((1, 3, 1), 1e3)], axis=-1)
    x_T = process.prior(None, x0.shape)
    trimmed = process.x0_from_output(T, x_T, full)
    np.testing.assert_array_equal(trimmed, _oracle_logits(x0, 4))
    xs = jax.jit(process.correct, static_argnums=(0, 1))(
        T, 0, x_T, full, sigma_tilde=0.0, key=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(xs, x0)


# --- the generic loss ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_make_loss_fn_equals_hand_cross_entropy(kind):
    process = _make(kind, seq_len=3)
    k = process.num_states

    def apply_fn(params, xt, t, key):
        del key
        # A per-(state, time) logit table over x_0: depends on x_t and t, output [B, l, V].
        return params[t[:, None], xt]

    params = jax.random.normal(jax.random.PRNGKey(0), (T + 1, k, 4))
    x0 = jax.random.randint(jax.random.PRNGKey(1), (8, 3), 0, 4, jnp.int32)
    key = jax.random.PRNGKey(2)
    loss, aux = jax.jit(make_loss_fn(process, apply_fn))(params, x0, key=key)

    # By hand, with the same key split as make_loss_fn.
    @jax.jit
    def times_and_states(key):
        t_key, eps_key, _ = jax.random.split(key, 3)
        t = jax.random.randint(t_key, (8,), 1, T + 1)
        eps = process.sample_eps(eps_key, x0.shape)
        return t, jax.vmap(process.forward)(t, x0, eps)

    t, xt = map(np.asarray, times_and_states(key))
    p = np.asarray(params, np.float64)
    ce = []
    for b in range(8):
        for i in range(3):
            row = p[t[b], xt[b, i]]
            ce.append(np.log(np.exp(row).sum()) - row[int(x0[b, i])])
    np.testing.assert_allclose(loss, np.mean(ce), rtol=1e-5)
    np.testing.assert_allclose(aux["unweighted_loss"], np.mean(ce), rtol=1e-5)


# --- pytree and bad inputs ---------------------------------------------------------------------

def test_process_is_a_pytree_with_static_config():
    process = d3pm_absorbing(seq_len=3, vocab_size=4, num_timesteps=T)
    leaves, treedef = jax.tree_util.tree_flatten(process)
    assert len(leaves) == 1 and leaves[0].shape == (T + 1,)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(rebuilt, D3PMProcess) and rebuilt.kind == "absorbing"
    assert jax.jit(lambda p: p.alpha_bar[T])(process) == 0.0
    assert process.num_timesteps == T


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown D3PM schedule 'nope'.*cosine, linear"):
        d3pm_uniform(3, 4, T, schedule="nope")
    with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
        d3pm_uniform(3, 1, T)
    with pytest.raises(ValueError, match="num_timesteps must be an int >= 1"):
        d3pm_absorbing(3, 4, 0)
    with pytest.raises(ValueError, match="seq_len must be an int >= 1"):
        d3pm_absorbing(2.5, 4, T)
    process = d3pm_uniform(3, 4, T)
    with pytest.raises(ValueError, match="unknown D3PM loss weighting 'min_snr_5'"):
        process.check_weighting("min_snr_5")
    with pytest.raises(ValueError, match="unknown D3PM loss weighting"):
        make_loss_fn(process, lambda *a: None, weighting="min_snr_5")
    with pytest.raises(ValueError, match="no MASK id"):
        process.mask_id
    x = jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(ValueError, match=r"xt must be \[..., l=3\]"):
        process.correct(2, 1, jnp.zeros((2, 5), jnp.int32), jnp.zeros((2, 5, 4)),
                        sigma_tilde=0.0, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="x_0 logits must have shape"):
        process.correct(2, 1, x, jnp.zeros((2, 3, 7)), sigma_tilde=0.0,
                        key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="integer token ids"):
        process.forward(1, x.astype(jnp.float32), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="eps must have the shape"):
        process.forward(1, x, jnp.zeros((2, 3, 4)))
