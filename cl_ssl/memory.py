"""Fixed-shape FIFO queues as pytrees with pure updates (MoCo keys, SwAV features, ISD anchors).

A queue keeps its shape for the whole run, so the train step compiles once however full it is
(ARCHITECTURE.md rule 3). It is a ring buffer: ``push`` overwrites the oldest rows.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
from jax import lax

from cl_ssl.losses import l2_normalize


@flax.struct.dataclass
class Queue:
    """A FIFO of ``capacity`` rows.

    Attributes:
      items: [capacity, ...] the stored rows; order inside does not matter to any user.
      ptr: int32 [], the row the next push starts at.
    """

    items: jax.Array
    ptr: jax.Array

    @property
    def capacity(self) -> int:
        return self.items.shape[0]


def random_unit_queue(key: jax.Array, capacity: int, dim: int) -> Queue:
    """A queue of ``capacity`` random L2-normalised rows of width ``dim`` (MoCo's initial keys)."""
    items = l2_normalize(jax.random.normal(key, (capacity, dim), jnp.float32))
    return Queue(items=items, ptr=jnp.zeros((), jnp.int32))


def zeros_queue(capacity: int, dim: int) -> Queue:
    """A queue of ``capacity`` zero rows of width ``dim`` (SwAV's queue as created at a task start)."""
    return Queue(items=jnp.zeros((capacity, dim), jnp.float32), ptr=jnp.zeros((), jnp.int32))


def check_fits(name: str, capacity: int, batch: int) -> None:
    """ValueError unless pushes of ``batch`` rows tile a queue of ``capacity`` rows exactly."""
    if capacity < batch or capacity % batch:
        raise ValueError(
            f"{name}={capacity} must be a positive multiple of the global batch size {batch} (each "
            f"step pushes one batch); set it to {max(1, round(capacity / batch)) * batch}"
        )


def push(queue: Queue, rows: jax.Array) -> Queue:
    """The queue with ``rows`` [B, ...] written over its B oldest rows (no gradient flows).

    B must divide the capacity (``check_fits``), so a push never wraps around the end.
    """
    rows = lax.stop_gradient(rows).astype(queue.items.dtype)
    if queue.capacity % rows.shape[0]:
        raise ValueError(
            f"push: {rows.shape[0]} rows do not divide the queue capacity {queue.capacity}"
        )
    start = (queue.ptr,) + (0,) * (rows.ndim - 1)
    items = lax.dynamic_update_slice(queue.items, rows, start)
    return Queue(items=items, ptr=(queue.ptr + rows.shape[0]) % queue.capacity)
