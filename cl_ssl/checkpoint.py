"""Checkpoints of the train state and the run's results so far, through orbax."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

PyTree = Any

DIGEST_ALGORITHM = "sha256"


def digest(state: PyTree, meta: dict) -> dict[str, str]:
    """SHA-256 digests of what a checkpoint holds: ``state``'s leaves (each leaf's path, dtype,
    shape and bytes, in path order) and ``meta`` (its JSON text with sorted keys).

    orbax stores no checksums, and damaged bytes that still decode to finite numbers would restore
    unnoticed; ``Checkpointer`` saves this digest with every checkpoint and compares it with the
    restored values. It digests the values rather than the files, so it holds whatever the storage
    layout (local folder or bucket, orbax's file format) and covers every byte that reaches the run.
    The leaves are read from this process's copy of each array: the train state is replicated,
    so every process computes the same digest.
    """
    h = hashlib.new(DIGEST_ALGORITHM)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        local = _local_copy(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{local.dtype.str}|{local.shape}|".encode())
        h.update(local.tobytes())
    # A JSON round trip first, so that a tuple and the list it restores as digest alike.
    text = json.dumps(json.loads(json.dumps(meta)), sort_keys=True)
    return {
        "algorithm": DIGEST_ALGORITHM,
        "state": h.hexdigest(),
        "meta": hashlib.new(DIGEST_ALGORITHM, text.encode()).hexdigest(),
    }


def _local_copy(leaf) -> np.ndarray:
    """The whole of ``leaf`` as a host array, read from this process's devices."""
    if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
        return np.asarray(leaf)
    if leaf.sharding.is_fully_replicated:
        return np.asarray(leaf.addressable_data(0))
    raise ValueError(
        f"a checkpointed array of shape {leaf.shape} is split over processes "
        f"({leaf.sharding}); the digest needs every process to hold a whole copy (replicate it)"
    )


def non_finite_leaves(tree: PyTree) -> list[str]:
    """The paths of the floating-point leaves of ``tree`` that hold a NaN or an infinity."""
    leaves = [
        (jax.tree_util.keystr(path), x)
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    finite = jax.device_get(_all_finite_each([x for _, x in leaves]))
    return [name for (name, _), ok in zip(leaves, finite, strict=True) if not ok]


@jax.jit
def _all_finite_each(leaves: list[jax.Array]) -> list[jax.Array]:
    return [jnp.all(jnp.isfinite(x)) for x in leaves]


def _summary(names: list[str], limit: int = 3) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


@dataclasses.dataclass
class _StepSet:
    """An orbax preservation policy: keeps the checkpoints of the steps in ``steps``, a set that
    may grow while the manager runs."""

    steps: set[int]

    def should_preserve(self, checkpoints, *, context):
        del context
        return [checkpoint.step in self.steps for checkpoint in checkpoints]


class Checkpointer:
    """Saves (state, meta) pairs under ``directory`` and restores the newest one that reads back.

    ``meta`` is a JSON-serialisable dict (the accuracy matrices filled so far). The newest
    ``keep`` checkpoints are kept, and those of the steps in ``keep_steps`` (a run's task
    boundaries) whatever their age. ``must_be_finite(state)`` is the part of a state that must hold
    no NaN or infinity to be saved or restored (the whole state by default; a train state's
    parameters, not the -inf priorities of an empty exemplar memory). Saving is asynchronous;
    orbax writes each checkpoint to a temporary folder and renames it when complete, so a killed
    save never leaves a checkpoint that looks whole. Each checkpoint also holds the ``digest`` of
    its state and meta, which restoring checks.
    """

    def __init__(
        self,
        directory: str,
        *,
        keep: int,
        keep_steps: Sequence[int] = (),
        must_be_finite: Callable[[PyTree], PyTree] = lambda state: state,
    ):
        policies = ocp.checkpoint_managers
        self._kept_steps = _StepSet(set(keep_steps))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(
                [policies.LatestN(keep), self._kept_steps]
            ),
            create=True,
        )
        self.directory = directory
        self._must_be_finite = must_be_finite
        self._manager = ocp.CheckpointManager(directory, options=options)

    def keep_step(self, step: int) -> None:
        """Keeps checkpoint ``step`` whatever its age, as those of ``keep_steps`` (a task boundary
        known only once reached)."""
        self._kept_steps.steps.add(int(step))

    def save(self, step: int, state: PyTree, meta: dict) -> None:
        """Saves ``state`` and ``meta`` as checkpoint ``step`` (the global optimizer step).

        Raises:
          FloatingPointError: when ``state`` holds a non-finite value; nothing is saved, so every
            checkpoint on disk holds a finite state.
          RuntimeError: when the checkpoint cannot be written (a folder that is gone or read-only,
            a full disk). orbax's threads may then keep the interpreter from exiting:
            ``cl_ssl.main`` ends the process itself.
        """
        bad = non_finite_leaves(self._must_be_finite(state))
        if bad:
            raise FloatingPointError(
                f"the state at step {step} holds non-finite values ({_summary(bad)}); it was not "
                f"saved, and the last good checkpoint is step {self.latest_step()} in "
                f"{self.directory}"
            )
        with self._writing():
            if step in self._manager.all_steps():
                # Saved again: a task's trained state before its end-of-task work was stopped,
                # then, resumed, the task's boundary.
                self._manager.delete(step)
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    meta=ocp.args.JsonSave(meta),
                    digest=ocp.args.JsonSave(digest(state, meta)),
                ),
                force=True,
            )

    @contextlib.contextmanager
    def _writing(self):
        """Turns a failed write (of this save, or of the asynchronous one before it) into a
        RuntimeError that says what to do."""
        try:
            yield
        except OSError as error:
            raise RuntimeError(
                f"a checkpoint cannot be written to {self.directory} ({error}); make the folder "
                "writable or free space, then rerun the same command: it resumes from checkpoint "
                f"{self.latest_step()}"
            ) from error

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, abstract_state: PyTree) -> tuple[int, PyTree, dict] | None:
        """The newest checkpoint that restores, as (step, state, meta); None when there is none.

        Args:
          abstract_state: a pytree of ``jax.ShapeDtypeStruct`` with shardings, the shape of the
            state.

        A checkpoint that fails to restore (corrupt or partial files, or a read that failed
        for a passing reason, such as a storage service's error), whose values differ from its
        saved digest, or that restores a non-finite state is skipped with a warning and the one
        before it is tried. Once an older one restores, the newer ones known to be damaged
        (digest, non-finite values) are deleted; the unreadable ones stay, for a later start to
        try again, and the replayed run saves over them.

        Raises:
          RuntimeError: when checkpoints exist but none of them restores (for example a state
            whose layout changed; nothing is deleted then), or when the processes of a
            multi-process run restored different steps (a read failed on some of them).
        """
        errors, damaged = [], []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state, meta = self.restore_step(step, abstract_state)
            except DigestMismatch as error:
                logging.warning("%s; trying the one before", error)
                errors.append((step, f"step {step}: damaged"))
                damaged.append(step)
                continue
            except Exception as error:  # noqa: BLE001 -- any unreadable checkpoint falls back
                logging.warning(
                    "checkpoint %d in %s cannot be restored (%s: %s); trying the one before",
                    step,
                    self.directory,
                    type(error).__name__,
                    error,
                )
                errors.append((step, f"step {step}: {type(error).__name__}"))
                continue
            bad = non_finite_leaves(self._must_be_finite(state))
            if bad:
                logging.warning(
                    "checkpoint %d in %s restores non-finite values (%s); trying the one before",
                    step,
                    self.directory,
                    _summary(bad),
                )
                errors.append((step, f"step {step}: non-finite {_summary(bad, 1)}"))
                damaged.append(step)
                continue
            _check_same_step(step, self.directory)
            for bad_step in damaged:
                self._manager.delete(bad_step)
            return step, state, meta
        if errors:
            _check_same_step(-1, self.directory)
            raise RuntimeError(
                f"no checkpoint in {self.directory} restores "
                f"({'; '.join(message for _, message in errors)}; the details are in the log): "
                "the state does not match this version of the code or the files are damaged. Use "
                "a new --workdir to start again."
            )
        return None

    def all_steps(self) -> list[int]:
        """The steps of the checkpoints on disk, in increasing order."""
        return sorted(self._manager.all_steps())

    def restore_step(self, step: int, abstract_state: PyTree) -> tuple[PyTree, dict]:
        """(state, meta) of the checkpoint of ``step``, shaped as ``abstract_state``.

        Raises:
          DigestMismatch: when the restored values differ from the digest saved with them (damaged
            bytes that still decode); orbax's error when the checkpoint cannot be read.
        """
        items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
        # Checkpoints of cl_ssl versions before the digest have none: they restore unverified.
        has_digest = (self._step_path(step) / "digest").exists()
        if has_digest:
            items["digest"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        state, meta = restored["state"], restored["meta"]
        if has_digest:
            saved, found = restored["digest"], digest(state, meta)
            damaged = [item for item in ("state", "meta") if saved[item] != found[item]]
            if damaged:
                raise DigestMismatch(
                    f"checkpoint {step}'s {' and '.join(damaged)} differ from the "
                    f"{DIGEST_ALGORITHM} digest saved with them: its files are damaged"
                )
        return state, meta

    def _step_path(self, step: int):
        """The folder (an ``etils.epath.Path``) of the checkpoint of ``step``."""
        return self._manager.directory / ocp.step.standard_name_format().build_name(step)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are written."""
        with self._writing():
            self._manager.wait_until_finished()

    def close(self) -> None:
        with self._writing():
            self._manager.close()


class DigestMismatch(ValueError):
    """A checkpoint whose restored values differ from the digest saved with them."""


def _check_same_step(step: int, directory: str) -> None:
    """RuntimeError unless every process restored checkpoint ``step`` (a collective on several
    processes): one whose read failed would go on from another state."""
    if jax.process_count() == 1:
        return
    steps = np.asarray(multihost_utils.process_allgather(np.int64(step)))
    if np.any(steps != step):
        raise RuntimeError(
            f"the processes restored different checkpoints of {directory} (steps "
            f"{sorted(set(steps.tolist()))}): a read failed on some of them; rerun the same "
            "command"
        )


def abstract_like(tree: PyTree, sharding: jax.sharding.Sharding) -> PyTree:
    """``jax.ShapeDtypeStruct`` leaves with ``sharding``, for restoring a tree shaped like ``tree``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
