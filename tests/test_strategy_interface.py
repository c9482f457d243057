"""The strategy interface as a user's method meets it: a strategy from a module of one's own (the
DER example, examples/der), rows only the strategy's term sees, what the step hands its hooks, and
a memory's per-slot payload through every selection."""

import dataclasses
import pathlib
import shutil
import subprocess
import sys
import types

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import SAME_UP_TO_ROUNDING as ROUNDING
from helpers import (
    initial_state,
    random_split,
    tiny_config,
    tiny_objective_config,
    train_data,
    write_tiny_fashion_mnist,
)

from cl_ssl import config as config_lib
from cl_ssl import memory as memory_lib
from cl_ssl import objectives, strategies
from cl_ssl import step as step_lib
from cl_ssl.data.batch import Batch
from cl_ssl.data.sources import ArraySplit
from cl_ssl.state import StrategyState
from cl_ssl.strategies import base, replay

ROOT = pathlib.Path(__file__).resolve().parents[1]
DER = "examples.der.der"


@pytest.fixture(autouse=True)
def _repository_importable(monkeypatch):
    """The example is imported as ``examples.der.der``, as from the repository root."""
    monkeypatch.syspath_prepend(str(ROOT))


def _der_config(**overrides):
    config = tiny_config(**{"eval.evaluators": ("knn",), **overrides})
    config_lib.use_strategy(config, DER)
    config.der.update(memory_size=8, batch_size=4)
    return config


# ---------------------------------------------------------------------------------------------
# Selecting a strategy by module


def test_builtin_strategies_are_registered_as_a_users_module_is():
    """Each built-in name is a short name for a module path that loads the same spec, and every
    built-in section is in the base config."""
    sections = config_lib.base_config()
    for name, path in strategies.BUILTIN.items():
        spec = strategies.load_spec(name)
        assert spec is strategies.load_spec(path)
        assert spec.section is None or spec.section in sections


@pytest.mark.parametrize(
    "name, message",
    [
        ("dre", "unknown strategy 'dre'; set --config.strategy to one of"),
        ("no_such_package.der", "no module 'no_such_package' can be imported"),
        ("cl_ssl.losses", "module 'cl_ssl.losses' has nothing as STRATEGY; define STRATEGY ="),
        ("examples.der.der:OTHER", "module 'examples.der.der' has nothing as OTHER"),
    ],
)
def test_a_name_without_a_strategy_says_what_to_define(name, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        strategies.load_spec(name)


def test_a_user_config_must_carry_the_strategys_section():
    config = tiny_config(strategy=DER)  # set by hand, without use_strategy
    config = objectives.resolve_config(config)
    with pytest.raises(
        ValueError, match=r"reads config\.der, which this config lacks; .*use_strategy"
    ):
        strategies.get_strategy(config, objectives.get_objective(config))


def test_der_refuses_bad_settings_before_compiling():
    config = objectives.resolve_config(_der_config())
    objective = objectives.get_objective(config)
    for field, value, message in (
        ("alpha", 0.0, "der.alpha=0.0"),
        ("memory_size", 0, "der.memory_size=0"),
        ("output", "logits", "der.output='logits'; choose one of"),
    ):
        bad = ml_collections.ConfigDict(config.to_dict())
        bad.der[field] = value
        with pytest.raises(ValueError, match=message):
            strategies.get_strategy(bad, objective)


def test_a_user_module_outside_the_repository_runs_from_its_config(tmp_path):
    """A copy of the DER module and a config file of its own in a folder outside the repository,
    run as a user runs it: ``python -m cl_ssl.main --config=...`` from that folder, with an
    override of the strategy's own section; the run ends with results."""
    project = tmp_path / "my_project"
    project.mkdir()
    shutil.copy(ROOT / "examples" / "der" / "der.py", project / "my_der.py")
    (tmp_path / "data").mkdir()
    data = write_tiny_fashion_mnist(tmp_path / "data")
    (project / "config.py").write_text(
        "from cl_ssl import config as config_lib\n"
        "from cl_ssl.configs import fashion_mnist\n\n\n"
        "def get_config():\n"
        "    config = fashion_mnist.get_config('runlocal')\n"
        f"    config.dataset.data_dir = {str(data)!r}\n"
        "    config.update(num_tasks=2, batch_size=8)\n"
        "    config.eval.update(evaluators=('knn',), train_examples=16)\n"
        "    config.eval.knn.k = 3\n"
        "    config.progress_bar = False\n"
        "    return config_lib.use_strategy(config, 'my_der')\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cl_ssl.main",
            "--config=config.py",
            "--workdir=run",
            "--config.der.batch_size=4",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = (project / "run" / "results.json").read_text()
    assert '"strategy": "my_der"' in results
    assert '"batch_size": 4' in results  # the override of der.batch_size reached the run
    assert "knn accuracy" in done.stdout


# ---------------------------------------------------------------------------------------------
# DER's term and its run


def test_der_term_is_alpha_times_the_mean_squared_error_of_the_valid_rows():
    from examples.der import der

    rng = np.random.default_rng(0)
    predicted, stored = rng.normal(size=(2, 6, 5)).astype(np.float32)
    valid = np.array([True, False, True, True, False, True])
    # Mammoth models/der.py: alpha * F.mse_loss(outputs, logits), the mean of every element, here
    # of the valid rows only.
    expected = np.mean((predicted[valid] - stored[valid]) ** 2)
    np.testing.assert_allclose(der.masked_mse(predicted, stored, valid), expected, rtol=1e-6)
    assert der.masked_mse(predicted, stored, np.zeros(6, bool)) == 0.0


def test_der_step_adds_its_term_on_the_drawn_slots_outputs():
    """One DER step on a full memory whose payload is known: the term equals the NumPy mean
    squared error between the student's outputs of the side rows (recomputed here from the side
    views) and the payload rows of the slots drawn; the side rows leave the SSL loss and the
    BatchNorm statistics as finetune's step on the same batch leaves them; then the step's own
    rows, whose reservoir priorities beat the hand-made ones, fill the memory, each with the
    output of its first view (the step's outputs, handed to ``update_buffers``)."""
    from examples.der import der

    config = objectives.resolve_config(_der_config())
    objective = objectives.get_objective(config)
    der_strategy = strategies.get_strategy(config, objective)
    tx = step_lib.make_tx(config, objective, der_strategy)
    state = initial_state(objective, der_strategy, tx, random_split(8))
    memory = state.strategy.buffers["memory"]
    width = memory.payload[der.STORED].shape[1]
    stored = np.arange(8 * width, dtype=np.float32).reshape(8, width) / (8 * width)
    memory = memory_lib.keep_top(
        memory,
        ids=jnp.arange(8),
        labels=0,
        tasks=0,
        priority=-1.0 - jnp.arange(8.0),
        valid=True,
        payload={der.STORED: stored},
    )
    state = state.replace(strategy=state.strategy.replace(buffers={"memory": memory}))
    seen = {}

    def spy(inputs):
        seen["static"] = (inputs.extended, inputs.own_rows, inputs.batch.size)
        seen["arrays"] = (inputs.side, inputs.side_views[0], inputs.views[0])
        return der_strategy.loss(inputs)

    spying = dataclasses.replace(der_strategy, loss=spy)
    hyper = step_lib.stage_hyper(config, objective, spying, num_epochs=2, steps_per_epoch=2)
    hyper = {k: jnp.asarray(v[0]) for k, v in hyper.items()}
    step = step_lib.build_step_fn(objective, spying, tx, extend=True)
    data, ids = train_data(8), jnp.arange(8)
    new, metrics, (side, side_view, own_view) = jax.jit(
        lambda *args: (*step(*args), seen["arrays"])
    )(state, data, ids, hyper)
    # The side rows reach neither the SSL loss nor the BatchNorm statistics: both are finetune's
    # (another program: up to float rounding).
    finetune = strategies.load_spec("finetune").make(config, objective)
    tx_plain = step_lib.make_tx(config, objective, finetune)
    plain = initial_state(objective, finetune, tx_plain, random_split(8))
    plain_step = jax.jit(step_lib.build_step_fn(objective, finetune, tx_plain, extend=True))
    plain_new, plain_metrics = plain_step(plain, data, ids, hyper)
    np.testing.assert_allclose(metrics["nt_xent"], plain_metrics["nt_xent"], **ROUNDING)
    chex.assert_trees_all_close(new.batch_stats, plain_new.batch_stats, **ROUNDING)
    assert seen["static"] == (True, 8, 8)
    assert side.size == 4 and bool(jnp.all(side.valid))
    slots = np.asarray(side.slots)
    assert len(set(slots.tolist())) == 4  # drawn without replacement
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def features(view):
        out, _ = objective.model.apply(variables, view, True, mutable=["batch_stats"])
        return np.asarray(out["features"])

    expected = np.mean((features(side_view) - stored[slots]) ** 2)
    np.testing.assert_allclose(metrics["der"], expected, rtol=1e-5)
    kept = new.strategy.buffers["memory"]
    assert bool(jnp.all(kept.valid)) and sorted(np.asarray(kept.ids).tolist()) == list(range(8))
    np.testing.assert_allclose(
        np.asarray(kept.payload[der.STORED]),
        features(own_view)[np.asarray(kept.ids)],
        rtol=1e-5,
        atol=1e-6,
    )


# ---------------------------------------------------------------------------------------------
# Rows only the strategy's term sees; what the hooks are handed


def test_joined_rows_carry_their_memory_slots():
    config = objectives.resolve_config(tiny_config(strategy="replay"))
    objective = objectives.get_objective(config)
    rehearsal = strategies.get_strategy(config, objective)
    state = initial_state(
        objective, rehearsal, step_lib.make_tx(config, objective, rehearsal), random_split(8)
    )
    memory = memory_lib.keep_top(
        state.strategy.buffers["memory"],
        ids=jnp.arange(5) + 2,
        labels=0,
        tasks=0,
        priority=jnp.arange(5.0),
        valid=True,
    )
    own = Batch(
        images=jnp.zeros((3, 32, 32, 3), jnp.uint8),
        labels=jnp.zeros(3, jnp.int32),
        ids=jnp.arange(3),
        tasks=jnp.ones(3, jnp.int32),
        valid=jnp.ones(3, bool),
    )
    joined = rehearsal.extend_batch(
        base.RowInputs(
            StrategyState(buffers={"memory": memory}), own, train_data(8), jax.random.key(0), 1, {}
        )
    )
    slots = np.asarray(joined.slots)
    assert slots[:3].tolist() == [-1, -1, -1]
    np.testing.assert_array_equal(np.asarray(joined.ids)[3:], np.asarray(memory.ids)[slots[3:]])


# ---------------------------------------------------------------------------------------------
# A memory's payload through every selection


def _payload_of(ids):
    """A payload that names its example: [id, -id] and id as int."""
    ids = np.asarray(ids)
    return {"pair": np.stack([ids, -ids], 1).astype(np.float32), "id": ids.astype(np.int32)}


def _assert_aligned(memory):
    valid = np.asarray(memory.valid)
    assert valid.any()
    expected = _payload_of(np.asarray(memory.ids)[valid])
    np.testing.assert_array_equal(np.asarray(memory.payload["pair"])[valid], expected["pair"])
    np.testing.assert_array_equal(np.asarray(memory.payload["id"])[valid], expected["id"])


_SLOT = {
    "pair": jax.ShapeDtypeStruct((2,), jnp.float32),
    "id": jax.ShapeDtypeStruct((), jnp.int32),
}


@pytest.mark.parametrize("quota", [None, 2])
def test_payload_follows_its_slot_in_the_in_step_reservoirs(quota):
    """Reservoir and class-balanced reservoir over three batches, the class quota lowered in the
    last (more classes seen): every kept slot keeps its own example's payload."""
    memory = memory_lib.empty_memory(6, payload=_SLOT)
    for b, q in enumerate((3, 3, quota) if quota else (None,) * 3):
        ids = np.arange(8) + 8 * b
        memory = memory_lib.reservoir_update(
            memory,
            jax.random.key(b),
            ids=ids,
            labels=ids % (2 + b),
            tasks=b,
            quota=q,
            payload=_payload_of(ids),
        )
        _assert_aligned(memory)
    assert np.asarray(memory.ids)[np.asarray(memory.valid)].max() >= 16  # the last batch entered


@pytest.mark.parametrize("selection", ["herding", "random", "first_per_class", "min_var"])
def test_payload_follows_its_slot_in_the_end_of_task_selections(selection):
    """Two tasks of three classes each through ``replay.end_of_task_selection`` with a payload:
    after each, every stored exemplar has its own payload, also once the first task's classes
    shrank to the new quota."""
    r = ml_collections.ConfigDict(
        dict(
            selection=selection,
            memory_size=12,
            per_class=2 if selection == "min_var" else 0,
            fraction=0.25,
        )
    )
    split = random_split(48, num_classes=6)
    num_slots = replay.capacity(r, split.labels, 6)
    memory = memory_lib.empty_memory(num_slots, payload=_SLOT)
    rng = np.random.default_rng(0)
    fake_objective = types.SimpleNamespace(model=None, views=None)
    end_task = replay.end_of_task_selection(
        r, fake_objective, payload=lambda end, chosen: _payload_of(chosen)
    )
    for task, classes in enumerate(((0, 1, 2), (3, 4, 5))):
        indices = np.flatnonzero(np.isin(split.labels, classes))
        end = base.TaskEnd(
            state=types.SimpleNamespace(
                strategy=StrategyState(buffers={"memory": memory}), params={}, batch_stats={}
            ),
            next_task=task + 1,
            key=jax.random.key(3),
            indices=indices,
            train=ArraySplit(images=split.images, labels=split.labels, num_classes=6),
            features=lambda variables, images: rng.normal(size=(len(images), 4)),
            map_images=lambda fn, variables, images, keys: rng.normal(size=(len(images), 7, 4)),
        )
        memory = end_task(end).buffers["memory"]
        _assert_aligned(memory)
        stored = np.asarray(split.labels)[np.asarray(memory.ids)[np.asarray(memory.valid)]]
        assert np.isin(stored, classes).any()  # the task's exemplars entered


def test_output_widths_are_kept_per_model_and_measured_for_an_unhashable_one():
    """The widths a strategy reads from the student's shapes: traced once per (model, crop), and
    traced afresh for a user's model with an unhashable field (a list)."""
    config = objectives.resolve_config(tiny_objective_config("simclr"))
    objective = objectives.get_objective(config)
    assert base.output_widths(objective) == {"features": 16, "projection": 16}
    before = base._widths.cache_info().hits
    assert base.output_widths(objectives.get_objective(config)) == {
        "features": 16,
        "projection": 16,
    }
    assert base._widths.cache_info().hits == before + 1
    head = objective.model.projector
    listed = objective.model.clone(projector=head.clone(hidden_dims=list(head.hidden_dims)))
    with pytest.raises(TypeError):
        hash(listed)
    widths = base.output_widths(dataclasses.replace(objective, model=listed))
    assert widths == {"features": 16, "projection": 16}
