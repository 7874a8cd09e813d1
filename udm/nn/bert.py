"""A post-LayerNorm BERT encoder (Devlin et al., 2019) returning every hidden state, and the MiniLM-L6 size."""
from typing import NamedTuple, Optional, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from udm.nn.attention import MultiHeadAttention

# all-MiniLM-L6-v2 (sentence-transformers; MiniLM, Wang et al., 2020): its config.json.
MINILM_L6 = dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                 intermediate_size=1536, max_positions=512, type_vocab_size=2,
                 layer_norm_eps=1e-12)


class BertOutputs(NamedTuple):
    """Outputs of `BertEncoder`.

    Attributes:
        hidden_states: L + 1 arrays [B, N, C]: index 0 is the embedding output, index l the
            output of Transformer block l (so [1] is the "first layer" of first-last-avg pooling,
            docs/whitening.md §3 P4, and [-1] the last layer).
        pooler_output: [B, C] `tanh(W h_[CLS] + b)`, BERT's next-sentence head (docs/whitening.md P2).
    """

    hidden_states: Tuple[chex.Array, ...]
    pooler_output: chex.Array

    @property
    def last_hidden_state(self) -> chex.Array:
        """[B, N, C] output of the last block."""
        return self.hidden_states[-1]


class BertLayer(nn.Module):
    """One post-LayerNorm BERT block.

    `h = LN(x + Attn(x))`, `y = LN(h + W_2 GELU(W_1 h))` with the exact (erf) GELU and
    standard 1/sqrt(d) attention over the valid keys (Vaswani et al., 2017; Devlin et al., 2019).

    Attributes:
        num_heads: attention heads H (must divide the width C).
        intermediate_size: hidden width of the feed-forward network.
        layer_norm_eps: epsilon of both LayerNorms.
    """

    num_heads: int
    intermediate_size: int
    layer_norm_eps: float = 1e-12

    @nn.compact
    def __call__(self, x: chex.Array, *, mask: chex.Array) -> chex.Array:
        """Applies the block.

        Args:
            x: [B, N, C] token features.
            mask: boolean [B, 1, N, N] (True = may attend).

        Returns:
            [B, N, C].
        """
        width = x.shape[-1]
        attn = MultiHeadAttention(num_heads=self.num_heads, scale="standard", name="attention")(
                x, mask=mask)
        h = nn.LayerNorm(epsilon=self.layer_norm_eps, name="attention_norm")(x + attn)
        y = nn.Dense(self.intermediate_size, name="intermediate")(h)
        y = nn.Dense(width, name="output")(nn.gelu(y, approximate=False))
        return nn.LayerNorm(epsilon=self.layer_norm_eps, name="output_norm")(h + y)


class BertEncoder(nn.Module):
    """BERT: learned word, position and segment embeddings, then L post-LayerNorm blocks.

    `h_0 = LN(E_word[t] + E_pos[0..N-1] + E_type[s])`, `h_l = Block_l(h_{l-1})` (see
    `BertLayer`), `pooler = tanh(W h_L[:, 0] + b)`. Padding enters only through the attention
    mask (padded keys are never attended), so the features of the valid tokens do not depend on
    how much padding follows them. Inference only: no dropout.
    `BertEncoder(**MINILM_L6)` is all-MiniLM-L6-v2's architecture.

    The attention is `udm.nn.attention.MultiHeadAttention` with the "standard" 1/sqrt(d) rule
    and a key-padding mask; its fused q/k/v kernel [C, 3, H, d] and output kernel [H, d, C]
    hold BERT's separate query/key/value and output matrices (`udm.sentence_encoder` maps them).

    Attributes:
        vocab_size: number of token ids V.
        hidden_size: model width C.
        num_layers: number of blocks L.
        num_heads: attention heads H.
        intermediate_size: feed-forward hidden width.
        max_positions: number of learned positions (longest input).
        type_vocab_size: number of segment ids.
        layer_norm_eps: LayerNorm epsilon (1e-12 in BERT).
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_positions", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"BertEncoder.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"BertEncoder.num_heads={self.num_heads} must divide "
                             f"hidden_size={self.hidden_size}")
        super().__post_init__()

    @nn.compact
    def __call__(
            self,
            input_ids: chex.Array,
            attention_mask: Optional[chex.Array] = None,
            token_type_ids: Optional[chex.Array] = None,
    ) -> BertOutputs:
        """Encodes a batch of token sequences.

        Args:
            input_ids: [B, N] int token ids in [0, vocab_size).
            attention_mask: [B, N] 1/True for tokens, 0/False for padding; None = no padding.
            token_type_ids: [B, N] segment ids in [0, type_vocab_size); None = all 0.

        Returns:
            `BertOutputs` with L + 1 hidden states [B, N, C] and the pooler output [B, C].
        """
        chex.assert_rank(input_ids, 2)
        b, n = input_ids.shape
        if n > self.max_positions:
            raise ValueError(f"BertEncoder input length {n} exceeds max_positions="
                             f"{self.max_positions}")
        if attention_mask is None:
            attention_mask = jnp.ones((b, n), bool)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((b, n), jnp.int32)
        chex.assert_shape([attention_mask, token_type_ids], (b, n))
        c = self.hidden_size
        h = (nn.Embed(self.vocab_size, c, name="word_embeddings")(input_ids)
             + nn.Embed(self.max_positions, c, name="position_embeddings")(
                    jnp.arange(n)[None, :])
             + nn.Embed(self.type_vocab_size, c, name="token_type_embeddings")(token_type_ids))
        h = nn.LayerNorm(epsilon=self.layer_norm_eps, name="embeddings_norm")(h)
        # Key-padding mask: every query (padding included) sees exactly the valid keys.
        mask = jnp.broadcast_to(attention_mask.astype(bool)[:, None, None, :], (b, 1, n, n))
        hidden_states = [h]
        for layer in range(self.num_layers):
            h = BertLayer(num_heads=self.num_heads, intermediate_size=self.intermediate_size,
                          layer_norm_eps=self.layer_norm_eps, name=f"layer_{layer}")(h, mask=mask)
            hidden_states.append(h)
        pooled = jnp.tanh(nn.Dense(c, name="pooler")(h[:, 0]))
        return BertOutputs(hidden_states=tuple(hidden_states), pooler_output=pooled)


def init_shapes(model: BertEncoder, length: int = 8) -> dict:
    """The parameter shapes of `model` (a pytree of `jax.ShapeDtypeStruct`), without allocating."""
    ids = jnp.zeros((1, length), jnp.int32)
    return jax.eval_shape(model.init, jax.random.key(0), ids)["params"]
