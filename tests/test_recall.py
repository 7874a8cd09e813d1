"""The associative-recall task and its training loop (docs/entropy_attention.md, "Experiment: length
extrapolation")."""
import jax
import numpy as np
import pytest

from udm.data import RecallTask, sample_recall_batch, sample_recall_sequence
from udm.pipeline import recall

# One compiled program each (cached on disk by conftest) instead of dozens of eager op dispatches.
_sample_sequence = jax.jit(sample_recall_sequence, static_argnums=(0, 1))
_sample_batch = jax.jit(sample_recall_batch, static_argnums=(0, 1, 2))


@pytest.mark.parametrize("length", [10, 37])
def test_each_target_is_the_planted_token_with_the_query_key(length):
    task = RecallTask()
    tokens, positions, targets = map(np.asarray,
                                     _sample_batch(task, 64, length, key=jax.random.key(0)))
    p, q = task.num_pairs, task.num_queries
    body = length - q
    assert tokens.shape == (64, length) and positions.shape == targets.shape == (64, q)
    assert tokens.dtype == positions.dtype == targets.dtype == np.int32
    np.testing.assert_array_equal(positions, np.broadcast_to(np.arange(body, length), (64, q)))
    for seq, pos, tgt in zip(tokens, positions, targets):
        head = seq[:body]
        is_pair = (head >= task.pair_offset) & (head < task.query_offset)
        # The body is filler except for exactly P pair tokens, whose keys are distinct.
        assert is_pair.sum() == p and np.all(head[~is_pair] < task.num_filler)
        pair_keys = (head[is_pair] - task.pair_offset) // task.num_values
        assert len(set(pair_keys.tolist())) == p
        # Queries: Q distinct keys among the planted ones, each answered by its planted token.
        query_keys = seq[pos] - task.query_offset
        assert np.all((query_keys >= 0) & (query_keys < task.num_keys))
        assert len(set(query_keys.tolist())) == q
        for k, target in zip(query_keys, tgt):
            planted = head[is_pair][pair_keys == k]
            np.testing.assert_array_equal(planted, [target])
    assert np.all((tokens >= 0) & (tokens < task.vocab_size))


def test_sampling_is_a_function_of_the_key():
    task = RecallTask(num_filler=5, num_keys=4, num_values=3, num_pairs=3, num_queries=2)
    assert task.vocab_size == 5 + 4 * 3 + 4 and task.min_length == 5
    first = _sample_sequence(task, 12, key=jax.random.key(7))
    again = _sample_sequence(task, 12, key=jax.random.key(7))
    other = _sample_sequence(task, 12, key=jax.random.key(8))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    # A batch is the sequences of `split(key, batch)`.
    batch = _sample_batch(task, 3, 12, key=jax.random.key(7))
    single = _sample_sequence(task, 12, key=jax.random.split(jax.random.key(7), 3)[2])
    for a, b in zip(batch, single):
        np.testing.assert_array_equal(a[2], b)


def test_too_short_a_sequence_is_refused():
    with pytest.raises(ValueError, match="length must be >= num_pairs \\+ num_queries = 10"):
        sample_recall_sequence(RecallTask(), 9, key=jax.random.key(0))


def test_a_few_steps_train_and_score_one_traced_step_for_all_seeds():
    task = RecallTask(num_filler=4, num_keys=4, num_values=3, num_pairs=3, num_queries=2)
    size = recall.ModelSize(num_layers=1, num_heads=1, head_dim=2, mlp_dim=4)
    kwargs = dict(length=6, steps=3, batch=2, learning_rate=1e-2, log_every=2)
    traces = recall._train_step._cache_size()
    params, loss = recall.train_recall(task, size, "standard", seed=0, **kwargs)
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
    # Another seed reuses the compiled step; the same seed gives the same parameters.
    other, _ = recall.train_recall(task, size, "standard", seed=1, **kwargs)
    again, loss_again = recall.train_recall(task, size, "standard", seed=0, **kwargs)
    assert recall._train_step._cache_size() == traces + 1
    assert loss_again == loss
    assert jax.tree.all(jax.tree.map(np.array_equal, params, again))
    assert not jax.tree.all(jax.tree.map(np.array_equal, params, other))
    accuracy_percent = recall.evaluate_recall(params, task, size, "standard", length=8,
                                              num_sequences=3, key=jax.random.key(1))
    assert 0.0 <= accuracy_percent <= 100.0
    # 3 sequences x 2 targets: a whole number of sixths.
    assert np.isclose(accuracy_percent * 6 / 100, round(accuracy_percent * 6 / 100))
