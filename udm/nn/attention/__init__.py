"""Multi-head softmax attention with a length-aware logit scale (docs/entropy_attention.md Part A), and Flax blocks.

scales.py: the rules lambda(n, d) and their registry; functional.py: attention as pure
functions; layers.py: the Flax modules.
"""
from udm.nn.attention.functional import attention, attention_weights, dot_product_attention
from udm.nn.attention.layers import MultiHeadAttention, SelfAttention
from udm.nn.attention.scales import (ATTENTION_SCALES, ScaleFn, ScaleRule,
                                     entropy_invariant_scale, entropy_normalized_scale,
                                     logit_scale, power_scale, ssmax_scale, standard_scale,
                                     valid_key_counts)

__all__ = [
        "ATTENTION_SCALES",
        "MultiHeadAttention",
        "ScaleFn",
        "ScaleRule",
        "SelfAttention",
        "attention",
        "attention_weights",
        "dot_product_attention",
        "entropy_invariant_scale",
        "entropy_normalized_scale",
        "logit_scale",
        "power_scale",
        "ssmax_scale",
        "standard_scale",
        "valid_key_counts",
]
