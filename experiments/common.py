"""Small helpers shared by the table scripts."""
import json
import os

import jax
import numpy as np


def batched(fn, x: np.ndarray, batch_size: int) -> list:
    """Applies fn to x in equal batches (the last one padded by repetition); host outputs."""
    outs = []
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        pad = batch_size - len(chunk)
        chunk = np.concatenate([chunk, chunk[:pad]]) if pad else chunk
        outs.append(jax.device_get(fn(chunk)))
    return outs


def write_json(path: str, payload) -> None:
    """Writes JSON atomically (a crash never leaves half a file)."""
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(path + ".tmp", path)
