"""Tests of udm.nn: closed forms of the embedding and attention, invariances, DDPM U-Net structure."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm.nn import (
    ATTENTION_SCALES,
    SelfAttention,
    UNet,
    count_params,
    dot_product_attention,
    timestep_embedding,
)

# Small enough to compile in seconds; still has two levels, attention and a middle block.
TINY = dict(channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
            num_groups=4)


def _key(seed):
    """An "rbg" PRNG key: XLA:CPU compiles threefry-based Flax inits several times slower."""
    return jax.random.key(seed, impl="rbg")


def _normal(seed, shape, scale=1.0):
    """float32 N(0, scale^2) test data from numpy, so making inputs compiles nothing."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _perturb(params, seed, scale=0.05):
    """Adds N(0, scale^2) noise to every leaf, so zero-initialised layers stop being silent."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda p: p + jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype), params)


def _softmax_attention_reference(q, k, v, scale):
    """Loops over batch and head in float64 numpy: o_i = sum_j softmax_j(scale q_i.k_j) v_j."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    out = np.zeros(q.shape)
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            logits = scale * q[b, :, h] @ k[b, :, h].T
            weights = np.exp(logits - logits.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            out[b, :, h] = weights @ v[b, :, h]
    return out


# ----------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("dim", [1, 2, 7, 32])
def test_timestep_embedding_shape_dtype_and_range(dim):
    t = jnp.arange(0, 1000, 37)
    emb = timestep_embedding(t, dim)
    assert emb.shape == (t.shape[0], dim)
    assert emb.dtype == jnp.float32
    assert np.all(np.abs(np.asarray(emb)) <= 1.0)
    if dim % 2:
        np.testing.assert_array_equal(np.asarray(emb[:, -1]), 0.0)


def test_timestep_embedding_closed_form():
    dim, max_period = 10, 100.0
    t = np.array([0.0, 1.0, 2.5, 999.0])
    half = dim // 2
    freqs = max_period ** (-np.arange(half) / half)
    expected = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], axis=1)
    emb = timestep_embedding(jnp.asarray(t, jnp.float32), dim, max_period=max_period)
    np.testing.assert_allclose(np.asarray(emb), expected, atol=1e-4)


def test_timestep_embedding_of_zero_is_sines_zero_cosines_one():
    emb = np.asarray(timestep_embedding(jnp.zeros((3,), jnp.int32), 16))
    np.testing.assert_array_equal(emb[:, :8], 0.0)
    np.testing.assert_array_equal(emb[:, 8:], 1.0)


def test_timestep_embedding_int_and_float_agree_and_distinct_times_differ():
    t = jnp.arange(1, 1001)
    emb = np.asarray(timestep_embedding(t, 32))
    np.testing.assert_allclose(emb, np.asarray(timestep_embedding(t.astype(jnp.float32), 32)))
    dists = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    off_diagonal = dists[~np.eye(len(t), dtype=bool)]
    assert off_diagonal.min() > 1e-2


# ----------------------------------------------------------------------------- attention


def test_dot_product_attention_matches_numpy_reference():
    q, k, v = _normal(0, (2, 5, 3, 4)), _normal(1, (2, 7, 3, 4)), _normal(2, (2, 7, 3, 4))
    out = dot_product_attention(q, k, v, scale=0.7)
    assert out.shape == (2, 5, 3, 4)
    np.testing.assert_allclose(np.asarray(out), _softmax_attention_reference(q, k, v, 0.7),
                               rtol=1e-5, atol=1e-5)


def test_dot_product_attention_with_equal_keys_is_mean_of_values():
    q = _normal(3, (2, 5, 2, 4), scale=10.0)
    k = jnp.broadcast_to(_normal(4, (2, 1, 2, 4)), (2, 6, 2, 4))
    v = _normal(5, (2, 6, 2, 4))
    out = dot_product_attention(q, k, v, scale=1.0)
    expected = jnp.broadcast_to(v.mean(axis=1, keepdims=True), out.shape)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5)


def test_dot_product_attention_permutation_symmetries():
    q, k, v = _normal(6, (2, 5, 2, 4)), _normal(7, (2, 7, 2, 4)), _normal(8, (2, 7, 2, 4))
    rng = np.random.default_rng(9)
    out = dot_product_attention(q, k, v, scale=0.5)
    perm_q = rng.permutation(5)
    np.testing.assert_allclose(
        np.asarray(dot_product_attention(q[:, perm_q], k, v, scale=0.5)),
        np.asarray(out[:, perm_q]), atol=1e-6)
    perm_kv = rng.permutation(7)
    np.testing.assert_allclose(
        np.asarray(dot_product_attention(q, k[:, perm_kv], v[:, perm_kv], scale=0.5)),
        np.asarray(out), atol=1e-6)


def test_standard_scale_is_inverse_sqrt_head_dim():
    scale_fn = ATTENTION_SCALES.get("standard")
    assert scale_fn(64, 16) == pytest.approx(0.25)
    assert scale_fn(4096, 16) == pytest.approx(0.25)


def test_self_attention_is_identity_at_init():
    x = _normal(10, (2, 4, 4, 16))
    block = SelfAttention(num_heads=2, num_groups=4)
    variables = block.init(_key(0), x)
    y = block.apply(variables, x)
    assert y.shape == x.shape
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


def test_self_attention_is_equivariant_to_permuting_spatial_positions():
    # No positional information enters the block, and GroupNorm statistics are order-free,
    # so shuffling the H*W positions shuffles the output the same way.
    x = _normal(11, (2, 4, 4, 16))
    block = SelfAttention(num_heads=2, num_groups=4)
    variables = _perturb(block.init(_key(1), x), 12, scale=0.3)
    perm = np.random.default_rng(13).permutation(16)

    def shuffle(a):
        return a.reshape(2, 16, 16)[:, perm].reshape(2, 4, 4, 16)

    y = block.apply(variables, x)
    assert not np.allclose(np.asarray(y), np.asarray(x), atol=1e-3)
    np.testing.assert_allclose(np.asarray(block.apply(variables, shuffle(x))),
                               np.asarray(shuffle(y)), atol=1e-5)


def test_self_attention_rejects_unknown_scale_listing_valid_names():
    with pytest.raises(ValueError, match="standard"):
        SelfAttention(scale="no-such-scale")


def test_self_attention_rejects_heads_not_dividing_channels():
    x = jnp.zeros((1, 2, 2, 8))
    with pytest.raises(ValueError, match="num_heads"):
        SelfAttention(num_heads=3, num_groups=4).init(_key(0), x)


# ----------------------------------------------------------------------------- UNet


def _init(model, x, t, *, key):
    """Initialises under jit: eager Flax init would compile every op separately."""
    return jax.jit(model.init)(key, x, t)


def _apply(model):
    return jax.jit(model.apply, static_argnames="train")


def _abstract_init(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    t = jax.ShapeDtypeStruct(shape[:1], jnp.int32)
    variables = jax.eval_shape(model.init, _key(0), x, t)
    return variables, jax.eval_shape(model.apply, variables, x, t)


@pytest.fixture(scope="module")
def tiny_unet():
    model = UNet(**TINY)
    x = _normal(20, (3, 8, 8, 1))
    t = jnp.array([1, 500, 1000])
    params = _init(model, x, t, key=_key(2))["params"]
    return model, params, x, t


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (dict(), (4, 8, 8, 1)),
        (dict(channels=32, channel_mults=(1, 2, 2, 2), attention_resolutions=(16,)), (2, 32, 32, 3)),
        (dict(out_channels=2), (4, 8, 8, 1)),
    ],
)
def test_unet_output_shape(kwargs, shape):
    model = UNet(**kwargs)
    _, out = _abstract_init(model, shape)
    assert out.shape == shape[:3] + (kwargs.get("out_channels", shape[3]),)
    assert out.dtype == jnp.float32


def test_unet_output_is_exactly_zero_at_init(tiny_unet):
    """The output convolution starts at zero (as in DDPM's code), whatever the widths."""
    model, params, x, t = tiny_unet
    np.testing.assert_array_equal(np.asarray(_apply(model)({"params": params}, x, t)), 0.0)


def test_unet_depends_on_t_once_perturbed(tiny_unet):
    model, params, x, _ = tiny_unet
    params = _perturb(params, 22)
    x_same = jnp.broadcast_to(x[:1], (3, 8, 8, 1))
    apply = _apply(model)
    out = np.asarray(apply({"params": params}, x_same, jnp.array([1, 2, 1000])))
    assert np.abs(out[0] - out[1]).max() > 1e-4
    assert np.abs(out[0] - out[2]).max() > 1e-3
    # Integer and float time values are the same input.
    out_float = apply({"params": params}, x_same, jnp.array([1.0, 2.0, 1000.0]))
    np.testing.assert_allclose(np.asarray(out_float), out, atol=1e-6)


def test_unet_is_equivariant_in_the_batch(tiny_unet):
    model, params, x, t = tiny_unet
    params = _perturb(params, 23)
    apply = _apply(model)
    batched = np.asarray(apply({"params": params}, x, t))
    single = np.concatenate(
        [np.asarray(apply({"params": params}, x[i:i + 1], t[i:i + 1])) for i in range(3)])
    assert np.abs(batched).max() > 1e-3
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_unet_dropout_only_in_training(tiny_unet):
    _, params, x, t = tiny_unet
    # Dropout has no parameters, so the tiny model's parameters fit its dropout variant.
    model = UNet(**TINY, dropout=0.5)
    variables = {"params": _perturb(params, 24)}
    apply = _apply(model)
    eval_a = apply(variables, x, t)
    eval_b = apply(variables, x, t, train=False)
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
    train_a = apply(variables, x, t, train=True, rngs={"dropout": _key(1)})
    train_a2 = apply(variables, x, t, train=True, rngs={"dropout": _key(1)})
    train_b = apply(variables, x, t, train=True, rngs={"dropout": _key(2)})
    np.testing.assert_array_equal(np.asarray(train_a), np.asarray(train_a2))
    assert np.abs(np.asarray(train_a) - np.asarray(train_b)).max() > 1e-4
    assert np.abs(np.asarray(train_a) - np.asarray(eval_a)).max() > 1e-4


@pytest.mark.parametrize("height, width", [(6, 8), (8, 10)])
def test_unet_rejects_sizes_not_divisible_by_the_downsampling(height, width):
    model = UNet(**{**TINY, "channel_mults": (1, 2, 2)})
    x = jnp.zeros((1, height, width, 1))
    with pytest.raises(ValueError, match="channel_mults"):
        model.init(_key(0), x, jnp.zeros((1,)))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(channels=12, num_groups=8), "num_groups"),
        (dict(channels=8, channel_mults=(1, 3), num_groups=16), "num_groups"),
        (dict(num_heads=3), "num_heads"),
        (dict(attention_scale="nope"), "standard"),
        (dict(num_res_blocks=0), "num_res_blocks"),
    ],
)
def test_unet_rejects_bad_fields_at_construction(kwargs, field):
    with pytest.raises(ValueError, match=field):
        UNet(**kwargs)


def test_count_params_counts_scalars():
    tree = {"a": jnp.zeros((2, 3)), "b": [jnp.zeros((4,)), jax.ShapeDtypeStruct((5, 1), jnp.float32)]}
    assert count_params(tree) == 6 + 4 + 5


def test_unet_ddpm_cifar10_size_and_structure():
    # Ho et al. (2020): 35.7M parameters for CIFAR-10. Shapes only, nothing is computed.
    model = UNet(channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                 attention_resolutions=(16,), dropout=0.1)
    variables, out = _abstract_init(model, (1, 32, 32, 3))
    n = count_params(variables["params"])
    assert 30e6 < n < 40e6, n
    assert out.shape == (1, 32, 32, 3)
    names = list(variables["params"])
    # 2 res blocks per level down, 2 in the middle, 3 per level up; attention after each
    # 16x16 res block (2 down + 3 up) plus the middle one.
    assert sum(name.startswith("ResBlock_") for name in names) == 4 * 2 + 2 + 4 * 3
    assert sum(name.startswith("SelfAttention_") for name in names) == 2 + 1 + 3
    assert math.isclose(n, 35.7e6, rel_tol=0.01)
