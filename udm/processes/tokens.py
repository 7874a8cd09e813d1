"""Helpers shared by the token corruptions (masking, edit; docs/processes.md B3, B4).

Both corruptions pick t of the l positions uniformly without replacement. The choice is
reparameterised by one uniform priority per position, eps_i ~ U[0, 1): the corrupted positions
at time t are those holding the t smallest priorities. One draw of eps therefore fixes the
corrupted set at every t, and the sets are nested (the set at t - 1 is inside the set at t).
"""
import numbers
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from udm.entropy import sample_with_entropy

Array = Any


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """Returns `value` as an int; raises ValueError naming `name` unless it is an int >= minimum."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_time(t, num_timesteps: int, *, minimum: int = 0) -> None:
    """Raises ValueError for a concrete time outside [minimum, T]; traced times are not checked."""
    if isinstance(t, jax.core.Tracer):
        return
    values = np.asarray(t)
    if values.size and (values.min() < minimum or values.max() > num_timesteps):
        raise ValueError(f"t must be in [{minimum}, T={num_timesteps}], got {t}")


def check_tokens(name: str, x: Array, seq_len: int) -> None:
    """Raises ValueError unless x is an integer array [..., seq_len]."""
    shape, dtype = jnp.shape(x), jnp.result_type(x)
    if len(shape) < 1 or shape[-1] != seq_len:
        raise ValueError(f"{name} must have shape [..., l={seq_len}], got {shape}")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {dtype}")


def check_logits(name: str, logits: Array, seq_len: int, vocab_size: int) -> None:
    """Raises ValueError unless logits is [..., seq_len, vocab_size]."""
    shape = jnp.shape(logits)
    if len(shape) < 2 or shape[-2:] != (seq_len, vocab_size):
        raise ValueError(f"{name} must be logits of shape [..., l={seq_len}, "
                         f"vocab_size={vocab_size}], got {shape}")


def ranks(priority: Array) -> Array:
    """Rank of each entry along the last axis (0 = smallest)."""
    return jnp.argsort(jnp.argsort(priority, axis=-1), axis=-1)


def corrupted_positions(t, priority: Array) -> Array:
    """Boolean [..., l]: True at the t positions with the smallest priorities."""
    return ranks(priority) < t


def inferred_priority(positions: Array, *, key) -> Array:
    """A priority draw from q(eps | the set of corrupted positions), used to reuse the corruption.

    Given that the corrupted positions are the t smallest priorities, the priorities inside that
    set are uniform and below those outside it, all in random order: [0, 1/2) inside, [1/2, 1)
    outside. F_s with these priorities corrupts a uniform s-subset of `positions` (s <= t).
    """
    u = jax.random.uniform(key, positions.shape, jnp.float32)
    return jnp.where(positions, 0.5 * u, 0.5 + 0.5 * u)


def refresh_rows(sigma_tilde, batch_shape, *, key) -> Array:
    """Boolean [...]: which sequences take fresh eps in the correct step (probability sigma_tilde).

    sigma_tilde = 0 is the deterministic design (A7: every row reuses the inferred corruption),
    sigma_tilde = 1 the baseline (fresh eps); values in between mix the two kernels row by row,
    and each kernel keeps the marginals of forward (A6), so the mixture does too.
    """
    return jax.random.uniform(key, batch_shape, jnp.float32) < sigma_tilde


def select_rows(refresh: Array, fresh, inferred):
    """Per sequence: the fresh eps where `refresh` [...] is True, else the inferred one.

    fresh, inferred: pytrees of [..., l] arrays with the same structure.
    """
    return jax.tree_util.tree_map(
        lambda f, i: jnp.where(refresh[..., None], f, i), fresh, inferred)


def draw_tokens(logits: Array, *, exclude: Optional[Array] = None,
                target_entropy: Optional[float] = None, key) -> Array:
    """One token per position from softmax(logits), never drawing `exclude` (if given).

    Args:
      logits: [..., l, V].
      exclude: optional int [..., l] token that may not be drawn at each position.
      target_entropy: None draws from softmax(logits) itself; a value H* (nats) draws from the
        entropy-normalised distribution with H = H* (udm.entropy.sample_with_entropy).
      key: PRNG key.
    Returns:
      int32 [..., l].
    """
    where = None
    if exclude is not None:
        where = ~jax.nn.one_hot(exclude, logits.shape[-1], dtype=jnp.bool_)
    if target_entropy is not None:
        return sample_with_entropy(logits, target_entropy, where=where, key=key).astype(jnp.int32)
    if where is not None:
        logits = jnp.where(where, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def token_cross_entropy(logits: Array, tokens: Array) -> Array:
    """-log softmax(logits)[token] per position: [..., l, V], [..., l] -> [..., l]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]

