"""The GAN training of Genifer's boundaries: one jitted step that updates the feature-driven
discriminator and then the generator, and the host loop that runs it over a task's images.

Reference: kevthan/feature-driven-image-replay ``genifer/trainers/genifer_trainer.py::
prepare_next_training`` (``sample_d_inputs``, ``_get_r1``, ``update_ada``). Per iteration, on a
batch of real images of the finished task (standardised, not augmented):

1. Discriminator. Its "real" side is the batch; from the second task on, half of it is replaced by
   images of old classes from the previous generator (the 0.5 is hard-coded in the reference). The
   codes of the fake side follow the same split: old-class labels for the first half (current-
   task labels at the first task), current-task labels for the rest, uniformly; z ~ N(0, I). Both
   sides pass through ADA (``cl_ssl.data.ada``: StyleGAN2-ADA's twelve operations on the
   standardised images, l.1246-1253) and the frozen classifier (BatchNorm in inference mode) to
   its feature map h; L_D = mean softplus(D(h_fake)) + mean softplus(-D(h_real)), plus every 16
   iterations R1 = (gamma / 2) * (16 / 17) * mean ||grad_h D(h_real)||^2 on the features. ADA's p
   moves towards r_t = 0.5 every 4 iterations.
2. Generator, on the same codes with explicit noise maps: L_G = mean softplus(-D(h(aug(G(z, c)))))
   + lambda_GD * mean |G(z_old, c_old; n) - G_prev(z_old, c_old; n)| on the old-class half, with
   lambda_GD = 10 * n_old / n_new from the second task on (``gen_coefficient`` 10,
   ``gen_dist_ada``).
3. The EMA generator: beta = 0.5^(B / n_ema), n_ema = min(500k, B * k * ramp) images after k
   generator steps, ramped up over epochs * L / 4 steps, L the batches per epoch of the
   *classifier's* loader (batch 32, ``drop_last``), which the reference divides by
   (``genifer_trainer.py`` l.122-127 and l.370-374: ``len(train_loader)``, the loader the trainer
   is given, not the GAN's batch-64 one): about half the boundary's GAN iterations. The EMA copy
   is the one that replays. ``genifer.gan.ema_rampup='quarter'`` is this library's alternative:
   the ramp over a quarter of the GAN's own iterations, as ``ema_rampup_div = 4`` reads.

Adam for both networks: generator lr 0.0025, betas (0, 0.99); discriminator lr 0.0025 * 16/17,
betas (0, 0.99^(16/17)) (lazy R1's correction).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cl_ssl.data import ada
from cl_ssl.data import augment as augment_lib
from cl_ssl.losses import gan as gan_losses
from cl_ssl.models import gan

PyTree = Any

R1_INTERVAL = 16
"""Iterations between two lazy R1 penalties (``r1_interval``)."""
LAZY = R1_INTERVAL / (R1_INTERVAL + 1)
EMA_RAMPUP_DIVISOR = 4
"""The EMA horizon reaches its full length after epochs * L / 4 generator steps
(``ema_rampup_div``; L: see ``ema_rampup_steps``)."""
EMA_RAMPUPS = ("reference", "quarter")
"""Values of ``genifer.gan.ema_rampup`` (``ema_rampup_steps``)."""


def default_config() -> ml_collections.ConfigDict:
    """``config.genifer.gan``: Genifer's CIFAR-100 settings (``genifer/config/examples/
    incremental_training.json``; ``genifer_trainer.py``'s defaults where it sets none)."""
    return ml_collections.ConfigDict(
        dict(
            batch_size=64,
            latent_dim=512,
            generator_channels=(512, 256, 256, 128, 128, 64, 64),
            constant_channels=512,
            base_resolution=4,
            discriminator_channels=(256, 512),
            discriminator_epilogue=512,
            lr=0.0025,
            r1_gamma=0.5,
            ema_kimg=500,
            # 'reference': the EMA ramp spans epochs x (the classifier's batches per epoch) / 4
            # GAN steps, about half of them; 'quarter': a quarter of the GAN's iterations.
            ema_rampup="reference",
            ada_target=0.5,
            ada_max_p=0.5,
            # ADA's operations (cl_ssl.data.ada.OPS: the reference's twelve) and the space they
            # act in: 'standardised' (the reference: the classifier's input as it is) or 'signed'
            # ([-1, 1] pixels, this library's alternative).
            ada_ops=ada.OPS,
            ada_space="standardised",
            distill_weight=10.0,
            # Epochs over the task's images: 642 at the first task, 1026 later (about 16M and
            # 5M images on CIFAR-100's 25k and 5k).
            epochs_first=642,
            epochs=1026,
            checkpoint_every=1000,
        )
    )


@flax.struct.dataclass
class GanState:
    """Everything the GAN training carries: the networks, their optimizers and ADA.

    Attributes:
      generator: G's params (trained).
      generator_ema: the EMA copy, which replays.
      discriminator: D's params.
      g_opt: G's Adam state.
      d_opt: D's Adam state.
      ada_p: float32 [], ADA's probability.
      ada_signs: float32 [4], the mean sign of D(real) of the latest iterations.
      step: int32 [], iterations done at the current boundary.
    """

    generator: PyTree
    generator_ema: PyTree
    discriminator: PyTree
    g_opt: PyTree
    d_opt: PyTree
    ada_p: jax.Array
    ada_signs: jax.Array
    step: jax.Array


@dataclasses.dataclass(frozen=True)
class Gan:
    """Genifer's generator and discriminator with their optimizers, for one run."""

    generator: gan.Generator
    discriminator: gan.FeatureDiscriminator
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation
    config: ml_collections.ConfigDict

    def init(self, key: jax.Array, feature_map: jax.ShapeDtypeStruct) -> GanState:
        """The networks' first draw (D sized for ``feature_map`` [B, H, W, C])."""
        k_g, k_d = jax.random.split(key)
        g = self.generator
        z = jnp.zeros((2, g.latent_dim))
        labels = jnp.zeros((2,), jnp.int32)
        g_params = g.init(k_g, z, labels, g.sample_noise(k_g, 2))["params"]
        h = jnp.zeros((2, *feature_map.shape[1:]))
        d_params = self.discriminator.init(k_d, h, labels)["params"]
        return GanState(
            generator=g_params,
            generator_ema=jax.tree.map(jnp.copy, g_params),
            discriminator=d_params,
            g_opt=self.g_tx.init(g_params),
            d_opt=self.d_tx.init(d_params),
            ada_p=jnp.zeros((), jnp.float32),
            ada_signs=jnp.zeros((ada.ADJUST_INTERVAL,), jnp.float32),
            step=jnp.zeros((), jnp.int32),
        )

    def restart(self, state: GanState) -> GanState:
        """The state at the start of a boundary's training: G restarts from its EMA copy
        (``prepare_next_training``), fresh optimizers, ADA's p at 0 (``update``); D carries on.
        Every array is new, so that the training loop may donate it."""
        state = jax.tree.map(jnp.copy, state)
        g_params = jax.tree.map(jnp.copy, state.generator_ema)
        return state.replace(
            generator=g_params,
            g_opt=self.g_tx.init(g_params),
            d_opt=self.d_tx.init(state.discriminator),
            ada_p=jnp.zeros_like(state.ada_p),
            ada_signs=jnp.zeros_like(state.ada_signs),
            step=jnp.zeros_like(state.step),
        )

    def generate(
        self, params: PyTree, z: jax.Array, labels: jax.Array, noise: list[jax.Array]
    ) -> jax.Array:
        """G's images float32 [B, S, S, 3] in the classifier's standardised space."""
        return self.generator.apply({"params": params}, z, labels, noise)


def make_gan(config: ml_collections.ConfigDict, num_classes: int, channels: int) -> Gan:
    """The generator (of ``channels``-channel images, the data set's), discriminator and Adam
    optimizers of ``config.genifer.gan``."""
    c = config.genifer.gan
    generator = gan.Generator(
        num_classes=num_classes,
        image_channels=channels,
        latent_dim=c.latent_dim,
        channels=tuple(c.generator_channels),
        constant_channels=c.constant_channels,
        base_resolution=c.base_resolution,
    )
    discriminator = gan.FeatureDiscriminator(
        num_classes=num_classes,
        channels=tuple(c.discriminator_channels),
        epilogue_channels=c.discriminator_epilogue,
    )
    return Gan(
        generator=generator,
        discriminator=discriminator,
        g_tx=optax.adam(c.lr, b1=0.0, b2=0.99, eps=1e-8),
        d_tx=optax.adam(c.lr * LAZY, b1=0.0, b2=0.99**LAZY, eps=1e-8),
        config=c,
    )


def sample_labels(key: jax.Array, classes: jax.Array, n: int) -> jax.Array:
    """int32 [n] labels drawn uniformly from the classes where ``classes`` (bool [C])."""
    return jax.random.categorical(key, jnp.where(classes, 0.0, -jnp.inf), shape=(n,)).astype(
        jnp.int32
    )


def ema_beta(generator_steps: jax.Array, *, batch: int, ema_kimg: float, rampup: float):
    """The EMA's beta after ``generator_steps`` steps: 0.5^(batch / n_ema), n_ema =
    min(ema_kimg * 1000, batch * steps * rampup) images (``prepare_next_training``)."""
    n_ema = jnp.minimum(ema_kimg * 1000.0, batch * generator_steps * rampup)
    return 0.5 ** (batch / jnp.maximum(n_ema, 1e-8))


def ema_rampup(ema_kimg: float, batch: int, iterations: int) -> float:
    """The ramp-up factor that brings the EMA horizon to ``ema_kimg`` thousand images after
    ``iterations / 4`` generator steps of ``batch`` images (``genifer_trainer.py`` l.123-127);
    ``iterations`` 0 (a task smaller than a batch) counts as 1, the factor of no step."""
    return ema_kimg * 1000.0 / (batch * max(iterations, 1) / EMA_RAMPUP_DIVISOR)


def ema_rampup_steps(config: ml_collections.ConfigDict, boundary: int, num_images: int) -> int:
    """The ``iterations`` of ``ema_rampup`` at ``boundary`` on ``num_images`` images: with
    ``genifer.gan.ema_rampup='reference'`` the GAN's epochs times the classifier's full batches
    per epoch (``config.batch_size``; the reference's ``n_iter * len(train_loader)``,
    ``genifer_trainer.py`` l.126 and l.373), with 'quarter' the GAN's own iterations."""
    if config.genifer.gan.ema_rampup == "quarter":
        return iterations(config, boundary, num_images)
    return _epochs(config, boundary) * (num_images // config.batch_size)


@dataclasses.dataclass(frozen=True)
class GanInputs:
    """What the GAN step reads besides its state (fixed shapes, so one compile serves every task).

    Attributes:
      previous: the previous generator's params (the EMA copy of the last boundary).
      has_previous: bool [], whether there is a previous task (the second boundary on).
      old: bool [C], the classes of the earlier tasks.
      current: bool [C], the classes of the finished task.
      distill_weight: float32 [], lambda_GD (0 at the first boundary).
      rampup: float32 [], the EMA ramp-up factor of the boundary.
    """

    previous: PyTree
    has_previous: jax.Array
    old: jax.Array
    current: jax.Array
    distill_weight: jax.Array
    rampup: jax.Array


jax.tree_util.register_dataclass(
    GanInputs,
    data_fields=["previous", "has_previous", "old", "current", "distill_weight", "rampup"],
    meta_fields=[],
)


def build_gan_step(
    g: Gan,
    features: Callable[[PyTree, jax.Array], jax.Array],
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Callable[..., tuple[GanState, dict[str, jax.Array]]]:
    """(GanState, classifier variables, real images uint8 [B, S, S, C], real labels int [B],
    GanInputs, key) -> (new GanState, metrics): one discriminator and one generator update.
    ``features(variables, images float [B, S, S, 3] standardised)`` is the frozen classifier's
    feature map; ``mean`` and ``std`` its input's standardisation (3 entries)."""
    c = g.config
    gen = g.generator

    def rgb(images):
        return jnp.broadcast_to(images, (*images.shape[:-1], 3))

    def augment(key, images, p):
        return ada.ada_augment(
            key, rgb(images), p, mean=mean, std=std, space=c.ada_space, ops=tuple(c.ada_ops)
        )

    def step(state: GanState, classifier, real, real_labels, inputs: GanInputs, key):
        batch = real.shape[0]
        half = batch // 2
        real = augment_lib.normalize(real, mean=mean, std=std)
        keys = jax.random.split(key, 9)
        prev_half = inputs.has_previous & (jnp.arange(batch) < half)

        # Codes: old classes for the first half from the second boundary on, current ones
        # otherwise (``sample_d_inputs``).
        labels = jnp.where(
            prev_half,
            sample_labels(keys[0], inputs.old, batch),
            sample_labels(keys[1], inputs.current, batch),
        )
        z = jax.random.normal(keys[2], (batch, gen.latent_dim))

        # The real side: old-class images of the previous generator, then real ones.
        replayed = g.generate(inputs.previous, z, labels, gen.sample_noise(keys[3], batch))
        real_images = jnp.where(prev_half[:, None, None, None], rgb(replayed), real)
        real_labels = jnp.where(prev_half, labels, real_labels)
        real_h = features(classifier, augment(keys[4], real_images, state.ada_p))
        fake = g.generate(state.generator, z, labels, gen.sample_noise(keys[5], batch))
        fake_h = features(classifier, augment(keys[6], jax.lax.stop_gradient(fake), state.ada_p))

        def d_loss_fn(d_params):
            def score(h, y):
                return g.discriminator.apply({"params": d_params}, h, y)

            d_real = score(real_h, real_labels)
            loss = gan_losses.discriminator_loss(d_real, score(fake_h, labels))

            def r1():
                grads = jax.grad(lambda h: jnp.sum(score(h, real_labels)))(real_h)
                return gan_losses.r1_penalty(grads, gamma=c.r1_gamma, interval=R1_INTERVAL)

            penalty = jax.lax.cond(
                state.step % R1_INTERVAL == 0, r1, lambda: jnp.zeros((), jnp.float32)
            )
            return loss + penalty, (loss, penalty, d_real)

        (d_total, (d_gan, r1, d_real)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
            state.discriminator
        )
        d_updates, d_opt = g.d_tx.update(d_grads, state.d_opt, state.discriminator)
        d_params = optax.apply_updates(state.discriminator, d_updates)
        signs = jnp.concatenate([state.ada_signs[1:], jnp.mean(jnp.sign(d_real))[None]])
        ada_p = ada.ada_adjust(
            state.ada_p, signs, state.step, target=c.ada_target, max_p=c.ada_max_p
        )

        noise = gen.sample_noise(keys[7], batch)
        previous_images = g.generate(
            inputs.previous, z[:half], labels[:half], [n[:half] for n in noise]
        )

        def g_loss_fn(g_params):
            images = g.generate(g_params, z, labels, noise)
            h = features(classifier, augment(keys[8], images, ada_p))
            adversarial = gan_losses.generator_loss(
                g.discriminator.apply({"params": d_params}, h, labels)
            )
            distill = gan_losses.generator_distillation(images[:half], previous_images[:half])
            return adversarial + inputs.distill_weight * distill, (adversarial, distill)

        (g_total, (g_gan, g_dist)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
            state.generator
        )
        g_updates, g_opt = g.g_tx.update(g_grads, state.g_opt, state.generator)
        g_params = optax.apply_updates(state.generator, g_updates)
        beta = ema_beta(state.step, batch=batch, ema_kimg=c.ema_kimg, rampup=inputs.rampup)
        ema = jax.tree.map(lambda e, p: p + beta * (e - p), state.generator_ema, g_params)
        new = GanState(
            generator=g_params,
            generator_ema=ema,
            discriminator=d_params,
            g_opt=g_opt,
            d_opt=d_opt,
            ada_p=ada_p,
            ada_signs=signs,
            step=state.step + 1,
        )
        metrics = {
            "d_loss": d_total,
            "d_gan": d_gan,
            "r1": r1,
            "g_loss": g_total,
            "g_gan": g_gan,
            "g_distill": g_dist,
            "ada_p": ada_p,
        }
        return new, metrics

    return step


def epoch_order(seed: int, boundary: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """The task's images in the order of one GAN epoch, a function of (seed, boundary, epoch)."""
    return np.random.default_rng((seed, 1_000_003, boundary, epoch)).permutation(indices)


def iterations(config: ml_collections.ConfigDict, boundary: int, num_images: int) -> int:
    """The GAN iterations of ``boundary`` (the task just finished): epochs times full batches."""
    return _epochs(config, boundary) * (num_images // config.genifer.gan.batch_size)


def _epochs(config: ml_collections.ConfigDict, boundary: int) -> int:
    """The GAN's epochs at ``boundary``: ``epochs_first`` after the first task, ``epochs`` after."""
    c = config.genifer.gan
    return c.epochs_first if boundary == 0 else c.epochs


def check_config(config: ml_collections.ConfigDict, image_size: int) -> None:
    """ValueError naming the ``genifer.gan`` field that cannot work."""
    c = config.genifer.gan
    if c.batch_size < 2 or c.batch_size % 2:
        raise ValueError(f"genifer.gan.batch_size={c.batch_size}; set an even size >= 2")
    group = min(gan.MBSTD_GROUP, c.batch_size)
    if c.batch_size % group:
        raise ValueError(
            f"genifer.gan.batch_size={c.batch_size}: the discriminator's minibatch standard "
            f"deviation groups {group} rows; set a multiple of {group}"
        )
    channels = tuple(c.generator_channels)
    if len(channels) % 2 != 1:
        raise ValueError(
            f"genifer.gan.generator_channels={channels}: set an odd count, two convolutions per "
            "upsampling plus one"
        )
    made = c.base_resolution * 2 ** ((len(channels) - 1) // 2)
    if made != image_size:
        raise ValueError(
            f"the generator makes {made}-pixel images (base_resolution {c.base_resolution} "
            f"upsampled {(len(channels) - 1) // 2} times) but the classifier reads "
            f"{image_size}-pixel crops; set genifer.gan.base_resolution and generator_channels "
            "to match"
        )
    unknown = set(c.ada_ops) - set(ada.OPS)
    if unknown or c.ada_space not in ada.SPACES:
        raise ValueError(
            f"genifer.gan.ada_ops={tuple(c.ada_ops)}, ada_space={c.ada_space!r}: choose operations "
            f"among {ada.OPS} and a space among {ada.SPACES}"
        )
    if c.ema_rampup not in EMA_RAMPUPS:
        raise ValueError(f"genifer.gan.ema_rampup={c.ema_rampup!r}; choose among {EMA_RAMPUPS}")
    for name in ("epochs_first", "epochs", "checkpoint_every"):
        if c[name] < 1:
            raise ValueError(f"genifer.gan.{name}={c[name]}; set it to at least 1")
    if not 0 <= c.ada_max_p <= 1 or not math.isfinite(c.r1_gamma) or c.r1_gamma < 0:
        raise ValueError(
            f"genifer.gan.ada_max_p={c.ada_max_p}, r1_gamma={c.r1_gamma}: set p in [0, 1] and "
            "gamma >= 0"
        )
