"""A small CNN classifier: logits and the penultimate features that score generated images."""
from typing import Tuple

import flax.linen as nn
import jax


class CNN(nn.Module):
    """Conv(3x3) stack, the later convs with stride 2, then a ReLU feature layer and a linear head.

    Attributes:
        num_classes: K, the number of logits.
        channels: output channels of each conv; the first keeps resolution, the rest halve it.
        feature_dim: F, width of the penultimate (feature) layer.
    """

    num_classes: int
    channels: Tuple[int, ...] = (16, 32)
    feature_dim: int = 128

    @nn.compact
    def __call__(self, images: jax.Array) -> Tuple[jax.Array, jax.Array]:
        """Logits and features.

        Args:
            images: [B, H, W, C] in [-1, 1].

        Returns:
            (logits [B, K], features [B, F]).
        """
        x = images
        for i, channels in enumerate(self.channels):
            x = nn.relu(nn.Conv(channels, (3, 3), strides=1 if i == 0 else 2)(x))
        x = x.reshape((x.shape[0], -1))
        features = nn.relu(nn.Dense(self.feature_dim)(x))
        return nn.Dense(self.num_classes)(features), features
