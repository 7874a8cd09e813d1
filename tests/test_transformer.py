"""RoPE identities and the length-agnostic Transformer encoder (docs/entropy_attention.md Part A)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm.nn.transformer import TransformerEncoder, rotary_embedding


def _normal(key, shape):
    return jax.random.normal(key, shape, jnp.float32)


def test_rotary_embedding_preserves_norms():
    x = _normal(jax.random.key(0), (2, 16, 3, 8))
    y = rotary_embedding(x, jnp.arange(16))
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1),
                               rtol=1e-5)


def test_rotary_embedding_is_identity_at_position_zero():
    x = _normal(jax.random.key(1), (1, 4, 2, 6))
    np.testing.assert_allclose(rotary_embedding(x, jnp.zeros(4)), x, atol=1e-7)


@pytest.mark.parametrize("shift", [1.0, 37.0, 1000.0])
def test_rotary_logits_depend_only_on_relative_position(shift):
    # <R_s q, R_t k> is a function of s - t: shifting every position leaves all logits alone.
    q_key, k_key = jax.random.split(jax.random.key(2))
    q = _normal(q_key, (2, 12, 3, 16))
    k = _normal(k_key, (2, 12, 3, 16))
    positions = jnp.arange(12, dtype=jnp.float32)

    def logits(pos):
        return jnp.einsum("bnhd,bmhd->bhnm", rotary_embedding(q, pos), rotary_embedding(k, pos))

    np.testing.assert_allclose(logits(positions + shift), logits(positions), atol=2e-4)
    # ...and they do depend on the positions (RoPE is not the identity).
    assert not np.allclose(logits(positions), jnp.einsum("bnhd,bmhd->bhnm", q, k), atol=1e-2)


def test_rotary_embedding_accepts_per_example_positions():
    x = _normal(jax.random.key(3), (2, 5, 1, 4))
    positions = jnp.stack([jnp.arange(5), jnp.arange(5) + 3]).astype(jnp.float32)
    y = rotary_embedding(x, positions)
    np.testing.assert_allclose(y[1], rotary_embedding(x[1:], jnp.arange(5) + 3.0)[0], atol=1e-6)


def test_rotary_embedding_rejects_odd_dimension():
    with pytest.raises(ValueError, match="even"):
        rotary_embedding(jnp.ones((1, 2, 1, 3)), jnp.arange(2))


def _rbg_key(seed):
    """An "rbg" key for Flax inits: XLA:CPU compiles threefry-based inits several times slower."""
    return jax.random.key(seed, impl="rbg")


def _encoder(scale):
    return TransformerEncoder(vocab_size=11, num_layers=2, num_heads=2, head_dim=8, mlp_dim=16,
                              attention_scale=scale)


def test_encoder_runs_at_any_length_with_the_same_params():
    model = _encoder("entropy_invariant")
    params = jax.jit(model.init)(_rbg_key(0), jnp.zeros((2, 64), jnp.int32))
    apply = jax.jit(model.apply)
    for n in (64, 256):
        tokens = jax.random.randint(jax.random.key(n), (2, n), 0, 11)
        logits = apply(params, tokens)
        assert logits.shape == (2, n, 11) and logits.dtype == jnp.float32
        assert np.all(np.isfinite(logits))


def test_entropy_invariant_encoder_equals_standard_at_calibration_length():
    # log_512(512) = 1: Attention-E is Attention-O at n = 512 (docs/entropy_attention.md A.10), and neither rule
    # adds parameters, so one set of parameters serves both.
    tokens = jax.random.randint(jax.random.key(4), (1, 512), 0, 11)
    standard, invariant = _encoder("standard"), _encoder("entropy_invariant")
    params = jax.jit(standard.init)(_rbg_key(5), tokens[:, :64])
    assert jax.tree.structure(params) == jax.tree.structure(
            jax.eval_shape(invariant.init, _rbg_key(5), tokens[:, :64]))
    standard_apply, invariant_apply = jax.jit(standard.apply), jax.jit(invariant.apply)
    np.testing.assert_allclose(invariant_apply(params, tokens), standard_apply(params, tokens),
                               atol=1e-5)
    # ...but not at the training length, where the factor is log 64 / log 512 = 2/3.
    assert not np.allclose(invariant_apply(params, tokens[:, :64]),
                           standard_apply(params, tokens[:, :64]), atol=1e-4)


def test_encoder_rejects_odd_head_dim():
    with pytest.raises(ValueError, match="head_dim"):
        TransformerEncoder(vocab_size=5, num_layers=1, num_heads=1, head_dim=3, mlp_dim=4)
