"""The NPR-DPM / SN-DPM variance head, on the last features of the frozen mean network."""
from typing import Any

import flax.linen as nn

Array = Any


class VarianceHead(nn.Module):
    """conv3x3 -> swish -> zero-initialised conv3x3 on the mean network's last features.

    Attributes:
        out_channels: channels of the data (one variance per coordinate).
        width: hidden width.
    """
    out_channels: int
    width: int = 32

    @nn.compact
    def __call__(self, features: Array) -> Array:
        """[B, H, W, C_features] -> [B, H, W, out_channels] (exactly 0 at initialisation)."""
        h = nn.swish(nn.Conv(self.width, (3, 3))(features))
        return nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros)(h)
