"""The outer task loop: set-up, resume, per-stage training, evaluation, checkpoints, results."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging
from etils import epath

from cl_ssl import checkpoint, parallel, storage
from cl_ssl import preemption as preemption_lib
from cl_ssl import results as results_lib
from cl_ssl import state as state_lib
from cl_ssl import step as step_lib
from cl_ssl import workdir as workdir_lib
from cl_ssl.data import host_crop
from cl_ssl.data.batch import TrainData
from cl_ssl.evaluation import evaluate, report
from cl_ssl.evaluation import online as online_lib
from cl_ssl.objectives import resolve_config
from cl_ssl.planning import (
    BOUNDARY_STEPS,
    Plan,
    Stage,
    boundary_steps,
    epoch_order,
    plan,
    replica_plans,
    with_examples,
)
from cl_ssl.strategies import PhaseStart, TaskEnd
from cl_ssl.strategies.base import Progress


def _check_finite(
    step: int,
    step_metrics: dict,
    stage_id: int,
    ckpt: checkpoint.Checkpointer,
    seeds: list[int] | None = None,
):
    """FloatingPointError unless a step's loss and gradient norm (hence its updated parameters)
    are finite; the message names the last checkpoint and what to change. With ``seeds``, the
    metrics are the replicas' ([R] each) and the message names the first replica that failed."""
    host = {k: np.atleast_1d(np.asarray(v)) for k, v in step_metrics.items()}
    for r, seed in enumerate(seeds or [None]):
        values = {k: float(v[r]) for k, v in host.items()}
        if np.isfinite(values["loss"]) and np.isfinite(values["grad_norm"]):
            continue
        replica = "" if seed is None else f" of the replica of seed {seed}"
        raise FloatingPointError(
            f"non-finite loss or gradient{replica} (loss {values['loss']}, gradient norm "
            f"{values['grad_norm']}) at step {step} (task {stage_id + 1}; metrics {values}); "
            f"the last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}. "
            f"{_DIVERGED}"
        )


def _check_task_end(
    state: state_lib.ContinualState, *, stage_id: int, strategy: str, seed: int | None = None
) -> None:
    """FloatingPointError when the state the end of stage ``stage_id`` built (one replica's, of
    ``seed``) holds non-finite learned values: the strategy's end-of-task work made them, from a
    finite trained state, so lowering the learning rate would not help."""
    bad = checkpoint.non_finite_leaves(_learned(state))
    if bad:
        replica = "" if seed is None else f" for the replica of seed {seed}"
        raise FloatingPointError(
            f"the end of task {stage_id + 1} (the end_task of strategy {strategy!r}){replica} left "
            f"non-finite values in the state ({', '.join(bad[:3])}), from a finite trained state; "
            "it was not saved. Check the strategy's end-of-task work and its settings"
        )


def _counter(x: jax.Array) -> int:
    """A counter of the state (step, task, task_step): a scalar, or [R] equal entries for
    replicas, which step together."""
    return int(np.asarray(x).flat[0])


_DIVERGED = (
    "The run diverged: lower --config.optimizer.lr (or check the data) and start again in a new "
    "--workdir; the same config on this workdir would most likely diverge at the same step."
)


def run(
    config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh | None = None
) -> dict[str, Any]:
    """Trains and evaluates a continual run; resumes from ``workdir`` when it holds one.

    Every bad setting fails here before anything compiles. Returns {'matrices': evaluator ->
    accuracy matrix [stages + 1, T] in percent (row 0: random initialisation), 'summaries':
    evaluator -> metrics, 'state': the last ContinualState, 'stopped': True when
    ``stop_after_steps`` or a signal ended the run early, 'preempted': the signal's number when a
    signal did (``cl_ssl.preemption``), else None}. Writes config.json, checkpoints/, results.json,
    results.md, plots/ and TensorBoard events (tb/) to ``workdir``, which the run holds for
    itself (``workdir.workdir_lock``).

    With ``config.seeds`` (R seeds), the R runs train as replicas in one program: 'state' carries
    a leading replica axis, and 'replicas' lists per seed {'seed', 'workdir', 'matrices',
    'summaries'} in place of 'matrices' and 'summaries'. ``workdir`` holds the config and the
    checkpoints of all of them, and ``workdir/seed_<s>/`` the config, results files, plots and
    TensorBoard events of seed s, those of the run with ``--config.seed=<s>``.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(workdir_lib.workdir_lock(workdir))
        mesh = mesh or parallel.make_mesh()
        if config.seeds:
            plans = replica_plans(config, mesh)
            workdir_lib.check_config(workdir, resolve_config(config))
            folders = [str(storage.path(workdir) / f"seed_{q.config.seed}") for q in plans]
            for q, folder in zip(plans, folders, strict=True):
                workdir_lib.check_config(folder, q.config)  # each seed's own config.json
        else:
            plans, folders = [plan(config, mesh)], [workdir]
            workdir_lib.check_config(workdir, plans[0].config)
        writers = []
        for q, folder in zip(plans, folders, strict=True):
            writer = None
            if jax.process_index() == 0:
                writer = report.ScalarWriter(
                    str(storage.path(folder) / "tb"), wandb_init=results_lib.wandb_init(q, folder)
                )
                stack.callback(writer.close)
            writers.append(writer)
        ckpt = stack.enter_context(contextlib.closing(checkpointer(plans[0], workdir)))
        preemption = stack.enter_context(preemption_lib.Preemption())
        replicas = list(zip(plans, folders, writers, strict=True)) if config.seeds else None
        return Run(plans[0], workdir, ckpt, writers[0], preemption, replicas).run()


def checkpointer(p: Plan, workdir: str) -> checkpoint.Checkpointer:
    """The run's checkpoints: the newest ``keep_checkpoints`` and every task boundary's."""
    return checkpoint.Checkpointer(
        str(storage.path(workdir) / "checkpoints"),
        keep=p.config.keep_checkpoints,
        keep_steps=boundary_steps(p),
        must_be_finite=_learned,
    )


def _learned(state: state_lib.ContinualState) -> dict[str, Any]:
    """What training changes and must stay finite: the optimizer's parameters, the BatchNorm
    statistics and the optimizer state (buffers may hold -inf on purpose, as an empty memory's
    priorities)."""
    return {
        "trainable": state_lib.trainable(state),
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
    }


def task_end_progress(
    workdir: str,
    stage_id: int,
    mesh: jax.sharding.Mesh,
    stop_requested: Callable[[int], bool] = lambda iterations: False,
) -> Progress:
    """Checkpoints of a strategy's own loop at the end of stage ``stage_id`` (Genifer's GAN), in
    ``task_end/stage_<id>`` of ``workdir`` (created on the first save; the newest one kept), and
    ``stop_requested``, whether a signal stops the loop after an iteration."""
    directory = storage.path(workdir) / "task_end" / f"stage_{stage_id}"
    rep = parallel.replicated(mesh)

    def save(iteration: int, tree: Any) -> None:
        with contextlib.closing(checkpoint.Checkpointer(str(directory), keep=1)) as ckpt:
            ckpt.save(iteration, tree, {})

    def restore(like: Any) -> Any:
        if not directory.is_dir():
            return None
        with contextlib.closing(checkpoint.Checkpointer(str(directory), keep=1)) as ckpt:
            try:
                restored = ckpt.restore(checkpoint.abstract_like(like, rep))
            except RuntimeError as error:
                # The loop is deterministic: started over, it ends as it would have.
                logging.warning(
                    "the end of task %d starts over: its saved progress does not restore (%s)",
                    stage_id + 1,
                    error,
                )
                return None
        if restored is None:
            return None
        if jax.process_index() == 0:
            print(f"resumed the end of task {stage_id + 1} from {directory}")
        return restored[1]

    return Progress(save=save, restore=restore, stop_requested=stop_requested)


@dataclasses.dataclass
class Replica:
    """What one seed of a run owns: its plan (class order, visible labels and stages follow from
    the seed), keys, results (its files in ``workdir``), evaluator and TensorBoard writer."""

    p: Plan
    workdir: epath.Path
    keys: state_lib.RunKeys
    results: results_lib.RunResults
    evaluator: evaluate.Evaluator
    writer: report.ScalarWriter | None

    @property
    def seed(self) -> int:
        return int(self.p.config.seed)


class Run:
    """One run's training loop: start or resume, then each stage's steps and its end.

    With ``replicas`` ((plan, workdir, writer) per seed of ``config.seeds``), the state carries a
    leading replica axis, every step trains all of them (``step.jit_replicated_step``), and the
    host-side work (evaluation, the strategies' task ends and phase starts) runs for each replica
    on its slice of the state. ``rescore.reevaluate`` builds one to score saved checkpoints
    without training.
    """

    def __init__(
        self,
        p: Plan,
        workdir: str,
        ckpt: checkpoint.Checkpointer,
        writer: report.ScalarWriter | None,
        preemption: preemption_lib.Preemption | None = None,
        replicas: list[tuple[Plan, str, report.ScalarWriter | None]] | None = None,
    ):
        self.p, self.ckpt = p, ckpt
        # Without one (rescoring saved checkpoints), no signal stops the loop early.
        self.preemption = preemption or preemption_lib.Preemption()
        self.workdir = storage.path(workdir)
        self.config, self.mesh = p.config, p.mesh
        self.tx = step_lib.make_tx(p.config, p.objective, p.strategy, p.online)
        self.stacked = replicas is not None
        self.replicas = [self._replica(*r) for r in (replicas or [(p, workdir, writer)])]
        on_device = p.config.dataset.on_device
        rep = parallel.replicated(p.mesh)
        per_replica = np.stack if self.stacked else lambda arrays: arrays[0]
        self.data = TrainData(
            images=parallel.put_replicated(p.mesh, p.train.images) if on_device else None,
            labels=jax.device_put(per_replica([r.p.labels for r in self.replicas]), rep),
            classes=jax.device_put(p.train.labels.astype(np.int32), rep),
            tasks=jax.device_put(per_replica([r.p.example_tasks for r in self.replicas]), rep),
            on_device=on_device,
        )
        # (extend_batch, phase index) -> jitted step, built when a stage first needs it
        self._steps = {}
        self._boundaries = []  # the global steps of the task boundaries reached so far
        self._clock = time.perf_counter()  # since the last charge of training time
        self._waited = 0.0  # of which the host waited for a step's metrics

    def _replica(self, p: Plan, workdir: str, writer: report.ScalarWriter | None) -> Replica:
        keys = state_lib.run_keys(p.config.seed)
        evaluator = evaluate.Evaluator(
            p.objective.model,
            p.train,
            p.test,
            p.scenario,
            p.config,
            p.mesh,
            key=keys.eval,
            stage_indices=[stage.indices for stage in p.stages],
            classify=p.strategy.classify,
            online=p.online,
            progress=p.config.progress_bar and jax.process_index() == 0,
        )
        results = results_lib.RunResults(p, workdir, writer)
        return Replica(p, storage.path(workdir), keys, results, evaluator, writer)

    @property
    def results(self) -> results_lib.RunResults:
        """The results of a run without replicas."""
        (replica,) = self.replicas
        return replica.results

    def split(self, state: state_lib.ContinualState) -> list[state_lib.ContinualState]:
        """Each replica's state: the slices of the replica axis (the state itself without one)."""
        if not self.stacked:
            return [state]
        return [jax.tree.map(lambda x, r=r: x[r], state) for r in range(len(self.replicas))]

    def stack(self, states: list[state_lib.ContinualState]) -> state_lib.ContinualState:
        """The replicas' states stacked along a leading axis (``split``'s inverse)."""
        return jax.tree.map(lambda *xs: jnp.stack(xs), *states) if self.stacked else states[0]

    def join(self, states: list[state_lib.ContinualState]) -> state_lib.ContinualState:
        """``stack``, replicated over the mesh."""
        return jax.device_put(self.stack(states), parallel.replicated(self.mesh))

    def run(self) -> dict[str, Any]:
        state = self.start_or_resume()
        for stage_id in range(_counter(state.task), len(self.p.stages)):
            state, stopped = self.train_stage(stage_id, state)
            if stopped:
                return self._result(state, stopped=True)
            try:
                state = self.end_stage(stage_id, state)
            except preemption_lib.Stopped as stopped:
                # The stage's trained state, so that the same command goes straight back to the
                # end-of-task work, which resumes from its own saved progress.
                self._save(_counter(state.step), state)
                self._report_preemption(
                    _counter(state.step),
                    f"; the end of task {stage_id + 1} resumes where it stopped ({stopped})",
                )
                return self._result(state, stopped=True)
            if stage_id + 1 < len(self.p.stages) and self.preemption.stops_between_tasks():
                # A signal during the end-of-task work.
                self._report_preemption(_counter(state.step))
                return self._result(state, stopped=True)
        return self._result(state, stopped=False)

    def _report_preemption(self, step: int, more: str = "") -> None:
        if jax.process_index() == 0:
            print(
                f"stopped by {signal.Signals(self.preemption.signal).name} at step {step}: the "
                f"same command resumes from checkpoint {step} in {self.ckpt.directory}{more}",
                flush=True,
            )

    def _result(self, state: state_lib.ContinualState, *, stopped: bool) -> dict[str, Any]:
        outcome = {
            "state": state,
            "stopped": stopped,
            "preempted": self.preemption.signal if stopped else None,
        }
        if not self.stacked:
            return {
                **outcome,
                "matrices": self.results.matrices,
                "summaries": self.results.summaries(),
            }
        replicas = [
            {
                "seed": r.seed,
                "workdir": str(r.workdir),
                "matrices": r.results.matrices,
                "summaries": r.results.summaries(),
            }
            for r in self.replicas
        ]
        return {**outcome, "replicas": replicas}

    def initial_state(self) -> state_lib.ContinualState:
        states = [
            state_lib.initial_state(
                objective=r.p.objective,
                strategy=r.p.strategy,
                tx=self.tx,
                seed=r.seed,
                train=r.p.train,
                online=r.p.online,
            )
            for r in self.replicas
        ]
        return self.stack(states)

    def start_or_resume(self) -> state_lib.ContinualState:
        """The newest checkpoint's state, or a fresh one evaluated as row 0 and saved as step 0."""
        rep = parallel.replicated(self.mesh)
        # Shapes only: a resumed run never computes the initial state it is about to overwrite.
        abstract = checkpoint.abstract_like(jax.eval_shape(self.initial_state), rep)
        restored = self.ckpt.restore(abstract)
        if restored is None:
            state = jax.jit(self.initial_state, out_shardings=rep)()
            self._report_buffers(state)
            for replica, replica_state in zip(self.replicas, self.split(state), strict=True):
                rows = self.evaluate(replica_state, 0, replica)
                replica.results.record(0, rows, step=0)
            self._save(0, state, boundary=True)
            return state
        _, state, meta = restored
        stop = self.config.stop_after_steps
        if 0 <= stop <= _counter(state.step):
            raise ValueError(
                f"stop_after_steps={stop}, but the run resumes from step {_counter(state.step)} "
                f"of {self.ckpt.directory}: it would never stop; set a later step, or -1"
            )
        for replica, replica_meta in zip(
            self.replicas, meta["replicas"] if self.stacked else [meta], strict=True
        ):
            replica.results.load_checkpoint_meta(replica_meta)
        for step in meta.get(BOUNDARY_STEPS, []):  # older checkpoints have none
            self._keep_boundary(step)
        self._report_buffers(state)
        if jax.process_index() == 0:
            task = _counter(state.task)
            where = (
                "the run is complete"
                if task >= len(self.p.stages)
                else f"task {task + 1}, step {_counter(state.task_step)} of the task"
            )
            print(f"resumed from {self.ckpt.directory} at step {_counter(state.step)} ({where})")
        return state

    def _keep_boundary(self, step: int) -> None:
        if step not in self._boundaries:
            self._boundaries.append(step)
            self.ckpt.keep_step(step)

    def _save(self, step: int, state: state_lib.ContinualState, *, boundary: bool = False) -> None:
        """Checkpoints ``state`` with the results so far (each replica's under 'replicas') and the
        task boundaries' steps (kept whatever their age when ``boundary``), and flushes the
        TensorBoard scalars; a non-finite state is never saved."""
        tic = time.perf_counter()
        if boundary:
            self._keep_boundary(step)
        results = [r.results.checkpoint_meta() for r in self.replicas]
        meta = {"replicas": results} if self.stacked else results[0]
        meta = {**meta, BOUNDARY_STEPS: list(self._boundaries)}
        try:
            self.ckpt.save(step, state, meta)
        except FloatingPointError as error:
            raise FloatingPointError(f"{error}. {_DIVERGED}") from None
        # What a resumed run will not log again reaches the disk with the checkpoint.
        for replica in self.replicas:
            if replica.writer:
                replica.writer.flush()
        elapsed = time.perf_counter() - tic
        for replica in self.replicas:
            replica.results.wall_seconds["checkpointing"] += elapsed / len(self.replicas)
        self._clock += elapsed  # not training time

    def evaluate(
        self, state: state_lib.ContinualState, row: int, replica: Replica | None = None
    ) -> dict[str, np.ndarray]:
        """Row ``row`` of every accuracy matrix (0: the random network; s: after stage s) of
        ``replica`` (the run's one without replicas) from its ``state`` (no replica axis)."""
        replica = replica or self.replicas[0]
        tic = time.perf_counter()
        if jax.process_index() == 0:
            what = "the random network" if row == 0 else f"stage {row}"
            seed = f" (seed {replica.seed})" if self.stacked else ""
            names = ", ".join(replica.results.matrices)
            print(f"evaluating {what}{seed}: {names}", flush=True)
        params, batch_stats = state.params, state.batch_stats
        strategy = replica.p.strategy
        network = self.config.eval.get("network", "")  # the config.json of older runs lacks it
        if network:
            params, batch_stats = strategy.networks[network](state)
        elif strategy.evaluated is not None:
            params, batch_stats = strategy.evaluated(state)
        rows = replica.evaluator(params, batch_stats, state.strategy, state.online_probe, stage=row)
        replica.results.wall_seconds["evaluation"] += time.perf_counter() - tic
        return rows

    def _charge_training(self) -> None:
        """Adds the time since the last charge to the run's training time, and the part of it
        the host spent waiting for the device (each replica's share, with replicas)."""
        now = time.perf_counter()
        for replica in self.replicas:
            seconds = replica.results.wall_seconds
            seconds["training"] += (now - self._clock) / len(self.replicas)
            seconds["training_waiting_for_device"] += self._waited / len(self.replicas)
        self._clock, self._waited = now, 0.0

    def _report_buffers(self, state: state_lib.ContinualState) -> None:
        """Prints the size of the strategy's buffers (an exemplar memory) and records it."""
        size = sum(x.nbytes for x in jax.tree.leaves(state.strategy.buffers))
        size //= len(self.replicas)
        for replica in self.replicas:
            replica.results.buffer_bytes = size
        if size and jax.process_index() == 0:
            each = " per replica" if self.stacked else ""
            print(f"strategy {self.p.strategy.name}: buffers of {size / 2**20:.2f} MiB{each}")

    def _step(self, stage_id: int, phase: int = 0):
        extend = self.p.strategy.extends_batch(stage_id)
        if (extend, phase) not in self._steps:
            p = self.p
            fn = step_lib.build_step_fn(
                p.objective,
                p.strategy,
                self.tx,
                extend=extend,
                online=p.online,
                phase=phase,
                with_objective=p.stages[stage_id].phases[phase].objective,
            )
            if self.stacked:
                jitted = step_lib.jit_replicated_step(
                    fn,
                    self.mesh,
                    online=p.online is not None,
                    program=p.config.replica_program,
                )
            else:
                jitted = step_lib.jit_step(
                    fn,
                    self.mesh,
                    on_device=self.data.on_device,
                    online=p.online is not None,
                    host_crop=p.config.dataset.host_crop,
                )
            self._steps[extend, phase] = jitted
        return self._steps[extend, phase]

    def start_phase(
        self, stage_id: int, phase: int, state: state_lib.ContinualState
    ) -> state_lib.ContinualState:
        """The state at the start of phase ``phase`` >= 1 of the stage: the strategy's
        ``start_phase`` (when it has one) and, under ``optimizer.reset_each_task``, a fresh
        optimizer state; for each replica."""
        states = []
        for replica, replica_state in zip(self.replicas, self.split(state), strict=True):
            strategy = replica.p.strategy
            if strategy.start_phase is not None:
                params, batch_stats, strategy_state = strategy.start_phase(
                    PhaseStart(
                        state=replica_state, stage=stage_id, phase=phase, key=replica.keys.strategy
                    )
                )
                replica_state = replica_state.replace(
                    params=params, batch_stats=batch_stats, strategy=strategy_state
                )
            if self.config.optimizer.reset_each_task:
                opt_state = self.tx.init(state_lib.trainable(replica_state))
                replica_state = replica_state.replace(opt_state=opt_state)
            states.append(replica_state)
        return self.join(states)

    def stage(self, stage_id: int, state: state_lib.ContinualState) -> Stage:
        """Stage ``stage_id`` as it trains from ``state`` (its start, or a checkpoint inside it):
        the plan's, with the examples the strategy adds from its state (``stage_examples``; a run
        with replicas has none, ``planning.replica_plans``)."""
        stage = self.p.stages[stage_id]
        if self.p.strategy.stage_examples is None:
            return stage
        examples = self.p.strategy.stage_examples(state.strategy, stage_id)
        return with_examples(stage, examples, self.config.batch_size)

    def _batch_ids(self, orders: list[np.ndarray], position: int) -> tuple[np.ndarray, jax.Array]:
        """The step's example ids of each replica's epoch order at ``position``: the host array
        ([B], or [R, B] with replicas) and its global array, sharded over ``data``."""
        b = self.config.batch_size
        if not self.stacked:
            batch = orders[0][position * b : (position + 1) * b]
            return batch, parallel.global_batch(self.mesh, batch)
        batches = np.stack([order[position * b : (position + 1) * b] for order in orders])
        return batches, parallel.global_replica_batch(self.mesh, batches)

    def train_stage(
        self, stage_id: int, state: state_lib.ContinualState
    ) -> tuple[state_lib.ContinualState, bool]:
        """The stage's remaining steps; (state, True) when ``stop_after_steps`` or a signal ends the
        run (``cl_ssl.preemption``: saved at the step every process agrees on, the stage's last
        step included, before its evaluation)."""
        config, mesh, p = self.config, self.mesh, self.p
        stage = self.stage(stage_id, state)
        # Each replica's examples (its seed's class order); the same number of steps for all.
        stages = [stage] if not self.stacked else [r.p.stages[stage_id] for r in self.replicas]
        seeds = [r.seed for r in self.replicas]
        starts = stage.phase_starts()
        # The whole stage's schedules at once, so the loop never waits on the device for one.
        hyper = step_lib.stage_hyper(
            config,
            p.objective,
            p.strategy,
            num_epochs=stage.num_epochs,
            steps_per_epoch=stage.steps_per_epoch,
            stage=stage_id,
            online=p.online,
            phases=stage.phases,
        )
        # The online probe's labelled examples during this stage: the row it is scored in.
        probe_pools = [
            r.evaluator.probe_pool(stage_id + 1, config.eval.online_data) if p.online else None
            for r in self.replicas
        ]
        first, global_step = _counter(state.task_step), _counter(state.step)
        self._clock = time.perf_counter()
        bar = tqdm.tqdm(
            total=stage.num_steps,
            initial=first,
            unit="step",
            dynamic_ncols=True,
            desc=f"task {stage_id + 1}/{len(p.stages)}",
            disable=not (config.progress_bar and jax.process_index() == 0),
        )
        pending = None  # (global step, metrics) of the previous step, checked while the next runs
        orders, probe_orders, order_epoch = None, None, -1
        tic, tic_step = time.perf_counter(), first
        b, views = config.batch_size, p.objective.views
        check = functools.partial(
            _check_finite, stage_id=stage_id, ckpt=self.ckpt, seeds=seeds if self.stacked else None
        )
        # The phase of the step before ``first``: a run resumed from the checkpoint saved at a
        # phase's first step has yet to start that phase.
        phase = max(int(np.searchsorted(starts, first)) - 1, 0)
        train_step = self._step(stage_id, phase)
        for task_step in range(first, stage.num_steps):
            if phase + 1 < len(starts) and task_step == starts[phase + 1]:
                # Also on resuming from the checkpoint at the boundary, saved before it.
                phase += 1
                state = self.start_phase(stage_id, phase, state)
                train_step = self._step(stage_id, phase)
            epoch, position = divmod(task_step, stage.steps_per_epoch)
            if epoch != order_epoch:
                orders = [
                    epoch_order(seed, stage_id, epoch, s.indices)
                    for seed, s in zip(seeds, stages, strict=True)
                ]
                order_epoch = epoch
                if p.online:
                    probe_orders = [
                        online_lib.epoch_ids(seed, stage_id, epoch, pool, stage.steps_per_epoch * b)
                        for seed, pool in zip(seeds, probe_pools, strict=True)
                    ]
            batch, ids = self._batch_ids(orders, position)
            hyper_now = parallel.put_replicated(mesh, {k: v[task_step] for k, v in hyper.items()})
            data = self.data
            if config.dataset.host_crop:  # read while the device runs the previous step
                images, crops = parallel.gather_with_crops(
                    mesh,
                    p.train.images,
                    batch,
                    host_crop.crop_uniforms(config.seed, stage_id, task_step, b, len(views)),
                    views,
                )
                data = data.replace(images=images, crops=crops)
            elif not data.on_device:
                data = data.replace(images=parallel.gather_batch(mesh, p.train.images, batch))
            if p.online:
                probe, probe_ids = self._batch_ids(probe_orders, position)
                data = data.replace(probe_ids=probe_ids)
                if not data.on_device:
                    data = data.replace(
                        probe_images=parallel.gather_batch(mesh, p.train.images, probe)
                    )
            state, step_metrics = train_step(state, data, ids, hyper_now)
            global_step += 1
            if pending is not None:
                waiting = time.perf_counter()
                check(*pending)  # waits for the previous step, while this one is queued
                self._waited += time.perf_counter() - waiting
                if pending[0] % config.log_every_steps == 0:
                    self._log(bar, pending, epoch, stage, steps=task_step - tic_step, since=tic)
                    tic, tic_step = time.perf_counter(), task_step
            pending = (global_step, step_metrics)
            bar.update(1)
            stop = global_step == config.stop_after_steps
            preempted = self.preemption.reached()
            # At the stage's last step the boundary checkpoint follows the evaluation, unless the
            # run stops first: the same command then starts with the evaluation.
            last = task_step + 1 == stage.num_steps
            if stop or preempted or (not last and global_step % config.checkpoint_every_steps == 0):
                check(*pending)
                self._charge_training()
                self._save(global_step, state)
            if stop or preempted:
                bar.close()
                if preempted:
                    self._report_preemption(global_step)
                else:
                    logging.warning("stopping after step %d as stop_after_steps asks", global_step)
                return state, True
        if pending is not None:
            check(*pending)
            if pending[0] % config.log_every_steps == 0:  # the stage's last step
                self._log(bar, pending, epoch, stage, steps=stage.num_steps - tic_step, since=tic)
        bar.close()
        self._charge_training()
        return state, False

    def _log(
        self, bar: tqdm.tqdm, pending: tuple, epoch: int, stage: Stage, *, steps: int, since: float
    ) -> None:
        """The progress bar's loss (each replica's) and every replica's TensorBoard scalars, with
        the images per second of each replica over the ``steps`` done since ``since``
        (``time.perf_counter()``)."""
        rate = steps * self.config.batch_size / (time.perf_counter() - since)
        step, step_metrics = pending
        losses = np.atleast_1d(np.asarray(step_metrics["loss"]))
        bar.set_postfix(
            epoch=f"{epoch + 1}/{stage.num_epochs}",
            loss=" ".join(f"{loss:.4f}" for loss in losses),
            img_s=f"{rate * len(self.replicas):.0f}",
        )
        for r, replica in enumerate(self.replicas):
            if replica.writer:
                for k, v in step_metrics.items():
                    value = np.asarray(v)[r] if self.stacked else v
                    replica.writer.scalar(f"train/{k}", float(value), step)
                replica.writer.scalar("train/images_per_second", rate, step)

    def _log_scalars(self, replica: Replica, values: dict[str, float], iteration: int) -> None:
        if replica.writer:
            for name, value in values.items():
                replica.writer.scalar(name, value, iteration)

    def _log_image(
        self, replica: Replica, name: str, image: np.ndarray, tag: str, *, step: int
    ) -> None:
        if jax.process_index() != 0:
            return
        report.save_image(image, replica.workdir / "plots" / f"{name}.png")
        if replica.writer:
            replica.writer.image(tag, image, step)

    def end_stage(self, stage_id: int, state: state_lib.ContinualState) -> state_lib.ContinualState:
        """Evaluates the stage's row, lets the strategy and the objective start the next stage, and
        saves the boundary checkpoint; for each replica."""
        step = _counter(state.step)
        states = []
        for replica, replica_state in zip(self.replicas, self.split(state), strict=True):
            rows = self.evaluate(replica_state, stage_id + 1, replica)
            replica.results.record(stage_id + 1, rows, step=step)
            states.append(self._start_next_stage(stage_id, replica, replica_state, step))
        state = self.join(states)
        try:
            self._save(step, state, boundary=True)  # refuses a non-finite state
        except FloatingPointError:
            # The trained state passed every step's check: name the end-of-task work that broke it.
            for replica, next_state in zip(self.replicas, states, strict=True):
                _check_task_end(
                    next_state,
                    stage_id=stage_id,
                    strategy=replica.p.strategy.name,
                    seed=replica.seed if self.stacked else None,
                )
            raise
        return state

    def _start_next_stage(
        self, stage_id: int, replica: Replica, state: state_lib.ContinualState, step: int
    ) -> state_lib.ContinualState:
        """One replica's state (no replica axis) after stage ``stage_id``'s end: the strategy's
        ``end_task`` (its own training at the boundary charged as training time), the
        objective's ``start_task`` and the next stage's counters."""
        p = replica.p
        self._clock = time.perf_counter()
        task_end = TaskEnd(
            state=state,
            next_task=stage_id + 1,
            key=replica.keys.strategy,
            indices=p.stages[stage_id].indices,
            train=p.train,
            features=replica.evaluator.features,
            map_images=replica.evaluator.map_images,
            mesh=self.mesh,
            # Each iteration is a sync point of the processes' agreement, as a step is.
            progress=task_end_progress(
                str(replica.workdir),
                stage_id,
                self.mesh,
                lambda iterations: self.preemption.reached(),
            ),
            log_scalars=functools.partial(self._log_scalars, replica),
            log_image=functools.partial(self._log_image, replica, step=step),
        )
        try:
            strategy_state = p.strategy.end_task(task_end)
        finally:  # stopped by a signal too: the loop's time so far is training
            self._charge_training()
        objective_state = p.objective.start_task(state.objective_state)
        if p.strategy.start_objective is not None:
            objective_state = p.strategy.start_objective(objective_state, state.params)
        return state_lib.start_task(
            state,
            task=stage_id + 1,
            tx=self.tx,
            objective_state=objective_state,
            strategy_state=strategy_state,
            reset_optimizer=p.config.optimizer.reset_each_task,
        )
