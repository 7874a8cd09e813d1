"""The DDPM U-Net: residual blocks with a time embedding, self-attention, skip concatenation."""
import math
from typing import Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from udm.nn.attention import ATTENTION_SCALES, SelfAttention
from udm.nn.embeddings import timestep_embedding

# The DDPM reference initialiser (variance scaling, fan_avg, uniform) for every kernel that is
# not deliberately zero-initialised.
_default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def count_params(params) -> int:
    """Counts the scalars in a parameter pytree.

    Args:
        params: pytree of arrays, or of `jax.ShapeDtypeStruct` (e.g. from `jax.eval_shape`).

    Returns:
        The total number of scalars, as a Python int.
    """
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


class ResBlock(nn.Module):
    """Residual block `x -> skip(x) + conv(drop(act(GN(conv(act(GN(x))) + W temb))))`.

    The second convolution is zero-initialised, so the block starts as its skip path
    (identity when the width is unchanged, a 1x1 convolution otherwise).

    Attributes:
        out_channels: output width.
        num_groups: GroupNorm groups.
        dropout: dropout rate before the second convolution.
    """
    out_channels: int
    num_groups: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: chex.Array, temb: chex.Array, *, train: bool) -> chex.Array:
        """Applies the block.

        Args:
            x: [B, H, W, C_in] features.
            temb: [B, E] time embedding (before the non-linearity).
            train: enables dropout (needs the 'dropout' rng).

        Returns:
            [B, H, W, out_channels].
        """
        b = x.shape[0]
        h = nn.swish(nn.GroupNorm(num_groups=self.num_groups)(x))
        h = nn.Conv(self.out_channels, (3, 3), kernel_init=_default_init)(h)
        t = nn.Dense(self.out_channels, kernel_init=_default_init)(nn.swish(temb))
        # Explicit [B, 1, 1, C]: a [B, C] array must never broadcast silently against [B, H, W, C].
        h = h + t.reshape(b, 1, 1, self.out_channels)
        h = nn.swish(nn.GroupNorm(num_groups=self.num_groups)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), kernel_init=_default_init, name="skip")(x)
        return x + h


class UNet(nn.Module):
    """The DDPM U-Net (Ho et al., 2020, appendix B) predicting a map the size of its input.

    Down path: a 3x3 input convolution, then per level `num_res_blocks` residual blocks
    (each followed by self-attention at the `attention_resolutions`) and a stride-2 3x3
    convolution between levels. Middle: residual block, self-attention, residual block.
    Up path: per level `num_res_blocks + 1` residual blocks, each taking the concatenation
    of the current features with one stored down-path activation, then nearest-neighbour
    upsampling and a 3x3 convolution between levels. Output: GroupNorm, swish and a
    zero-initialised 3x3 convolution, so the network outputs exactly zero at initialisation.

    Attributes:
        channels: base width; level i has width `channels * channel_mults[i]`.
        channel_mults: width multiplier per resolution level; the spatial size halves
            between consecutive levels.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: spatial sizes (feature-map height) after whose residual
            blocks self-attention is applied; the middle always has one attention block.
        num_heads: attention heads.
        dropout: dropout rate inside the residual blocks, active only with `train=True`.
        num_groups: GroupNorm groups; must divide every channel count.
        out_channels: output channels; None means the input's channel count.
        time_embed_dim: width of the time embedding; None means `4 * channels`.
        attention_scale: name of the attention logit-scale rule (see ATTENTION_SCALES).
        num_classes: None (default): an unconditional network, called as `(x, t)`. An int C:
            a class-conditional one, called as `(x, t, labels)` with int labels [B] in [0, C],
            where the value C is the null label (no class: the unconditional branch that
            classifier-free guidance needs). A learned embedding with C + 1 rows, of the time
            embedding's width, is added to the time embedding after its MLP, so every residual
            block sees the class through the projection it already makes of swish(temb)
            (as in Dhariwal & Nichol's guided-diffusion U-Net). The embedding is
            zero-initialised: at initialisation every label, the null one included, gives the
            network the unconditional model's parameters and outputs. With num_classes None no
            parameter is added and nothing else changes.
    """
    channels: int = 32
    channel_mults: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    attention_resolutions: Sequence[int] = (4,)
    num_heads: int = 1
    dropout: float = 0.0
    num_groups: int = 8
    out_channels: Optional[int] = None
    time_embed_dim: Optional[int] = None
    attention_scale: str = "standard"
    num_classes: Optional[int] = None

    def __post_init__(self):
        # Field checks that need no input shape fail at construction, naming the field.
        if self.channels < 1:
            raise ValueError(f"UNet.channels must be >= 1, got {self.channels}")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(
                    f"UNet.channel_mults must be a non-empty sequence of positive ints, "
                    f"got {tuple(self.channel_mults)}")
        if self.num_res_blocks < 1:
            raise ValueError(f"UNet.num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNet.dropout must be in [0, 1), got {self.dropout}")
        widths = sorted({self.channels * m for m in self.channel_mults} | {self.channels})
        if self.num_groups < 1 or any(w % self.num_groups for w in widths):
            raise ValueError(
                    f"UNet.num_groups={self.num_groups} must divide every channel count "
                    f"(channels * channel_mults = {widths})")
        if self.num_heads < 1 or any(w % self.num_heads for w in widths):
            raise ValueError(
                    f"UNet.num_heads={self.num_heads} must divide every channel count "
                    f"(channels * channel_mults = {widths})")
        if self.time_embed_dim is not None and self.time_embed_dim < 1:
            raise ValueError(f"UNet.time_embed_dim must be >= 1, got {self.time_embed_dim}")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"UNet.out_channels must be >= 1, got {self.out_channels}")
        if self.attention_scale not in ATTENTION_SCALES:
            raise ValueError(
                    f"UNet.attention_scale must be one of {ATTENTION_SCALES.names()}, "
                    f"got {self.attention_scale!r}")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or
                                             not isinstance(self.num_classes, int) or
                                             self.num_classes < 1):
            raise ValueError(f"UNet.num_classes must be None or an int >= 1, got "
                             f"{self.num_classes!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: chex.Array, t: chex.Array, labels: Optional[chex.Array] = None, *,
                 train: bool = False, return_features: bool = False):
        """Applies the network.

        Args:
            x: [B, H, W, C] float32 input; H and W divisible by 2**(len(channel_mults) - 1).
            t: [B] integer or float time values, embedded as given (e.g. 1..1000).
            labels: only with num_classes set, and then required: int [B] class labels in
                [0, num_classes], num_classes being the null label (pass it explicitly for the
                unconditional branch). Values are not range-checked (they may be traced): out
                of range, jnp.take fills the embedding with NaN.
            train: enables dropout, which then needs the 'dropout' rng.
            return_features: also return the last features [B, H, W, channels] (after the
                final GroupNorm and swish), on which udm.variance_heads puts its heads.

        Returns:
            [B, H, W, out_channels] (out_channels defaults to C); with return_features, the
            pair (output, features).
        """
        chex.assert_rank(x, 4)
        b, height, width, in_channels = x.shape
        chex.assert_shape(t, (b,))
        factor = 2 ** (len(self.channel_mults) - 1)
        if height % factor or width % factor:
            raise ValueError(
                    f"input H and W must be divisible by 2**(len(UNet.channel_mults) - 1) = "
                    f"{factor} (channel_mults={tuple(self.channel_mults)}), got H={height}, W={width}")
        if self.num_classes is None and labels is not None:
            raise ValueError("labels were given to an unconditional UNet (num_classes=None); set "
                             "UNet.num_classes to train a class-conditional network")
        if self.num_classes is not None:
            if labels is None:
                raise ValueError(
                        f"a class-conditional UNet (num_classes={self.num_classes}) needs labels "
                        f"[B]; pass the null label {self.num_classes} for the unconditional branch")
            chex.assert_shape(labels, (b,))
            if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
                raise ValueError(f"labels must be integers, got dtype {jnp.asarray(labels).dtype}")
        out_channels = self.out_channels or in_channels
        embed_dim = self.time_embed_dim or 4 * self.channels

        # Every residual block adds its own projection of swish(temb).
        temb = timestep_embedding(t, self.channels)
        temb = nn.Dense(embed_dim, kernel_init=_default_init)(temb)
        temb = nn.Dense(embed_dim, kernel_init=_default_init)(nn.swish(temb))
        if self.num_classes is not None:
            # Row num_classes is the null label. Explicitly named, so the automatic names (and
            # hence the init RNG streams) of every other submodule are those of num_classes=None.
            temb = temb + nn.Embed(self.num_classes + 1, embed_dim,
                                   embedding_init=nn.initializers.zeros,
                                   name="label_embedding")(labels)

        def res_block(h, mult):
            return ResBlock(self.channels * mult, num_groups=self.num_groups, dropout=self.dropout)(
                    h, temb, train=train)

        def attention(h):
            return SelfAttention(
                    num_heads=self.num_heads, num_groups=self.num_groups, scale=self.attention_scale)(h)

        h = nn.Conv(self.channels, (3, 3), kernel_init=_default_init)(x)
        skips = [h]
        last = len(self.channel_mults) - 1
        for level, mult in enumerate(self.channel_mults):
            for _ in range(self.num_res_blocks):
                h = res_block(h, mult)
                if h.shape[1] in self.attention_resolutions:
                    h = attention(h)
                skips.append(h)
            if level != last:
                # TF-style 'SAME' padding: on even sizes a stride-2 conv pads one row/column at the end.
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), kernel_init=_default_init)(h)
                skips.append(h)

        h = res_block(h, self.channel_mults[-1])
        h = attention(h)
        h = res_block(h, self.channel_mults[-1])

        for level in reversed(range(len(self.channel_mults))):
            for _ in range(self.num_res_blocks + 1):
                h = res_block(jnp.concatenate([h, skips.pop()], axis=-1), self.channel_mults[level])
                if h.shape[1] in self.attention_resolutions:
                    h = attention(h)
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
                h = nn.Conv(h.shape[-1], (3, 3), kernel_init=_default_init)(h)
        assert not skips, "every down-path activation is consumed exactly once"

        h = nn.swish(nn.GroupNorm(num_groups=self.num_groups)(h))
        out = nn.Conv(out_channels, (3, 3), kernel_init=nn.initializers.zeros)(h)
        return (out, h) if return_features else out
