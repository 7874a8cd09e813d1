"""Tests for udm.data.text and udm.metrics.text: the arithmetic language, Lee windows, n-gram metrics."""
import sys

import numpy as np
import pytest

from udm.data.text import (ARITHMETIC_NUM_EQUATIONS, ARITHMETIC_SEQ_LEN, ARITHMETIC_VOCAB, LEE_VOCAB, TEXT_DATASETS,
                           TextDataset, arithmetic_dataset, is_valid_equation, load_text_dataset,
                           normalize_text, windows)
from udm.metrics.text import NGramModel, distinct_n, fit_reference_model, text_report, validity


@pytest.fixture(scope="module")
def lee():
    return load_text_dataset("lee", seq_len=32, seed=0)


@pytest.fixture(scope="module")
def lee_documents():
    gensim_utils = pytest.importorskip("gensim.test.utils")
    with open(gensim_utils.datapath("lee_background.cor"), encoding="utf-8", errors="replace") as corpus:
        return [line for line in corpus.read().split("\n") if line.strip()]


# --- arithmetic -----------------------------------------------------------------------------------

def test_arithmetic_equations_have_one_length_are_valid_and_splits_partition_all_equations():
    data = load_text_dataset("arithmetic", seed=0)
    assert data.vocab == tuple("0123456789+=") and data.vocab_size == 12 and data.seq_len == 9
    train, test = data.decode(data.train_tokens), data.decode(data.test_tokens)
    assert len(test) == int(np.ceil(ARITHMETIC_NUM_EQUATIONS / 6)) and len(train) + len(test) == 10_000
    assert {len(s) for s in train + test} == {ARITHMETIC_SEQ_LEN}
    assert all(is_valid_equation(s) for s in train + test)
    # No duplicates within or across the splits, and together they are every equation once.
    assert len(set(train)) == len(train) and len(set(test)) == len(test) and not set(train) & set(test)
    assert set(train) | set(test) == {f"{a:02d}+{b:02d}={a + b:03d}" for a in range(100) for b in range(100)}
    # Digit d has token id d.
    np.testing.assert_array_equal(data.encode(["12+34=046"]), [[1, 2, 10, 3, 4, 11, 0, 4, 6]])


def test_arithmetic_dataset_sizes_and_its_limit():
    data = arithmetic_dataset(500, 100, seed=3)
    assert data.train_tokens.shape == (500, 9) and data.test_tokens.shape == (100, 9)
    assert data.train_tokens.dtype == np.int32 and data.is_valid is is_valid_equation
    assert not set(data.decode(data.train_tokens)) & set(data.decode(data.test_tokens))
    with pytest.raises(ValueError, match="exceeds the 10000 distinct equations"):
        arithmetic_dataset(9_000, 1_001)
    with pytest.raises(ValueError, match="num_test"):
        arithmetic_dataset(10, 0)


@pytest.mark.parametrize("string", ["00+00=000", "99+99=198", "05+07=012", "50+50=100"])
def test_is_valid_equation_accepts_right_sums(string):
    assert is_valid_equation(string)


@pytest.mark.parametrize("string", [
        "12+34=047",     # wrong sum
        "99+99=098",     # sum without its carry
        "12+34=46",      # result not padded to 3 digits
        "12+34=0046",    # too long
        "1+234=235",     # operand widths wrong (right sum)
        "12-34=046",     # wrong operator
        "12+34+046",     # no '='
        "12+34=046 ",    # trailing space
        "ab+cd=efg",
        "",
        "１２+34=046",    # full-width digits: int() would parse them, the format does not allow them
        None,
])
def test_is_valid_equation_rejects_wrong_sums_and_malformed_strings(string):
    assert not is_valid_equation(string)


def test_validity_is_the_fraction_accepted():
    assert validity(["12+34=046", "12+34=047", "00+00=000", "junk"], is_valid_equation) == 0.5


# --- encode / decode ------------------------------------------------------------------------------

def test_encode_decode_round_trip(lee):
    arithmetic = arithmetic_dataset(50, 20, seed=0)
    for data in (arithmetic, lee):
        strings = data.decode(data.test_tokens)
        tokens = data.encode(strings)
        assert tokens.dtype == np.int32
        np.testing.assert_array_equal(tokens, data.test_tokens)
        assert data.decode(data.test_tokens[0]) == strings[:1]
    assert arithmetic.decode(arithmetic.encode(["07+08=015"])) == ["07+08=015"]


def test_encode_and_decode_refuse_what_is_not_in_the_vocabulary():
    data = arithmetic_dataset(50, 20, seed=0)
    with pytest.raises(ValueError, match="'-'.*not in the arithmetic vocabulary"):
        data.encode(["12-34=046"])
    with pytest.raises(ValueError, match="length l=9"):
        data.encode(["12+34=46"])
    with pytest.raises(ValueError, match=r"ids in \[0, V=12\)"):
        data.decode(np.full((1, 9), 12))
    with pytest.raises(ValueError, match="int32"):
        TextDataset(name="x", vocab=ARITHMETIC_VOCAB, seq_len=9, train_tokens=data.train_tokens.astype(np.int64),
                    test_tokens=data.test_tokens)


# --- lee ------------------------------------------------------------------------------------------

def test_lee_windows_are_fixed_length_over_a_closed_sorted_vocabulary(lee):
    assert lee.name == "lee" and lee.vocab == LEE_VOCAB == tuple(sorted(set(LEE_VOCAB)))
    assert lee.vocab_size == 41 and lee.vocab[0] == " " and lee.is_valid is None
    for tokens in (lee.train_tokens, lee.test_tokens):
        assert tokens.dtype == np.int32 and tokens.ndim == 2 and tokens.shape[1] == 32
        assert tokens.min() >= 0 and tokens.max() < lee.vocab_size
    text = "".join(lee.decode(lee.train_tokens))
    assert set(text) <= set(LEE_VOCAB) and "  " not in text and text == text.lower()
    # Every kept character occurs: the vocabulary is not padded with unused ids.
    assert set(text) == set(LEE_VOCAB)
    assert normalize_text('He said: "Fires (near\tSydney)!"  ') == "he said fires near sydney"


def test_lee_split_is_by_document(lee, lee_documents):
    """Each document's windows sit, in order, wholly inside one split; 1/6 of documents are held out."""
    assert len(lee_documents) == 300
    per_document = [windows([doc], 32) for doc in lee_documents]
    assert sum(len(w) for w in per_document) == len(lee.train_tokens) + len(lee.test_tokens)
    position = {"train": 0, "test": 0}
    test_documents = 0
    for block in per_document:
        if len(block) == 0:
            continue
        for split in ("test", "train"):
            tokens = getattr(lee, f"{split}_tokens")
            start = position[split]
            if np.array_equal(tokens[start:start + len(block)], block):
                position[split] += len(block)
                test_documents += split == "test"
                break
        else:
            pytest.fail("a document's windows are not contiguous in either split")
    assert position == {"train": len(lee.train_tokens), "test": len(lee.test_tokens)}
    assert test_documents == 50


def test_lee_missing_gensim_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gensim", None)
    monkeypatch.setitem(sys.modules, "gensim.test.utils", None)
    with pytest.raises(ImportError, match=r"pip install 'udm\[text\]'"):
        load_text_dataset("lee")


def test_loading_is_a_function_of_the_seed(lee):
    again = load_text_dataset("lee", seq_len=32, seed=0)
    other = load_text_dataset("lee", seq_len=32, seed=1)
    np.testing.assert_array_equal(lee.train_tokens, again.train_tokens)
    np.testing.assert_array_equal(lee.test_tokens, again.test_tokens)
    assert other.test_tokens.shape != lee.test_tokens.shape or not np.array_equal(other.test_tokens, lee.test_tokens)
    a, b, c = (arithmetic_dataset(300, 100, seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.train_tokens, b.train_tokens)
    np.testing.assert_array_equal(a.test_tokens, b.test_tokens)
    assert not np.array_equal(a.test_tokens, c.test_tokens)


def test_load_text_dataset_refuses_bad_names_and_arguments():
    assert TEXT_DATASETS.names() == ["arithmetic", "lee"]
    with pytest.raises(ValueError, match="valid names: arithmetic, lee"):
        load_text_dataset("wikitext")
    with pytest.raises(ValueError, match="fixed length seq_len=9"):
        load_text_dataset("arithmetic", seq_len=32)
    with pytest.raises(ValueError, match="seq_len must be an integer >= 1"):
        load_text_dataset("lee", seq_len=0)
    with pytest.raises(ValueError, match="test_fraction"):
        load_text_dataset("lee", test_fraction=1.0)
    with pytest.raises(ValueError, match="longer than every document"):
        load_text_dataset("lee", seq_len=100_000)


# --- n-gram model ---------------------------------------------------------------------------------

def test_ngram_counts_match_a_hand_example():
    # One sequence 0 1 0 1 over V = 2, bigrams: (BOS, 0), (0, 1), (1, 0), (0, 1).
    model = NGramModel.fit(np.array([[0, 1, 0, 1]]), 2, n=2, k=1.0)
    probs = model.conditional_probs(np.array([[0], [1], [2]]))
    np.testing.assert_allclose(probs, [[1 / 4, 3 / 4],   # (0 + 1) / (2 + 2), (2 + 1) / (2 + 2)
                                       [2 / 3, 1 / 3],   # (1 + 1) / (1 + 2), (0 + 1) / (1 + 2)
                                       [2 / 3, 1 / 3]])  # after BOS
    expected = np.log(2 / 3) + np.log(3 / 4) + np.log(2 / 3) + np.log(3 / 4)
    np.testing.assert_allclose(model.log_prob(np.array([[0, 1, 0, 1]])), [expected])
    np.testing.assert_allclose(model.perplexity(np.array([[0, 1, 0, 1]])), np.exp(-expected / 4))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_probabilities_sum_to_one_and_agree_with_log_prob(lee, n):
    model = NGramModel.fit(lee.train_tokens, lee.vocab_size, n=n)
    bos = lee.vocab_size
    contexts = np.array([[bos] * (n - 1), lee.train_tokens[0, :n - 1].tolist(),
                         lee.encode([" " * 32])[0, :n - 1].tolist(),     # a rare context
                         [bos] * max(n - 2, 0) + [5] * min(n - 1, 1)], dtype=np.int64).reshape(4, n - 1)
    probs = model.conditional_probs(contexts)
    assert probs.shape == (4, lee.vocab_size) and probs.min() > 0
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    # log p(x) is the sum of the conditionals along the sequence.
    x = lee.test_tokens[3]
    padded = [bos] * (n - 1) + x.tolist()
    steps = [model.conditional_probs(np.array([padded[i:i + n - 1]], dtype=np.int64))[0, x[i]] for i in range(len(x))]
    np.testing.assert_allclose(model.log_prob(x[None]), [np.sum(np.log(steps))], rtol=1e-10)
    # the per-token terms, and the perplexity of a span: its terms only, contexts reaching back
    np.testing.assert_allclose(model.token_log_probs(x[None])[0], np.log(steps), rtol=1e-10)
    np.testing.assert_allclose(model.span_perplexity(x[None], 20),
                               np.exp(-np.mean(np.log(steps[20:]))), rtol=1e-10)
    assert model.span_perplexity(x[None], 0) == pytest.approx(model.perplexity(x[None]))
    with pytest.raises(ValueError, match=r"start must be in \[0, l=32\)"):
        model.span_perplexity(x[None], 32)


def test_uniform_data_has_perplexity_vocab_size():
    """Uniform tokens under a model fitted on uniform tokens: perplexity = V up to estimation noise.

    Cross-entropy of uniform data is >= log V under any model; with 120k training tokens spread over
    V^3 = 1728 trigram cells the excess is ~ (V - 1) V^2 / (2 * 120k) ~ 0.7%, so V within [-1%, +3%].
    """
    rng = np.random.default_rng(0)
    vocab_size = 12
    model = NGramModel.fit(rng.integers(0, vocab_size, (4000, 30)), vocab_size, n=3, k=0.1)
    perplexity = model.perplexity(rng.integers(0, vocab_size, (2000, 30)))
    assert vocab_size * 0.99 < perplexity < vocab_size * 1.03


def test_held_out_text_scores_far_below_random_text(lee):
    model = NGramModel.fit(lee.train_tokens, lee.vocab_size)
    rng = np.random.default_rng(0)
    held_out = model.perplexity(lee.test_tokens)
    random = model.perplexity(rng.integers(0, lee.vocab_size, lee.test_tokens.shape))
    # Measured: ~7.5 against ~73 (V = 41).
    assert held_out < 10 and random > lee.vocab_size and held_out < random / 4


def test_ngram_model_refuses_bad_arguments():
    with pytest.raises(ValueError, match="k must be > 0"):
        NGramModel.fit(np.zeros((2, 3), int), 4, k=0.0)
    with pytest.raises(ValueError, match=r"ids in \[0, V=4\)"):
        NGramModel.fit(np.full((2, 3), 4), 4)
    model = NGramModel.fit(np.zeros((2, 3), int), 4, n=3)
    with pytest.raises(ValueError, match=r"contexts must be integers \[B, n-1=2\]"):
        model.conditional_probs(np.zeros((1, 3), int))


# --- distinct-n and the report --------------------------------------------------------------------

def test_distinct_n_of_hand_examples():
    assert distinct_n(["abab"], 2) == pytest.approx(2 / 3)   # ab, ba, ab
    assert distinct_n(["aaaa"], 1) == pytest.approx(1 / 4)
    assert distinct_n(["abcd"], 1) == 1.0
    assert distinct_n(["ab", "ba"], 2) == 1.0                 # no n-gram spans two sequences
    tokens = np.array([[0, 1, 2], [0, 1, 3]])                 # (0,1) (1,2) (0,1) (1,3)
    assert distinct_n(tokens, 2) == pytest.approx(3 / 4)
    assert distinct_n(tokens.tolist(), 2) == pytest.approx(3 / 4)
    assert distinct_n(tokens, 3) == 1.0
    with pytest.raises(ValueError, match="no 4-grams"):
        distinct_n(tokens, 4)


def test_text_report_separates_data_from_noise(lee):
    rng = np.random.default_rng(0)
    arithmetic = arithmetic_dataset(2000, 500, seed=0)
    for data in (arithmetic, lee):
        reference = fit_reference_model(data)
        real = text_report(data.train_tokens[:500], data, reference)
        noise = text_report(rng.integers(0, data.vocab_size, (500, data.seq_len)), data, reference)
        assert real["sample_perplexity"] < noise["sample_perplexity"] / 3
        assert noise["sample_perplexity"] == pytest.approx(noise["random_perplexity"], rel=0.05)
        assert real["train_copy_fraction"] == 1.0 and noise["train_copy_fraction"] == 0.0
        assert real["distinct_1"] == real["data_distinct_1"] and real["unique_fraction"] == 1.0
        assert text_report(data.train_tokens[:500], data, reference) == real   # deterministic
    assert real.keys() == noise.keys() and "validity" not in real
    arithmetic_report = text_report(arithmetic.test_tokens, arithmetic)
    assert arithmetic_report["validity"] == 1.0 and arithmetic_report["train_copy_fraction"] == 0.0
    wrong = arithmetic.test_tokens.copy()
    wrong[::2, -1] = (wrong[::2, -1] + 1) % 10                # break the last digit of every other sum
    assert text_report(wrong, arithmetic)["validity"] == 0.5
