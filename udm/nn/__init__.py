"""Flax layers: time embeddings, (entropy-aware) attention and the DDPM U-Net."""
from udm.nn.attention import (ATTENTION_SCALES, MultiHeadAttention, SelfAttention, attention,
                              attention_weights, dot_product_attention)
from udm.nn.embeddings import timestep_embedding
from udm.nn.transformer import TransformerEncoder, rotary_embedding
from udm.nn.unet import UNet, count_params

__all__ = [
    "ATTENTION_SCALES",
    "MultiHeadAttention",
    "SelfAttention",
    "TransformerEncoder",
    "UNet",
    "attention",
    "attention_weights",
    "count_params",
    "dot_product_attention",
    "rotary_embedding",
    "timestep_embedding",
]
