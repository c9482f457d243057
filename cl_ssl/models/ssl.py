"""The student network of an SSL objective: a backbone followed by a projector."""

from __future__ import annotations

import flax.linen as nn
import jax


class SSLModel(nn.Module):
    """Backbone f and projector g (METHODS.md 0.3: z = g(f(x))).

    Attributes:
      backbone: maps images float [B, H, W, 3] to features float32 [B, F].
      projector: maps features [B, F] to projections float32 [B, D].
    """

    backbone: nn.Module
    projector: nn.Module

    def __call__(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
        """Returns {'features': [B, F], 'projection': [B, D]}, both float32."""
        features = self.backbone(images, train=train)
        return {"features": features, "projection": self.projector(features, train=train)}

    def features(self, images: jax.Array) -> jax.Array:
        """Frozen backbone features for evaluation (BatchNorm in inference mode): [B, F] float32."""
        return self.backbone(images, train=False)
