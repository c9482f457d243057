"""The student network of an SSL objective: backbone, projector and the optional extra heads."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cl_ssl.losses import l2_normalize
from cl_ssl.models.heads import torch_linear_kernel_init
from cl_ssl.models.resnet import pool


class Prototypes(nn.Module):
    """Scores against learnable prototypes: g_k n(z) . n(c_k) (SwAV, DINO's last layer).

    PyTorch's ``weight_norm(nn.Linear(D, K, bias=False))``: each prototype is a direction n(c_k)
    and a norm g_k. CaSSLe's SwAV learns g (``cassle/methods/swav.py`` l.59), which PyTorch starts
    at the norm of the initial c_k, about 1/sqrt(3) under ``nn.Linear``'s init: the scores, hence
    the effective softmax temperature and Sinkhorn epsilon, start scaled by about 0.58. With
    ``learnable_norm=False`` g is fixed at 1, as solo-learn's SwAV and DINO later fill and freeze
    ``weight_g``. Gradients flow through the normalisation of both the embedding and the
    prototypes.

    Attributes:
      num_prototypes: K.
      learnable_norm: learn g (param 'norm', float32 [1, K]: the shape of PyTorch's ``weight_g``
        transposed, two-dimensional as there, so that rules that exempt one-dimensional biases
        and norms from weight decay or LARS treat it as the reference does).
    """

    num_prototypes: int
    learnable_norm: bool = False

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """Embeddings [B, D] -> float32 scores [B, K] (cosine similarities, times g_k)."""
        kernel = self.param(
            "kernel", torch_linear_kernel_init, (z.shape[-1], self.num_prototypes), jnp.float32
        )
        z = l2_normalize(jnp.asarray(z, jnp.float32))
        scores = z @ l2_normalize(kernel, axis=0)
        if not self.learnable_norm:
            return scores
        norm = self.param("norm", lambda key: jnp.linalg.norm(kernel, axis=0, keepdims=True))
        return scores * norm


class SSLModel(nn.Module):
    """Backbone f, projector g and the heads some objectives add: z = g(f(x)).

    The notation of SimCLR (Chen et al., ICML 2020, Sec. 2.1).

    Attributes:
      backbone: maps images float [B, H, W, 3] to features float32 [B, F].
      projector: maps features [B, F] to projections float32 [B, D].
      predictor: optional head on the projection (BYOL, SimSiam, ISD): [B, D] -> [B, D'].
      prototypes: optional ``Prototypes`` scoring the projection (SwAV, DINO): [B, D] -> [B, K].
      feature_map_stage: optional i >= 1: the outputs also hold 'feature_map', the output of the
        backbone's stage i (``ResNet.stages``; Genifer distils and matches ResNet's layer3).
    """

    backbone: nn.Module
    projector: nn.Module
    predictor: nn.Module | None = None
    prototypes: nn.Module | None = None
    feature_map_stage: int | None = None

    def __call__(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
        """``project``'s outputs plus 'prediction' [B, D'] when the model has a predictor."""
        out = self.project(images, train)
        if self.predictor is not None:
            out["prediction"] = self.predictor(out["projection"], train=train)
        return out

    def project(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
        """{'features': [B, F], 'projection': [B, D]} and, with prototypes, 'scores' [B, K], with
        ``feature_map_stage``, 'feature_map' [B, H_i, W_i, C_i].

        This is the momentum (EMA) network's forward: it needs no predictor parameters.
        """
        out = {}
        if self.feature_map_stage is None:
            features = self.backbone(images, train=train)
        else:
            maps = self.backbone.stages(images, train=train)
            features, out["feature_map"] = pool(maps[-1]), maps[self.feature_map_stage - 1]
        out.update(features=features, projection=self.projector(features, train=train))
        if self.prototypes is not None:
            out["scores"] = self.prototypes(out["projection"])
        return out

    def features(self, images: jax.Array) -> jax.Array:
        """Frozen backbone features for evaluation (BatchNorm in inference mode): [B, F] float32."""
        return self.backbone(images, train=False)
