"""Associative recall: a synthetic masked-token task for length extrapolation (docs/entropy_attention.md).

A sequence holds random filler tokens with `num_pairs` pair tokens (k, v) planted at random
positions, then `num_queries` masked query tokens [MASK: k] whose target is the planted pair token
carrying key k. A query must find that one token by content at a random distance; at a longer
length the same pairs sit among more filler, so attention to the right token is diluted unless
the logit scale grows with the length ("Experiment: length extrapolation").
"""
import functools
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp


class RecallTask(NamedTuple):
    """Vocabulary and counts of the recall task.

    Token ids: filler in [0, num_filler); the pair token (k, v) is
    `pair_offset + k * num_values + v`; the query token [MASK: k] is `query_offset + k`.

    Attributes:
        num_filler: number of filler token ids.
        num_keys: number of keys k.
        num_values: number of values v per key (guessing v given k is right 1 / num_values
            of the time).
        num_pairs: P, pair tokens planted per sequence, with distinct keys.
        num_queries: Q <= P, masked queries at the end of a sequence, with distinct keys.
    """
    num_filler: int = 32
    num_keys: int = 8
    num_values: int = 16
    num_pairs: int = 6
    num_queries: int = 4

    @property
    def pair_offset(self) -> int:
        return self.num_filler

    @property
    def query_offset(self) -> int:
        return self.pair_offset + self.num_keys * self.num_values

    @property
    def vocab_size(self) -> int:
        return self.query_offset + self.num_keys

    @property
    def min_length(self) -> int:
        """The shortest sequence that holds every pair and query: P + Q."""
        return self.num_pairs + self.num_queries


def sample_recall_sequence(task: RecallTask, length: int, *,
                           key: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """One associative-recall sequence.

    Positions [0, L), L = length - Q, hold random filler tokens with P pair tokens (k, v)
    (distinct keys k, random values v) at random distinct places; positions [L, length) hold Q
    masked query tokens [MASK: k], one per distinct planted key, whose target is the planted
    token (k, v).

    Args:
        task: vocabulary and counts.
        length: sequence length N >= task.min_length.
        key: PRNG key.

    Returns:
        tokens [N] int32, target_positions [Q] int32 (the query positions L..N-1), targets [Q]
        int32 (pair token ids).
    """
    if task.num_queries > task.num_pairs or task.num_pairs > task.num_keys:
        raise ValueError(f"need num_queries <= num_pairs <= num_keys, got {task}")
    if length < task.min_length:
        raise ValueError(f"length must be >= num_pairs + num_queries = {task.min_length}, "
                         f"got {length}")
    p, q = task.num_pairs, task.num_queries
    body = length - q
    filler_key, keys_key, values_key, slots_key, which_key = jax.random.split(key, 5)
    tokens = jax.random.randint(filler_key, (length,), 0, task.num_filler)
    keys = jax.random.choice(keys_key, task.num_keys, (p,), replace=False)
    values = jax.random.randint(values_key, (p,), 0, task.num_values)
    slots = jax.random.choice(slots_key, body, (p,), replace=False)
    pairs = task.pair_offset + keys * task.num_values + values
    tokens = tokens.at[slots].set(pairs)
    which = jax.random.choice(which_key, p, (q,), replace=False)
    query_positions = body + jnp.arange(q)
    tokens = tokens.at[query_positions].set(task.query_offset + keys[which])
    # The target is the planted pair token itself: a masked-token prediction over the whole
    # vocabulary, where knowing k from the query leaves 1 / num_values by guessing.
    return (tokens.astype(jnp.int32), query_positions.astype(jnp.int32),
            pairs[which].astype(jnp.int32))


def sample_recall_batch(task: RecallTask, batch: int, length: int, *,
                        key: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """`batch` independent sequences of `sample_recall_sequence`, one per `split(key, batch)`.

    Returns:
        tokens [B, N], target_positions [B, Q], targets [B, Q], all int32.
    """
    return jax.vmap(functools.partial(sample_recall_sequence, task, length))(
            key=jax.random.split(key, batch))
