"""ResNet backbones (He et al., CVPR 2016) in Flax Linen with torchvision's layout.

The networks reproduce torchvision's `resnet18` / `resnet50` without the final `fc` layer: the
output is the global-average-pooled feature vector. Two stems are available:

* `'cifar'`: conv 3x3, stride 1, padding `cifar_stem_padding`, no max-pool. CaSSLe / solo-learn
  use padding 2 (``cassle/methods/base.py``, ``solo/methods/base.py``), which gives 34x34 maps
  after the stem and a 5x5 final map on 32x32 inputs; Genifer uses padding 1 (final map 4x4).
* `'imagenet'`: conv 7x7, stride 2, padding 3, then max-pool 3x3, stride 2, padding 1.

Convolutions use PyTorch's explicit symmetric padding (not Flax's 'SAME', which pads
asymmetrically for stride 2), no bias before BatchNorm, and torchvision's initialisation
(kaiming-normal, fan-out, untruncated), except the CIFAR stem's convolution: the reference code
replaces torchvision's ``conv1`` by a fresh ``nn.Conv2d`` after building the network (CaSSLe
``cassle/methods/base.py`` l.171, POCON ``src/approach/sslModels.py`` l.62, Genifer
``genifer/model/backbones.py`` l.63), which keeps PyTorch's default U(+-1/sqrt(fan_in)).
BatchNorm uses PyTorch's defaults (Flax momentum 0.9, epsilon 1e-5; scale 1, shift 0) with
statistics in the `batch_stats` collection. One known difference from PyTorch remains: Flax
updates the running variance with the biased batch variance, PyTorch with the unbiased one
(factor n / (n - 1), n the rows times the map's pixels); it affects inference-mode outputs only
(evaluation, and frozen networks run in inference mode, such as POCON's, whose outputs are
training targets), and only slightly at realistic batch sizes.

``batch_norm_group`` = G > 0 computes BatchNorm's train-mode statistics per group of G consecutive
rows (`GroupBatchNorm`), as a PyTorch run under DistributedDataParallel without SyncBatchNorm does
on each GPU's rows: MoCo's and CCL's official code (``VDIGPKU/ContinualContrastiveLearning``
``train.py`` l.205-213, 8 GPUs sharing a batch of 256, 32 rows each). The groups are rows of the
global batch, not devices: with G = global batch / number of devices, a group is one device's
rows and needs no communication; any other G that divides the batch gives the same numbers on any
mesh. G = 0 normalises over the whole global batch (`flax.linen.BatchNorm`).

Parameter names follow torchvision (`conv1`, `bn1`, `layer1_0/conv1`, `layer2_0/downsample_conv`,
...) so that PyTorch checkpoints map one-to-one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "BACKBONES",
    "BasicBlock",
    "Bottleneck",
    "GroupBatchNorm",
    "ResNet",
    "batch_norm",
    "feature_dim",
    "make_backbone",
]

conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
"""torchvision's `kaiming_normal_(mode='fan_out', nonlinearity='relu')`: N(0, 2 / fan_out)."""

torch_conv_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
"""PyTorch's `nn.Conv2d` default, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in))."""

_EXPANSION = {"basic": 1, "bottleneck": 4}

BACKBONES: dict[str, dict[str, Any]] = {
    "resnet18": {"stage_sizes": (2, 2, 2, 2), "block": "basic", "width": 64},
    "resnet50": {"stage_sizes": (3, 4, 6, 3), "block": "bottleneck", "width": 64},
    "resnet_tiny": {"stage_sizes": (1, 1), "block": "basic", "width": 8},
}
"""Backbone names accepted by `make_backbone`, with their layout at width multiplier 1."""


def _conv(
    features: int,
    kernel: int,
    stride: int,
    padding: int,
    dtype: Any,
    name: str,
    kernel_init: nn.initializers.Initializer = conv_kernel_init,
) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        name=name,
    )


class GroupBatchNorm(nn.Module):
    """Train-mode BatchNorm over groups of ``group_size`` consecutive rows, each normalised with
    its own mean and biased variance, as PyTorch's ``nn.BatchNorm2d`` on each GPU of a
    DistributedDataParallel run without SyncBatchNorm.

    The running statistics move with the first group's statistics alone (PyTorch semantics,
    r <- 0.9 r + 0.1 s, the variance biased as in `flax.linen.BatchNorm`): DDP's default
    ``broadcast_buffers=True`` copies rank 0's buffers to every replica at each forward, so the
    running statistics a DDP run evaluates with are those of rank 0, the first rows of the batch.
    Variables, names and initialisation are `flax.linen.BatchNorm`'s (``scale``, ``bias``;
    ``batch_stats`` ``mean``, ``var``), so checkpoints are interchangeable. Inference mode is
    `flax.linen.BatchNorm` itself (`batch_norm`).
    """

    group_size: int
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, ..., C] -> [B, ..., C] in ``dtype``; ValueError unless G divides B."""
        rows, features = x.shape[0], x.shape[-1]
        # Initialisation (of any batch, e.g. the one row of cl_ssl.state.initial_state) creates
        # the variables and normalises the batch as one group; the running statistics stay.
        initializing = self.is_initializing()
        group_size = rows if initializing else self.group_size
        if group_size < 1 or rows % group_size:
            raise ValueError(
                f"BatchNorm in groups of model.batch_norm_group={self.group_size} rows got a "
                f"batch of {rows} rows; set --config.batch_size (and every batch the network "
                f"sees in train mode) to a multiple of {self.group_size}, or "
                "model.batch_norm_group to a divisor of it (0: the whole batch)"
            )
        ra_mean = self.variable(
            "batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (features,)
        )
        ra_var = self.variable(
            "batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (features,)
        )
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
        groups = x.reshape(rows // group_size, group_size, *x.shape[1:])
        groups = groups.astype(stats_dtype)
        axes = tuple(range(1, groups.ndim - 1))
        mean = jnp.mean(groups, axes, keepdims=True)
        var = jnp.maximum(0.0, jnp.mean(jnp.square(groups), axes, keepdims=True) - mean**2)
        if not initializing:
            first = (0,) * (groups.ndim - 1)
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean[first]
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var[first]
        y = (groups - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
        return jnp.asarray(y.reshape(x.shape), self.dtype)


def batch_norm(train: bool, dtype: Any, name: str, group_size: int = 0) -> nn.Module:
    """PyTorch-default BatchNorm (Flax momentum 0.9, epsilon 1e-5) named ``name``: over the whole
    batch (`flax.linen.BatchNorm`) for ``group_size`` 0 or in inference mode, else
    `GroupBatchNorm` in groups of ``group_size`` rows."""
    if train and group_size:
        return GroupBatchNorm(group_size, dtype=dtype, name=name)
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
    batch_norm_group: int = 0

    def _bn(self, train: bool, name: str) -> nn.Module:
        return batch_norm(train, self.dtype, name, self.batch_norm_group)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        residual = x
        y = _conv(self.planes, 3, self.stride, 1, self.dtype, "conv1")(x)
        y = nn.relu(self._bn(train, "bn1")(y))
        y = _conv(self.planes, 3, 1, 1, self.dtype, "conv2")(y)
        y = self._bn(train, "bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.planes:
            residual = _conv(self.planes, 1, self.stride, 0, self.dtype, "downsample_conv")(x)
            residual = self._bn(train, "downsample_bn")(residual)
        return nn.relu(y + residual)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (v1.5): 1x1 - BN - ReLU - 3x3 (stride) - BN - ReLU - 1x1 (x4) - BN.

    Input [B, H, W, C_in]; output [B, H', W', 4 * planes]; the stride sits on the 3x3 conv. The
    shortcut is a 1x1 conv (stride) + BN when the stride or the channel count changes.
    """

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    batch_norm_group: int = 0

    def _bn(self, train: bool, name: str) -> nn.Module:
        return batch_norm(train, self.dtype, name, self.batch_norm_group)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out_features = self.planes * _EXPANSION["bottleneck"]
        residual = x
        y = _conv(self.planes, 1, 1, 0, self.dtype, "conv1")(x)
        y = nn.relu(self._bn(train, "bn1")(y))
        y = _conv(self.planes, 3, self.stride, 1, self.dtype, "conv2")(y)
        y = nn.relu(self._bn(train, "bn2")(y))
        y = _conv(out_features, 1, 1, 0, self.dtype, "conv3")(y)
        y = self._bn(train, "bn3")(y)
        if self.stride != 1 or x.shape[-1] != out_features:
            residual = _conv(out_features, 1, self.stride, 0, self.dtype, "downsample_conv")(x)
            residual = self._bn(train, "downsample_bn")(residual)
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
      batch_norm_group: 0 (BatchNorm over the whole batch) or G, train-mode BatchNorm per group
        of G consecutive rows (`GroupBatchNorm`, the module docstring); G must divide the batch.
    """

    stage_sizes: Sequence[int]
    block: str
    width: int = 64
    stem: str = "cifar"
    cifar_stem_padding: int = 2
    dtype: Any = jnp.float32
    batch_norm_group: int = 0

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
            x = _conv(
                self.width,
                3,
                1,
                self.cifar_stem_padding,
                self.dtype,
                "conv1",
                kernel_init=torch_conv_default_init,
            )(x)
            x = nn.relu(batch_norm(train, self.dtype, "bn1", self.batch_norm_group)(x))
        elif self.stem == "imagenet":
            x = _conv(self.width, 7, 2, 3, self.dtype, "conv1")(x)
            x = nn.relu(batch_norm(train, self.dtype, "bn1", self.batch_norm_group)(x))
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
                    batch_norm_group=self.batch_norm_group,
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
    batch_norm_group: int = 0,
) -> ResNet:
    """Builds a named backbone.

    Args:
      name: 'resnet18', 'resnet50' or 'resnet_tiny' (stages (1, 1), width 8, basic blocks; for
        tests).
      stem: 'cifar' or 'imagenet'.
      width_multiplier: scales every width; the stem width becomes round(base * multiplier).
      cifar_stem_padding: 2 (CaSSLe) or 1 (Genifer); ignored by the ImageNet stem.
      dtype: computation dtype; parameters stay float32.
      batch_norm_group: 0, or the rows of each train-mode BatchNorm group (`GroupBatchNorm`).

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
        batch_norm_group=batch_norm_group,
    )


def feature_dim(name: str, width_multiplier: float = 1.0) -> int:
    """Output feature length of `make_backbone(name, width_multiplier=...)` (512 for resnet18)."""
    return make_backbone(name, width_multiplier=width_multiplier).feature_dim
