"""Device mesh and shardings: data parallelism by sharding the batch, not by hand.

One 1-D mesh over every device of every host, axis ``data``. The train state and the on-device data
sets are replicated; each step's batch of example indices (or, for a data set kept in host memory
or streamed, of images) is sharded along ``data``. Under ``jax.jit`` the losses then see the
global batch, and BatchNorm statistics and contrastive negatives cover all devices without
hand-written collectives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

if TYPE_CHECKING:
    from cl_ssl.data import augment, streaming

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D ``data`` mesh over the first ``num_devices`` devices (all devices when None)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(
                f"asked for a mesh of {num_devices} devices but {len(devices)} are available; "
                f"choose a number between 1 and {len(devices)}"
            )
        devices = devices[:num_devices]
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices
    )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding of arrays held whole on every device (state, on-device data sets)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding of arrays split along their leading (batch) axis over ``data``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replica_batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding of per-replica batches [R, B, ...]: every replica's B axis split over ``data``
    (``step.jit_replicated_step``)."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def global_replica_batch(mesh: jax.sharding.Mesh, batches: np.ndarray) -> jax.Array:
    """``global_batch`` of R replicas' batches [R, B, ...], identical on every process: a global
    array sharded by ``replica_batch_sharded``."""
    return global_batch(mesh, batches, replica_batch_sharded(mesh))


def global_batch(
    mesh: jax.sharding.Mesh, batch: np.ndarray, sharding: NamedSharding | None = None
) -> jax.Array:
    """Places a host array that every process holds whole as a batch-sharded global array.

    Args:
      mesh: the data mesh.
      batch: [B, ...], identical on every process (for example the example indices of one step,
        derived from the shared seed).
      sharding: how the array is laid out; default ``batch_sharded(mesh)``.

    Returns:
      A global jax.Array of shape [B, ...] sharded along ``data`` (or by ``sharding``); each
      process transfers only the rows that its own devices hold.
    """
    return jax.make_array_from_callback(
        batch.shape, sharding or batch_sharded(mesh), lambda index: batch[index]
    )


def _local_rows(sharding: jax.sharding.Sharding, shape: tuple[int, ...]) -> np.ndarray:
    """int [n], sorted: the rows of a batch-sharded global array [B, ...] that this process's
    devices hold."""
    positions = np.arange(shape[0])
    return np.unique(
        np.concatenate(
            [
                positions[index[0]]
                for index in sharding.addressable_devices_indices_map(shape).values()
            ]
        )
    )


def _assemble(
    sharding: jax.sharding.Sharding,
    shape: tuple[int, ...],
    local: np.ndarray,
    rows: np.ndarray,
    row_of: np.ndarray | None = None,
) -> jax.Array:
    """The global array [B, ...] whose rows ``local`` (int [n], sorted) are ``rows`` [n, ...], or
    with ``row_of`` (int [n]) ``rows[row_of]``."""
    positions = np.arange(shape[0])

    def shard(index):
        wanted = np.searchsorted(local, positions[index[0]])
        return rows[wanted if row_of is None else row_of[wanted]]

    return jax.make_array_from_callback(shape, sharding, shard)


def gather_batch(mesh: jax.sharding.Mesh, images: np.ndarray, indices: np.ndarray) -> jax.Array:
    """``images[indices]`` as a batch-sharded global array, read from host memory or streamed.

    Args:
      mesh: the data mesh.
      images: [N, ...] host array, whole on every process (a data set kept in host memory), or
        ``streaming.StreamedImages``, which decodes the rows asked for only.
      indices: int [B], identical on every process.

    Returns:
      A global jax.Array [B, ...] sharded along ``data``; each process reads (in one read) and
      transfers only the rows that its own devices hold.
    """
    shape = (len(indices), *images.shape[1:])
    sharding = batch_sharded(mesh)
    local = _local_rows(sharding, shape)
    # One read of the distinct examples (a replayed or padding row may repeat).
    examples, row_of = np.unique(indices[local], return_inverse=True)
    return _assemble(sharding, shape, local, images[examples], row_of)


def gather_with_crops(
    mesh: jax.sharding.Mesh,
    images: streaming.StreamedImages,
    indices: np.ndarray,
    uniforms: np.ndarray,
    views: Sequence[augment.ViewConfig],
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """``gather_batch`` of streamed images with every view's random resized crop of each row,
    taken from the full-resolution image on the host (``StreamedImages.read_with_crops``).

    Args:
      mesh: the data mesh.
      images: the streamed split.
      indices: int [B], identical on every process.
      uniforms: float32 [B, len(views), augment.CROP_UNIFORMS], identical on every process
        (``host_crop.crop_uniforms``).
      views: the views, with their crop sizes and scale ranges.

    Returns:
      (uint8 [B, *image_shape], one uint8 [B, s_v, s_v, C] per view), sharded along ``data``;
      each process reads (in one read) only the rows that its own devices hold.
    """
    sharding = batch_sharded(mesh)
    shape = (len(indices), *images.shape[1:])
    local = _local_rows(sharding, shape)
    read, crops = images.read_with_crops(indices[local], uniforms[local], views)
    return _assemble(sharding, shape, local, read), tuple(
        _assemble(sharding, (len(indices), *c.shape[1:]), local, c) for c in crops
    )


def put_replicated(mesh: jax.sharding.Mesh, tree):
    """Copies a pytree of host arrays whole onto every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
