"""The training batch order as a pure function of (seed, step), so a resumed run sees the same data."""
import numpy as np


def batch_at_step(num_examples: int, batch_size: int, step: int, *, seed: int) -> np.ndarray:
    """Indices of the examples in the batch used at training step `step` (0-based).

    Examples are visited epoch by epoch, each epoch in the order of a permutation drawn from
    `np.random.default_rng([seed, epoch])`; the last `num_examples % batch_size` examples of each
    epoch's permutation are dropped, so every batch is full and no example repeats within an epoch.
    Nothing is carried between calls: resuming at step s needs only (seed, s).

    Args:
        num_examples: N, the size of the training set.
        batch_size: B, with 1 <= B <= N.
        step: the training step, >= 0.
        seed: a non-negative integer naming the data order.

    Returns:
        int64 indices into the training set, shape [B], all distinct.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size > num_examples:
        raise ValueError(f"batch_size={batch_size} is larger than the dataset (num_examples={num_examples})")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    steps_per_epoch = num_examples // batch_size
    epoch, position = divmod(int(step), steps_per_epoch)
    # Seeding with [seed, epoch] gives each epoch an independent stream without a global RNG state.
    permutation = np.random.default_rng([int(seed), epoch]).permutation(num_examples)
    return permutation[position * batch_size:(position + 1) * batch_size]
