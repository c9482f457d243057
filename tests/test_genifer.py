"""Genifer: the replay batch and loss, the GAN's step (a feature-driven discriminator, lazy R1 on
the features, generator distillation, ADA), and a whole run that resumes inside GAN training."""

import importlib.util
import json
import pathlib
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run, tiny_config, train_data

from cl_ssl import losses, parallel, train
from cl_ssl.data import ada, augment
from cl_ssl.data.batch import current_batch
from cl_ssl.data.sources import ArraySplit
from cl_ssl.evaluation import evaluate
from cl_ssl.models import gan
from cl_ssl.objectives import get_objective, resolve_config
from cl_ssl.strategies import LossInputs, genifer_gan, get_strategy

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_GAN = {
    "genifer.gan.batch_size": 8,
    "genifer.gan.latent_dim": 8,
    "genifer.gan.generator_channels": (8,) * 7,
    "genifer.gan.constant_channels": 8,
    "genifer.gan.discriminator_channels": (8, 8),
    "genifer.gan.discriminator_epilogue": 8,
    "genifer.gan.epochs_first": 2,
    "genifer.gan.epochs": 2,
    "genifer.gan.checkpoint_every": 2,  # of 4 iterations or more after the first task
}


def genifer_config(**overrides):
    settings = {"objective": "supervised", "strategy": "genifer", "labels.fraction": 1.0}
    return tiny_config(**{**settings, **TINY_GAN, **overrides})


def _parts(**overrides):
    config = resolve_config(genifer_config(**overrides))
    objective = get_objective(config)
    return config, objective, get_strategy(config, objective)


# ---------------------------------------------------------------------------------------------
# The replay batch and the classifier's loss


@pytest.fixture(scope="module")
def initial():
    """The initial strategy state and student variables on 4 classes (tasks 0: classes 0-1)."""
    config, objective, strategy = _parts()
    images = np.asarray(train_data(8).images)  # random 32x32 images
    variables = objective.model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)
    train = ArraySplit(images=images, labels=np.arange(8) % 4, num_classes=4)
    return (
        config,
        objective,
        strategy,
        variables,
        strategy.init(variables, jax.random.PRNGKey(1), train),
    )


def test_replay_rows_are_generated_old_class_pixels_after_the_kept_real_rows(initial):
    config, _, strategy, _, state = initial
    data = train_data(8, tasks=np.array([0, 0, 1, 1, 0, 0, 1, 1]))  # task 0: classes 0, 1
    batch = current_batch(data, jnp.arange(8))
    joined = strategy.extend_batch(state, batch, data, jax.random.PRNGKey(2), jnp.int32(1))
    assert joined.size == config.batch_size == 8
    chex.assert_trees_all_equal(
        jax.tree.map(lambda x: x[:4], joined), jax.tree.map(lambda x: x[:4], batch)
    )
    assert joined.images.dtype == jnp.uint8
    assert set(np.asarray(joined.labels[4:]).tolist()) <= {0, 1}
    assert np.asarray(joined.valid).all() and (np.asarray(joined.ids[4:]) == -1).all()


def test_loss_is_ce_on_real_rows_then_the_weighted_replay_terms(initial):
    """First task: plain CE over the seen classes. Later: 0.02 CE on the real rows (a generated
    row's label never enters it) + 0.98 KD + 1.0 feature distance on the generated rows."""
    config, objective, strategy, variables, state = initial
    data = train_data(8, tasks=np.array([0, 0, 1, 1, 0, 0, 1, 1]))
    batch = current_batch(data, jnp.arange(8))
    batch = batch.replace(labels=batch.labels.at[7].set(3))  # a generated row's class
    views = augment.augment_batch(jax.random.PRNGKey(3), batch.images, objective.views[0])
    student = jax.tree.map(lambda x: x * 1.5, variables["params"])  # differs from the teacher
    out, _ = objective.model.apply(
        {"params": student, "batch_stats": variables["batch_stats"]},
        views,
        True,
        mutable=["batch_stats"],
    )

    def loss(task, trainable=state.trainable):
        inputs = LossInputs(
            outputs=(out,),
            views=(views,),
            batch=batch,
            params=student,
            trainable=trainable,
            state=state,
            task=jnp.int32(task),
            hyper={},
            data=data,
        )
        return strategy.loss(inputs)

    total, terms = loss(0)
    assert float(terms["replay_distill"]) == 0.0 and float(total) == pytest.approx(
        float(terms["ce"])
    )
    total, terms = loss(1)
    g = config.genifer
    expected = (
        g.ce_weight * terms["ce"]
        + g.distill_weight * terms["replay_distill"]
        + g.feature_weight * terms["feature_distill"]
    )
    np.testing.assert_allclose(float(total), float(expected), rtol=1e-6)
    assert float(terms["replay_distill"]) > 0 and float(terms["feature_distill"]) > 0
    # The CE reads the 4 real rows only: labels [0, 1, 2, 3] of which row 3 (class 3) is real.
    logits = np.asarray(
        out["features"] @ state.trainable["classifier"]["linear0"]["kernel"]
        + state.trainable["classifier"]["linear0"]["bias"]
    )
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))  # tasks 0-1: every class
    ce = -np.mean([log_p[i, int(batch.labels[i])] for i in range(4)])
    np.testing.assert_allclose(float(terms["ce"]), ce, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The GAN step


@pytest.fixture(scope="module")
def gan_parts(initial):
    """(Gan, the jitted step, classifier variables, GanState, GanInputs of a second boundary)."""
    config, objective, strategy, variables, state = initial
    model = genifer_gan.make_gan(config, 4, 3)
    view = objective.views[0]

    def features(v, images):
        return objective.model.apply(v, images, False, method="project")["feature_map"]

    step = jax.jit(genifer_gan.build_gan_step(model, features, mean=view.mean, std=view.std))
    gan_state = model.restart(state.buffers["gan"])
    inputs = genifer_gan.GanInputs(
        previous=gan_state.generator_ema,
        has_previous=jnp.asarray(True),
        old=jnp.array([True, True, False, False]),
        current=jnp.array([False, False, True, True]),
        distill_weight=jnp.float32(10.0),
        rampup=jnp.float32(genifer_gan.ema_rampup(500, 8, 100)),
    )
    return model, step, variables, gan_state, inputs


def _real(n=8):
    images = np.random.default_rng(5).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return jnp.asarray(images), jnp.arange(n, dtype=jnp.int32) % 4


def test_discriminator_judges_feature_maps_never_pixels(gan_parts, monkeypatch):
    model, step, variables, gan_state, inputs = gan_parts
    seen = []
    call = gan.FeatureDiscriminator.__call__

    def recording(self, features, labels):
        seen.append(features.shape)
        return call(self, features, labels)

    monkeypatch.setattr(gan.FeatureDiscriminator, "__call__", recording)
    jax.eval_shape(step.__wrapped__, gan_state, variables, *_real(), inputs, jax.random.PRNGKey(0))
    feature_shape = objective_feature_shape(variables)
    assert seen and all(shape[1:] == feature_shape for shape in seen), seen
    assert all(shape[1:] != (32, 32, 3) for shape in seen)


def objective_feature_shape(variables):
    config, objective, _ = _parts()
    out = objective.model.apply(variables, jnp.zeros((1, 32, 32, 3)), False, method="project")
    return out["feature_map"].shape[1:]


def test_first_iteration_r1_on_features_no_distillation_and_ema_copy(gan_parts):
    """Iteration 0: R1 is (gamma/2)(16/17) mean ||grad_h D(h)||^2 > 0 on the features; the
    generator equals the previous one (G restarts from the EMA copy), so its distillation is 0;
    the EMA copy takes the new weights (beta 0). Iteration 1: no R1 (lazy)."""
    model, step, variables, gan_state, inputs = gan_parts
    new, metrics = step(gan_state, variables, *_real(), inputs, jax.random.PRNGKey(0))
    assert float(metrics["r1"]) > 0
    assert float(metrics["g_distill"]) == pytest.approx(0.0, abs=1e-5)  # up to float rounding
    chex.assert_trees_all_equal(new.generator_ema, new.generator)
    _, later = step(new, variables, *_real(), inputs, jax.random.PRNGKey(1))
    assert float(later["r1"]) == 0.0 and float(later["g_distill"]) > 0


def test_r1_penalty_is_the_scaled_squared_gradient_norm():
    grads = np.random.default_rng(6).standard_normal((4, 2, 2, 3)).astype(np.float32)
    expected = 0.5 / 2 * np.mean(np.sum(grads.reshape(4, -1) ** 2, axis=1)) * 16 / 17
    got = losses.r1_penalty(grads, gamma=0.5, interval=16)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    assert float(losses.r1_penalty(grads, gamma=0.5)) == pytest.approx(expected * 17 / 16)


def test_gan_losses_and_distillation_against_hand_values():
    real, fake = np.array([0.0, 2.0]), np.array([-1.0, 1.0])
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    np.testing.assert_allclose(
        float(losses.discriminator_loss(real, fake)),
        np.mean(softplus(fake)) + np.mean(softplus(-real)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        float(losses.generator_loss(fake)), np.mean(softplus(-fake)), rtol=1e-6
    )
    x = np.random.default_rng(7).standard_normal((2, 4, 4, 3)).astype(np.float32)
    assert float(losses.generator_distillation(x, x)) == 0.0
    np.testing.assert_allclose(float(losses.generator_distillation(x, x + 0.5)), 0.5, rtol=1e-6)


def test_ada_is_identity_at_p_zero_and_moves_p_towards_the_target():
    images = jnp.asarray(np.random.default_rng(8).standard_normal((3, 8, 8, 3)), jnp.float32)
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3)
    same = ada.ada_augment(jax.random.PRNGKey(0), images, jnp.float32(0.0), **kw)
    np.testing.assert_allclose(same, images, atol=1e-5)
    moved = ada.ada_augment(jax.random.PRNGKey(0), images, jnp.float32(1.0), **kw)
    assert not np.allclose(moved, images)
    grad = jax.grad(lambda x: jnp.sum(ada.ada_augment(jax.random.PRNGKey(0), x, 1.0, **kw)))(images)
    assert np.abs(np.asarray(grad)).sum() > 0  # differentiable: the generator learns through it
    step = ada.ADJUST_INTERVAL / (ada.ADJUST_KIMG * 1000)
    up = ada.ada_adjust(jnp.float32(0.1), jnp.ones(4), jnp.int32(8), target=0.5, max_p=0.5)
    down = ada.ada_adjust(jnp.float32(0.1), -jnp.ones(4), jnp.int32(8), target=0.5, max_p=0.5)
    held = ada.ada_adjust(jnp.float32(0.1), jnp.ones(4), jnp.int32(9), target=0.5, max_p=0.5)
    np.testing.assert_allclose([up, down, held], [0.1 + step, 0.1 - step, 0.1], rtol=1e-6)


def test_minibatch_std_matches_numpy():
    x = np.random.default_rng(9).standard_normal((8, 2, 2, 3)).astype(np.float32)
    out = np.asarray(gan.minibatch_std(jnp.asarray(x), group_size=4))
    groups = x.reshape(4, 2, 2, 2, 3)  # row i in group i % 2
    std = np.sqrt(((groups - groups.mean(0)) ** 2).mean(0) + 1e-8).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(out[..., :3], x)
    np.testing.assert_allclose(out[:, 0, 0, 3], np.tile(std, 4), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# A whole run


def _split_file(tmp_path_factory):
    """Mock CIFAR-10 in 3 uneven tasks: 4, 3 and 3 classes."""
    spec = importlib.util.spec_from_file_location(
        "make_splits", REPO / "experiments" / "make_splits.py"
    )
    make_splits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_splits)
    content = make_splits._content(
        name="cifar10_natural_4+2x3",
        dataset="cifar10",
        dataset_labels="CIFAR-10 labels",
        permutation=list(range(10)),
        num_tasks=3,
        task_sizes=[4, 3, 3],
        description="test",
    )
    path = tmp_path_factory.getbasetemp() / "cifar10_uneven.json"
    path.write_text(json.dumps(content))
    return str(path)


def _run_config(split):
    return genifer_config(num_tasks=3, class_order=split, keep_checkpoints=20)


def test_run_compiles_each_step_once_draws_samples_and_resumes_inside_gan_training(
    finished_run, tmp_path_factory, tmp_path, monkeypatch
):
    """Three uneven tasks: two train steps and one GAN step compiled for the whole run (two GAN
    trainings); a sample grid per trained GAN; the classifier's matrix; and a copy of the run cut
    back to the middle of the first task's GAN training resumes to exactly the same end."""
    split = _split_file(tmp_path_factory)
    traces = []
    build = genifer_gan.build_gan_step

    def counting(*args, **kwargs):
        step = build(*args, **kwargs)

        def counted(*step_args):
            traces.append(1)
            return step(*step_args)

        return counted

    monkeypatch.setattr(genifer_gan, "build_gan_step", counting)
    whole, workdir = finished_run(_run_config(split))
    assert whole["traces"] == [1, 1]
    if traces:  # this worker ran the run (another may have): the GAN step traced once
        assert len(traces) == 1
    pngs = sorted(p.name for p in (workdir / "plots").glob("genifer_samples_*.png"))
    assert pngs == ["genifer_samples_task1.png", "genifer_samples_task2.png"]
    R = whole["matrices"][evaluate.CLASSIFIER]
    assert R.shape == (4, 3) and not np.isnan(R).any()

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(workdir, resumed_dir)
    # The GAN after task 1 saved its progress mid-way (the last save comes before its end).
    assert len(list((resumed_dir / "task_end" / "stage_0").iterdir())) == 1
    end_of_task1 = train.plan(_run_config(split), parallel.make_mesh(1)).stages[0].num_steps
    for p in (resumed_dir / "checkpoints").iterdir():
        if int(p.name) >= end_of_task1:  # killed inside the GAN training after task 1
            shutil.rmtree(p)
    assert any((resumed_dir / "checkpoints").iterdir())
    shutil.rmtree(resumed_dir / "task_end" / "stage_1", ignore_errors=True)
    resumed = run(_run_config(split), resumed_dir)
    chex.assert_trees_all_equal(whole["state"].params, resumed["state"].params)
    chex.assert_trees_all_equal(whole["state"].strategy, resumed["state"].strategy)
    np.testing.assert_array_equal(R, resumed["matrices"][evaluate.CLASSIFIER])


# ---------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"labels.fraction": 0.5}, "set --config.labels.fraction=1"),
        ({"genifer.replay_fraction": 0.0}, "keep at least one generated and one real row"),
        ({"genifer.gan.batch_size": 40}, "set a multiple of 32"),
        ({"genifer.gan.batch_size": 7}, "set an even size"),
        ({"genifer.gan.generator_channels": (8,) * 5}, "makes 16-pixel images"),
        ({"genifer.gan.generator_channels": (8,) * 6}, "set an odd count"),
        ({"objective": "simclr"}, "set --config.objective=supervised"),
    ],
)
def test_settings_that_cannot_work_are_rejected_before_compiling(overrides, message):
    with pytest.raises(ValueError, match=message):
        _parts(**overrides)


def test_gan_step_is_data_parallel(gan_parts):
    """The step on a batch sharded over 4 devices equals the step on one."""
    model, step, variables, gan_state, inputs = gan_parts
    args = (gan_state, variables, *_real(), inputs, jax.random.PRNGKey(4))
    expected = step(*args)
    mesh = parallel.make_mesh(4)
    rep, rows = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    sharded = jax.jit(
        step.__wrapped__, in_shardings=(rep, rep, rows, rows, rep, rep), out_shardings=(rep, rep)
    )(*args)
    chex.assert_trees_all_close(sharded, expected, rtol=2e-4, atol=2e-5)
