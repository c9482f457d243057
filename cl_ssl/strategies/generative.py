"""Generative replay: a class-conditional GAN trained at every task boundary against a frozen
network's feature maps (Genifer's feature-driven GAN, ``cl_ssl.strategies.genifer_gan``), whose
images of earlier classes stand in for an exemplar memory.

``GenerativeReplay`` holds what Genifer and the self-supervised strategies share: the GAN's
state, its training at a boundary (with its progress bar and checkpoints), the generated replay
rows, and the grid of samples written after each boundary. ``with_generator_replay`` adds it to a
self-supervised strategy (``--config.replay.source=generator``): from the second task on,
``replay.batch_size`` generated images of earlier classes join every batch, as a memory's rows
would; the GAN judges the backbone's layer3 maps (BatchNorm in inference mode) of real and
generated images. The generator is conditioned on the data set's classes, as the class-based
memory policies read them (``TrainData.classes``), whether or not the learner sees the labels.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging

from cl_ssl import parallel, preemption
from cl_ssl.data.augment import ViewConfig, normalize
from cl_ssl.data.batch import Batch, join
from cl_ssl.data.sources import ArraySplit
from cl_ssl.models import resnet
from cl_ssl.objectives import Objective
from cl_ssl.state import StrategyState
from cl_ssl.strategies import genifer_gan, supervised
from cl_ssl.strategies.base import RowInputs, Strategy, TaskEnd

PyTree = Any
SAMPLES_PER_CLASS = 8
"""Columns of the grid of generated samples."""
JUDGED_PER_CLASS = 64
"""Generated images per class that ``GenerativeReplay.class_fidelity`` classifies."""
GAN_STATE = "gan"
GENERATOR = "generator"
"""Keys of the GAN's state and of the EMA generator that replays, in the strategy's buffers."""
SEEN = "seen_classes"
"""Key of the classes seen so far (bool [C]) in the strategy's buffers."""
BUFFERS = "generative_replay"
"""The key of a strategy's buffers that ``GenerativeReplay`` keeps (its own dictionary)."""


def to_pixels(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Generated images float [B, H, W, C] in the standardised space -> uint8 [B, H, W, C],
    clamped to [0, 1] first (the reference's clamp to the normalised range)."""
    unit = jnp.clip(images * std + mean, 0.0, 1.0)
    return jnp.round(unit * 255.0).astype(jnp.uint8)


@dataclasses.dataclass(frozen=True, eq=False)
class GenerativeReplay:
    """The GAN of a run and its use at the boundaries.

    Attributes:
      config: the run's config (``config.genifer.gan``, ``seed``, ``num_tasks``, ...).
      feature_map: (frozen network's variables, images float [B, S, S, 3] standardised) -> the
        feature map the discriminator judges.
      view: the view whose crop size and standardisation the network reads.
    """

    config: ml_collections.ConfigDict
    feature_map: Callable[[PyTree, jax.Array], jax.Array]
    view: ViewConfig

    # Cached per instance (eq=False: hashed by identity); a strategy holds one for a run.
    @functools.cache  # noqa: B019
    def gan(self, num_classes: int, channels: int) -> genifer_gan.Gan:
        return genifer_gan.make_gan(self.config, num_classes, channels)

    @functools.cache  # noqa: B019
    def _step(self, num_classes: int, channels: int, mesh: jax.sharding.Mesh):
        """The jitted GAN step, built once per run (every boundary reuses its compilation)."""
        rep, rows = parallel.replicated(mesh), parallel.batch_sharded(mesh)
        fn = genifer_gan.build_gan_step(
            self.gan(num_classes, channels),
            self._rgb_feature_map,
            mean=tuple(self.view.mean),
            std=tuple(self.view.std),
        )
        return jax.jit(
            fn,
            in_shardings=(rep, rep, rows, rows, rep, rep),
            out_shardings=(rep, rep),
            donate_argnums=0,
        )

    @functools.cache  # noqa: B019
    def _sampler(self, num_classes: int, channels: int):
        return jax.jit(self.gan(num_classes, channels).generate)

    def _rgb_feature_map(self, variables, images):
        return self.feature_map(variables, jnp.broadcast_to(images, (*images.shape[:-1], 3)))

    def standardisation(self, channels: int) -> tuple[jax.Array, jax.Array]:
        """The view's mean and std for ``channels``-channel images."""
        mean = jnp.asarray(self.view.mean, jnp.float32)[:channels]
        std = jnp.asarray(self.view.std, jnp.float32)[:channels]
        return mean, std

    def init(self, variables: PyTree, key: jax.Array, train: ArraySplit) -> dict[str, PyTree]:
        """The buffers at the start of the run: the GAN's first draw (its discriminator sized for
        the feature map of ``variables``' network), a copy of its generator, no class seen."""
        num_classes, channels = train.num_classes, train.images.shape[-1]
        crop = self.view.crop_size
        shape = jax.eval_shape(
            self._rgb_feature_map,
            variables,
            jax.ShapeDtypeStruct((2, crop, crop, channels), jnp.float32),
        )
        gan_state = self.gan(num_classes, channels).init(key, shape)
        return {
            GAN_STATE: gan_state,
            GENERATOR: jax.tree.map(jnp.copy, gan_state.generator_ema),
            SEEN: jnp.zeros((num_classes,), bool),
        }

    def generated(
        self, buffers: PyTree, data, key: jax.Array, task: jax.Array, n: int, channels: int
    ) -> tuple[jax.Array, jax.Array]:
        """``n`` images of the EMA generator of the classes of tasks before ``task``, float32
        [n, S, S, channels] in the standardised space, clamped to the range of [0, 1] pixels (the
        reference's clamp to the normalised range, ``genifer_trainer.py`` l.790-799), and their
        classes int32 [n]; inside the jitted step."""
        num_classes = buffers[SEEN].shape[0]
        gan = self.gan(num_classes, channels)
        k_labels, k_z, k_noise = jax.random.split(key, 3)
        old = supervised.seen_classes(data, task - 1, num_classes)
        labels = genifer_gan.sample_labels(k_labels, old, n)
        z = jax.random.normal(k_z, (n, gan.generator.latent_dim))
        images = gan.generate(buffers[GENERATOR], z, labels, gan.generator.sample_noise(k_noise, n))
        mean, std = self.standardisation(channels)
        return jnp.clip(images, -mean / std, (1.0 - mean) / std), labels

    def rows(
        self, buffers: PyTree, data, key: jax.Array, task: jax.Array, n: int, channels: int
    ) -> Batch:
        """``n`` generated rows of the classes of tasks before ``task`` (``generated``'s images as
        uint8 pixels, ``as_rows``), inside the jitted step."""
        return self.as_rows(*self.generated(buffers, data, key, task, n, channels))

    def as_rows(self, images: jax.Array, labels: jax.Array) -> Batch:
        """Batch rows of ``generated``'s images (as uint8 pixels) and classes (as labels), ids
        and tasks -1."""
        n, channels = images.shape[0], images.shape[-1]
        return Batch(
            images=to_pixels(images, *self.standardisation(channels)),
            labels=labels,
            ids=jnp.full((n,), -1, jnp.int32),
            tasks=jnp.full((n,), -1, jnp.int32),
            valid=jnp.ones((n,), bool),
        )

    def end_task(self, end: TaskEnd, buffers: PyTree, network: PyTree) -> PyTree:
        """The buffers for the next stage: the classes seen, and, unless the finished task was the
        last, the GAN trained against ``network``'s feature maps (its variables) and its new EMA
        generator, with a grid of samples."""
        seen = np.asarray(buffers[SEEN]).copy()
        seen[np.unique(end.train.labels[end.indices])] = True
        buffers = {**buffers, SEEN: jnp.asarray(seen)}
        if end.next_task >= self.config.num_tasks:  # no task left to replay for
            return buffers
        gan_state = self._train(end, buffers, network)
        buffers = {
            **buffers,
            GAN_STATE: gan_state,
            GENERATOR: jax.tree.map(jnp.copy, gan_state.generator_ema),
        }
        self._write_samples(end, buffers)
        return buffers

    def _train(self, end: TaskEnd, buffers: PyTree, network: PyTree) -> genifer_gan.GanState:
        mesh, finished = end.mesh, end.next_task - 1
        seen = np.asarray(buffers[SEEN])
        current = np.zeros_like(seen)
        current[np.unique(end.train.labels[end.indices])] = True
        old = seen & ~current
        num_classes, channels = seen.shape[0], end.train.images.shape[-1]
        gan = self.gan(num_classes, channels)
        c = self.config.genifer.gan
        total = genifer_gan.iterations(self.config, finished, len(end.indices))
        if c.ema_kimg * 1000 > c.batch_size * total:
            logging.warning(
                "genifer.gan.ema_kimg=%s: the EMA generator that replays averages over more "
                "images than the %d the GAN trains on after task %d, so it stays close to its "
                "first draw; lower it to a few percent of them (the reference: 500 of 16,000)",
                c.ema_kimg,
                c.batch_size * total,
                finished + 1,
            )
        rep = parallel.replicated(mesh)
        inputs = genifer_gan.GanInputs(
            previous=buffers[GENERATOR],
            has_previous=jnp.asarray(finished > 0),
            old=jnp.asarray(old),
            current=jnp.asarray(current),
            distill_weight=jnp.asarray(
                c.distill_weight * old.sum() / current.sum() if finished > 0 else 0.0,
                jnp.float32,
            ),
            rampup=jnp.asarray(
                genifer_gan.ema_rampup(
                    c.ema_kimg,
                    c.batch_size,
                    genifer_gan.ema_rampup_steps(self.config, finished, len(end.indices)),
                ),
                jnp.float32,
            ),
        )
        gan_state = gan.restart(buffers[GAN_STATE])
        restored = end.progress.restore(gan_state)
        if restored is not None:
            gan_state = restored
        step = self._step(num_classes, channels, mesh)
        network, gan_state, inputs = jax.device_put((network, gan_state, inputs), rep)
        key = jax.random.fold_in(jax.random.fold_in(end.key, finished), 0x6A4)
        per_epoch = len(end.indices) // c.batch_size
        first = int(gan_state.step)
        bar = tqdm.tqdm(
            total=total,
            initial=first,
            unit="it",
            dynamic_ncols=True,
            desc=f"GAN after task {finished + 1}",
            disable=not (self.config.progress_bar and jax.process_index() == 0),
        )
        order, order_epoch = None, -1
        for it in range(first, total):
            epoch, position = divmod(it, per_epoch)
            if epoch != order_epoch:
                order = genifer_gan.epoch_order(self.config.seed, finished, epoch, end.indices)
                order_epoch = epoch
            ids = order[position * c.batch_size : (position + 1) * c.batch_size]
            images = parallel.gather_batch(mesh, end.train.images, ids)
            labels = parallel.global_batch(mesh, end.train.labels[ids].astype(np.int32))
            gan_state, metrics = step(
                gan_state, network, images, labels, inputs, jax.random.fold_in(key, it)
            )
            bar.update(1)
            done = it + 1
            if done % self.config.log_every_steps == 0 or done == total:
                values = {k: float(v) for k, v in metrics.items()}
                if not all(np.isfinite(v) for v in values.values()):
                    raise FloatingPointError(
                        f"the GAN after task {finished + 1} diverged at iteration {done} "
                        f"({values}); lower genifer.gan.lr or raise genifer.gan.r1_gamma"
                    )
                bar.set_postfix(
                    d=f"{values['d_loss']:.3f}",
                    g=f"{values['g_loss']:.3f}",
                    p=f"{values['ada_p']:.3f}",
                )
                end.log_scalars(
                    {f"gan_after_task{finished + 1}/{k}": v for k, v in values.items()}, done
                )
            stop = done < total and end.progress.stop_requested(done)
            if (done % c.checkpoint_every == 0 and done < total) or stop:
                end.progress.save(done, gan_state)
            if stop:
                bar.close()
                raise preemption.Stopped(
                    f"the GAN after task {finished + 1} saved at iteration {done} of {total}"
                )
        bar.close()
        return gan_state

    def _draw(
        self, buffers: PyTree, per_class: int, key: jax.Array, channels: int
    ) -> tuple[jax.Array, jax.Array]:
        """``per_class`` images of the EMA generator for every seen class, as replay draws them
        (uint8 pixels [N, S, S, channels], clamped), and their classes (int32 [N], in order)."""
        seen = np.flatnonzero(np.asarray(buffers[SEEN]))
        num_classes = buffers[SEEN].shape[0]
        gan = self.gan(num_classes, channels)
        labels = jnp.repeat(jnp.asarray(seen, jnp.int32), per_class)
        z = jax.random.normal(key, (labels.shape[0], gan.generator.latent_dim))
        noise = gan.generator.sample_noise(jax.random.fold_in(key, 1), labels.shape[0])
        images = self._sampler(num_classes, channels)(buffers[GENERATOR], z, labels, noise)
        return to_pixels(images, *self.standardisation(channels)), labels

    def class_fidelity(
        self, buffers: PyTree, logits_fn: Callable[[jax.Array], jax.Array], channels: int
    ) -> float:
        """The share, in percent, of the EMA generator's images of the seen classes
        (``JUDGED_PER_CLASS`` each, as replay draws them, standardised, not augmented) that
        ``logits_fn`` (images float [B, S, S, 3] -> logits [B, C]) assigns to the class they were
        drawn for: whether the images carry their class as the classifier sees it, which replay
        needs to transfer anything. (The reference logs a related figure, the new model's
        agreement with the previous one on generated images: kevthan/feature-driven-image-replay
        ``genifer_trainer.py::test``.)"""
        pixels, labels = self._draw(buffers, JUDGED_PER_CLASS, jax.random.PRNGKey(1), channels)
        logits = logits_fn(normalize(pixels, mean=self.view.mean, std=self.view.std))
        return 100.0 * float(jnp.mean(jnp.argmax(logits, axis=-1) == labels))

    def _write_samples(self, end: TaskEnd, buffers: PyTree) -> None:
        """A grid of the EMA generator's samples, one row per seen class, the same codes after
        every task."""
        channels = end.train.images.shape[-1]
        pixels, labels = self._draw(buffers, SAMPLES_PER_CLASS, jax.random.PRNGKey(0), channels)
        pixels = np.asarray(pixels)
        rows = len(labels) // SAMPLES_PER_CLASS
        h, w = pixels.shape[1:3]
        grid = pixels.reshape(rows, SAMPLES_PER_CLASS, h, w, channels)
        grid = grid.transpose(0, 2, 1, 3, 4).reshape(rows * h, SAMPLES_PER_CLASS * w, channels)
        end.log_image(f"generated_samples_task{end.next_task}", grid, "generated_samples")


def backbone_stage(stage: int) -> Callable[..., jax.Array]:
    """An ``SSLModel`` method: the output of its backbone's stage ``stage`` (1-based), BatchNorm
    in inference mode."""

    def method(model, images):
        return model.backbone.stages(images, False)[stage - 1]

    return method


def with_generator_replay(
    strategy: Strategy, config: ml_collections.ConfigDict, objective: Objective
) -> Strategy:
    """``strategy`` (one that joins no rows of its own) with generated replay rows from the second
    task on: ``replay.batch_size`` images of earlier classes from a GAN trained at every boundary
    against the backbone's stage ``replay.generator_stage`` maps."""
    if strategy.extend_batch is not None and strategy.name != "replay":
        raise ValueError(
            f"strategy {strategy.name!r} joins rows of its own to the batch; "
            "replay.source='generator' joins generated rows to a strategy that does not (finetune, "
            "cassle, pfr) or replaces the memory of strategy 'replay'"
        )
    r = config.replay
    view = objective.views[0]
    stage = resnet.feature_map_stage(
        objective.model.backbone, r.generator_stage, "replay.generator_stage"
    )
    method = backbone_stage(stage)
    replay = GenerativeReplay(
        config=config,
        feature_map=lambda variables, images: objective.model.apply(
            variables, images, method=method
        ),
        view=view,
    )
    base = strategy if strategy.name != "replay" else Strategy(name="replay")
    genifer_gan.check_config(config, view.crop_size)

    def init(variables, key, train):
        state = base.init(variables, key, train)
        own = replay.init(variables, jax.random.fold_in(key, 0x6A4), train)
        return state.replace(buffers={**state.buffers, BUFFERS: own})

    def extend_batch(inputs: RowInputs):
        own, batch = inputs.state.buffers[BUFFERS], inputs.batch
        channels = batch.images.shape[-1]
        rows = replay.rows(own, inputs.data, inputs.key, inputs.task, r.batch_size, channels)
        return join(batch, rows)

    def end_task(end: TaskEnd) -> StrategyState:
        own = end.state.strategy.buffers[BUFFERS]
        network = {"params": end.state.params, "batch_stats": end.state.batch_stats}
        own = replay.end_task(end, own, network)
        state = base.end_task(end)
        return state.replace(buffers={**state.buffers, BUFFERS: own})

    return dataclasses.replace(
        base,
        init=init,
        extend_batch=extend_batch,
        extends_batch_from=1,
        end_task=end_task,
    )
