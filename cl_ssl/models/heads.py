"""MLP projectors and predictors.

One module covers every head in the reference configurations (CaSSLe ``cassle/methods/*.py``
with the widths its ``bash_files/continual/**`` scripts set):

| head | hidden_dims | out_dim | batch_norm |
|---|---|---|---|
| SimCLR, MoCoV2+ projector | (2048,) | 256 / 128 | False |
| BYOL projector and predictor | (4096,) | 256 | True |
| SwAV projector | (2048,) | 128 | True |
| Barlow Twins, VICReg projector | (2048, 2048) | 2048 | True |

None of them ends with a BatchNorm: the Barlow Twins and VICReg projectors end with a plain
Linear (Barlow Twins standardises the outputs with a parameter-free batch norm inside its loss),
so `last_batch_norm` stays False for all of them; it exists for heads that do end with one (e.g.
SimSiam-style projectors).

Linear layers are initialised like PyTorch's `nn.Linear` (kernel kaiming_uniform(a=sqrt(5)),
i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))), because
the reference heads are PyTorch modules with default initialisation and the projector's initial
scale interacts with LARS's trust ratio. Every Linear keeps its bias, including those followed by
BatchNorm, as in the reference code. BatchNorm uses PyTorch's defaults (Flax momentum 0.9,
epsilon 1e-5); ``batch_norm_group`` = G > 0 computes its train-mode statistics per group of G
consecutive rows (`cl_ssl.models.resnet.GroupBatchNorm`, one GPU's rows in a DDP run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cl_ssl.models.resnet import batch_norm

__all__ = ["MLPHead", "torch_linear_bias_init", "torch_linear_kernel_init"]

torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
"""PyTorch `nn.Linear` weight init, kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))."""


def torch_linear_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch `nn.Linear` bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for input width fan_in."""
    bound = 1.0 / fan_in**0.5

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class MLPHead(nn.Module):
    """Projector / predictor: Linear -> [BN] -> ReLU (or GELU) -> ... -> Linear(out_dim) [-> BN].

    Attributes:
      hidden_dims: widths of the hidden layers, each Linear -> [BatchNorm] -> ReLU. Empty gives a
        single Linear.
      out_dim: width of the final Linear.
      batch_norm: BatchNorm after every hidden Linear.
      last_batch_norm: BatchNorm (with scale and shift) after the final Linear; False for every
        head of the reference configurations (table above).
      dtype: computation dtype; parameters stay float32 and the output is float32.
      batch_norm_group: 0 (BatchNorm over the whole batch) or G, train-mode BatchNorm per group
        of G consecutive rows; G must divide the batch.
      gelu: GELU (exact, PyTorch's ``nn.GELU``) after the hidden layers instead of ReLU.
      init_std: 0 for PyTorch's ``nn.Linear`` initialisation; s > 0 for kernels N(0, s^2) and
        zero biases (DINO heads' ``trunc_normal_(std=s)``, whose absolute bounds +-2 never bind
        at s = 0.02).
    """

    hidden_dims: Sequence[int]
    out_dim: int
    batch_norm: bool = False
    last_batch_norm: bool = False
    dtype: Any = jnp.float32
    batch_norm_group: int = 0
    gelu: bool = False
    init_std: float = 0.0

    def _dense(self, x: jax.Array, features: int, name: str) -> jax.Array:
        if self.init_std > 0:
            inits = dict(
                kernel_init=nn.initializers.normal(self.init_std),
                bias_init=nn.initializers.zeros,
            )
        else:
            inits = dict(
                kernel_init=torch_linear_kernel_init,
                bias_init=torch_linear_bias_init(x.shape[-1]),
            )
        return nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32, name=name, **inits)(x)

    def _bn(self, x: jax.Array, train: bool, name: str) -> jax.Array:
        return batch_norm(train, self.dtype, name, self.batch_norm_group)(x)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Features [B, D_in] -> float32 [B, out_dim].

        `train` selects batch statistics (and `batch_stats` updates, with
        `mutable=['batch_stats']`) versus running averages; it has no effect without BatchNorm.
        """
        x = jnp.asarray(x, self.dtype)
        for i, width in enumerate(self.hidden_dims):
            x = self._dense(x, width, f"linear{i}")
            if self.batch_norm:
                x = self._bn(x, train, f"bn{i}")
            x = nn.gelu(x, approximate=False) if self.gelu else nn.relu(x)
        x = self._dense(x, self.out_dim, f"linear{len(self.hidden_dims)}")
        if self.last_batch_norm:
            x = self._bn(x, train, f"bn{len(self.hidden_dims)}")
        return x.astype(jnp.float32)
