"""Checkpoints hold finite states only: a non-finite state is never saved, and a checkpoint that
restores non-finite values (damaged bytes that still parse) is skipped like an unreadable one, as is
one whose values differ from the digest saved with it. Task-boundary checkpoints outlive the newest
ones. One run owns a workdir."""

import hashlib
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run, tiny_config

from cl_ssl import checkpoint, parallel
from cl_ssl import workdir as workdir_lib


def _state(value=1.0):
    return {"params": {"w": jnp.full((3,), value), "b": jnp.zeros(2)}, "step": jnp.int32(7)}


def _abstract():
    return checkpoint.abstract_like(_state(), parallel.replicated(parallel.make_mesh(1)))


def _write_unchecked(ckpt, step, state):
    """Writes ``state`` as checkpoint ``step`` past the finiteness check, as damaged bytes that
    still parse would leave it."""
    ckpt._manager.save(
        step,
        args=checkpoint.ocp.args.Composite(
            state=checkpoint.ocp.args.StandardSave(state),
            meta=checkpoint.ocp.args.JsonSave({"matrices": {}}),
        ),
        force=True,
    )
    ckpt.wait()


def test_non_finite_leaves_are_named():
    tree = {"a": jnp.array([1.0, jnp.nan]), "b": {"c": jnp.ones(2)}, "d": jnp.array([jnp.inf])}
    assert checkpoint.non_finite_leaves(tree) == ["['a']", "['d']"]
    assert checkpoint.non_finite_leaves({"i": jnp.arange(3), "f": jnp.ones(2)}) == []


def test_a_non_finite_state_is_never_saved(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
    ckpt.save(1, _state(), {"matrices": {}})
    ckpt.wait()
    with pytest.raises(FloatingPointError, match=r"step 2 .*\['params'\]\['w'\].*step 1"):
        ckpt.save(2, _state(np.nan), {"matrices": {}})
    ckpt.wait()
    assert ckpt._manager.all_steps() == [1]
    ckpt.close()


def test_a_checkpoint_with_non_finite_values_falls_back_to_the_one_before(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
    ckpt.save(1, _state(2.0), {"matrices": {}})
    _write_unchecked(ckpt, 2, _state(np.inf))
    step, state, _ = ckpt.restore(_abstract())
    assert step == 1
    np.testing.assert_array_equal(state["params"]["w"], 2.0)
    assert ckpt._manager.all_steps() == [1]  # the damaged one is removed, to be saved again
    _write_unchecked(ckpt, 3, _state(np.nan))
    ckpt._manager.delete(1)
    with pytest.raises(RuntimeError, match=r"no checkpoint .*step 3: non-finite \['params'\]"):
        ckpt.restore(_abstract())
    ckpt.close()


def test_the_digest_is_sha256_of_each_leaf_and_of_the_json_meta():
    """Against hashlib over the bytes the digest documents, in path order."""
    state, meta = _state(), {"matrices": {"linear": [[50.0, 0.25]]}, "steps": (3, 6)}
    h = hashlib.sha256()
    for name, array in (
        ("['params']['b']", np.zeros(2, np.float32)),
        ("['params']['w']", np.ones(3, np.float32)),
        ("['step']", np.array(7, np.int32)),
    ):
        h.update(f"{name}|{array.dtype.str}|{array.shape}|".encode() + array.tobytes())
    text = '{"matrices": {"linear": [[50.0, 0.25]]}, "steps": [3, 6]}'
    assert checkpoint.digest(state, meta) == {
        "algorithm": "sha256",
        "state": h.hexdigest(),
        "meta": hashlib.sha256(text.encode()).hexdigest(),
    }
    assert checkpoint.digest(_state(1.0 + 2**-20), meta)["state"] != h.hexdigest()


def test_a_finite_change_to_a_saved_byte_is_detected_and_the_one_before_restored(tmp_path):
    """One digit of the saved meta changed on disk still parses: the digest catches it."""
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
    for step in (1, 2):
        ckpt.save(step, _state(float(step)), {"matrices": {"linear": [[12.5]]}})
    ckpt.wait()
    path = tmp_path / "2" / "meta" / "metadata"
    path.write_text(path.read_text().replace("12.5", "13.5"))
    assert json.loads(path.read_text()) == {"matrices": {"linear": [[13.5]]}}
    with pytest.raises(ValueError, match="checkpoint 2's meta differ from the sha256 digest"):
        ckpt.restore_step(2, _abstract())
    step, state, meta = ckpt.restore(_abstract())
    assert (step, meta) == (1, {"matrices": {"linear": [[12.5]]}})
    np.testing.assert_array_equal(state["params"]["w"], 1.0)
    assert ckpt.all_steps() == [1]
    ckpt.close()


def test_state_values_unlike_their_digest_and_unreadable_files_fall_back(tmp_path):
    """A state that decodes to other finite values than were saved (written here with the digest
    of another state, as damaged bytes would leave it), then a checkpoint whose files no longer
    parse: each is skipped for the one before. The damaged one is deleted, the unreadable one
    kept (its read may have failed for a passing reason). A checkpoint without a digest (of an
    older version) restores unverified."""
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=4)
    _write_unchecked(ckpt, 1, _state(1.0))
    ckpt.save(2, _state(2.0), {"matrices": {}})
    ckpt._manager.save(
        3,
        args=checkpoint.ocp.args.Composite(
            state=checkpoint.ocp.args.StandardSave(_state(3.5)),
            meta=checkpoint.ocp.args.JsonSave({"matrices": {}}),
            digest=checkpoint.ocp.args.JsonSave(checkpoint.digest(_state(3.0), {"matrices": {}})),
        ),
        force=True,
    )
    ckpt.save(4, _state(4.0), {"matrices": {}})
    ckpt.wait()
    for root, _, files in os.walk(tmp_path / "4" / "state"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"damaged")
    with pytest.raises(ValueError, match="checkpoint 3's state differ"):
        ckpt.restore_step(3, _abstract())
    step, state, _ = ckpt.restore(_abstract())
    assert step == 2
    np.testing.assert_array_equal(state["params"]["w"], 2.0)
    assert ckpt.all_steps() == [1, 2, 4]
    ckpt._manager.delete(2)
    assert ckpt.restore(_abstract())[0] == 1
    assert ckpt.all_steps() == [1, 4]
    ckpt.close()


def test_the_steps_to_keep_outlive_the_newest_and_restore_by_step(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, keep_steps=[0, 2])
    for step in range(6):
        ckpt.save(step, _state(float(step)), {"step": step})
        ckpt.wait()
    assert ckpt.all_steps() == [0, 2, 4, 5]
    state, meta = ckpt.restore_step(2, _abstract())
    np.testing.assert_array_equal(state["params"]["w"], 2.0)
    assert meta == {"step": 2}
    ckpt.close()


# ---------------------------------------------------------------------------------------------
# One run per workdir

_HOLD_LOCK = """
import sys, time
from cl_ssl.workdir import workdir_lock
with workdir_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_process_on_a_locked_workdir_is_refused_and_a_stale_lock_taken_over(
    mock_cifar10, tmp_path
):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            RuntimeError, match=rf"in use by another run \(host .* pid {holder.pid}\)"
        ):
            run(tiny_config(), tmp_path)
    finally:
        holder.kill()  # as kill -9: the lock file still names it
        holder.wait()
    assert f"pid {holder.pid}" in (tmp_path / "LOCK").read_text()
    with workdir_lib.workdir_lock(str(tmp_path)):
        assert (tmp_path / "LOCK").read_text().strip().endswith(f"pid {os.getpid()}")
    assert (tmp_path / "LOCK").read_text() == ""


def test_a_workdir_that_cannot_hold_a_run_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file; choose a folder"):
        with workdir_lib.workdir_lock(str(tmp_path / "file")):
            pass


def test_only_the_learned_part_must_be_finite(tmp_path):
    """An empty exemplar memory's priorities are -inf on purpose."""
    ckpt = checkpoint.Checkpointer(
        str(tmp_path), keep=3, must_be_finite=lambda state: state["params"]
    )
    state = {**_state(), "priority": jnp.full(4, -jnp.inf)}
    ckpt.save(1, state, {"matrices": {}})
    ckpt.wait()
    abstract = checkpoint.abstract_like(state, parallel.replicated(parallel.make_mesh(1)))
    step, restored, _ = ckpt.restore(abstract)
    assert step == 1 and np.isneginf(restored["priority"]).all()
    ckpt.close()
