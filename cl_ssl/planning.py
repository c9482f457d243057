"""The plan of a run: everything it derives from its config, checked before anything compiles.

The data, the objective and the strategy, the stages (the examples each trains on, its epochs and
steps), the labels the learner may use, the order of each epoch's examples, and the global steps
of the task boundaries.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from cl_ssl import config as config_lib
from cl_ssl import step as step_lib
from cl_ssl.data import scenarios, sources
from cl_ssl.evaluation import online as online_lib
from cl_ssl.objectives import Objective, get_objective, resolve_config
from cl_ssl.strategies import Phase, Strategy, get_strategy
from cl_ssl.strategies.base import output_widths


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage: a task of the scenario, or the union of all tasks for ``offline``.

    ``phases``: the consecutive parts of its training (``Strategy.phases``; one phase of all its
    epochs in which the objective trains, for a strategy without phases)."""

    indices: np.ndarray  # int32 [N_stage], examples of the train split
    num_epochs: int
    steps_per_epoch: int
    phases: tuple[Phase, ...] = ()

    def __post_init__(self):
        if not self.phases:
            object.__setattr__(self, "phases", (Phase(epochs=self.num_epochs),))

    @property
    def num_steps(self) -> int:
        return self.num_epochs * self.steps_per_epoch

    def phase_starts(self) -> list[int]:
        """The step within the stage at which each phase starts, [0, ...]."""
        epochs = np.cumsum([0] + [phase.epochs for phase in self.phases[:-1]])
        return [int(e) * self.steps_per_epoch for e in epochs]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a run derives from its config, checked before anything compiles."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    strategy: Strategy
    objective: Objective
    train: sources.ArraySplit
    test: sources.ArraySplit
    scenario: scenarios.Scenario
    stages: tuple[Stage, ...]
    labels: np.ndarray  # int32 [N_train], the labels the learner may use, -1 where it has none
    example_tasks: np.ndarray  # int32 [N_train], the task of every training example
    online: online_lib.OnlineProbe | None  # the online linear probe (eval.online)


def epoch_order(seed: int, stage: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """The stage's example indices in the order of one epoch, a function of (seed, stage, epoch)."""
    return np.random.default_rng((seed, stage, epoch)).permutation(indices)


def with_examples(stage: Stage, examples: np.ndarray, batch_size: int) -> Stage:
    """``stage`` with ``examples`` (int [M], ``Strategy.stage_examples``) joining its N examples:
    its indices are the N + M ids (the stage's first), which ``epoch_order`` shuffles together,
    and an epoch runs floor((N + M) / batch_size) steps (the incomplete last batch dropped, as a
    ``DataLoader(drop_last=True)`` over the concatenated data set). No examples: ``stage``."""
    examples = np.asarray(examples, np.int32).reshape(-1)
    if examples.size == 0:
        return stage
    indices = np.concatenate([stage.indices, examples])
    return dataclasses.replace(stage, indices=indices, steps_per_epoch=len(indices) // batch_size)


def visible_labels(
    labels: np.ndarray, task_indices: list[np.ndarray], *, fraction: float, seed: int
) -> np.ndarray:
    """int32 [N]: ``labels`` where the learner may use them, -1 elsewhere.

    Within each task, round(fraction * n_task) of its examples keep their label, drawn without
    replacement from (seed, task); examples of no task get -1.
    """
    visible = np.full(len(labels), -1, np.int32)
    for task, indices in enumerate(task_indices):
        rng = np.random.default_rng((seed, task))
        keep = rng.choice(indices, round(fraction * len(indices)), replace=False)
        visible[keep] = labels[keep]
    return visible


def plan(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    splits: tuple[sources.ArraySplit, sources.ArraySplit] | None = None,
) -> Plan:
    """Validates ``config``, loads the data (unless ``splits`` gives the train and test splits
    already read) and cuts the stages; ValueError says what to change.

    ``Plan.config`` is the resolved config: fields left unset hold the objective's recipe.
    """
    config = resolve_config(config)
    config_lib.validate(config, mesh.size)
    try:
        step_lib.make_tx(config).init({"w": np.zeros(2)})
    except TypeError as error:
        o = config.optimizer
        later = (
            f" and optimizer.later_tasks.kwargs {o.later_tasks.kwargs.to_dict()} of "
            f"{o.later_tasks.name!r}"
            if o.later_tasks.name
            else ""
        )
        raise ValueError(
            f"optimizer.kwargs {o.kwargs.to_dict()} of optimizer {o.name!r}{later} do not fit "
            f"({error}); set the kwargs to each optimizer's arguments"
        ) from error
    objective = get_objective(config)
    strategy = get_strategy(config, objective)
    epochs = config.epochs_per_task
    if strategy.name == "offline" and config.offline_epochs > 0:
        epochs = config.offline_epochs
    if strategy.phases is None and not 0 <= config.optimizer.warmup_epochs < epochs:
        raise ValueError(
            f"optimizer.warmup_epochs={config.optimizer.warmup_epochs} must lie in "
            f"[0, {epochs}) for {epochs} epochs per stage; lower it or raise the epochs"
        )
    d = config.dataset
    # Before reading data sets that take long to read.
    scenarios.check_settings(
        config.scenario,
        num_tasks=config.num_tasks,
        class_order=config.class_order,
        dataset=d.name,
        num_domains=sources.num_domains(d.name, tuple(d.domains)),
    )
    read = dict(
        data_dir=d.data_dir or None,
        image_size=d.image_size,
        domains=tuple(d.domains),
        streaming=d.streaming,
        read_threads=d.read_threads,
    )
    if splits is None:
        splits = (
            sources.load_split(d.name, "train", **read),
            sources.load_split(d.name, "test", **read),
        )
    train, test = splits
    scenario = scenarios.make_scenario(
        config.scenario,
        train.labels,
        test.labels,
        num_classes=train.num_classes,
        num_tasks=config.num_tasks,
        class_order=config.class_order,
        split_seed=config.split_seed,
        dataset=config.dataset.name,
        train_domains=train.domains,
        test_domains=test.domains,
    )
    scenario = scenarios.hold_out(
        scenario, train.labels, fraction=d.get("holdout_fraction", 0.0), seed=config.split_seed
    )
    stages = []
    for i, indices in enumerate(strategy.stages(scenario.train_indices)):
        if len(indices) < config.batch_size:
            raise ValueError(
                f"stage {i} has {len(indices)} training examples, fewer than batch_size="
                f"{config.batch_size}; lower --config.batch_size or --config.num_tasks"
            )
        phases = (Phase(epochs=epochs),) if strategy.phases is None else strategy.phases(i)
        stages.append(
            Stage(
                indices=np.asarray(indices, np.int32),
                num_epochs=sum(phase.epochs for phase in phases),
                steps_per_epoch=len(indices) // config.batch_size,
                phases=tuple(phases),
            )
        )
    if strategy.phases is not None:
        check_phases(config, objective, [stage.phases for stage in stages])
    network = config.eval.get("network", "")
    if network and network not in strategy.networks:
        raise ValueError(
            f"eval.network={network!r}; strategy {strategy.name!r} names "
            f"{sorted(strategy.networks) or 'no other network'}: set one of them, or '' for the "
            "network the strategy trains to be scored"
        )
    if network and config.eval.online:
        raise ValueError(
            f"eval.network={network!r} scores another network than the one the online probe "
            "learns from; set eval.online=False"
        )
    example_tasks = np.full(len(train.labels), -1, np.int32)
    for task, indices in enumerate(scenario.train_indices):
        example_tasks[indices] = task
    return Plan(
        config=config,
        mesh=mesh,
        strategy=strategy,
        objective=objective,
        train=train,
        test=test,
        scenario=scenario,
        stages=tuple(stages),
        labels=visible_labels(
            train.labels,
            scenario.train_indices,
            fraction=config.labels.fraction,
            seed=config.seed,
        ),
        example_tasks=example_tasks,
        online=online_lib.from_config(
            config, train.num_classes, output_widths(objective)["features"]
        ),
    )


def replica_plans(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> list[Plan]:
    """The plans of the replicas of a run with ``config.seeds`` (R seeds trained in one program,
    ``step.jit_replicated_step``): replica r's is the plan of the run with ``seed=seeds[r]`` and
    no ``seeds``: its visible labels, data orders and keys its seed's (the class order and the
    tasks follow ``split_seed``, the same for every replica). The data are read once.

    ValueError, before anything compiles, for what replicas cannot share: the images are on the
    devices (one copy for every replica), the stages have the same number of steps (one schedule
    and one compiled step), the strategy adds no examples to its stages (their number is each
    seed's own) and draws no replay rows from a loader ordered by the seed.
    """
    seeds = tuple(config.seeds)
    if not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ValueError(f"seeds={seeds!r}; list non-negative integers, e.g. --config.seeds=0,1,2")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds} names a seed twice; list each seed once")
    step_lib.check_replica_program(config.replica_program)
    d = config.dataset
    if not d.on_device:
        raise ValueError(
            "seeds: replicas share the training images on the devices; set "
            "dataset.on_device=True (and dataset.streaming=False), or run the seeds separately "
            "with --config.seed"
        )
    plans = []
    for seed in seeds:
        replica = config.copy_and_resolve_references()
        replica.seed, replica.seeds = seed, ()
        plans.append(plan(replica, mesh, (plans[0].train, plans[0].test) if plans else None))
    first = plans[0]
    strategy = first.strategy
    if strategy.stage_examples is not None:
        raise ValueError(
            f"seeds: strategy {strategy.name!r} adds exemplars to each task's data at its start, "
            "as many as each seed's task ends store, so the replicas' stages differ in length; "
            "run the seeds separately with --config.seed"
        )
    section = {"kaizen": "kaizen.replay", "ccl": "ccl.replay"}.get(strategy.name, "replay")
    if strategy.extend_batch is not None and _get(config, section, "sampling") == "loader":
        raise ValueError(
            f"seeds: {section}.sampling='loader' orders the replayed rows by the run's seed "
            f"inside the compiled step, which the replicas share; set {section}.sampling="
            "'uniform', or run the seeds separately with --config.seed"
        )
    for seed, other in zip(seeds[1:], plans[1:], strict=True):
        if [s.num_steps for s in other.stages] != [s.num_steps for s in first.stages]:
            raise ValueError(
                f"seeds: seed {seed}'s tasks train {[s.num_steps for s in other.stages]} steps, "
                f"seed {seeds[0]}'s {[s.num_steps for s in first.stages]}, but the replicas "
                "share one schedule and one compiled step; run the seeds separately with "
                "--config.seed"
            )
    return plans


def _get(config: ml_collections.ConfigDict, section: str, field: str):
    """``config.<section>.<field>``, None where the section does not exist."""
    node = config
    for part in section.split("."):
        node = node.get(part) if node is not None else None
    return None if node is None else node.get(field)


def check_phases(
    config: ml_collections.ConfigDict, objective: Objective, phases: list[tuple[Phase, ...]]
) -> None:
    """ValueError unless the stages' phases (``Strategy.phases``) can share one compiled step per
    phase index: at least one epoch each, more than ``optimizer.warmup_epochs`` (every phase
    restarts the schedule), the same ``objective`` flag and ``hyper`` names at each index, and no
    phase without the objective for an objective with optimizer groups of its own (a phase in
    which the objective rests cannot rest them)."""
    warmup = config.optimizer.warmup_epochs
    first = phases[0]
    for stage, stage_phases in enumerate(phases):
        for i, phase in enumerate(stage_phases):
            if not 0 <= warmup < phase.epochs:
                raise ValueError(
                    f"phase {i} of stage {stage} has {phase.epochs} epochs and every phase "
                    f"restarts the schedule with optimizer.warmup_epochs={warmup} of warm-up; "
                    "set the phase's epochs above the warm-up, or lower optimizer.warmup_epochs"
                )
        if len(stage_phases) != len(first) or any(
            a.objective != b.objective or set(a.hyper) != set(b.hyper)
            for a, b in zip(stage_phases, first, strict=True)
        ):
            raise ValueError(
                f"the phases of stage {stage} differ from the first stage's in number, objective "
                "flag or hyper names; a strategy's phases must share those so that the step "
                "compiles once per phase index"
            )
    if objective.param_groups and not all(phase.objective for phase in first):
        raise ValueError(
            f"objective {objective.name!r} trains parameters in optimizer groups of its own "
            f"({sorted(objective.param_groups)}), which a phase without the objective cannot "
            "let rest; choose an objective without them (--config.objective)"
        )


def boundary_steps(p: Plan) -> list[int]:
    """The global steps of the checkpoints that start each stage and end the last one: row i of
    the accuracy matrices scores the state of boundary i (step 0: the random network).

    A strategy that adds examples to its stages (``Strategy.stage_examples``) learns their number
    only at each boundary: its runs record the steps in their checkpoints (``BOUNDARY_STEPS``),
    and here only step 0 is known."""
    if p.strategy.stage_examples is not None:
        return [0]
    return [0, *np.cumsum([stage.num_steps for stage in p.stages]).tolist()]


BOUNDARY_STEPS = "boundary_steps"
"""The key of a checkpoint's meta that lists the task boundaries' global steps reached so far."""
