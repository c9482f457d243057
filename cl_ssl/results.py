"""What a run reports: its accuracy matrices and their metrics, the wall time spent training,
evaluating and checkpointing, and the files and logs (console, results files, TensorBoard,
Weights & Biases) that carry them."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import numpy as np

from cl_ssl import storage
from cl_ssl.evaluation import evaluate, metrics, report
from cl_ssl.evaluation import online as online_lib
from cl_ssl.planning import Plan


def run_name(p: Plan) -> str:
    """What a run is, for titles and logs: data set, scenario, objective, strategy and seed."""
    c = p.config
    return (
        f"{c.dataset.name}, {p.scenario.kind.replace('_', '-')} ({p.scenario.num_tasks} tasks), "
        f"{p.objective.name}, {p.strategy.name}, seed {c.seed}"
    )


class RunResults:
    """The accuracy matrices of a run, their metrics, the wall time spent training, evaluating and
    checkpointing, and the files and logs that report them."""

    def __init__(self, p: Plan, workdir: str, writer: report.ScalarWriter | None):
        self._plan, self._workdir, self._writer = p, workdir, writer
        rows, tasks = len(p.stages) + 1, p.scenario.num_tasks
        names = evaluate.matrix_names(p.config, has_classifier=p.strategy.classify is not None)
        self.matrices = {name: np.full((rows, tasks), np.nan) for name in names}
        self.buffer_bytes = 0  # size of the strategy's buffers (an exemplar memory)
        # Seconds over every process that worked on the run (kept in the checkpoints), and their
        # totals when each row was recorded ({row: wall_seconds}; a stage's cost is the difference
        # of two rows: its training, the previous stage's end-of-task work, its evaluation).
        # Training includes the time the host waited for the device (for each step's metrics, one
        # step behind): the rest is the host's own work, which a fast device waits for instead.
        self.wall_seconds = {
            "training": 0.0,
            "training_waiting_for_device": 0.0,
            "evaluation": 0.0,
            "checkpointing": 0.0,
        }
        self.wall_seconds_at_rows: dict[str, dict[str, float]] = {}
        self.name = run_name(p)
        self._environment = report.environment()
        # C_j: the classes in each task's test data.
        self._class_counts = np.array(
            [len(np.unique(p.test.labels[i])) for i in p.scenario.test_indices]
        )

    def checkpoint_meta(self) -> dict:
        """What a checkpoint keeps of the results: the matrices (JSON null: not yet evaluated) and
        the wall times."""
        return {
            "matrices": {
                k: [[None if np.isnan(v) else float(v) for v in row] for row in R]
                for k, R in self.matrices.items()
            },
            "wall_seconds": dict(self.wall_seconds),
            "wall_seconds_at_rows": dict(self.wall_seconds_at_rows),
        }

    def load_checkpoint_meta(self, meta: dict) -> None:
        self.matrices = {
            k: np.array([[np.nan if v is None else v for v in row] for row in rows])
            for k, rows in meta["matrices"].items()
        }
        # Older checkpoints have neither.
        self.wall_seconds.update(meta.get("wall_seconds", {}))
        self.wall_seconds_at_rows.update(meta.get("wall_seconds_at_rows", {}))

    def summaries(self) -> dict[str, dict]:
        """Metrics of every complete matrix: every continual metric for continual runs, final accuracy
        for the offline run's single trained row."""
        c, sizes = self._plan.config, np.array([len(i) for i in self._plan.scenario.test_indices])
        avg = c.eval.get("avg", "sample")  # the config.json of older runs lacks it
        weights = metrics.task_weights(avg, sizes, self._class_counts)
        out = {}
        for name, R in self.matrices.items():
            if np.isnan(R).any():
                continue
            if R.shape[0] == R.shape[1] + 1:
                out[name] = metrics.summarize(
                    R,
                    task_sizes=sizes,
                    class_counts=self._class_counts,
                    avg=avg,
                    forgetting_variant=c.eval.forgetting,
                    bwt_norm=c.eval.bwt_norm,
                )
                if name == evaluate.CLASSIFIER:
                    # Kaizen's name (Tang et al., WACV 2024) for the mean over tasks of the
                    # accuracy on the tasks seen so far.
                    out[name]["average_continual_accuracy"] = out[name][
                        "average_incremental_accuracy"
                    ]
            else:
                out[name] = {
                    # The continual runs' keys, for one reader of both.
                    "avg": avg,
                    "final_accuracy": float(np.average(R[-1], weights=weights)),
                    "final_average_accuracy": float(R[-1].mean()),
                    "final_overall_accuracy": float(np.average(R[-1], weights=sizes)),
                    "random_init_accuracy": float(np.average(R[0], weights=weights)),
                }
            if evaluate.scored_by(name) in (online_lib.ONLINE, evaluate.CLASSIFIER):
                # Row 0 scores a head trained with the backbone (the online probe, a strategy's
                # classifier) untrained, at chance, not a probe trained on the random network's
                # features, CaSSLe's baseline of forward transfer (DonkeyShot21/cassle#11, #13):
                # the figures that read row 0 would measure the head's training, not the
                # representation.
                for key in ("forward_transfer", "random_init_accuracy"):
                    out[name].pop(key, None)
            elif c.eval.probe_data != "all":
                # Forward transfer pairs R[i-1, i] with the random network's R[0, i], whose probe
                # trained on the first task's pool, not on row i-1's (the tasks seen, or task i-1):
                # the two differ in what the probe saw, not only in the backbone.
                out[name].pop("forward_transfer", None)
        return out

    def record(self, row: int, accuracies: dict[str, np.ndarray], step: int) -> None:
        """Fills ``row`` (0: random initialisation; i: after stage i), prints it and rewrites the
        files.

        TensorBoard gets the accuracies at the global optimizer ``step``, the x-axis of the
        training scalars too, and, once every matrix is complete, the summary metrics and the
        config as hparams."""
        self.wall_seconds_at_rows[str(row)] = dict(self.wall_seconds)
        for name, acc in accuracies.items():
            self.matrices[name][row] = acc
            if self._writer:
                for j, a in enumerate(acc):
                    self._writer.scalar(f"eval/{name}/task{j + 1}", a, step)
        if jax.process_index() != 0:
            return
        p = self._plan
        print(self._format_row(row, accuracies), flush=True)
        summaries = self.summaries()
        report.write_results(
            self._workdir,
            matrices=self.matrices,
            summaries=summaries,
            meta={
                "config": json.loads(p.config.to_json()),
                "strategy": p.strategy.name,
                "objective": p.objective.name,
                "scenario": p.scenario.kind,
                "num_devices": p.mesh.size,
                "rows_evaluated": row + 1,
                "strategy_buffer_bytes": self.buffer_bytes,
                "wall_seconds": self.wall_seconds,
                "wall_seconds_at_rows": self.wall_seconds_at_rows,
                "environment": self._environment,
            },
            plots=p.config.eval.plots,
            run_name=self.name,
        )
        if self._writer and row == len(p.stages):
            self._write_summaries(summaries, step)

    def _format_row(self, row: int, accuracies: dict[str, np.ndarray]) -> str:
        """The console lines of one row: each matrix's task accuracies and their mean over the
        tasks trained so far (all of them for the random network)."""
        stages, tasks = len(self._plan.stages), self._plan.scenario.num_tasks
        label = "random network" if row == 0 else f"after stage {row}/{stages}"
        lines = [f"{label} ({self.name}), accuracy (%) per task:"]
        # Tasks trained so far; an offline run's one stage trains them all.
        seen = row if row and stages == tasks else tasks
        what = "all tasks" if seen == tasks else "task 1" if seen == 1 else f"tasks 1-{seen}"
        for name, acc in accuracies.items():
            cells = " ".join(f"{a:5.1f}" for a in acc)
            lines.append(f"  {name:>22}: {cells} | mean of {what} {np.mean(acc[:seen]):.2f}")
        return "\n".join(lines)

    def _write_summaries(self, summaries: dict[str, dict], step: int) -> None:
        """TensorBoard: each matrix's headline metrics as scalars and, with the flattened config,
        as hparams."""
        metrics_of = ("final_accuracy", "average_incremental_accuracy", "forgetting")
        values = {
            f"summary/{name}/{metric}": summary[metric]
            for name, summary in summaries.items()
            for metric in metrics_of
            if isinstance(summary.get(metric), float) and np.isfinite(summary[metric])
        }
        for tag, value in values.items():
            self._writer.scalar(tag, value, step)
        self._writer.hparams(_flat_config(self._plan.config.to_dict()), values)


def wandb_init(p: Plan, workdir: str) -> dict[str, Any] | None:
    """The ``wandb.init`` arguments of a run, None when ``wandb.project`` is empty: the run's name
    and flattened config, files under ``workdir``, and an id drawn from the workdir's path, so
    that a resumed run goes on logging into the same W&B run. Each call makes a run of its own
    beside any already open in the process (``reinit='create_new'``, W&B 0.19.10 or newer): the
    replicas of ``--config.seeds`` log one W&B run per seed, each through its own writer."""
    w = p.config.wandb
    if not w.project:
        return None
    path = str(storage.path(workdir))
    return {
        "project": w.project,
        "entity": w.entity or None,
        "mode": w.mode,
        "name": run_name(p),
        "config": _flat_config(p.config.to_dict()),
        "dir": None if storage.is_remote(path) else path,  # W&B keeps its files on a local disk
        "id": hashlib.sha256(path.encode()).hexdigest()[:16],
        "resume": "allow",
        "reinit": "create_new",
    }


def _flat_config(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """A config dict as dotted names -> scalars (sequences and None as their text), for hparams."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            ok = isinstance(value, (bool, int, float, str))
            flat[f"{prefix}{key}"] = value if ok else str(value)
    return flat
