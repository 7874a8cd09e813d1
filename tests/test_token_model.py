"""TokenDenoiser: shapes, zero logits at init, bidirectional attention, time conditioning, one
trace under jit, dropout only in training, exact parameter count, a tiny masked-LM overfit."""
import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from udm.nn.token_model import TokenDenoiser
from udm.nn.unet import count_params
from udm.pipeline.train import make_apply_fns

V = 6  # real tokens; [MASK] = V, so the model reads V + 1 ids.


def _small(**kwargs) -> TokenDenoiser:
    fields = dict(input_vocab_size=V + 1, output_vocab_size=V, width=32, depth=2, num_heads=2)
    fields.update(kwargs)
    return TokenDenoiser(**fields)


def _batch(key, b=3, l=8):
    tokens = jax.random.randint(key, (b, l), 0, V + 1, dtype=jnp.int32)
    t = jnp.arange(1, b + 1, dtype=jnp.int32)
    return tokens, t


def _init(model, key, tokens, t):
    """Initialises under jit with an "rbg" key made from `key`: XLA:CPU compiles threefry-based
    Flax inits several times slower, and no test here depends on the initial values' stream."""
    rbg = jax.random.wrap_key_data(jnp.tile(jax.random.key_data(key), 2), impl="rbg")
    return jax.jit(model.init)(rbg, tokens, t)


def _jit_apply(model):
    return jax.jit(model.apply, static_argnames=("train", "return_features"))


@jax.jit
def _perturbed(params, key, scale=0.2):
    # The zero-initialised read-out makes every logit 0 at init; moving every parameter off its
    # initial value gives a generic network whose logits depend on all of its inputs. One
    # draw for the flat vector: a draw per leaf makes XLA compile dozens of threefry copies.
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return unravel(flat + scale * jax.random.normal(key, flat.shape, flat.dtype))


def test_default_config_shapes_and_zero_logits_at_init():
    model = TokenDenoiser(input_vocab_size=V + 1, output_vocab_size=V)
    assert (model.width, model.depth, model.num_heads, model.mlp_ratio, model.dropout,
            model.attention_scale, model.max_time) == (128, 4, 4, 4, 0.0, "standard", None)
    tokens, t = _batch(jax.random.key(0), b=2, l=16)
    params = _init(model, jax.random.key(1), tokens, t)["params"]
    apply = _jit_apply(model)
    logits, features = apply({"params": params}, tokens, t, return_features=True)
    assert logits.shape == (2, 16, V) and logits.dtype == jnp.float32
    assert features.shape == (2, 16, 128) and features.dtype == jnp.float32
    # Exactly zero logits (a uniform q(x_0 | x_t)) because of the zero read-out alone: the
    # features below it are not degenerate.
    np.testing.assert_array_equal(logits, 0.0)
    assert float(jnp.std(features)) > 0.5
    # The same parameters run at another length (positions enter only through RoPE).
    assert apply({"params": params}, tokens[:, :5], t).shape == (2, 5, V)


@pytest.mark.parametrize("scale", ["standard", "entropy_invariant"])
def test_attention_is_bidirectional(scale):
    # Changing the LAST token changes the logits at the FIRST position (no causal mask), and
    # vice versa, with the standard and the entropy-invariant logit scale.
    model = _small(attention_scale=scale)
    tokens, t = _batch(jax.random.key(4))
    params = _perturbed(_init(model, jax.random.key(5), tokens, t)["params"], jax.random.key(6))
    apply = _jit_apply(model)
    base = apply({"params": params}, tokens, t)
    assert np.all(np.isfinite(base))
    last = apply({"params": params}, tokens.at[:, -1].set((tokens[:, -1] + 1) % (V + 1)), t)
    first = apply({"params": params}, tokens.at[:, 0].set((tokens[:, 0] + 1) % (V + 1)), t)
    assert np.all(np.max(np.abs(last[:, 0] - base[:, 0]), axis=-1) > 1e-3)
    assert np.all(np.max(np.abs(first[:, -1] - base[:, -1]), axis=-1) > 1e-3)


def test_time_conditioning_changes_the_logits():
    model = _small()
    tokens, t = _batch(jax.random.key(7))
    params = _perturbed(_init(model, jax.random.key(8), tokens, t)["params"], jax.random.key(9))
    apply = _jit_apply(model)
    a = apply({"params": params}, tokens, t)
    b = apply({"params": params}, tokens, t + 3)
    assert np.all(np.max(np.abs(a - b), axis=(1, 2)) > 1e-3)
    # Integer and float times are the same input.
    np.testing.assert_allclose(apply({"params": params}, tokens, t.astype(jnp.float32)), a,
                               rtol=1e-6, atol=1e-6)


def test_max_time_rescales_t_onto_the_ddpm_range():
    # Embedding t with max_time = T is embedding t * 1000 / T as given: same parameters.
    scaled, raw = _small(max_time=8), _small()
    tokens, t = _batch(jax.random.key(10))
    params = _perturbed(_init(scaled, jax.random.key(11), tokens, t)["params"], jax.random.key(12))
    np.testing.assert_allclose(_jit_apply(scaled)({"params": params}, tokens, t),
                               _jit_apply(raw)({"params": params}, tokens, t * 125.0),
                               rtol=1e-5, atol=1e-5)


def test_jit_traces_once_for_a_fixed_shape():
    model = _small()
    tokens, t = _batch(jax.random.key(13))
    params = _init(model, jax.random.key(14), tokens, t)["params"]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def apply(params, tokens, t):
        return model.apply({"params": params}, tokens, t)

    for step in range(3):
        key = jax.random.fold_in(jax.random.key(15), step)
        new_tokens, _ = _batch(key)
        apply(params, new_tokens, t + step).block_until_ready()


def test_dropout_only_when_training_through_make_apply_fns():
    # The wrappers of udm.pipeline.train: train_apply(params, x_t, t, key) with train=True and the
    # 'dropout' rng, eval_apply(params, x_t, t) deterministic.
    model = _small(dropout=0.5)
    tokens, t = _batch(jax.random.key(16))
    params = _perturbed(_init(model, jax.random.key(17), tokens, t)["params"], jax.random.key(18))
    train_apply, eval_apply = map(jax.jit, make_apply_fns(model))
    evaluated = eval_apply(params, tokens, t)
    train_a = train_apply(params, tokens, t, jax.random.key(20))
    train_b = train_apply(params, tokens, t, jax.random.key(21))
    assert evaluated.shape == train_a.shape == (3, 8, V)
    assert not np.allclose(train_a, evaluated, atol=1e-3)
    assert not np.allclose(train_a, train_b, atol=1e-3)
    # With dropout = 0 training and evaluation agree.
    train_apply, eval_apply = map(jax.jit, make_apply_fns(_small()))
    np.testing.assert_allclose(train_apply(params, tokens, t, jax.random.key(22)),
                               eval_apply(params, tokens, t), rtol=1e-6, atol=1e-6)


def test_parameter_count_matches_the_architecture():
    # embed + time MLP + depth * (2 LayerNorms, qkv, out, MLP) + final LayerNorm + read-out.
    vin, vout, c, depth, m = V + 1, V, 128, 4, 512
    block = 2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * m + m) + (m * c + c)
    expected = vin * c + 2 * (c * c + c) + depth * block + 2 * c + (c * vout + vout)
    model = TokenDenoiser(input_vocab_size=vin, output_vocab_size=vout)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32),
                            jnp.zeros((1,), jnp.int32))["params"]
    assert count_params(shapes) == expected


@pytest.mark.parametrize("fields, match", [
    (dict(width=30, num_heads=4), "num_heads=4 must divide"),
    (dict(width=12, num_heads=4), "must be even"),
    (dict(width=0), "width"),
    (dict(depth=0), "depth"),
    (dict(input_vocab_size=0), "input_vocab_size"),
    (dict(output_vocab_size=-1), "output_vocab_size"),
    (dict(dropout=1.0), "dropout"),
    (dict(attention_scale="bogus"), "attention_scale must be one of"),
    (dict(max_time=0), "max_time"),
    (dict(mlp_ratio=0), "mlp_ratio"),
])
def test_bad_fields_fail_at_construction(fields, match):
    with pytest.raises(ValueError, match=match):
        _small(**fields)


def test_bad_inputs_fail_with_clear_errors():
    model = _small()
    tokens, t = _batch(jax.random.key(26))
    params = _init(model, jax.random.key(27), tokens, t)["params"]
    with pytest.raises(ValueError, match=r"ids in \[0, TokenDenoiser.input_vocab_size=7\)"):
        model.apply({"params": params}, tokens.at[0, 0].set(V + 1), t)
    # Dtype and shape are refused while tracing: no need to run the network.
    with pytest.raises(ValueError, match="integer ids"):
        jax.eval_shape(model.apply, {"params": params}, tokens.astype(jnp.float32), t)
    with pytest.raises(AssertionError):
        jax.eval_shape(model.apply, {"params": params}, tokens, t[:2])


def test_overfits_a_tiny_masked_lm():
    # 8 fixed sequences over V = 6 tokens, l = 8; about 40% of the positions replaced by
    # [MASK] = V and t = the number of masked positions (the masking process); 100 Adam steps
    # must recover > 95% of the masked tokens.
    l, n = 8, 8
    data_key, mask_key, init_key = jax.random.split(jax.random.key(28), 3)
    x0 = jax.random.randint(data_key, (n, l), 0, V, dtype=jnp.int32)
    masked = jax.random.uniform(mask_key, (n, l)) < 0.4
    xt = jnp.where(masked, V, x0)
    t = jnp.sum(masked, axis=-1, dtype=jnp.int32)
    model = _small(max_time=l)
    params = _init(model, init_key, xt, t)["params"]
    optimizer = optax.adam(3e-3)

    def loss_fn(params):
        logits = model.apply({"params": params}, xt, t)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, x0)
        return jnp.sum(ce * masked) / jnp.sum(masked)

    @jax.jit
    def train(params):
        def step(carry, _):
            params, opt_state = carry
            grads = jax.grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=100)
        return params

    params = train(params)
    predictions = jnp.argmax(_jit_apply(model)({"params": params}, xt, t), axis=-1)
    accuracy = float(jnp.sum((predictions == x0) & masked) / jnp.sum(masked))
    assert accuracy > 0.95, accuracy
