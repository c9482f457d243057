"""What the train step reads: the training split on the devices, and one step's batch."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainData:
    """The training split as the step sees it; every row array is indexed by example id.

    Attributes:
      images: uint8 [N, H, W, C], the whole split on every device; or, for a data set kept in host
        memory, uint8 [B, H, W, C], this step's batch, sharded over the devices.
      labels: int32 [N], the label the learner may use, -1 where it has none (``labels.fraction``).
      classes: int32 [N], the data set's class of every example, whether or not the learner sees
        it; read only by class-balanced exemplar selection, which is defined by classes.
      tasks: int32 [N], the task each example belongs to.
      probe_ids: int32 [B], this step's examples of the online probe (``eval.online``), sharded
        over the devices; None without one.
      probe_images: uint8 [B, H, W, C], their images, for a data set kept in host memory; None
        otherwise.
      crops: for a streamed data set cropped on the host (``dataset.host_crop``), one uint8
        [B, s_v, s_v, C] per view: the random resized crop of each image of this step's batch,
        taken from the full-resolution image, sharded over the devices; None otherwise.
      on_device: whether ``images`` is the whole split (True) or this step's batch (static).
    """

    images: jax.Array
    labels: jax.Array
    classes: jax.Array
    tasks: jax.Array
    probe_ids: jax.Array | None = None
    probe_images: jax.Array | None = None
    crops: tuple[jax.Array, ...] | None = None
    on_device: bool = flax.struct.field(pytree_node=False, default=True)


@flax.struct.dataclass
class Batch:
    """One step's examples, after a strategy may have joined its own (a replay sub-batch).

    Attributes:
      images: uint8 [B, H, W, C], not yet augmented.
      labels: int32 [B], -1 where the learner has no label.
      ids: int32 [B], the examples' rows in the training split.
      tasks: int32 [B], the task each example comes from.
      valid: bool [B], False for padding rows that must not count (a replay draw from a memory
        that holds nothing to draw yet).
      slots: int32 [B], the memory slot each row was drawn from (``cl_ssl.memory.Memory``), -1
        for rows that come from no memory (the step's own); None: no row does.
    """

    images: jax.Array
    labels: jax.Array
    ids: jax.Array
    tasks: jax.Array
    valid: jax.Array
    slots: jax.Array | None = None

    @property
    def size(self) -> int:
        return self.ids.shape[0]


def current_batch(data: TrainData, ids: jax.Array) -> Batch:
    """The batch of examples ``ids`` int32 [B] of ``data``: images gathered on the device (or the
    step's batch as given, for data in host memory), labels and tasks looked up."""
    images = jnp.take(data.images, ids, axis=0) if data.on_device else data.images
    return Batch(
        images=images,
        labels=jnp.take(data.labels, ids),
        ids=ids,
        tasks=jnp.take(data.tasks, ids),
        valid=jnp.ones(ids.shape, bool),
    )


def probe_images(data: TrainData) -> jax.Array:
    """uint8 [B, H, W, C]: the online probe's images of this step (``data.probe_ids``)."""
    return jnp.take(data.images, data.probe_ids, axis=0) if data.on_device else data.probe_images


def with_slots(batch: Batch) -> Batch:
    """``batch`` with ``slots`` -1 (no memory slot) for every row when it has none."""
    if batch.slots is not None:
        return batch
    return batch.replace(slots=jnp.full(batch.ids.shape, -1, jnp.int32))


def join(a: Batch, b: Batch) -> Batch:
    """The rows of ``a`` followed by those of ``b``; when either has ``slots``, rows without
    one get -1."""
    if (a.slots is None) != (b.slots is None):
        a, b = with_slots(a), with_slots(b)
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)
