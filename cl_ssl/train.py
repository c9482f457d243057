"""The outer task loop: set-up, resume, per-stage training, evaluation, checkpoints, results."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from cl_ssl import checkpoint, parallel
from cl_ssl import config as config_lib
from cl_ssl import state as state_lib
from cl_ssl import step as step_lib
from cl_ssl.data import scenarios, sources
from cl_ssl.evaluation import evaluate, metrics, report
from cl_ssl.objectives import Objective, get_objective, resolve_config
from cl_ssl.strategies import Strategy, get_strategy


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage: a task of the scenario, or the union of all tasks for ``offline``."""

    indices: np.ndarray  # int32 [N_stage], examples of the train split
    num_epochs: int
    steps_per_epoch: int

    @property
    def num_steps(self) -> int:
        return self.num_epochs * self.steps_per_epoch


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


def epoch_order(seed: int, stage: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """The stage's example indices in the order of one epoch, a function of (seed, stage, epoch)."""
    return np.random.default_rng((seed, stage, epoch)).permutation(indices)


def plan(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Plan:
    """Validates ``config``, loads the data and cuts the stages; ValueError says what to change.

    ``Plan.config`` is the resolved config: fields left unset hold the objective's recipe.
    """
    config = resolve_config(config)
    config_lib.validate(config, mesh.size)
    try:
        step_lib.make_tx(config).init({})
    except TypeError as error:
        raise ValueError(
            f"optimizer.kwargs {config.optimizer.kwargs.to_dict()} do not fit optimizer "
            f"{config.optimizer.name!r} ({error}); set --config.optimizer.kwargs to its arguments"
        ) from error
    objective = get_objective(config)
    strategy = get_strategy(config, objective)
    epochs = config.epochs_per_task
    if strategy.name == "offline" and config.offline_epochs > 0:
        epochs = config.offline_epochs
    if not 0 <= config.optimizer.warmup_epochs < epochs:
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
    read = dict(data_dir=d.data_dir or None, image_size=d.image_size, domains=tuple(d.domains))
    train = sources.load_split(d.name, "train", **read)
    test = sources.load_split(d.name, "test", **read)
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
    stages = []
    for i, indices in enumerate(strategy.stages(scenario.train_indices)):
        if len(indices) < config.batch_size:
            raise ValueError(
                f"stage {i} has {len(indices)} training examples, fewer than batch_size="
                f"{config.batch_size}; lower --config.batch_size or --config.num_tasks"
            )
        stages.append(
            Stage(
                indices=np.asarray(indices, np.int32),
                num_epochs=epochs,
                steps_per_epoch=len(indices) // config.batch_size,
            )
        )
    return Plan(
        config=config,
        mesh=mesh,
        strategy=strategy,
        objective=objective,
        train=train,
        test=test,
        scenario=scenario,
        stages=tuple(stages),
    )


def _check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Stores the config in the workdir; refuses a workdir whose checkpoints are of another config.

    A stored config without checkpoints (a first attempt that failed before saving anything) is
    replaced.
    """
    given = json.loads(config.to_json())
    path = os.path.join(workdir, "config.json")
    checkpoints = os.path.join(workdir, "checkpoints")
    has_run = os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints))
    if has_run and os.path.exists(path):
        with open(path) as f:
            differ = config_lib.differing_fields(json.load(f), given)
        if differ:
            raise ValueError(
                f"--workdir={workdir} holds a run of a different config (fields that differ: "
                f"{', '.join(differ)}); use a new --workdir, or the stored config {path}"
            )
    elif jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        report.write_atomic(path, json.dumps(given, indent=2, sort_keys=True))


class _Results:
    """The accuracy matrices of a run, their metrics, and the files that report them."""

    def __init__(self, p: Plan, workdir: str, writer: report.ScalarWriter | None):
        self._plan, self._workdir, self._writer = p, workdir, writer
        rows, tasks = len(p.stages) + 1, p.scenario.num_tasks
        self.matrices = {name: np.full((rows, tasks), np.nan) for name in p.config.eval.evaluators}

    def to_json(self) -> dict:
        return {
            k: [[None if np.isnan(v) else float(v) for v in row] for row in R]
            for k, R in self.matrices.items()
        }

    def load_json(self, rows_by_name: dict) -> None:
        self.matrices = {
            k: np.array([[np.nan if v is None else v for v in row] for row in rows])
            for k, rows in rows_by_name.items()
        }

    def summaries(self) -> dict[str, dict]:
        """Metrics of every complete matrix: all of PROTOCOLS.md 4 for continual runs, final accuracy
        for the offline run's single trained row."""
        c, sizes = self._plan.config, np.array([len(i) for i in self._plan.scenario.test_indices])
        out = {}
        for name, R in self.matrices.items():
            if np.isnan(R).any():
                continue
            if R.shape[0] == R.shape[1] + 1:
                out[name] = metrics.summarize(
                    R,
                    task_sizes=sizes,
                    forgetting_variant=c.eval.forgetting,
                    bwt_norm=c.eval.bwt_norm,
                )
            else:
                out[name] = {
                    "final_average_accuracy": float(R[-1].mean()),
                    "final_overall_accuracy": float(np.average(R[-1], weights=sizes)),
                }
        return out

    def record(self, row: int, accuracies: dict[str, np.ndarray], step: int) -> None:
        """Fills ``row`` (0: random initialisation; i: after stage i) and rewrites the files.

        TensorBoard gets the accuracies at the global optimizer ``step``, the x-axis of the
        training scalars too."""
        for name, acc in accuracies.items():
            self.matrices[name][row] = acc
            if self._writer:
                for j, a in enumerate(acc):
                    self._writer.scalar(f"eval/{name}/task{j + 1}", a, step)
        if jax.process_index() == 0:
            p = self._plan
            report.write_results(
                self._workdir,
                matrices=self.matrices,
                summaries=self.summaries(),
                meta={
                    "config": json.loads(p.config.to_json()),
                    "strategy": p.strategy.name,
                    "objective": p.objective.name,
                    "scenario": p.scenario.kind,
                    "num_devices": p.mesh.size,
                    "rows_evaluated": row + 1,
                },
            )


def _finite(step_metrics: dict) -> bool:
    """Whether a step's loss and gradient norm (hence its updated parameters) are finite."""
    return bool(
        np.isfinite(float(step_metrics["loss"])) and np.isfinite(float(step_metrics["grad_norm"]))
    )


def _non_finite(step: int, metrics_: dict, stage_id: int, ckpt: checkpoint.Checkpointer):
    values = {k: float(v) for k, v in metrics_.items()}
    return FloatingPointError(
        f"non-finite loss or gradient (loss {values['loss']}, gradient norm "
        f"{values['grad_norm']}) at step {step} (task {stage_id + 1}; metrics {values}); "
        f"the last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}. Lower the "
        f"learning rate or check the data, then rerun with the same --workdir."
    )


def run(
    config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh | None = None
) -> dict[str, Any]:
    """Trains and evaluates a continual run; resumes from ``workdir`` when it holds one.

    Every bad setting fails here before anything compiles. Returns {'matrices': evaluator ->
    accuracy matrix [stages + 1, T] in percent (row 0: random initialisation), 'summaries':
    evaluator -> metrics, 'state': the last ContinualState, 'stopped': True when
    ``stop_after_steps`` ended the run early}. Writes config.json, checkpoints/, results.json,
    results.md, plots/ and TensorBoard events (tb/) to ``workdir``.
    """
    p = plan(config, mesh or parallel.make_mesh())
    _check_workdir(workdir, p.config)
    with contextlib.ExitStack() as stack:
        writer = None
        if jax.process_index() == 0:
            writer = report.ScalarWriter(os.path.join(workdir, "tb"))
            stack.callback(writer.close)
        ckpt = checkpoint.Checkpointer(
            os.path.join(os.path.abspath(workdir), "checkpoints"), keep=config.keep_checkpoints
        )
        stack.callback(ckpt.close)
        return _run(p, workdir, ckpt, writer)


def _run(
    p: Plan, workdir: str, ckpt: checkpoint.Checkpointer, writer: report.ScalarWriter | None
) -> dict[str, Any]:
    config, mesh, objective, strategy = p.config, p.mesh, p.objective, p.strategy
    rep = parallel.replicated(mesh)
    tx = step_lib.make_tx(config)
    init_key, eval_key, step_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    objective_key = jax.random.fold_in(init_key, 1)  # the initial queues and banks
    strategy_key = jax.random.fold_in(init_key, 2)  # the strategy's heads
    crop = objective.views[0].crop_size

    def init_state():
        variables = objective.model.init(
            init_key, np.zeros((1, crop, crop, 3), np.float32), train=True
        )
        teacher = strategy.teacher(variables["params"], variables.get("batch_stats", {}))
        return state_lib.create_state(
            variables=variables,
            tx=tx,
            teacher=teacher,
            objective_state=objective.init_state(variables["params"], objective_key),
            strategy_params=strategy.init_params(strategy_key),
            rng=step_key,
        )

    results = _Results(p, workdir, writer)
    evaluator = evaluate.Evaluator(
        objective.model, p.train, p.test, p.scenario, config, mesh, key=eval_key
    )
    # Shapes only: a resumed run never computes the initial state it is about to overwrite.
    restored = ckpt.restore(checkpoint.abstract_like(jax.eval_shape(init_state), rep))
    if restored is None:
        state = jax.jit(init_state, out_shardings=rep)()
        results.record(0, evaluator(state.params, state.batch_stats), step=0)
        ckpt.save(0, state, {"matrices": results.to_json()})
    else:
        _, state, meta = restored
        results.load_json(meta["matrices"])
        if jax.process_index() == 0:
            where = (
                "the run is complete"
                if int(state.task) >= len(p.stages)
                else f"task {int(state.task) + 1}, step {int(state.task_step)} of the task"
            )
            print(f"resumed from {ckpt.directory} at step {int(state.step)} ({where})")

    on_device = config.dataset.on_device
    images = parallel.put_replicated(mesh, p.train.images) if on_device else None
    train_step = step_lib.jit_step(
        step_lib.build_step_fn(objective, strategy, tx), mesh, host_batches=not on_device
    )
    global_step = int(state.step)
    for stage_id in range(int(state.task), len(p.stages)):
        stage = p.stages[stage_id]
        # The whole stage's schedules at once, so the loop never waits on the device for one.
        hyper = step_lib.stage_hyper(
            config, objective, num_epochs=stage.num_epochs, steps_per_epoch=stage.steps_per_epoch
        )
        first = int(state.task_step)
        bar = tqdm.tqdm(
            total=stage.num_steps,
            initial=first,
            unit="step",
            dynamic_ncols=True,
            desc=f"task {stage_id + 1}/{len(p.stages)}",
            disable=not (config.progress_bar and jax.process_index() == 0),
        )
        pending = None  # (global step, metrics) of the previous step, checked while the next runs
        order, order_epoch = None, -1
        tic, tic_step = time.perf_counter(), first
        for task_step in range(first, stage.num_steps):
            epoch, position = divmod(task_step, stage.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(config.seed, stage_id, epoch, stage.indices), epoch
            batch = order[position * config.batch_size : (position + 1) * config.batch_size]
            hyper_now = parallel.put_replicated(mesh, {k: v[task_step] for k, v in hyper.items()})
            if on_device:
                inputs = (images, parallel.global_batch(mesh, batch))
            else:  # read while the device runs the previous step
                inputs = (parallel.gather_batch(mesh, p.train.images, batch), None)
            state, step_metrics = train_step(state, *inputs, hyper_now)
            global_step += 1
            if pending is not None:
                if not _finite(pending[1]):
                    raise _non_finite(*pending, stage_id, ckpt)
                loss = float(pending[1]["loss"])
                if pending[0] % config.log_every_steps == 0:
                    rate = (task_step - tic_step) * config.batch_size / (time.perf_counter() - tic)
                    tic, tic_step = time.perf_counter(), task_step
                    bar.set_postfix(
                        epoch=f"{epoch + 1}/{stage.num_epochs}",
                        loss=f"{loss:.4f}",
                        img_s=f"{rate:.0f}",
                    )
                    if writer:
                        for k, v in pending[1].items():
                            writer.scalar(f"train/{k}", float(v), pending[0])
                        writer.scalar("train/images_per_second", rate, pending[0])
            pending = (global_step, step_metrics)
            bar.update(1)
            stop = global_step == config.stop_after_steps
            if task_step + 1 < stage.num_steps and (
                global_step % config.checkpoint_every_steps == 0 or stop
            ):
                if not _finite(step_metrics):
                    raise _non_finite(*pending, stage_id, ckpt)
                ckpt.save(global_step, state, {"matrices": results.to_json()})
            if stop:
                bar.close()
                logging.warning("stopping after step %d as stop_after_steps asks", global_step)
                return {
                    "matrices": results.matrices,
                    "summaries": results.summaries(),
                    "state": state,
                    "stopped": True,
                }
        bar.close()
        if pending is not None and not _finite(pending[1]):
            raise _non_finite(*pending, stage_id, ckpt)

        results.record(stage_id + 1, evaluator(state.params, state.batch_stats), step=global_step)
        state = state_lib.start_task(
            state,
            task=stage_id + 1,
            tx=tx,
            teacher=strategy.teacher(state.params, state.batch_stats),
            objective_state=objective.start_task(state.objective_state),
            strategy_params=strategy.start_task(state.strategy_params, stage_id + 1, strategy_key),
        )
        state = jax.device_put(state, rep)
        ckpt.save(global_step, state, {"matrices": results.to_json()})
        if writer:
            writer.flush()
    return {
        "matrices": results.matrices,
        "summaries": results.summaries(),
        "state": state,
        "stopped": False,
    }
