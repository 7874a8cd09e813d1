"""Flax layers: time embeddings, (entropy-aware) attention, the DDPM U-Net, the TokenDenoiser, a
BERT encoder (MiniLM) and the variance head."""
from udm.nn.attention import (ATTENTION_SCALES, MultiHeadAttention, SelfAttention, attention,
                              attention_weights, dot_product_attention)
from udm.nn.bert import BertEncoder
from udm.nn.embeddings import timestep_embedding
from udm.nn.heads import VarianceHead
from udm.nn.token_model import TokenDenoiser
from udm.nn.transformer import TransformerEncoder, rotary_embedding
from udm.nn.unet import UNet, count_params

__all__ = [
    "ATTENTION_SCALES",
    "BertEncoder",
    "MultiHeadAttention",
    "SelfAttention",
    "TokenDenoiser",
    "TransformerEncoder",
    "UNet",
    "VarianceHead",
    "attention",
    "attention_weights",
    "count_params",
    "dot_product_attention",
    "rotary_embedding",
    "timestep_embedding",
]
