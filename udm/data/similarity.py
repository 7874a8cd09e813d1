"""Human similarity judgements of text pairs: the embedded Lee data and user STS-Benchmark files.

* "lee" (default, ships with gensim's test data): Lee, Pincombe & Welsh (2005), 50 news
  documents (lee.cor) with the mean human similarity rating of every pair, in [0, 1]
  (similarities0-1.txt, the upper triangle of a 50 x 50 matrix: 1225 pairs), and 300
  background documents of the same source (lee_background.cor) for fitting unsupervised
  statistics such as a whitening.
* STS-Benchmark files (Cer et al., 2017): tab-separated, either the original layout
  (genre, file, year, id, score, sentence1, sentence2[, source...]) or GLUE's STS-B layout with a
  header row naming `sentence1`, `sentence2` and `score`; gold scores in [0, 5].

The score of an embedding is Spearman's rank correlation between the cosine similarity of the
two texts of each pair and the gold score (x 100 in tables), see `udm.metrics.similarity`.
"""
import csv
import dataclasses
import os
from typing import List, Optional, Tuple

import numpy as np

# The sizes of the Lee data (gensim's lee.cor and lee_background.cor), known before loading so
# that a config can be checked without reading them.
LEE_NUM_DOCUMENTS = 50
LEE_NUM_BACKGROUND = 300


@dataclasses.dataclass(frozen=True)
class SimilarityPairs:
    """Text pairs with a gold similarity score.

    Attributes:
      name: where the pairs come from.
      texts: the distinct texts; pairs refer to them by index (the Lee pairs share documents).
      pairs: int [P, 2] indices into `texts`.
      gold: float [P] human similarity scores.
      background: extra unlabelled texts of the same source (fitting data), possibly empty.
    """
    name: str
    texts: List[str]
    pairs: np.ndarray
    gold: np.ndarray
    background: List[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.pairs.ndim != 2 or self.pairs.shape[1] != 2 or len(self.pairs) != len(self.gold):
            raise ValueError(f"pairs must be [P, 2] with one gold score each, got "
                             f"{self.pairs.shape} and {self.gold.shape}")
        if len(self.pairs) and (self.pairs.min() < 0 or self.pairs.max() >= len(self.texts)):
            raise ValueError("pair indices must point into texts")


def _gensim_file(name: str) -> str:
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise ImportError("the Lee similarity data are gensim's embedded test corpora, and "
                          "gensim is not installed: pip install 'udm[text]'") from None
    return datapath(name)


def _lines(path: str) -> List[str]:
    # The corpora are latin-1 encoded, one document per line.
    with open(path, encoding="latin-1") as f:
        return [line.strip() for line in f.read().split("\n") if line.strip()]


def load_lee_similarity() -> SimilarityPairs:
    """The 50 Lee documents, their 1225 rated pairs (i < j) and the 300 background documents."""
    documents = _lines(_gensim_file("lee.cor"))
    background = _lines(_gensim_file("lee_background.cor"))
    matrix = np.loadtxt(_gensim_file("similarities0-1.txt"))
    n = len(documents)
    if (n != LEE_NUM_DOCUMENTS or matrix.shape != (n, n)
            or len(background) != LEE_NUM_BACKGROUND):
        raise ValueError(f"unexpected Lee data: {n} documents, similarity matrix {matrix.shape}, "
                         f"{len(background)} background documents")
    i, j = np.triu_indices(n, 1)
    return SimilarityPairs("lee", documents, np.stack([i, j], axis=1).astype(np.int64),
                           matrix[i, j].astype(np.float64), background)


def _sts_rows(path: str) -> Tuple[List[Tuple[str, str, float]], int]:
    rows, skipped = [], 0
    with open(path, encoding="utf-8", newline="") as f:
        lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not lines:
        raise ValueError(f"{path} is empty")
    header = [c.strip().lower() for c in lines[0]]
    if {"sentence1", "sentence2", "score"} <= set(header):      # GLUE STS-B layout
        a, b, s = header.index("sentence1"), header.index("sentence2"), header.index("score")
        lines = lines[1:]
    else:                                                      # the original STS-B layout
        a, b, s = 5, 6, 4
    for number, cells in enumerate(lines, start=1):
        if len(cells) <= max(a, b, s):
            skipped += 1
            continue
        try:
            score = float(cells[s])
        except ValueError:
            skipped += 1
            continue
        rows.append((cells[a].strip(), cells[b].strip(), score))
    return rows, skipped


def load_sts_tsv(path: str, *, name: Optional[str] = None) -> SimilarityPairs:
    """Pairs of an STS-Benchmark-format file (see the module docstring).

    Rows with too few columns or a non-numeric score are skipped and counted in a warning;
    a file with no usable row is an error.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"STS file not found: {path}")
    rows, skipped = _sts_rows(path)
    if not rows:
        raise ValueError(f"{path}: no row with two sentences and a numeric score "
                         f"({skipped} skipped); expected the STS-Benchmark column layout")
    if skipped:
        print(f"udm: {path}: skipped {skipped} malformed rows of {len(rows) + skipped}")
    texts, index = [], {}
    pairs = []
    for a, b, _ in rows:
        for text in (a, b):
            if text not in index:
                index[text] = len(texts)
                texts.append(text)
        pairs.append((index[a], index[b]))
    return SimilarityPairs(name or os.path.basename(path), texts,
                           np.asarray(pairs, np.int64), np.asarray([r[2] for r in rows]))
