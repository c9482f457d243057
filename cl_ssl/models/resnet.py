"""ResNet backbones (He et al., CVPR 2016) in Flax Linen with torchvision's layout.

The networks reproduce torchvision's `resnet18` / `resnet50` without the final `fc` layer: the
output is the global-average-pooled feature vector. Two stems are available:

* `'cifar'`: conv 3x3, stride 1, padding `cifar_stem_padding`, no max-pool. CaSSLe / solo-learn
  use padding 2 (``cassle/methods/base.py``, ``solo/methods/base.py``), which gives 34x34 maps
  after the stem and a 5x5 final map on 32x32 inputs; Genifer uses padding 1 (final map 4x4).
* `'imagenet'`: conv 7x7, stride 2, padding 3, then max-pool 3x3, stride 2, padding 1.

Convolutions use PyTorch's explicit symmetric padding (not Flax's 'SAME', which pads
asymmetrically for stride 2), no bias before BatchNorm, and torchvision's initialisation
(kaiming-normal, fan-out, untruncated). BatchNorm uses PyTorch's defaults (Flax momentum 0.9,
epsilon 1e-5; scale 1, shift 0) with statistics in the `batch_stats` collection. One known
difference from PyTorch remains: Flax updates the running variance with the biased batch
variance, PyTorch with the unbiased one (factor n / (n - 1)); it only affects evaluation-mode
outputs, and only slightly at realistic batch sizes.

Parameter names follow torchvision (`conv1`, `bn1`, `layer1_0/conv1`, `layer2_0/downsample_conv`,
...) so that PyTorch checkpoints map one-to-one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["BACKBONES", "BasicBlock", "Bottleneck", "ResNet", "feature_dim", "make_backbone"]

conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
"""torchvision's `kaiming_normal_(mode='fan_out', nonlinearity='relu')`: N(0, 2 / fan_out)."""

_EXPANSION = {"basic": 1, "bottleneck": 4}

BACKBONES: dict[str, dict[str, Any]] = {
    "resnet18": {"stage_sizes": (2, 2, 2, 2), "block": "basic", "width": 64},
    "resnet50": {"stage_sizes": (3, 4, 6, 3), "block": "bottleneck", "width": 64},
    "resnet_tiny": {"stage_sizes": (1, 1), "block": "basic", "width": 8},
}
"""Backbone names accepted by `make_backbone`, with their layout at width multiplier 1."""


def _conv(features: int, kernel: int, stride: int, padding: int, dtype: Any, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=conv_kernel_init,
        name=name,
    )


def _batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class BasicBlock(nn.Module):
    """torchvision BasicBlock: 3x3 conv (stride) - BN - ReLU - 3x3 conv - BN, + shortcut, ReLU.

    Input [B, H, W, C_in]; output [B, H', W', planes] with H' = floor((H - 1) / stride) + 1.
    The shortcut is a 1x1 conv (stride) + BN when the stride or the channel count changes.
    """

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        residual = x
        y = _conv(self.planes, 3, self.stride, 1, self.dtype, "conv1")(x)
        y = nn.relu(_batch_norm(train, self.dtype, "bn1")(y))
        y = _conv(self.planes, 3, 1, 1, self.dtype, "conv2")(y)
        y = _batch_norm(train, self.dtype, "bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.planes:
            residual = _conv(self.planes, 1, self.stride, 0, self.dtype, "downsample_conv")(x)
            residual = _batch_norm(train, self.dtype, "downsample_bn")(residual)
        return nn.relu(y + residual)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (v1.5): 1x1 - BN - ReLU - 3x3 (stride) - BN - ReLU - 1x1 (x4) - BN.

    Input [B, H, W, C_in]; output [B, H', W', 4 * planes]; the stride sits on the 3x3 conv. The
    shortcut is a 1x1 conv (stride) + BN when the stride or the channel count changes.
    """

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out_features = self.planes * _EXPANSION["bottleneck"]
        residual = x
        y = _conv(self.planes, 1, 1, 0, self.dtype, "conv1")(x)
        y = nn.relu(_batch_norm(train, self.dtype, "bn1")(y))
        y = _conv(self.planes, 3, self.stride, 1, self.dtype, "conv2")(y)
        y = nn.relu(_batch_norm(train, self.dtype, "bn2")(y))
        y = _conv(out_features, 1, 1, 0, self.dtype, "conv3")(y)
        y = _batch_norm(train, self.dtype, "bn3")(y)
        if self.stride != 1 or x.shape[-1] != out_features:
            residual = _conv(out_features, 1, self.stride, 0, self.dtype, "downsample_conv")(x)
            residual = _batch_norm(train, self.dtype, "downsample_bn")(residual)
        return nn.relu(y + residual)


class ResNet(nn.Module):
    """ResNet feature extractor (torchvision layout, `fc` removed, zero_init_residual False).

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3) for ResNet-50.
        Stage i has width `width * 2**i` (times 4 at the output of bottleneck blocks); every stage
        after the first starts with a stride-2 block.
      block: 'basic' or 'bottleneck'.
      width: channels of the stem and of the first stage (64 in torchvision).
      stem: 'cifar' (3x3 stride 1, padding `cifar_stem_padding`, no max-pool) or 'imagenet'
        (7x7 stride 2 padding 3, then 3x3 stride-2 max-pool with padding 1).
      cifar_stem_padding: padding of the CIFAR stem conv: 2 for CaSSLe (5x5 final map on 32x32
        inputs), 1 for Genifer (4x4).
      dtype: computation dtype (e.g. jnp.bfloat16 for mixed precision). Parameters and BatchNorm
        statistics stay float32 and the returned features are float32.
    """

    stage_sizes: Sequence[int]
    block: str
    width: int = 64
    stem: str = "cifar"
    cifar_stem_padding: int = 2
    dtype: Any = jnp.float32

    @property
    def feature_dim(self) -> int:
        """Length of the output feature vector: width * 2**(stages - 1) * expansion."""
        return self.width * 2 ** (len(self.stage_sizes) - 1) * _EXPANSION[self.block]

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Images [B, H, W, 3] (any float dtype; normalised by the caller) -> features.

        Args:
          x: float images, NHWC.
          train: True uses batch statistics in BatchNorm and updates `batch_stats` (apply with
            `mutable=['batch_stats']`); False uses the running averages.

        Returns:
          float32 [B, feature_dim], the global average pool of the last stage.
        """
        return pool(self.stages(x, train)[-1])

    @nn.compact
    def stages(self, x: jax.Array, train: bool) -> list[jax.Array]:
        """The output of every stage, [B, H_i, W_i, C_i] each in the compute dtype (torchvision's
        ``layer1`` .. ``layer4``); `x` and `train` as in ``__call__``."""
        if self.block not in _EXPANSION:
            raise ValueError(f"block must be one of {sorted(_EXPANSION)}, got {self.block!r}")
        block_cls = BasicBlock if self.block == "basic" else Bottleneck
        x = jnp.asarray(x, self.dtype)
        if self.stem == "cifar":
            x = _conv(self.width, 3, 1, self.cifar_stem_padding, self.dtype, "conv1")(x)
            x = nn.relu(_batch_norm(train, self.dtype, "bn1")(x))
        elif self.stem == "imagenet":
            x = _conv(self.width, 7, 2, 3, self.dtype, "conv1")(x)
            x = nn.relu(_batch_norm(train, self.dtype, "bn1")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")
        outputs = []
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = block_cls(
                    planes=self.width * 2**i,
                    stride=stride,
                    dtype=self.dtype,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
            outputs.append(x)
        return outputs


FEATURE_MAP_STAGE = 3
"""ResNet's layer3, the stage whose output Genifer matches and distils ("stage4" in its naming)."""


def feature_map_stage(backbone: ResNet, stage: int | None, field: str) -> int:
    """The 1-based stage ``stage`` of ``backbone``, or unset (None) layer3, or the last stage of a
    shallower backbone; ValueError naming ``field`` for a stage the backbone does not have."""
    num_stages = len(backbone.stage_sizes)
    chosen = min(FEATURE_MAP_STAGE, num_stages) if stage is None else stage
    if not 1 <= chosen <= num_stages:
        raise ValueError(
            f"{field}={stage}, but the backbone has {num_stages} stages; set it in "
            f"[1, {num_stages}], or leave it unset for layer3"
        )
    return chosen


def pool(feature_map: jax.Array) -> jax.Array:
    """Global average pool: [B, H, W, C] -> float32 [B, C]."""
    return jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2))


def _check_name(name: str) -> dict[str, Any]:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid names: {sorted(BACKBONES)}")
    return BACKBONES[name]


def _scaled_width(base_width: int, width_multiplier: float) -> int:
    width = round(base_width * width_multiplier)
    if width < 1:
        raise ValueError(f"width_multiplier {width_multiplier} leaves no channels")
    return width


def make_backbone(
    name: str,
    *,
    stem: str = "cifar",
    width_multiplier: float = 1.0,
    cifar_stem_padding: int = 2,
    dtype: Any = jnp.float32,
) -> ResNet:
    """Builds a named backbone.

    Args:
      name: 'resnet18', 'resnet50' or 'resnet_tiny' (stages (1, 1), width 8, basic blocks; for
        tests).
      stem: 'cifar' or 'imagenet'.
      width_multiplier: scales every width; the stem width becomes round(base * multiplier).
      cifar_stem_padding: 2 (CaSSLe) or 1 (Genifer); ignored by the ImageNet stem.
      dtype: computation dtype; parameters stay float32.

    Raises:
      ValueError: for an unknown name, listing the valid ones.
    """
    spec = _check_name(name)
    return ResNet(
        stage_sizes=spec["stage_sizes"],
        block=spec["block"],
        width=_scaled_width(spec["width"], width_multiplier),
        stem=stem,
        cifar_stem_padding=cifar_stem_padding,
        dtype=dtype,
    )


def feature_dim(name: str, width_multiplier: float = 1.0) -> int:
    """Output feature length of `make_backbone(name, width_multiplier=...)` (512 for resnet18)."""
    return make_backbone(name, width_multiplier=width_multiplier).feature_dim
