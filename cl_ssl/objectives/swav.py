"""SwAV: normalised prototypes, Sinkhorn codes, swapped prediction, feature queue.

Caron et al., NeurIPS 2020, Sec. 3.1; reference code CaSSLe ``cassle/methods/swav.py``,
``cassle/losses/swav.py`` and ``cassle/utils/sinkhorn_knopp.py``.

The queue of past normalised projections (one per view) is filled from the start of every task
and enters the Sinkhorn step from epoch ``queue_start_epoch`` of the task on; it is emptied at
every task start. The prototypes do not move during the first ``freeze_prototypes_epochs`` epochs
of each task: their optimizer group is skipped for those steps, parameters and momentum alike
(CaSSLe sets their gradients to None, ``cassle/methods/swav.py`` l.195-199, so that LARS and SGD
skip them).
"""

from __future__ import annotations

import ml_collections
from jax import lax

from cl_ssl import losses, memory, optim
from cl_ssl.losses import l2_normalize
from cl_ssl.models.ssl import Prototypes
from cl_ssl.objectives.base import (
    SIMCLR_IMAGENET_VIEWS,
    SIMCLR_VIEWS,
    Objective,
    Recipe,
    epoch_of_step,
    make_model,
    make_views,
    mlp,
)

RECIPE = Recipe(
    # CaSSLe's SwAV CIFAR script (bash_files/continual/cifar/swav.sh) omits --exclude_bias_n_norm.
    optimizer=dict(lr=0.6, weight_decay=1e-6, min_lr=6e-4, exclude_bias_and_norm=False),
    views=SIMCLR_VIEWS,
    source="CaSSLe bash_files/continual/cifar/swav*.sh",
)

IMAGENET_RECIPE = Recipe(
    # Unlike the CIFAR scripts, the ImageNet-100 and DomainNet ones pass --exclude_bias_n_norm
    # (imagenet-100/class/swav.sh l.20).
    optimizer=dict(lr=0.8, weight_decay=1e-6, min_lr=6e-4, exclude_bias_and_norm=True),
    views=SIMCLR_IMAGENET_VIEWS,
    source="CaSSLe bash_files/continual/imagenet-100/class/swav*.sh",
    linear_lr=0.15,
)


def default_config() -> ml_collections.ConfigDict:
    """``config.swav``: CaSSLe's CIFAR values."""
    return ml_collections.ConfigDict(
        dict(
            temperature=0.1,
            epsilon=0.05,
            sinkhorn_iters=3,
            num_prototypes=3000,
            proj_hidden_dim=2048,
            proj_output_dim=128,
            queue_size=3840,
            queue_start_epoch=50,
            freeze_prototypes_epochs=2,
            # CaSSLe's weight-normalised prototypes learn their norms (models.ssl.Prototypes);
            # False fixes them at 1, as solo-learn's later SwAV.
            learnable_norm=True,
        )
    )


def make(config: ml_collections.ConfigDict) -> Objective:
    """SwAV from ``config.swav``; the queue length must be a multiple of the batch (or 0: none)."""
    c = config.swav
    if c.queue_size:
        memory.check_fits("swav.queue_size", c.queue_size, config.batch_size)
    prototypes = Prototypes(c.num_prototypes, learnable_norm=c.learnable_norm)
    model = make_model(
        config,
        mlp(config, (c.proj_hidden_dim,), c.proj_output_dim, batch_norm=True),
        prototypes=prototypes,
    )
    sinkhorn = dict(temperature=c.temperature, epsilon=c.epsilon, num_iters=c.sinkhorn_iters)

    def empty_queues():
        return tuple(memory.zeros_queue(c.queue_size, c.proj_output_dim) for _ in range(2))

    def init_state(params, key):
        del params, key
        return {"queues": empty_queues()} if c.queue_size else {}

    def loss(student, target, state, params, hyper):
        del target
        out1, out2 = student
        s1, s2 = out1["scores"], out2["scores"]
        z1, z2 = l2_normalize(out1["projection"]), l2_normalize(out2["projection"])
        if not c.queue_size:
            value = losses.swav_loss(s1, s2, **sinkhorn)
            return value, {"swav": value}, (z1, z2)

        def queue_scores(queue):
            # The current prototypes score the stored embeddings; codes carry no gradient.
            return lax.stop_gradient(
                prototypes.apply({"params": params["prototypes"]}, queue.items)
            )

        q1, q2 = state["queues"]
        value = lax.cond(
            hyper["use_queue"] > 0,
            lambda: losses.swav_loss(
                s1, s2, queue_scores1=queue_scores(q1), queue_scores2=queue_scores(q2), **sinkhorn
            ),
            lambda: losses.swav_loss(s1, s2, **sinkhorn),
        )
        return value, {"swav": value}, (z1, z2)

    def update_state(state, params, embeddings, hyper):
        del params, hyper
        if not c.queue_size:
            return state
        return {"queues": tuple(map(memory.push, state["queues"], embeddings))}

    def start_task(state):
        return {"queues": empty_queues()} if c.queue_size else state

    def schedules(num_steps, steps_per_epoch):
        epoch = epoch_of_step(num_steps, steps_per_epoch)
        return {
            "use_queue": (epoch >= c.queue_start_epoch).astype("float32"),
            "prototype_grad": (epoch >= c.freeze_prototypes_epochs).astype("float32"),
        }

    def param_labels(params):
        return optim.label_top_level(params, {"prototypes": "swav_prototypes"})

    return Objective(
        name="swav",
        model=model,
        views=make_views(config),
        loss=loss,
        init_state=init_state,
        update_state=update_state,
        start_task=start_task,
        schedules=schedules,
        param_labels=param_labels,
        param_groups={"swav_prototypes": optim.ParamGroup(active="prototype_grad")},
    )
