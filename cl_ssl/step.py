"""The jitted, data-parallel train step shared by every task of a run.

The step takes the whole on-device training set and one batch of example indices, gathers and
augments the two views on the device, and updates the state. Everything that differs between tasks
(the task index, the learning rate and the objective's schedules, which have a different length in
each task) enters as arrays, so a run compiles the step a bounded number of times, whatever the
number of tasks: once per phase of a stage (one but for POCON's two), and again for each phase
whose batch a strategy's extra rows join from a later stage on. The training loop computes each
stage's per-step scalars once, ahead of its steps (``stage_hyper``), and passes one set per step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cl_ssl import optim
from cl_ssl.data import augment
from cl_ssl.data import batch as batch_lib
from cl_ssl.data.batch import TrainData
from cl_ssl.evaluation import online as online_lib
from cl_ssl.evaluation.online import OnlineProbe
from cl_ssl.objectives import Objective
from cl_ssl.parallel import batch_sharded, replica_batch_sharded, replicated
from cl_ssl.state import ContinualState, trainable
from cl_ssl.strategies import BufferInputs, LossInputs, Phase, RowInputs, Strategy

Metrics = dict[str, jax.Array]
StepFn = Callable[[ContinualState, TrainData, jax.Array, Metrics], tuple[ContinualState, Metrics]]


def param_groups(
    objective: Objective, strategy: Strategy, online: OnlineProbe | None = None
) -> dict[str, optim.ParamGroup]:
    """Every optimizer group of a run: the default one, the objective's, the strategy's and the
    online probe's."""
    clash = set(objective.param_groups) & set(strategy.param_groups)
    if clash:
        raise ValueError(
            f"parameter groups {sorted(clash)} are named by the objective and the strategy"
        )
    return {
        optim.DEFAULT_GROUP: optim.ParamGroup(),
        **objective.param_groups,
        **strategy.param_groups,
        **(online.param_groups if online else {}),
    }


def make_tx(
    config: ml_collections.ConfigDict,
    objective: Objective | None = None,
    strategy: Strategy | None = None,
    online: OnlineProbe | None = None,
) -> optax.GradientTransformation:
    """The optimizer of ``config.optimizer`` over ``trainable(state)``, one group at a time.

    An ``optax.multi_transform`` of the groups (``param_groups``): the student's parameters are
    labelled by ``objective.param_labels``, the strategy's by ``strategy.param_labels``, both
    defaulting to the run's group, and the online probe's all belong to its own group. Each group's learning rate (and its ``active`` switch) is a
    hyperparameter of its optimizer state (``optax.inject_hyperparams``) that the step overwrites
    from the stage's schedule, because the schedule's length differs between tasks while the
    compiled step must not. Without an objective and a strategy: the default group alone, over any
    tree (to check the optimizer's settings).
    """
    o = config.optimizer
    kwargs = o.kwargs.to_dict()
    groups = (
        param_groups(objective, strategy, online)
        if objective
        else {optim.DEFAULT_GROUP: optim.ParamGroup()}
    )

    later = o.later_tasks

    def group_tx(group: optim.ParamGroup) -> optax.GradientTransformation:
        if group.frozen:
            return optax.set_to_zero()
        weight_decay = o.weight_decay if group.weight_decay is None else group.weight_decay

        def factory(learning_rate, active=None, later_tasks=None):
            tx = optim.make_optimizer(
                o.name, learning_rate=learning_rate, weight_decay=weight_decay, **kwargs
            )
            if later_tasks is not None:
                second = optim.make_optimizer(
                    later.name,
                    learning_rate=learning_rate,
                    weight_decay=weight_decay,
                    **later.kwargs.to_dict(),
                )
                tx = optim.switch(tx, second, later_tasks)
            return tx if active is None else optim.gated(tx, active)

        switches = {} if group.active is None else {"active": 1.0}
        if later.name:
            switches["later_tasks"] = 0.0
        return optax.inject_hyperparams(factory)(learning_rate=0.0, **switches)

    def labels(trainable):
        if objective is None:
            return jax.tree.map(lambda _: optim.DEFAULT_GROUP, trainable)
        student = _labels(objective.param_labels, trainable["student"])
        if strategy.student_labels is not None:
            student = strategy.student_labels(trainable["student"], student)
        return {
            "student": student,
            "strategy": _labels(strategy.param_labels, trainable["strategy"]),
            "online_probe": jax.tree.map(lambda _: online_lib.GROUP, trainable["online_probe"]),
        }

    return optax.multi_transform({name: group_tx(g) for name, g in groups.items()}, labels)


def _labels(label_fn, tree):
    if label_fn is None:
        return jax.tree.map(lambda _: optim.DEFAULT_GROUP, tree)
    return label_fn(tree)


def set_group_hyperparams(
    opt_state: optax.OptState, groups: dict[str, optim.ParamGroup], hyper: Metrics
) -> optax.OptState:
    """``opt_state`` with each group's learning rate (and ``active`` switch) of this step."""
    inner = dict(opt_state.inner_states)
    for name, group in groups.items():
        if group.frozen:
            continue
        values = {"learning_rate": hyper[group_lr_key(name) if group.own_schedule else "lr"]}
        if group.active is not None:
            values["active"] = hyper[group.active]
        if LATER_TASKS in hyper:
            values[LATER_TASKS] = hyper[LATER_TASKS]
        masked = inner[name]
        injected = masked.inner_state
        inner[name] = masked._replace(
            inner_state=injected._replace(hyperparams={**injected.hyperparams, **values})
        )
    return opt_state._replace(inner_states=inner)


LATER_TASKS = "later_tasks"
"""The per-step switch (0 on the first stage, 1 after) to ``optimizer.later_tasks``."""


def group_lr_key(name: str) -> str:
    """The key of a group's own learning rate in the step's ``hyper``."""
    return f"lr/{name}"


def scaled_base_lr(config: ml_collections.ConfigDict, stage: int = 0) -> float:
    """``optimizer.lr`` (``optimizer.later_tasks.lr`` after the first stage when that optimizer
    is set) scaled linearly by batch_size / 256 when ``scale_lr_by_batch`` (CaSSLe's
    ``main_pretrain.py``)."""
    o = config.optimizer
    lr = o.later_tasks.lr if o.later_tasks.name and stage > 0 else o.lr
    return lr * config.batch_size / 256 if o.scale_lr_by_batch else lr


def lr_schedule(
    config: ml_collections.ConfigDict,
    *,
    num_epochs: int,
    steps_per_epoch: int,
    group: optim.ParamGroup | None = None,
    stage: int = 0,
) -> optax.Schedule:
    """The schedule of stage ``stage`` for ``group``, a function of the step within the stage:
    warm-up and cosine, or step decay at ``optimizer.milestones``, or constant for a ``static``
    group; the group's base learning rate is its own ``lr`` or the run's times its
    ``lr_scale``."""
    o = config.optimizer
    group = group or optim.ParamGroup()
    base = group.lr if group.lr is not None else scaled_base_lr(config, stage) * group.lr_scale
    if group.static:
        return optax.constant_schedule(base)
    if o.milestones:
        return optim.multistep_schedule(
            base,
            total_epochs=num_epochs,
            steps_per_epoch=steps_per_epoch,
            milestones=tuple(o.milestones),
            factor=o.decay_factor,
        )
    return optim.warmup_cosine_schedule(
        base,
        total_epochs=num_epochs,
        warmup_epochs=o.warmup_epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_start_lr=o.warmup_start_lr,
        min_lr=o.min_lr,
        per_epoch=o.schedule_per_epoch,
    )


def build_step_fn(
    objective: Objective,
    strategy: Strategy,
    tx: optax.GradientTransformation,
    *,
    extend: bool,
    online: OnlineProbe | None = None,
    phase: int = 0,
    with_objective: bool = True,
) -> StepFn:
    """The (un-jitted) train step for ``objective`` under ``strategy``, in phase ``phase`` of a
    stage (``Strategy.phases``; ``LossInputs.phase``).

    The returned function maps (state, data, ids, hyper) to (new state, metrics):
      data: the training split (``TrainData``): labels, classes and tasks of every example, and its
        images whole on every device or, for a data set kept in host memory, this step's batch
        sharded over the ``data`` mesh axis.
      ids: int32 [B], this step's examples, sharded over the ``data`` mesh axis.
      hyper: float32 scalars of this step: 'lr' (see ``lr_schedule``), the parameter groups' own
        learning rates and the objective's ``schedules`` (EMA momentum, ...).
      metrics: float32 scalars: 'loss' (the objective's plus the strategy's weighted term),
        'grad_norm' (global L2 norm of the gradients), 'lr', the objective's own terms and the
        strategy's. A finite loss with a non-finite gradient norm means the updated parameters are
        not finite.

    One step: the batch of ``ids`` (``current_batch``); with ``extend``, the strategy's
    ``extend_batch`` joins its rows; two augmented views of every row (the step's own rows from
    their host crops, ``data.crops``, when there are), which the strategy's
    ``transform_views`` may then rewrite; the student on ``objective.student_views`` (its BatchNorm
    statistics updated by each view in turn); with ``extend``, the strategy's ``side_batch`` rows,
    augmented with the same views and run through the student apart (their own BatchNorm
    statistics, none kept), for the strategy's term alone; the objective's loss plus the
    strategy's ``loss``;
    the optimizer update of ``trainable(state)``; the objective's ``update_state`` and the
    strategy's ``update_buffers`` (``BufferInputs``). With ``online``, the online probe's batch
    (``data.probe_ids``), augmented as the last view, trains the probe on the backbone's features
    after the student's views (``OnlineProbe.loss``; its 'online_ce' and 'online_acc' join the
    metrics). Every random draw comes from the run key folded with the global step (the host crops'
    boxes from the seed, task and step, ``host_crop.crop_uniforms``), so a resumed run draws as an
    uninterrupted one.

    Without ``with_objective`` (a ``Phase`` in which the objective rests) the step computes no
    target outputs, no objective loss and no objective state update, and the student runs its
    backbone alone: its outputs are {'features'}, and the strategy's term is the loss.
    """
    model = objective.model
    groups = param_groups(objective, strategy, online)

    def train_step(
        state: ContinualState, data: TrainData, ids: jax.Array, hyper: Metrics
    ) -> tuple[ContinualState, Metrics]:
        step_key = jax.random.fold_in(state.rng, state.step)
        view_keys = jax.random.split(step_key)
        strategy_key = jax.random.fold_in(step_key, 2)
        current = batch_lib.current_batch(data, ids)
        batch = current

        def rows(key):
            return RowInputs(state.strategy, current, data, key, state.task, hyper)

        if extend and strategy.extend_batch is not None:
            batch = strategy.extend_batch(rows(strategy_key))
        crops = (None,) * len(objective.views) if data.crops is None else data.crops
        views = tuple(
            augment.augment_batch(key, batch.images, view, crop)
            for key, view, crop in zip(view_keys, objective.views, crops, strict=True)
        )
        if extend and strategy.transform_views is not None:
            views = strategy.transform_views(views, batch, rows(strategy_key))
        target = None
        if objective.target is not None and with_objective:
            target = objective.target(state.objective_state, *views)
        student_views = tuple(views[v] for v in objective.student_views)
        side, side_views = None, None
        if extend and strategy.side_batch is not None:
            side = strategy.side_batch(rows(jax.random.fold_in(strategy_key, 5)))
            side_keys = jax.random.split(jax.random.fold_in(step_key, 4), len(objective.views))
            side_views = tuple(
                augment.augment_batch(side_keys[v], side.images, objective.views[v])
                for v in objective.student_views
            )
        if online is not None:
            probe_view = augment.augment_batch(
                jax.random.fold_in(step_key, 3),
                batch_lib.probe_images(data),
                objective.views[-1],
            )
            probe_labels = jnp.take(data.classes, data.probe_ids)

        def loss_fn(variables):
            params = variables["student"]
            batch_stats, outputs = state.batch_stats, []
            for view in student_views:
                out, mutated = model.apply(
                    {"params": params, "batch_stats": batch_stats},
                    view,
                    train=True,
                    mutable=["batch_stats"],
                    **({} if with_objective else {"method": _backbone_outputs}),
                )
                batch_stats = mutated["batch_stats"]
                outputs.append(out)
            if with_objective:
                loss, terms, aux = objective.loss(
                    tuple(outputs), target, state.objective_state, params, hyper
                )
            else:
                loss, terms, aux = jnp.zeros((), jnp.float32), {}, None
            side_outputs = None
            if side is not None:
                # Normalised with the side rows' own statistics; the running ones they would
                # move are dropped, so the student's statistics are the step's rows' alone.
                side_outputs = tuple(
                    model.apply(
                        {"params": params, "batch_stats": batch_stats},
                        view,
                        train=True,
                        mutable=["batch_stats"],
                    )[0]
                    for view in side_views
                )
            if strategy.loss is not None:
                extra, extra_terms = strategy.loss(
                    LossInputs(
                        outputs=tuple(outputs),
                        views=student_views,
                        batch=batch,
                        params=params,
                        trainable=variables["strategy"],
                        state=state.strategy,
                        task=state.task,
                        hyper=hyper,
                        target=target,
                        data=data,
                        key=jax.random.fold_in(strategy_key, 4),
                        own_rows=current.size,
                        extended=extend,
                        side=side,
                        side_outputs=side_outputs,
                        side_views=side_views,
                        phase=phase,
                    )
                )
                loss, terms = loss + extra, {**terms, **extra_terms}
            if online is not None:
                ce, accuracy, batch_stats = online.loss(
                    model,
                    {"params": params, "batch_stats": batch_stats},
                    variables["online_probe"],
                    probe_view,
                    probe_labels,
                )
                loss, terms = loss + ce, {**terms, "online_ce": ce, "online_acc": accuracy}
            seen = jax.lax.stop_gradient((tuple(outputs), side_outputs))
            return loss, (batch_stats, terms, aux, seen)

        variables = trainable(state)
        (loss, (batch_stats, terms, aux, seen)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            variables
        )
        opt_state = set_group_hyperparams(state.opt_state, groups, hyper)
        updates, opt_state = tx.update(grads, opt_state, variables)
        variables = optax.apply_updates(variables, updates)
        params = variables["student"]
        strategy_state = state.strategy.replace(trainable=variables["strategy"])
        online_probe = variables["online_probe"]
        if strategy.update_buffers is not None:
            strategy_state = strategy_state.replace(
                buffers=strategy.update_buffers(
                    BufferInputs(
                        state=strategy_state,
                        params=params,
                        batch=current,
                        joined=batch,
                        target=target,
                        data=data,
                        key=jax.random.fold_in(strategy_key, 1),
                        task=state.task,
                        hyper=hyper,
                        outputs=seen[0],
                        side=side,
                        side_outputs=seen[1],
                    )
                )
            )
        new_state = state.replace(
            step=state.step + 1,
            task_step=state.task_step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            objective_state=(
                objective.update_state(state.objective_state, params, aux, hyper)
                if with_objective
                else state.objective_state
            ),
            strategy=strategy_state,
            online_probe=online_probe,
        )
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": hyper["lr"], **terms}
        return new_state, metrics

    return train_step


def _backbone_outputs(module, images: jax.Array, train: bool) -> dict[str, jax.Array]:
    """The student's outputs in a phase without the objective: its backbone's features alone."""
    return {"features": module.backbone(images, train=train)}


def stage_hyper(
    config: ml_collections.ConfigDict,
    objective: Objective,
    strategy: Strategy,
    *,
    num_epochs: int,
    steps_per_epoch: int,
    stage: int = 0,
    online: OnlineProbe | None = None,
    phases: Sequence[Phase] | None = None,
) -> dict[str, np.ndarray]:
    """Every per-step scalar of stage ``stage``: name -> float32 [steps]; 'lr', each group's own
    learning rate ('lr/<group>', ``group_lr_key``), the switch to ``optimizer.later_tasks`` (when
    set), the objective's schedules and the strategy's.

    With ``phases`` (the stage's ``Phase``s, whose epochs sum to ``num_epochs``) each phase's
    scalars are those of a stage of its epochs, followed by the next phase's, and each phase's
    ``hyper`` values are held over its steps."""
    if not phases:
        phases = (Phase(epochs=num_epochs),)
    parts = [
        _phase_hyper(
            config,
            objective,
            strategy,
            num_epochs=phase.epochs,
            steps_per_epoch=steps_per_epoch,
            stage=stage,
            online=online,
            held=phase.hyper,
        )
        for phase in phases
    ]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _phase_hyper(
    config: ml_collections.ConfigDict,
    objective: Objective,
    strategy: Strategy,
    *,
    num_epochs: int,
    steps_per_epoch: int,
    stage: int,
    online: OnlineProbe | None,
    held: Mapping[str, float],
) -> dict[str, np.ndarray]:
    num_steps = num_epochs * steps_per_epoch
    steps = np.arange(num_steps)
    schedules = {"lr": optim.ParamGroup()}
    for name, group in param_groups(objective, strategy, online).items():
        if group.own_schedule and not group.frozen:
            schedules[group_lr_key(name)] = group
    hyper = {}
    for key, group in schedules.items():
        lr_at = lr_schedule(
            config,
            num_epochs=num_epochs,
            steps_per_epoch=steps_per_epoch,
            group=group,
            stage=stage,
        )
        hyper[key] = np.asarray(jax.jit(jax.vmap(lr_at))(steps), np.float32)
    if config.optimizer.later_tasks.name:
        hyper[LATER_TASKS] = np.full(num_steps, float(stage > 0), np.float32)
    own = objective.schedules(num_steps, steps_per_epoch)
    extra = {
        **strategy.schedules(num_steps, steps_per_epoch),
        **{name: np.full(num_steps, value) for name, value in held.items()},
    }
    clash = (set(own) | set(extra)) & set(hyper) | set(own) & set(extra)
    if clash:
        raise ValueError(f"per-step schedules {sorted(clash)} are named twice")
    for name, values in {**own, **extra}.items():
        hyper[name] = np.asarray(values, np.float32)
    return hyper


def jit_step(
    step_fn: StepFn,
    mesh: jax.sharding.Mesh,
    *,
    on_device: bool = True,
    online: bool = False,
    host_crop: bool = False,
) -> StepFn:
    """Jits ``step_fn`` over ``mesh``, state donated: state replicated, example ids sharded, and the
    data's label arrays replicated with its images replicated (the whole on-device data set) or,
    without ``on_device``, batch-sharded (each step's batch from host memory); with ``online``, the
    online probe's ids (and, from host memory, its images) batch-sharded; with ``host_crop``, the
    views' crops of the batch batch-sharded."""
    rep, batch = replicated(mesh), batch_sharded(mesh)
    data = TrainData(
        images=rep if on_device else batch,
        labels=rep,
        classes=rep,
        tasks=rep,
        probe_ids=batch if online else None,
        probe_images=batch if online and not on_device else None,
        crops=batch if host_crop else None,  # one sharding for every view's crops
        on_device=on_device,
    )
    return jax.jit(
        step_fn, in_shardings=(rep, data, batch, rep), out_shardings=(rep, rep), donate_argnums=0
    )


REPLICA_PROGRAMS = ("loop", "vmap")
"""How ``jit_replicated_step`` steps the replicas inside one program (``config.replica_program``)."""


def check_replica_program(program: str) -> None:
    """ValueError unless ``program`` is one of ``REPLICA_PROGRAMS``."""
    if program not in REPLICA_PROGRAMS:
        raise ValueError(f"replica_program={program!r}; choose one of {list(REPLICA_PROGRAMS)}")


def jit_replicated_step(
    step_fn: StepFn, mesh: jax.sharding.Mesh, *, online: bool = False, program: str = "loop"
) -> StepFn:
    """Jits ``step_fn`` for R runs at once (replicas: the same config with R seeds), state
    donated, over a leading replica axis of the state ([R, ...] every leaf, each replica's own
    parameters, buffers and key), of the ids ([R, B], each replica's own batch, its B axis
    sharded over ``data``) and of the data's ``labels`` and ``tasks`` ([R, N], each seed's
    visible labels and class order; with ``online``, ``probe_ids`` [R, B] too), with the images
    (the whole split on the devices), ``classes`` and the step's scalars shared. Metrics come
    back [R].

    ``program``: "loop" traces ``step_fn`` once per replica, R independent steps in one
    program (one dispatch a step for all of them); "vmap" maps it over the replica axis
    (``jax.vmap``: each convolution becomes one grouped convolution over the R replicas'
    weights, larger kernels for an accelerator that one small step leaves idle, but on the CPU
    half as fast as separate runs, BENCHMARKS.md). Replica r computes what ``step_fn`` computes
    for its state and ids alone, up to the order of float32 sums."""
    check_replica_program(program)
    rep = replicated(mesh)
    per_replica = replica_batch_sharded(mesh)
    data = TrainData(
        images=rep,
        labels=rep,
        classes=rep,
        tasks=rep,
        probe_ids=per_replica if online else None,
        on_device=True,
    )
    if program == "vmap":
        data_axes = TrainData(
            images=None, labels=0, classes=None, tasks=0, probe_ids=0 if online else None
        )
        stepped = jax.vmap(step_fn, in_axes=(0, data_axes, 0, None))
    else:

        def stepped(state, data, ids, hyper):
            outputs = []
            for r in range(ids.shape[0]):
                replica_data = data.replace(
                    labels=data.labels[r],
                    tasks=data.tasks[r],
                    probe_ids=None if data.probe_ids is None else data.probe_ids[r],
                )
                replica_state = jax.tree.map(lambda x, r=r: x[r], state)
                outputs.append(step_fn(replica_state, replica_data, ids[r], hyper))
            return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)

    return jax.jit(
        stepped,
        in_shardings=(rep, data, per_replica, rep),
        out_shardings=(rep, rep),
        donate_argnums=0,
    )
