"""Named text datasets as fixed-length int32 token sequences [N, l] with a vocabulary and a held-out split.

Two sources, both embedded (nothing is downloaded):
  "arithmetic": a synthetic language whose validity is checkable exactly, equations "ab+cd=efg";
  "lee": English news text (gensim's Lee corpus) cut into fixed-length character windows.
"""
import dataclasses
import re
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from udm.registry import Registry

TEXT_DATASETS = Registry("text dataset")

# --- the dataset ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class TextDataset:
    """An in-memory token dataset: sequences of seq_len token ids over a character vocabulary.

    Token id i stands for the character vocab[i]; every sequence has exactly seq_len tokens.

    Attributes:
        name: the name it was loaded under, "arithmetic" or "lee".
        vocab: the V characters, one per token id (distinct, each a single character).
        seq_len: l, the length of every sequence.
        train_tokens: int32 [N_train, l], values in [0, V).
        test_tokens: int32 [N_test, l], values in [0, V).
        is_valid: an exact validity check on a decoded string, for languages that have one
            (arithmetic: `is_valid_equation`); None for natural text.
    """

    name: str
    vocab: Tuple[str, ...]
    seq_len: int
    train_tokens: np.ndarray
    test_tokens: np.ndarray
    is_valid: Optional[Callable[[str], bool]] = None

    tokens = True  # token sequences (the pipeline picks the text evaluator)

    def __post_init__(self):
        if not isinstance(self.vocab, tuple) or not self.vocab:
            raise ValueError(f"vocab must be a non-empty tuple of characters, got {self.vocab!r}")
        if any(not isinstance(c, str) or len(c) != 1 for c in self.vocab) or len(set(self.vocab)) != len(self.vocab):
            raise ValueError(f"vocab must hold distinct single characters, got {self.vocab!r}")
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}")
        for split in ("train", "test"):
            tokens = getattr(self, f"{split}_tokens")
            _check_token_array(f"{split}_tokens", tokens, self.seq_len, len(self.vocab))
            if tokens.dtype != np.int32:
                raise ValueError(f"{split}_tokens must be int32, got {tokens.dtype}")
            if tokens.shape[0] == 0:
                raise ValueError(f"{split}_tokens holds no sequences")

    @property
    def train_data(self) -> np.ndarray:
        """What the model is trained on: the training sequences."""
        return self.train_tokens

    @property
    def vocab_size(self) -> int:
        """V, the number of token ids."""
        return len(self.vocab)

    def encode(self, strings: Iterable[str]) -> np.ndarray:
        """Strings of exactly seq_len vocabulary characters -> int32 token ids [N, l]."""
        strings = list(strings)
        index = {c: i for i, c in enumerate(self.vocab)}
        tokens = np.zeros((len(strings), self.seq_len), dtype=np.int32)
        for row, string in enumerate(strings):
            if not isinstance(string, str) or len(string) != self.seq_len:
                raise ValueError(f"string {row} must be a str of length l={self.seq_len}, got {string!r}")
            try:
                tokens[row] = [index[c] for c in string]
            except KeyError as error:
                raise ValueError(f"string {row} {string!r} holds {error.args[0]!r}, which is not in the "
                                 f"{self.name} vocabulary {''.join(self.vocab)!r}") from None
        return tokens

    def decode(self, tokens) -> List[str]:
        """Token ids [N, l] (or one sequence [l]) -> a list of N strings of length l."""
        tokens = np.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None]
        _check_token_array("tokens", tokens, self.seq_len, len(self.vocab))
        table = np.array(self.vocab)
        return ["".join(row) for row in table[tokens]]


def _check_token_array(name: str, tokens: np.ndarray, seq_len: int, vocab_size: int) -> None:
    """Raises ValueError unless tokens is an integer array [N, seq_len] with values in [0, vocab_size)."""
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 2 or tokens.shape[1] != seq_len:
        raise ValueError(f"{name} must be an array [N, l={seq_len}], got shape {np.shape(tokens)}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"{name} must hold ids in [0, V={vocab_size}), got range "
                         f"[{tokens.min()}, {tokens.max()}]")


def load_text_dataset(name: str, *, seq_len: Optional[int] = None, seed: int = 0,
                      test_fraction: float = 1 / 6) -> TextDataset:
    """Loads a text dataset by name ("arithmetic" or "lee").

    Args:
        name: a name in `TEXT_DATASETS`.
        seq_len: l. "arithmetic" has the fixed length ARITHMETIC_SEQ_LEN = 9 (None or 9);
            "lee" cuts windows of this length (None means 32).
        seed: seeds the train/test split.
        test_fraction: fraction held out: of all ARITHMETIC_NUM_EQUATIONS equations for
            "arithmetic", of the documents for "lee".

    Returns:
        The TextDataset.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if seq_len is not None:
        _check_int("seq_len", seq_len, minimum=1)
    _check_int("seed", seed, minimum=0)
    loader = TEXT_DATASETS.get(name)
    return loader(seq_len=seq_len, seed=seed, test_fraction=test_fraction)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --- arithmetic -----------------------------------------------------------------------------------

# Format "ab+cd=efg": two operands 00..99, each written with exactly 2 digits (zero-padded), and
# their sum 000..198 written with exactly 3 digits (zero-padded), so every equation has length 9.
ARITHMETIC_VOCAB: Tuple[str, ...] = tuple("0123456789+=")  # digit d has token id d.
ARITHMETIC_SEQ_LEN = 9
ARITHMETIC_NUM_EQUATIONS = 100 * 100  # one per ordered pair of operands
_EQUATION = re.compile(r"([0-9]{2})\+([0-9]{2})=([0-9]{3})")


def is_valid_equation(string: str) -> bool:
    """True exactly when `string` is "ab+cd=efg" (2, 2 and 3 ASCII digits) and ab + cd == efg."""
    if not isinstance(string, str):
        return False
    match = _EQUATION.fullmatch(string)
    if match is None:
        return False
    a, b, total = (int(group) for group in match.groups())
    return a + b == total


def arithmetic_dataset(num_train: int = ARITHMETIC_NUM_EQUATIONS - 1667, num_test: int = 1667, *,
                       seed: int = 0) -> TextDataset:
    """Equations "ab+cd=efg" (l = 9, V = 12), every sequence distinct within and across the splits.

    The ARITHMETIC_NUM_EQUATIONS = 10,000 equations (all ordered operand pairs in [0, 99]^2) are
    permuted by `np.random.default_rng(seed)`; the test split takes the first num_test and the train
    split the next num_train, each then put in operand order. So the splits never share an equation,
    and num_train + num_test may not exceed 10,000.

    Args:
        num_train: N_train >= 1.
        num_test: N_test >= 1.
        seed: a non-negative integer naming the split.

    Returns:
        The TextDataset "arithmetic", with is_valid = is_valid_equation.
    """
    _check_int("num_train", num_train, minimum=1)
    _check_int("num_test", num_test, minimum=1)
    _check_int("seed", seed, minimum=0)
    if num_train + num_test > ARITHMETIC_NUM_EQUATIONS:
        raise ValueError(f"num_train + num_test = {num_train + num_test} exceeds the "
                         f"{ARITHMETIC_NUM_EQUATIONS} distinct equations; the splits could not be disjoint")
    permutation = np.random.default_rng(seed).permutation(ARITHMETIC_NUM_EQUATIONS)
    test_ids = np.sort(permutation[:num_test])
    train_ids = np.sort(permutation[num_test:num_test + num_train])
    return TextDataset(name="arithmetic", vocab=ARITHMETIC_VOCAB, seq_len=ARITHMETIC_SEQ_LEN,
                       train_tokens=_equation_tokens(train_ids), test_tokens=_equation_tokens(test_ids),
                       is_valid=is_valid_equation)


def _equation_tokens(equation_ids: np.ndarray) -> np.ndarray:
    """Equation id 100 a + b -> int32 tokens of "ab+cd=efg" [N, 9], built digit by digit."""
    a, b = np.divmod(equation_ids, 100)
    total = a + b
    plus = np.full_like(a, ARITHMETIC_VOCAB.index("+"))
    equals = np.full_like(a, ARITHMETIC_VOCAB.index("="))
    columns = [a // 10, a % 10, plus, b // 10, b % 10, equals, total // 100, total // 10 % 10, total % 10]
    return np.stack(columns, axis=1).astype(np.int32)


@TEXT_DATASETS.register("arithmetic")
def _load_arithmetic(*, seq_len: Optional[int], seed: int, test_fraction: float) -> TextDataset:
    """All 10,000 equations, split by test_fraction (rounded up)."""
    if seq_len not in (None, ARITHMETIC_SEQ_LEN):
        raise ValueError(f"the 'arithmetic' equations have the fixed length seq_len={ARITHMETIC_SEQ_LEN}, "
                         f"got seq_len={seq_len}")
    num_test = int(np.ceil(test_fraction * ARITHMETIC_NUM_EQUATIONS))
    return arithmetic_dataset(ARITHMETIC_NUM_EQUATIONS - num_test, num_test, seed=seed)


# --- English: the Lee corpus ----------------------------------------------------------------------

# Kept characters: lowercase letters, digits, space and . , ' - ; anything else becomes a space and
# runs of spaces collapse to one. Sorted, so the space has id 0.
LEE_VOCAB: Tuple[str, ...] = tuple(sorted("abcdefghijklmnopqrstuvwxyz0123456789 .,'-"))
LEE_DEFAULT_SEQ_LEN = 32
_NOT_KEPT = re.compile("[^" + re.escape("".join(LEE_VOCAB)) + "]")
_SPACES = re.compile(" {2,}")


def normalize_text(text: str) -> str:
    """Lowercases, maps every character outside LEE_VOCAB to a space and collapses runs of spaces."""
    text = _NOT_KEPT.sub(" ", text.lower())
    return _SPACES.sub(" ", text).strip()


def _lee_documents() -> List[str]:
    """The 300 documents of gensim's lee_background.cor, one per line, as stored."""
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise ImportError("the 'lee' text dataset reads gensim's embedded test corpus, and gensim is not "
                          "installed: pip install 'udm[text]'") from None
    with open(datapath("lee_background.cor"), encoding="utf-8", errors="replace") as corpus:
        return [line for line in corpus.read().split("\n") if line.strip()]


def windows(documents: Sequence[str], seq_len: int) -> np.ndarray:
    """Non-overlapping windows of seq_len characters of each normalised document, as int32 [N, l].

    Each document is cut from its start; the last len % seq_len characters are dropped, and a
    document shorter than seq_len gives none. No window crosses a document boundary.
    """
    index = {c: i for i, c in enumerate(LEE_VOCAB)}
    rows = []
    for document in documents:
        ids = np.array([index[c] for c in normalize_text(document)], dtype=np.int32)
        num_windows = len(ids) // seq_len
        rows.append(ids[:num_windows * seq_len].reshape(num_windows, seq_len))
    return np.concatenate(rows, axis=0) if rows else np.zeros((0, seq_len), np.int32)


def lee_dataset(*, seq_len: int = LEE_DEFAULT_SEQ_LEN, seed: int = 0, test_fraction: float = 1 / 6) -> TextDataset:
    """English news text (gensim's Lee background corpus, 300 documents) as character windows.

    The documents are normalised (`normalize_text`, V = 41) and cut into non-overlapping windows of
    seq_len characters (`windows`). The split is by document: `np.random.default_rng(seed)` permutes
    the documents and the first ceil(test_fraction * 300) are held out, so test text comes from
    documents never seen in training. Windows keep document order within each split.

    Args:
        seq_len: l >= 1.
        seed: a non-negative integer naming the split.
        test_fraction: fraction of documents held out, in (0, 1).

    Returns:
        The TextDataset "lee".

    Reference: Lee, Pincombe & Welsh (2005), "An empirical evaluation of models of text document
    similarity"; the corpus ships with gensim as gensim/test/test_data/lee_background.cor.
    """
    _check_int("seq_len", seq_len, minimum=1)
    _check_int("seed", seed, minimum=0)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    documents = _lee_documents()
    num_test = int(np.ceil(test_fraction * len(documents)))
    if not 1 <= num_test < len(documents):
        raise ValueError(f"test_fraction={test_fraction} leaves an empty split of {len(documents)} documents")
    permutation = np.random.default_rng(seed).permutation(len(documents))
    test_docs = [documents[i] for i in np.sort(permutation[:num_test])]
    train_docs = [documents[i] for i in np.sort(permutation[num_test:])]
    train_tokens, test_tokens = windows(train_docs, seq_len), windows(test_docs, seq_len)
    if len(train_tokens) == 0 or len(test_tokens) == 0:
        raise ValueError(f"seq_len={seq_len} is longer than every document of a split "
                         f"(train windows {len(train_tokens)}, test windows {len(test_tokens)})")
    return TextDataset(name="lee", vocab=LEE_VOCAB, seq_len=seq_len, train_tokens=train_tokens,
                       test_tokens=test_tokens)


@TEXT_DATASETS.register("lee")
def _load_lee(*, seq_len: Optional[int], seed: int, test_fraction: float) -> TextDataset:
    return lee_dataset(seq_len=LEE_DEFAULT_SEQ_LEN if seq_len is None else seq_len, seed=seed,
                       test_fraction=test_fraction)
