"""Genifer: the replay batch and loss, the GAN's step (a feature-driven discriminator, lazy R1 on
the features, generator distillation, ADA), and a whole run that resumes inside GAN training."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import initial_state, shipped_config, tiny_config, train_data

from cl_ssl import parallel, preemption, train
from cl_ssl import step as step_lib
from cl_ssl.data import augment
from cl_ssl.data.batch import TrainData, current_batch
from cl_ssl.data.sources import ArraySplit
from cl_ssl.evaluation import evaluate
from cl_ssl.losses import gan as gan_losses
from cl_ssl.models import gan
from cl_ssl.objectives import get_objective, resolve_config
from cl_ssl.strategies import (
    LossInputs,
    RowInputs,
    TaskEnd,
    generative,
    genifer,
    genifer_gan,
    get_strategy,
)
from cl_ssl.strategies.base import Progress

TINY_GAN = {
    "genifer.gan.batch_size": 8,
    "genifer.gan.latent_dim": 8,
    "genifer.gan.generator_channels": (8,) * 3,  # a 16-pixel constant, upsampled once
    "genifer.gan.constant_channels": 8,
    "genifer.gan.base_resolution": 16,
    "genifer.gan.discriminator_channels": (8, 8),
    "genifer.gan.discriminator_epilogue": 8,
    "genifer.gan.epochs_first": 2,
    "genifer.gan.epochs": 2,
    "genifer.gan.checkpoint_every": 2,  # of 4 iterations or more after the first task
}


def genifer_config(**overrides):
    settings = {
        "objective": "supervised",
        "strategy": "genifer",
        "labels.fraction": 1.0,
        "eval.evaluators": (),  # the classifier scores itself
    }
    return tiny_config(**{**settings, **TINY_GAN, **overrides})


def _parts(**overrides):
    config = resolve_config(genifer_config(**overrides))
    objective = get_objective(config)
    return config, objective, get_strategy(config, objective)


# ---------------------------------------------------------------------------------------------
# The replay batch and the classifier's loss


@pytest.fixture(scope="module")
def initial():
    """The initial strategy state and student variables (examples of classes 0-3 of 10)."""
    config, objective, strategy = _parts()
    images = np.asarray(train_data(8).images)  # random 32x32 images
    variables = objective.model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)
    # Mock CIFAR-10's 10 classes, so that the GAN step is the whole run's (a compile shared
    # through the persistent cache).
    train = ArraySplit(images=images, labels=np.arange(8) % 4, num_classes=10)
    init = jax.jit(lambda v, key: strategy.init(v, key, train))  # one compile, not op by op
    return config, objective, strategy, variables, init(variables, jax.random.PRNGKey(1))


def test_replay_rows_are_generated_old_class_pixels_after_the_kept_real_rows(initial):
    config, _, strategy, _, state = initial
    data = train_data(8, tasks=np.array([0, 0, 1, 1, 0, 0, 1, 1]))  # task 0: classes 0, 1
    batch = current_batch(data, jnp.arange(8))
    joined = strategy.extend_batch(
        RowInputs(state, batch, data, jax.random.PRNGKey(2), jnp.int32(1), {})
    )
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
    logits = logits[:, :4]  # tasks 0 and 1 hold classes 0-3
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -np.mean([log_p[i, int(batch.labels[i])] for i in range(4)])
    np.testing.assert_allclose(float(terms["ce"]), ce, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The GAN step


def test_class_fidelity_is_the_share_of_generated_images_given_their_class(initial):
    """Over the generator's seen classes, ``JUDGED_PER_CLASS`` replay-ready images each."""
    config, objective, _, _, state = initial
    replay = genifer.classifier_feature_replay(config, objective)
    buffers = dict(state.buffers[generative.BUFFERS])
    shapes = []

    def always(label):
        def logits_fn(images):
            shapes.append(images.shape)
            return jax.nn.one_hot(jnp.full((images.shape[0],), label), 10)

        return logits_fn

    buffers[generative.SEEN] = jnp.arange(10) < 2  # classes 0 and 1
    assert replay.class_fidelity(buffers, always(0), 3) == 50.0
    assert replay.class_fidelity(buffers, always(7), 3) == 0.0
    buffers[generative.SEEN] = jnp.arange(10) == 1
    assert replay.class_fidelity(buffers, always(1), 3) == 100.0
    assert shapes[0] == (2 * generative.JUDGED_PER_CLASS, 32, 32, 3)


@pytest.fixture(scope="module")
def gan_parts(initial):
    """(the step function, the run's jitted step, classifier variables, GanState, GanInputs of a
    second boundary)."""
    config, objective, strategy, variables, state = initial
    replay = genifer.classifier_feature_replay(config, objective)
    mesh = parallel.make_mesh(1)
    step = replay._step(10, 3, mesh)
    assert replay._step(10, 3, mesh) is step  # one per run
    raw = genifer_gan.build_gan_step(
        replay.gan(10, 3), replay._rgb_feature_map, mean=replay.view.mean, std=replay.view.std
    )
    gan_state = replay.gan(10, 3).restart(state.buffers[generative.BUFFERS][generative.GAN_STATE])
    inputs = genifer_gan.GanInputs(
        previous=gan_state.generator_ema,
        has_previous=jnp.asarray(True),
        old=jnp.arange(10) < 2,
        current=(jnp.arange(10) >= 2) & (jnp.arange(10) < 4),
        distill_weight=jnp.float32(10.0),
        rampup=jnp.float32(genifer_gan.ema_rampup(500, 8, 100)),
    )
    # Placed as the run places them, so that the step sees the same arguments every call.
    rep = parallel.replicated(mesh)
    variables, gan_state, inputs = jax.device_put((variables, gan_state, inputs), rep)
    return raw, step, variables, gan_state, inputs


def _copy(tree):
    """A copy of ``tree`` for a step that donates its state."""
    return jax.tree.map(jnp.copy, tree)


def _real(n=8):
    """A batch of real images and labels, sharded over one device as the run shards them."""
    images = np.random.default_rng(5).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    rows = parallel.batch_sharded(parallel.make_mesh(1))
    return jax.device_put((images, np.arange(n, dtype=np.int32) % 4), rows)


def test_discriminator_judges_feature_maps_never_pixels(gan_parts, monkeypatch):
    raw, step, variables, gan_state, inputs = gan_parts
    seen = []
    call = gan.FeatureDiscriminator.__call__

    def recording(self, features, labels):
        seen.append(features.shape)
        return call(self, features, labels)

    monkeypatch.setattr(gan.FeatureDiscriminator, "__call__", recording)
    jax.eval_shape(raw, gan_state, variables, *_real(), inputs, jax.random.PRNGKey(0))
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
    raw, step, variables, gan_state, inputs = gan_parts
    new, metrics = step(_copy(gan_state), variables, *_real(), inputs, jax.random.PRNGKey(0))
    assert float(metrics["r1"]) > 0
    assert float(metrics["g_distill"]) == pytest.approx(0.0, abs=1e-5)  # up to float rounding
    chex.assert_trees_all_equal(new.generator_ema, new.generator)
    _, later = step(_copy(new), variables, *_real(), inputs, jax.random.PRNGKey(1))
    assert float(later["r1"]) == 0.0 and float(later["g_distill"]) > 0
    first_boundary = jax.device_put(
        dataclasses.replace(
            inputs, has_previous=jnp.asarray(False), distill_weight=jnp.float32(0.0)
        ),
        parallel.replicated(parallel.make_mesh(1)),
    )
    _, first = step(new, variables, *_real(), first_boundary, jax.random.PRNGKey(2))
    assert float(first["g_loss"]) == pytest.approx(float(first["g_gan"]))  # no distillation
    assert step._cache_size() == 1  # every boundary's inputs have one shape: one compile


def test_r1_penalty_is_the_scaled_squared_gradient_norm():
    grads = np.random.default_rng(6).standard_normal((4, 2, 2, 3)).astype(np.float32)
    expected = 0.5 / 2 * np.mean(np.sum(grads.reshape(4, -1) ** 2, axis=1)) * 16 / 17
    got = gan_losses.r1_penalty(grads, gamma=0.5, interval=16)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    assert float(gan_losses.r1_penalty(grads, gamma=0.5)) == pytest.approx(expected * 17 / 16)


def test_gan_losses_and_distillation_against_hand_values():
    real, fake = np.array([0.0, 2.0]), np.array([-1.0, 1.0])
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    np.testing.assert_allclose(
        float(gan_losses.discriminator_loss(real, fake)),
        np.mean(softplus(fake)) + np.mean(softplus(-real)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        float(gan_losses.generator_loss(fake)), np.mean(softplus(-fake)), rtol=1e-6
    )
    x = np.random.default_rng(7).standard_normal((2, 4, 4, 3)).astype(np.float32)
    assert float(gan_losses.generator_distillation(x, x)) == 0.0
    np.testing.assert_allclose(float(gan_losses.generator_distillation(x, x + 0.5)), 0.5, rtol=1e-6)


def test_minibatch_std_matches_numpy():
    x = np.random.default_rng(9).standard_normal((8, 2, 2, 3)).astype(np.float32)
    out = np.asarray(gan.minibatch_std(jnp.asarray(x), group_size=4))
    groups = x.reshape(4, 2, 2, 2, 3)  # row i in group i % 2
    std = np.sqrt(((groups - groups.mean(0)) ** 2).mean(0) + 1e-8).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(out[..., :3], x)
    np.testing.assert_allclose(out[:, 0, 0, 3], np.tile(std, 4), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# A whole run


def test_run_draws_samples_and_scores_the_classifier_on_the_seen_classes(finished_run):
    """Two tasks: two train steps compiled; the GAN trained after the first task, its progress
    checkpointed before its end and its samples drawn; the classifier scored over the classes
    seen so far (the second task's are outside its layer after the first task)."""
    # One epoch a task, no checkpoint inside a task: the GAN's own are the point here.
    whole, workdir = finished_run(
        genifer_config(
            epochs_per_task=1, **{"optimizer.warmup_epochs": 0}, checkpoint_every_steps=1000
        )
    )
    assert whole["traces"] == [1, 1]
    assert [p.name for p in (workdir / "plots").glob("generated_samples_*.png")] == [
        "generated_samples_task1.png"
    ]
    assert len(list((workdir / "task_end" / "stage_0").iterdir())) == 1
    R = whole["matrices"][evaluate.CLASSIFIER]
    assert R.shape == (3, 2) and not np.isnan(R).any() and R[1, 1] == 0.0


class _Killed(Exception):
    pass


def test_gan_training_killed_after_a_checkpoint_resumes_exactly(initial, tmp_path, monkeypatch):
    """The GAN's training at a boundary, killed right after its checkpoint at iteration 2 of 4
    (``task_end/stage_0``, as the run writes it), or stopped by a signal after iteration 3, resumes
    from its checkpoint to the same state as a training never stopped; a diverging one stops at
    its first non-finite metrics."""
    config, objective, _, variables, state = initial
    replay = genifer.classifier_feature_replay(config, objective)
    mesh = parallel.make_mesh(1)
    images = np.asarray(train_data(16, seed=7).images)
    split = ArraySplit(images=images, labels=np.arange(16) % 2, num_classes=10)
    buffers = dict(state.buffers[generative.BUFFERS])
    buffers[generative.SEEN] = jnp.arange(10) < 2

    def end(progress):
        return TaskEnd(
            state=None,
            next_task=1,
            key=jax.random.PRNGKey(3),
            indices=np.arange(16, dtype=np.int32),
            train=split,
            features=None,
            map_images=None,
            mesh=mesh,
            progress=progress,
        )

    progress = train.task_end_progress(str(tmp_path / "killed"), 0, mesh)

    def save_then_die(iteration, tree):
        progress.save(iteration, tree)
        raise _Killed

    with pytest.raises(_Killed):
        replay._train(end(Progress(save_then_die, progress.restore)), buffers, variables)
    assert progress.restore(buffers[generative.GAN_STATE]) is not None
    resumed = replay._train(end(progress), buffers, variables)
    assert int(resumed.step) == 4
    fresh = train.task_end_progress(str(tmp_path / "whole"), 0, mesh)
    whole = replay._train(end(fresh), buffers, variables)
    chex.assert_trees_all_equal(whole, resumed)

    # A signal noticed after iteration 3: the loop saves there and stops; resumed, it ends the same.
    stopping = train.task_end_progress(
        str(tmp_path / "stopped"), 0, mesh, stop_requested=lambda iterations: iterations == 3
    )
    with pytest.raises(preemption.Stopped, match="saved at iteration 3 of 4"):
        replay._train(end(stopping), buffers, variables)
    stopped = train.task_end_progress(str(tmp_path / "stopped"), 0, mesh)
    chex.assert_trees_all_equal(whole, replay._train(end(stopped), buffers, variables))

    # Saved progress that no longer restores (damaged files): the loop starts over, to the same end.
    saved = tmp_path / "stopped" / "task_end"
    for path in [p for p in saved.rglob("*") if p.is_file() and "state" in p.parts]:
        path.write_bytes(b"damaged")
    assert stopped.restore(buffers[generative.GAN_STATE]) is None
    chex.assert_trees_all_equal(whole, replay._train(end(stopped), buffers, variables))

    # A GAN step whose losses turn non-finite stops the run at the first metrics, naming where.
    def diverging_step(gan_state, *args):
        return gan_state, {"d_loss": jnp.float32(jnp.nan), "g_loss": jnp.float32(1.0)}

    monkeypatch.setattr(type(replay), "_step", lambda self, *args: diverging_step)
    diverging = train.task_end_progress(str(tmp_path / "diverged"), 0, mesh)
    with pytest.raises(FloatingPointError, match="the GAN after task 1 diverged at iteration 1 "):
        replay._train(end(diverging), buffers, variables)


# ---------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"labels.fraction": 0.5}, "set --config.labels.fraction=1"),
        ({"genifer.replay_fraction": 0.0}, "keep at least one generated and one real row"),
        ({"genifer.gan.batch_size": 40}, "set a multiple of 32"),
        ({"genifer.gan.batch_size": 7}, "set an even size"),
        ({"genifer.gan.generator_channels": (8,) * 5}, "makes 64-pixel images"),
        ({"genifer.gan.generator_channels": (8,) * 4}, "set an odd count"),
        ({"objective": "simclr"}, "set --config.objective=supervised"),
        ({"genifer.gan.ema_rampup": "half"}, "ema_rampup='half'; choose among"),
        ({"genifer.gan.ada_space": "pixels"}, "ada_space='pixels': choose operations"),
        ({"genifer.replay_images": "int8"}, "replay_images='int8'; choose among"),
        ({"genifer.gan.ada_ops": ("xflip", "cutout")}, "choose operations among"),
    ],
)
def test_settings_that_cannot_work_are_rejected_before_compiling(overrides, message):
    with pytest.raises(ValueError, match=message):
        _parts(**overrides)


def test_minibatch_std_over_a_batch_sharded_on_four_devices():
    """The discriminator's only statistic across rows gives the same output when the batch is
    split over 4 devices (its groups then span devices)."""
    x = np.random.default_rng(11).standard_normal((8, 2, 2, 3)).astype(np.float32)
    expected = jax.jit(gan.minibatch_std)(x)
    mesh = parallel.make_mesh(4)
    rows = parallel.batch_sharded(mesh)
    sharded = jax.jit(gan.minibatch_std, in_shardings=rows, out_shardings=rows)(x)
    np.testing.assert_allclose(sharded, expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Generator replay for the self-supervised strategies


def test_self_supervised_strategy_replays_from_a_gan_on_the_backbone_layer_maps(monkeypatch):
    """cassle with replay.source=generator: the discriminator is sized for the backbone's last
    stage (the tiny ResNet has 2); at the end of the first task the GAN trains (its training is
    the genifer tests') against the student's backbone, after which its EMA generator replays
    and a sample grid is written; CaSSLe's teacher is kept; from the second task on
    ``replay.batch_size`` generated rows of the first task's classes join the batch."""
    config = resolve_config(
        tiny_config(
            strategy="cassle", **{"replay.source": "generator", "replay.batch_size": 4}, **TINY_GAN
        )
    )
    objective = get_objective(config)
    strategy = get_strategy(config, objective)
    split = ArraySplit(
        images=np.asarray(train_data(32).images), labels=np.arange(32) % 4, num_classes=4
    )
    tx = step_lib.make_tx(config, objective, strategy)
    state = initial_state(objective, strategy, tx, split)
    own = state.strategy.buffers[generative.BUFFERS]
    d_kernel = own[generative.GAN_STATE].discriminator["block0_conv0"]["kernel"]
    stage2 = objective.model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        jnp.zeros((1, 32, 32, 3)),
        method=generative.backbone_stage(2),
    )
    assert d_kernel.shape[2] == stage2.shape[-1]
    assert "teacher" in state.strategy.frozen  # CaSSLe's own state is kept

    images = []
    first_task = np.flatnonzero(split.labels < 2).astype(np.int32)
    end = TaskEnd(
        state=state,
        next_task=1,
        key=jax.random.PRNGKey(0),
        indices=first_task,
        train=split,
        features=None,
        map_images=None,
        mesh=parallel.make_mesh(1),
        progress=Progress(save=lambda step, tree: None, restore=lambda like: None),
        log_image=lambda name, image, tag: images.append((name, image.shape)),
    )
    trained_with = []

    def train(self, end, buffers, network):
        trained_with.append(network)
        moved = jax.tree.map(lambda x: x + 1.0, buffers[generative.GAN_STATE].generator_ema)
        return buffers[generative.GAN_STATE].replace(generator_ema=moved)

    monkeypatch.setattr(generative.GenerativeReplay, "_train", train)
    after = strategy.end_task(end)
    (network,) = trained_with
    chex.assert_trees_all_equal(network, {"params": state.params, "batch_stats": state.batch_stats})
    trained = after.buffers[generative.BUFFERS]
    chex.assert_trees_all_equal(
        trained[generative.GENERATOR], trained[generative.GAN_STATE].generator_ema
    )
    assert np.asarray(trained[generative.SEEN]).tolist() == [True, True, False, False]
    assert images == [("generated_samples_task1", (2 * 32, 8 * 32, 3))]
    assert "teacher" in after.frozen

    tasks = (split.labels >= 2).astype(np.int32)
    data = jax.device_put(
        TrainData(images=split.images, labels=split.labels, classes=split.labels, tasks=tasks)
    )
    batch = current_batch(data, jnp.arange(8))
    joined = jax.jit(lambda *inputs: strategy.extend_batch(RowInputs(*inputs)))(
        after, batch, data, jax.random.PRNGKey(1), jnp.int32(1), {}
    )
    assert joined.size == 12 and joined.images.dtype == jnp.uint8
    assert set(np.asarray(joined.labels[8:]).tolist()) <= {0, 1}


def test_upsample_is_bilinear_with_aligned_corners():
    """PyTorch's UpsamplingBilinear2d: output pixel i samples input position i (n - 1) / (2n - 1)."""
    x = np.random.default_rng(10).standard_normal((1, 3, 4, 2)).astype(np.float32)

    def at(v, pos):  # linear interpolation along axis 0 of v at fractional positions
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, v.shape[0] - 1)
        t = (pos - lo).reshape(-1, *([1] * (v.ndim - 1)))
        return v[lo] * (1 - t) + v[hi] * t

    rows = at(x[0], np.arange(6) * 2 / 5)
    expected = at(rows.transpose(1, 0, 2), np.arange(8) * 3 / 7).transpose(1, 0, 2)
    np.testing.assert_allclose(gan.upsample(jnp.asarray(x))[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"replay.source": "gan"}, r"replay.source='gan'; choose one of"),
        (
            {"replay.source": "generator", "strategy": "kaizen", "labels.fraction": 1.0},
            "joins rows of its own",
        ),
    ],
)
def test_generator_replay_settings_that_cannot_work(overrides, message):
    config = resolve_config(tiny_config(**{**TINY_GAN, **overrides}))
    with pytest.raises(ValueError, match=message):
        get_strategy(config, get_objective(config))


def test_preset_standardises_with_cifar100_statistics_and_skips_radams_first_steps():
    """configs/cifar100.py:genifer: the reference's CIFAR-100 mean and std
    (genifer/dataloader/constants.py l.12-14) in both views, and RAdam's later-task steps without
    the momentum-SGD warm-up (radam.py ``degenerated_to_sgd=False``)."""
    config = resolve_config(shipped_config("cifar100", "genifer"))
    for view in (config.augment.view1, config.augment.view2):
        assert tuple(view.mean) == (0.507, 0.487, 0.441)
        assert tuple(view.std) == (0.267, 0.256, 0.276)
    assert config.optimizer.later_tasks.kwargs.to_dict() == {"degenerated_to_sgd": False}
    tx = step_lib.make_tx(config)
    params = {"w": jnp.ones((3,))}
    state = tx.init(params)
    hyper = state.inner_states["default"].inner_state.hyperparams
    hyper["later_tasks"], hyper["learning_rate"] = jnp.float32(1.0), jnp.float32(1e-4)
    for _ in range(5):  # rho_t < 5: the parameters stay as they are
        updates, state = tx.update({"w": jnp.ones((3,))}, state, params)
        np.testing.assert_array_equal(updates["w"], 0.0)
    updates, state = tx.update({"w": jnp.ones((3,))}, state, params)
    assert np.all(np.asarray(updates["w"]) < 0)


def test_ema_ramp_spans_a_quarter_of_the_classifiers_batches_as_the_reference():
    """genifer_trainer.py l.122-127, 370-374: ramp = 500k / (64 * n_iter / 4 * len(train_loader))
    with the classifier's loader (batch 32, drop_last): on a 5,000-image task the horizon is full
    after 1026 * 156 / 4 = 40,014 generator steps, half of the 80,028 GAN iterations; the
    'quarter' option: a quarter of them."""
    config = resolve_config(shipped_config("cifar100", "genifer"))
    c = config.genifer.gan
    assert (config.batch_size, c.batch_size, c.epochs, c.ema_rampup) == (32, 64, 1026, "reference")
    official = 500 * 1000 / (64 * 1026 / 4 * (5000 // 32))
    steps = genifer_gan.ema_rampup_steps(config, 1, 5000)
    rampup = genifer_gan.ema_rampup(c.ema_kimg, c.batch_size, steps)
    assert rampup == pytest.approx(official, rel=1e-12)
    assert 64 * 40013 * rampup < 500_000 <= 64 * 40014 * rampup * (1 + 1e-12)
    beta = genifer_gan.ema_beta(jnp.int32(60000), batch=64, ema_kimg=500, rampup=rampup)
    assert float(beta) == pytest.approx(0.5 ** (64 / 500_000))
    assert genifer_gan.iterations(config, 1, 5000) == 80028
    config.genifer.gan.ema_rampup = "quarter"
    assert genifer_gan.ema_rampup_steps(config, 1, 5000) == 80028  # full after 20,007 steps
    # A task smaller than the classifier's batch: no step, and no division by zero.
    config.genifer.gan.ema_rampup = "reference"
    assert genifer_gan.ema_rampup_steps(config, 1, 31) == 0
    assert genifer_gan.ema_rampup(c.ema_kimg, c.batch_size, 0) == 500 * 1000 / (64 / 4)


def test_generated_rows_share_one_crop_and_flip_and_stay_in_float(initial):
    """replay_images='float' (genifer_trainer.py l.145-150, 790-800): the views of the generated
    rows are the float images, clamped to valid pixels, all cropped at one offset and flipped or
    not together; the real rows' views are the step's; 'uint8' leaves the step's views alone."""
    _, objective, strategy, _, state = initial
    view = objective.views[0]
    images = jnp.asarray(np.random.default_rng(3).standard_normal((5, 32, 32, 3)), jnp.float32)
    out = np.asarray(genifer.crop_and_flip_together(jax.random.PRNGKey(4), images, view))
    padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)), mode="edge")
    windows = [
        (top, left, flip)
        for top in range(9)
        for left in range(9)
        for flip in (False, True)
        if all(
            np.allclose(
                out[r],
                (lambda w: w[:, ::-1] if flip else w)(padded[r, top : top + 32, left : left + 32]),
            )
            for r in range(5)
        )
    ]
    assert len(windows) >= 1  # one window and flip fits every row

    data = train_data(8, tasks=np.array([0, 0, 1, 1, 0, 0, 1, 1]))
    batch = current_batch(data, jnp.arange(8))
    rows = RowInputs(state, batch, data, jax.random.PRNGKey(2), jnp.int32(1), {})
    joined = strategy.extend_batch(rows)
    views = (augment.augment_batch(jax.random.PRNGKey(5), joined.images, view),) * 2
    new = strategy.transform_views(views, joined, rows)
    np.testing.assert_array_equal(new[0][:4], views[0][:4])
    generated = np.asarray(new[0][4:]) * np.asarray(view.std) + np.asarray(view.mean)
    assert generated.min() >= -1e-5 and generated.max() <= 1 + 1e-5
    assert not np.allclose(generated * 255, np.round(generated * 255), atol=1e-3)  # not pixels
    _, _, as_pixels = _parts(**{"genifer.replay_images": "uint8"})
    assert as_pixels.transform_views is None
