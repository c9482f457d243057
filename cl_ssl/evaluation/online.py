"""The online linear probe: a linear classifier trained inside the train step on stop-gradient
backbone features of one extra labelled batch per step, and scored after every task.

CaSSLe's (and solo-learn's) reported CIFAR numbers (``cassle/methods/base.py``:
``_online_eval_shared_step`` l.360-387, ``training_step`` l.389-438; ``main_pretrain.py`` l.46-49
and l.92-126): ``nn.Linear(features_dim, num_classes)`` on ``feats.detach()`` of a batch of the
same size as the task's from a second loader over the whole labelled training set, augmented with
the last view's pipeline and iterated in lockstep with the task loader (Lightning's ``min_size``
mode: each epoch of the task takes its first batches of a fresh shuffle). Its cross-entropy is
added to the loss in the parameter group ``classifier`` (lr 0.1 not scaled by the batch size,
weight decay 0, the run's optimizer and schedule). The backbone runs in train mode under
``torch.no_grad()``, so BatchNorm normalises with the batch's statistics and its running
statistics move with this batch as with the task's views: about a third of them then come from
all-class data. ``eval.online_updates_bn=false`` keeps the running statistics as the task's views
left them. The probe is part of the checkpoint and carried across tasks. ``eval.online_data``
says which tasks' labelled data its batches come from: 'all' (CaSSLe's CIFAR protocol), 'seen'
(Kaizen's ``--online_evaluation_training_data_source seen_tasks``, ``main_pretrain.py`` l.179-195)
or 'current'.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cl_ssl import optim
from cl_ssl.models.heads import MLPHead

ONLINE = "online"
"""The accuracy matrix of the online probe."""
GROUP = "online_probe"
"""The online probe's optimizer group."""


@dataclasses.dataclass(frozen=True)
class OnlineProbe:
    """The online probe of a run.

    Attributes:
      num_classes: C, the probe's outputs.
      feature_dim: F, the backbone's feature width.
      lr: its base learning rate, not scaled by the batch size.
      updates_bn: its batch's forward pass moves the backbone's BatchNorm running statistics.
    """

    num_classes: int
    feature_dim: int
    lr: float
    updates_bn: bool

    @property
    def head(self) -> MLPHead:
        """Linear(F -> C), PyTorch's ``nn.Linear`` initialisation."""
        return MLPHead(hidden_dims=(), out_dim=self.num_classes)

    @property
    def param_groups(self) -> dict[str, optim.ParamGroup]:
        return {GROUP: optim.ParamGroup(lr=self.lr, weight_decay=0.0)}

    def init(self, key: jax.Array) -> dict:
        """The probe's initial parameters."""
        return self.head.init(key, jnp.zeros((1, self.feature_dim)), train=False)["params"]

    def logits(self, params: dict, features: jax.Array) -> jax.Array:
        """Features float32 [N, F] -> logits float32 [N, C]."""
        return self.head.apply({"params": params}, features, train=False)

    def loss(
        self,
        model,
        variables: dict,
        probe_params: dict,
        images: jax.Array,
        labels: jax.Array,
    ) -> tuple[jax.Array, jax.Array, dict]:
        """(cross-entropy, top-1 accuracy in [0, 1], the BatchNorm statistics after the pass) of
        the probe on augmented images float [B, H, W, 3] with labels int32 [B].

        The backbone (``variables``: the student's params and batch_stats) runs in train mode and
        receives no gradient; the statistics returned are the moved ones when ``updates_bn``,
        ``variables['batch_stats']`` otherwise."""
        features, mutated = model.apply(
            jax.lax.stop_gradient(variables),
            images,
            train=True,
            mutable=["batch_stats"],
            method=lambda m, x, train: m.backbone(x, train=train),
        )
        logits = self.logits(probe_params, features)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
        stats = mutated["batch_stats"] if self.updates_bn else variables["batch_stats"]
        return ce, accuracy, stats


def from_config(
    config: ml_collections.ConfigDict, num_classes: int, feature_dim: int
) -> OnlineProbe | None:
    """The run's online probe (``eval.online``), or None."""
    e = config.eval
    if not e.online:
        return None
    return OnlineProbe(
        num_classes=num_classes,
        feature_dim=feature_dim,
        lr=e.online_lr,
        updates_bn=e.online_updates_bn,
    )


def epoch_ids(seed: int, stage: int, epoch: int, pool: np.ndarray, size: int) -> np.ndarray:
    """int [size]: the probe's examples for one epoch of a stage, in order: successive shuffles of
    ``pool`` (enough of them when the pool is smaller than an epoch's batches), a function of
    (seed, stage, epoch); the fourth seed entry keeps it apart from the task data's order
    (``planning.epoch_order``, seeded by the first three)."""
    rng = np.random.default_rng((seed, stage, epoch, 1))
    shuffles = [rng.permutation(pool) for _ in range(-(-size // len(pool)))]
    return np.concatenate(shuffles)[:size]
