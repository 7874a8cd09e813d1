"""TokenDenoiser: the bidirectional Transformer x_0 predictor of the token diffusion processes."""
from typing import Callable, Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from udm.nn.attention import ATTENTION_SCALES, MultiHeadAttention
from udm.nn.embeddings import timestep_embedding
from udm.nn.transformer import rotary_embedding

# Time values are embedded on the DDPM scale 0..1000 when max_time is given: the sinusoidal
# frequencies of timestep_embedding span periods 2*pi..2*pi*10^4, so raw t in 0..T with a
# small T (the masking process has T = l) would leave most of the embedding constant in t.
_TIME_EMBED_RANGE = 1000.0


class TokenBlock(nn.Module):
    """One pre-LayerNorm Transformer block with rotary self-attention and residual dropout.

    `h = h + Drop(Attn(LN(h)))`, `h = h + Drop(W_2 gelu(W_1 LN(h)))`: the layer of
    `udm.nn.transformer.TransformerEncoder` (same sub-module names) with dropout on the two
    residual branches. The attention is bidirectional (no mask).

    Attributes:
        num_heads: heads H; the head dimension is the input width / H (even, for RoPE).
        mlp_dim: hidden width of the GELU MLP.
        dropout: dropout rate on the residual branches, active only with `train=True`.
        attention_scale: rule name in `udm.nn.attention.ATTENTION_SCALES`.
        p, n0: power-rule exponent and calibration length of the length-aware rules.
    """
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_scale: str = "standard"
    p: float = 0.5
    n0: float = 512.0

    @nn.compact
    def __call__(self, h: chex.Array, *, rope_fn: Callable, train: bool) -> chex.Array:
        """Applies the block.

        Args:
            h: [B, l, C] features.
            rope_fn: `(q, k) -> (q, k)` rotary positions on [B, l, H, C / H] queries and keys.
            train: enables dropout (needs the 'dropout' rng).

        Returns:
            [B, l, C] updated features.
        """
        width = h.shape[-1]
        y = nn.LayerNorm(name="attn_norm")(h)
        y = MultiHeadAttention(num_heads=self.num_heads, out_features=width,
                               scale=self.attention_scale, p=self.p, n0=self.n0, name="attn")(
                y, rope_fn=rope_fn)
        h = h + nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.LayerNorm(name="mlp_norm")(h)
        y = nn.Dense(self.mlp_dim, name="mlp_in")(y)
        y = nn.Dense(width, name="mlp_out")(nn.gelu(y))
        return h + nn.Dropout(self.dropout, deterministic=not train)(y)


def _check_token_range(tokens: chex.Array, input_vocab_size: int) -> None:
    # Only concrete ids can be checked; under jit an out-of-range id is a caller error (the
    # embedding lookup then returns NaN features, see TokenDenoiser.__call__).
    if isinstance(tokens, jax.core.Tracer):
        return
    values = np.asarray(tokens)
    if values.size and (values.min() < 0 or values.max() >= input_vocab_size):
        raise ValueError(f"tokens must be ids in [0, TokenDenoiser.input_vocab_size="
                         f"{input_vocab_size}), got values in [{values.min()}, {values.max()}]")


class TokenDenoiser(nn.Module):
    """Bidirectional Transformer predicting logits of x_0 from the corrupted tokens x_t and t.

    `h_0 = E[x_t] + MLP(emb(t))` (the time vector is added to every position),
    per block `h = h + Drop(Attn(LN(h)))`, `h = h + Drop(MLP(LN(h)))` with rotary positions
    and no causal mask (every position sees the whole sequence, as a masked LM), then
    `logits = W_out LN(h_depth)` with W_out and its bias zero-initialised, so the logits are
    exactly 0 (a uniform q(x_0 | x_t)) at initialisation, like the UNet's last convolution.
    `emb` is the sinusoidal `timestep_embedding` of `t * 1000 / max_time` (of t itself when
    max_time is None); `MLP` is Dense(width) -> GELU -> Dense(width).

    This is the x_0 predictor of the masking, edit and D3PM processes in `udm.processes`
    (docs/processes.md B4); for the masking process `input_vocab_size = V + 1` ([MASK] = V) and
    `output_vocab_size = V`. The blocks are those of `udm.nn.transformer.TransformerEncoder`
    (Vaswani et al., 2017, pre-LN as Xiong et al., 2020; RoPE, Su et al., 2021), with the
    attention logit scale named by `attention_scale` (docs/entropy_attention.md Part A).

    With `input_vocab_size=None` the model reads vectors [B, l, D] instead of ids (the latents
    of the encoding model, docs/processes.md (B5)) and `E[x_t]` becomes a linear map `W_in x_t`.

    Attributes:
        input_vocab_size: number of ids the model reads (V + 1 when the process has [MASK]);
            None for vector inputs.
        output_vocab_size: number of logits per position, V.
        width: model width C.
        depth: number of Transformer blocks.
        num_heads: attention heads H; must divide width, and width / H must be even (RoPE).
        mlp_ratio: hidden width of the block MLPs is `int(mlp_ratio * width)`.
        dropout: dropout rate on the residual branches, active only with `train=True`.
        attention_scale: rule name in `udm.nn.attention.ATTENTION_SCALES`.
        max_time: the process T; t is embedded as `t * 1000 / T`. None embeds t as given.
        attention_p, attention_n0: power-rule exponent and calibration length n0 of the
            length-aware attention scales.
        rope_base: wavelength base of RoPE.
    """
    input_vocab_size: Optional[int]
    output_vocab_size: int
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4
    dropout: float = 0.0
    attention_scale: str = "standard"
    max_time: Optional[float] = None
    attention_p: float = 0.5
    attention_n0: float = 512.0
    rope_base: float = 10000.0

    def __post_init__(self):
        # Field checks fail at construction, before any tracing, naming the field.
        names = ("output_vocab_size", "width", "depth", "num_heads") + (
            () if self.input_vocab_size is None else ("input_vocab_size",))
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"TokenDenoiser.{name} must be an int >= 1, got {value!r}")
        if self.width % self.num_heads:
            raise ValueError(f"TokenDenoiser.num_heads={self.num_heads} must divide "
                             f"TokenDenoiser.width={self.width}")
        if (self.width // self.num_heads) % 2:
            raise ValueError(f"TokenDenoiser.width / num_heads = {self.width // self.num_heads} "
                             f"must be even for rotary positions (width={self.width}, "
                             f"num_heads={self.num_heads})")
        if not self.mlp_ratio > 0 or int(self.mlp_ratio * self.width) < 1:
            raise ValueError(f"TokenDenoiser.mlp_ratio must give an MLP width >= 1, got "
                             f"mlp_ratio={self.mlp_ratio} with width={self.width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TokenDenoiser.dropout must be in [0, 1), got {self.dropout}")
        if self.attention_scale not in ATTENTION_SCALES:
            raise ValueError(f"TokenDenoiser.attention_scale must be one of "
                             f"{ATTENTION_SCALES.names()}, got {self.attention_scale!r}")
        if self.max_time is not None and not self.max_time > 0:
            raise ValueError(f"TokenDenoiser.max_time must be None or > 0, got {self.max_time}")
        if not self.attention_n0 > 1:
            raise ValueError(f"TokenDenoiser.attention_n0 must be > 1, got {self.attention_n0}")
        if not self.attention_p >= 0:
            raise ValueError(f"TokenDenoiser.attention_p must be >= 0, got {self.attention_p}")
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: chex.Array, t: chex.Array, *, train: bool = False,
                 return_features: bool = False):
        """Applies the network.

        Args:
            tokens: [B, l] integer ids x_t in [0, input_vocab_size). Concrete ids are
                range-checked; under jit an out-of-range id is a caller error (the embedding
                lookup fills it with NaN). With input_vocab_size=None: [B, l, D] vectors.
            t: [B] integer or float time values in [0, max_time] (any values if max_time is
                None).
            train: enables dropout, which then needs the 'dropout' rng.
            return_features: also return the features [B, l, width] after the final
                LayerNorm, on which the logits are a linear read-out.

        Returns:
            [B, l, output_vocab_size] float32 logits of x_0; with return_features, the pair
            (logits, features).
        """
        if self.input_vocab_size is None:
            chex.assert_rank(tokens, 3)
            if not jnp.issubdtype(tokens.dtype, jnp.floating):
                raise ValueError(f"with input_vocab_size=None the inputs are float vectors "
                                 f"[B, l, D], got dtype {tokens.dtype}")
        else:
            chex.assert_rank(tokens, 2)
            if not jnp.issubdtype(tokens.dtype, jnp.integer):
                raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
            _check_token_range(tokens, self.input_vocab_size)
        b, length = tokens.shape[:2]
        chex.assert_shape(t, (b,))

        t = jnp.asarray(t, jnp.float32)
        if self.max_time is not None:
            t = t * (_TIME_EMBED_RANGE / self.max_time)
        temb = timestep_embedding(t, self.width)
        temb = nn.Dense(self.width, name="time_in")(temb)
        temb = nn.Dense(self.width, name="time_out")(nn.gelu(temb))

        if self.input_vocab_size is None:
            h = nn.Dense(self.width, name="embed_in")(tokens.astype(jnp.float32))
        else:
            h = nn.Embed(self.input_vocab_size, self.width, name="embed")(tokens)
        # Explicit [B, 1, C]: a [B, C] vector must never broadcast silently against [B, l, C].
        h = h + temb.reshape(b, 1, self.width)

        positions = jnp.arange(length)

        def rope_fn(q, k):
            return (rotary_embedding(q, positions, base=self.rope_base),
                    rotary_embedding(k, positions, base=self.rope_base))

        for layer in range(self.depth):
            h = TokenBlock(num_heads=self.num_heads, mlp_dim=int(self.mlp_ratio * self.width),
                           dropout=self.dropout, attention_scale=self.attention_scale,
                           p=self.attention_p, n0=self.attention_n0, name=f"block_{layer}")(
                    h, rope_fn=rope_fn, train=train)
        h = nn.LayerNorm(name="final_norm")(h)
        logits = nn.Dense(self.output_vocab_size, kernel_init=nn.initializers.zeros,
                          name="logits")(h).astype(jnp.float32)
        return (logits, h) if return_features else logits

