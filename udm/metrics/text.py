"""Sample quality for token sequences: exact validity, n-gram perplexity and distinct-n (numpy, host side).

The headline numbers for a text sampler (`text_report`):
  validity: the fraction of samples an exact checker accepts (arithmetic equations);
  sample_perplexity: perplexity of the samples under a character n-gram model fitted on the
    HELD-OUT split, beside the reference row: the train split under that same model (what a
    perfect generator of training-like text scores), held-out text under a model fitted on train,
    and uniform random sequences (the worst case: V under a uniform model, more under a fitted one);
  distinct_1, distinct_2, unique_fraction: diversity, which perplexity alone misses (repeating the
    single most likely string scores a low perplexity).
"""
import dataclasses
from typing import Callable, Dict, Iterable, Optional

import numpy as np

from udm.data.text import TextDataset

# Add-k pseudo-count per (context, next token). Chosen on the Lee corpus (n = 3, l = 32): held-out
# perplexity under a train-fitted model is lowest near k = 0.1 (k = 1 over-smooths the ~1,700
# character contexts towards uniform; k = 0.01 over-trusts rare ones).
DEFAULT_K = 0.1
DEFAULT_N = 3


@dataclasses.dataclass(frozen=True, eq=False)
class NGramModel:
    """A token n-gram model with add-k smoothing, p(x_i | x_{i-n+1:i}), fitted by counting.

    p(x | c) = (count(c, x) + k) / (count(c) + k V), where c is the n - 1 tokens before x and
    count(c) = sum_x count(c, x); contexts reaching before the start of a sequence are padded with a
    begin-of-sequence id BOS = V, so every one of the l tokens of a sequence is scored. Counts are
    stored sparsely (sorted ids of the n-grams seen), so memory grows with the data, not with V^n.

    Attributes:
        vocab_size: V; tokens are ids in [0, V).
        n: the order (n = 1 is a unigram model).
        k: the add-k pseudo-count, > 0 (so no sequence has probability 0).
        ngram_ids: int64 [M], sorted ids of the (context, token) pairs seen: context_id * V + token.
        ngram_counts: int64 [M], their counts.
        context_ids: int64 [C], sorted ids of the contexts seen, base V + 1 digits of the context.
        context_counts: int64 [C], their counts (the number of tokens that followed them).

    Reference: Chen & Goodman (1999), "An empirical study of smoothing techniques for language
    modeling", section 2.1 (additive smoothing).
    """

    vocab_size: int
    n: int
    k: float
    ngram_ids: np.ndarray
    ngram_counts: np.ndarray
    context_ids: np.ndarray
    context_counts: np.ndarray

    @classmethod
    def fit(cls, sequences, vocab_size: int, *, n: int = DEFAULT_N, k: float = DEFAULT_K) -> "NGramModel":
        """Counts the n-grams of `sequences` (int [N, l], ids in [0, V)) and returns the model."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
            raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if not (np.isfinite(k) and k > 0):
            raise ValueError(f"k must be > 0 (add-k smoothing), got {k}")
        # Context ids use n - 1 base-(V + 1) digits, times V for the token: must fit in int64.
        if (vocab_size + 1) ** (n - 1) * vocab_size >= 2 ** 62:
            raise ValueError(f"n={n} with V={vocab_size} has too many n-grams to index in int64")
        sequences = _check_sequences("sequences", sequences, int(vocab_size))
        contexts, tokens = _contexts_and_tokens(sequences, int(vocab_size), int(n))
        ngram_ids, ngram_counts = np.unique(contexts * vocab_size + tokens, return_counts=True)
        context_ids, context_counts = np.unique(contexts, return_counts=True)
        return cls(vocab_size=int(vocab_size), n=int(n), k=float(k), ngram_ids=ngram_ids,
                   ngram_counts=ngram_counts.astype(np.int64), context_ids=context_ids,
                   context_counts=context_counts.astype(np.int64))

    def conditional_probs(self, contexts) -> np.ndarray:
        """p(. | c) for each context: contexts int [B, n - 1] with ids in [0, V] (V = BOS) -> float64 [B, V]."""
        contexts = np.asarray(contexts)
        if contexts.ndim != 2 or contexts.shape[1] != self.n - 1 or not np.issubdtype(contexts.dtype, np.integer):
            raise ValueError(f"contexts must be integers [B, n-1={self.n - 1}], got {contexts.dtype} {contexts.shape}")
        if contexts.size and (contexts.min() < 0 or contexts.max() > self.vocab_size):
            raise ValueError(f"context ids must be in [0, V={self.vocab_size}] (V = BOS)")
        context_ids = _context_ids(contexts.astype(np.int64), self.vocab_size)
        tokens = np.arange(self.vocab_size, dtype=np.int64)
        return self._probs(np.repeat(context_ids[:, None], self.vocab_size, axis=1), tokens[None, :])

    def _probs(self, context_ids: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        joint = _lookup(self.ngram_ids, self.ngram_counts, context_ids * self.vocab_size + tokens)
        total = _lookup(self.context_ids, self.context_counts, context_ids)
        return (joint + self.k) / (total + self.k * self.vocab_size)

    def token_log_probs(self, sequences) -> np.ndarray:
        """log p(x_i | x_{i-n+1:i}) in nats of every token: int [N, l] -> float64 [N, l]."""
        sequences = _check_sequences("sequences", sequences, self.vocab_size)
        contexts, tokens = _contexts_and_tokens(sequences, self.vocab_size, self.n)
        return np.log(self._probs(contexts, tokens))

    def log_prob(self, sequences) -> np.ndarray:
        """log p(x) = sum_i log p(x_i | x_{i-n+1:i}) in nats for each sequence: int [N, l] -> float64 [N]."""
        return self.token_log_probs(sequences).sum(axis=1)

    def span_perplexity(self, sequences, start: int) -> float:
        """Per-token perplexity of positions start..l-1 only, each given its n - 1 tokens before
        (which may lie before start): how well an infilled span continues its known prefix."""
        log_probs = self.token_log_probs(sequences)
        if not 0 <= start < log_probs.shape[1]:
            raise ValueError(f"start must be in [0, l={log_probs.shape[1]}), got {start}")
        return float(np.exp(-log_probs[:, start:].mean()))

    def perplexity(self, sequences) -> float:
        """exp(-(1 / (N l)) sum log p(x)): per-token perplexity, V for a uniform model, 1 at best."""
        sequences = _check_sequences("sequences", sequences, self.vocab_size)
        return float(np.exp(-self.log_prob(sequences).sum() / sequences.size))


def _check_sequences(name: str, sequences, vocab_size: int) -> np.ndarray:
    """Integer array [N, l] with N, l >= 1 and ids in [0, V), as int64."""
    sequences = np.asarray(sequences)
    if sequences.ndim != 2 or sequences.size == 0 or not np.issubdtype(sequences.dtype, np.integer):
        raise ValueError(f"{name} must be a non-empty integer array [N, l], got {sequences.dtype} {sequences.shape}")
    if sequences.min() < 0 or sequences.max() >= vocab_size:
        raise ValueError(f"{name} must hold ids in [0, V={vocab_size}), got range "
                         f"[{sequences.min()}, {sequences.max()}]")
    return sequences.astype(np.int64)


def _context_ids(contexts: np.ndarray, vocab_size: int) -> np.ndarray:
    """[..., n - 1] ids in [0, V] -> [...] base-(V + 1) numbers (Horner)."""
    ids = np.zeros(contexts.shape[:-1], dtype=np.int64)
    for j in range(contexts.shape[-1]):
        ids = ids * (vocab_size + 1) + contexts[..., j]
    return ids


def _contexts_and_tokens(sequences: np.ndarray, vocab_size: int, n: int):
    """Context ids [N, l] (n - 1 previous tokens, BOS-padded) and the tokens [N, l] that follow them."""
    padded = np.concatenate([np.full((sequences.shape[0], n - 1), vocab_size, np.int64), sequences], axis=1)
    # Window i covers padded[i : i + n - 1] = the n - 1 tokens before sequences[:, i].
    context_windows = np.lib.stride_tricks.sliding_window_view(padded[:, :-1], n - 1, axis=1) if n > 1 else \
        np.zeros(sequences.shape + (0,), np.int64)
    return _context_ids(context_windows, vocab_size), sequences


def _lookup(sorted_ids: np.ndarray, counts: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """counts[j] where sorted_ids[j] == query, else 0, elementwise."""
    position = np.searchsorted(sorted_ids, queries)
    position = np.minimum(position, len(sorted_ids) - 1)
    return np.where(sorted_ids[position] == queries, counts[position], 0)


def fit_reference_model(dataset: TextDataset, *, n: int = DEFAULT_N, k: float = DEFAULT_K) -> NGramModel:
    """The n-gram model fitted on the dataset's HELD-OUT split, under which samples are scored."""
    return NGramModel.fit(dataset.test_tokens, dataset.vocab_size, n=n, k=k)


def validity(samples_strings: Iterable[str], is_valid: Callable[[str], bool]) -> float:
    """Fraction of the strings that `is_valid` accepts."""
    samples_strings = list(samples_strings)
    if not samples_strings:
        raise ValueError("validity needs at least one sample")
    return float(np.mean([bool(is_valid(s)) for s in samples_strings]))


def distinct_n(sequences, n: int) -> float:
    """Distinct-n: the number of distinct n-grams over the number of n-grams in all sequences.

    n-grams are taken within each sequence (none spans two sequences); 1 means no n-gram repeats,
    1 / (number of n-grams) that every one is the same.

    Args:
        sequences: an integer array [N, l], or any iterable of sequences (strings, lists of tokens),
            which may differ in length.
        n: the n-gram length, >= 1.

    Returns:
        The fraction in (0, 1].

    Reference: Li et al. (2016), "A diversity-promoting objective function for neural conversation
    models".
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(sequences, np.ndarray) and sequences.ndim == 2 and np.issubdtype(sequences.dtype, np.integer):
        if sequences.shape[1] < n:
            raise ValueError(f"sequences of length {sequences.shape[1]} hold no {n}-grams")
        grams = np.lib.stride_tricks.sliding_window_view(sequences, n, axis=1).reshape(-1, n)
        return float(len(np.unique(grams, axis=0)) / len(grams))
    grams = [tuple(seq[i:i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    if not grams:
        raise ValueError(f"the sequences hold no {n}-grams")
    return float(len(set(grams)) / len(grams))


def text_report(samples_tokens, dataset: TextDataset, reference_model: Optional[NGramModel] = None, *,
                train_model: Optional[NGramModel] = None, seed: int = 0) -> Dict[str, float]:
    """Sample-quality numbers for token samples of `dataset`, with the reference row beside them.

    Args:
        samples_tokens: int [N, l] samples, ids in [0, V).
        dataset: the TextDataset the sampler was trained on.
        reference_model: an NGramModel fitted on dataset.test_tokens (`fit_reference_model`);
            fitted here when None. Pass it to score several sample sets against one model.
        train_model: the same kind of model fitted on dataset.train_tokens, for the held-out
            reference; fitted here (with the reference model's n and k) when None.
        seed: seeds the uniform random sequences and the data subset used for reference distinct-n.

    Returns:
        A dict of floats:
          num_samples;
          validity: fraction of decoded samples dataset.is_valid accepts (only when it has one);
          sample_perplexity: samples under the reference (held-out) model; lower is better;
          train_perplexity: the train split under the reference model (a perfect generator's score);
          heldout_perplexity: the test split under the train model (how well the n-gram generalises);
          random_perplexity: N_test uniform random sequences under the reference model (the worst
            case; above V, since the fitted model puts little mass on most n-grams);
          distinct_1, distinct_2: of the samples (of characters these are small even for real text:
            compare them with the data_ values, not with 1);
          unique_fraction: distinct samples over N (distinct-l; 1 / N under total mode collapse);
          data_distinct_1, data_distinct_2: of min(N, N_train) random train sequences (same set size);
          train_copy_fraction: fraction of samples equal to some training sequence (memorisation).
    """
    samples = _check_sequences("samples_tokens", samples_tokens, dataset.vocab_size)
    if samples.shape[1] != dataset.seq_len:
        raise ValueError(f"samples_tokens must have length l={dataset.seq_len}, got {samples.shape}")
    if reference_model is None:
        reference_model = fit_reference_model(dataset)
    if reference_model.vocab_size != dataset.vocab_size:
        raise ValueError(f"reference_model has V={reference_model.vocab_size}, the dataset V={dataset.vocab_size}")
    if train_model is None:
        train_model = NGramModel.fit(dataset.train_tokens, dataset.vocab_size, n=reference_model.n,
                                     k=reference_model.k)
    rng = np.random.default_rng(seed)
    random_tokens = rng.integers(0, dataset.vocab_size, size=dataset.test_tokens.shape)
    subset = rng.choice(len(dataset.train_tokens), size=min(len(samples), len(dataset.train_tokens)),
                        replace=False)
    data = dataset.train_tokens[subset]
    train_rows = {row.tobytes() for row in dataset.train_tokens.astype(np.int64)}
    report = {"num_samples": float(len(samples))}
    if dataset.is_valid is not None:
        report["validity"] = validity(dataset.decode(samples), dataset.is_valid)
    report.update(
            sample_perplexity=reference_model.perplexity(samples),
            train_perplexity=reference_model.perplexity(dataset.train_tokens),
            heldout_perplexity=train_model.perplexity(dataset.test_tokens),
            random_perplexity=reference_model.perplexity(random_tokens),
            distinct_1=distinct_n(samples, 1),
            distinct_2=distinct_n(samples, 2) if dataset.seq_len >= 2 else float("nan"),
            data_distinct_1=distinct_n(data, 1),
            data_distinct_2=distinct_n(data, 2) if dataset.seq_len >= 2 else float("nan"),
            unique_fraction=distinct_n(samples, dataset.seq_len),
            train_copy_fraction=float(np.mean([row.tobytes() in train_rows for row in samples])),
    )
    return report
