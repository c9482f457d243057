"""Representation quality on Split Fashion-MNIST over several seeds: strategies, objectives and
random initialisation.

Runs a config (by default configs/fashion_mnist.py, the demo: 5 class-incremental tasks) for each
objective, strategy and seed, each in its own workdir (an interrupted sweep resumes), and prints a
markdown table, mean +- std over seeds, of the final linear-probe and kNN accuracy (mean of the 5
tasks' test accuracy), the gain over the random-initialisation row (the same backbone
initialisation for every objective and strategy of a seed), and for continual strategies the
forgetting and forward transfer (``max_prev`` forgetting, T-1 norm); for a strategy that trains
its own classifier (Kaizen), the same for that classifier and its average continual accuracy.
``--output`` also writes the table and the command to a markdown file. Config values can be
overridden as in cl_ssl.main (``--config.epochs_per_task=15``). A run whose workdir already holds
complete results of the same config (results.json with every row evaluated, from this machine or
another) is read, not re-run.

    python experiments/quality.py --seeds=0,1,2 --strategies=finetune,offline --workdir=runs/quality
    python experiments/quality.py --objectives=simclr,byol --strategies=offline --seeds=0
    python experiments/quality.py --config=configs/fashion_mnist.py:strategies \
        --objectives=simclr,byol,barlow_twins,vicreg --strategies=finetune,cassle,pfr,offline \
        --seeds=0,1,2 --workdir=runs/strategies --output=runs/strategies/table.md
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from cl_ssl import config as config_lib
from cl_ssl import train
from cl_ssl.evaluation import evaluate, metrics
from cl_ssl.objectives import resolve_config

_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_STRATEGIES = flags.DEFINE_list("strategies", ["finetune", "offline"], "Strategies to compare.")
_OBJECTIVES = flags.DEFINE_list("objectives", ["simclr"], "SSL objectives to compare.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/fashion_mnist.py", "Config file, optionally with ':ARG' for get_config(ARG)."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/quality", "Parent folder of the runs.")
_OUTPUT = flags.DEFINE_string("output", "", "Optional markdown file for the command and table.")


def _finished_results(config, workdir: str) -> dict | None:
    """The matrices and summaries in ``workdir``/results.json when they are complete and of
    ``config``; None otherwise (no results, rows not yet evaluated, or another config)."""
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        document = json.load(f)
    stored = document.get("meta", {}).get("config")
    resolved = json.loads(resolve_config(config).to_json())  # results.json holds the resolved one
    if stored is None or config_lib.differing_fields(stored, resolved):
        return None
    matrices = {
        name: np.array(rows, dtype=float) for name, rows in document["matrices"].items()
    }  # JSON null (not yet evaluated) becomes NaN
    if any(np.isnan(R).any() for R in matrices.values()):
        return None
    return {"matrices": matrices, "summaries": document["summaries"]}


def _figures(result) -> dict[str, float]:
    """Final accuracy (over the test images of every task, so tasks of different sizes weigh by
    their images), gain over random init, forgetting and forward transfer per evaluator (NaN where
    a strategy has none: the offline run's single trained row), and for a strategy's own
    classifier (Kaizen, the supervised strategies) the average incremental accuracy with and
    without the first task."""
    out = {}
    for name, R in result["matrices"].items():
        summary = result["summaries"].get(name, {})
        # The offline run's summary names its single trained row's accuracy differently.
        final = summary.get("final_accuracy_sample_weighted", summary.get("final_overall_accuracy"))
        out[f"{name}_final"] = float(final)
        out[f"{name}_random_init"] = float(summary.get("random_init_accuracy", R[0].mean()))
        out[f"{name}_gain"] = out[f"{name}_final"] - out[f"{name}_random_init"]
        metrics_of = ("forgetting", "forward_transfer")
        if name == evaluate.CLASSIFIER:
            metrics_of += (
                "average_continual_accuracy",
                "average_incremental_accuracy_without_first",
            )
        for metric in metrics_of:
            value = summary.get(metric)
            out[f"{name}_{metric}"] = math.nan if value is None else float(value)
    return out


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    # Seeds outermost: a sweep stopped early has complete seeds for every row.
    per_seed = {(o, s): [] for o in _OBJECTIVES.value for s in _STRATEGIES.value}
    for seed in _SEEDS.value:
        for objective, strategy in per_seed:
            config = _CONFIG.value.copy_and_resolve_references()
            config.objective, config.strategy = objective, strategy
            config.seed, config.progress_bar = int(seed), False
            workdir = os.path.join(_WORKDIR.value, f"{objective}_{strategy}_seed{seed}")
            result = _finished_results(config, workdir) or train.run(config, workdir)
            per_seed[objective, strategy].append(_figures(result))
            print(
                objective, strategy, seed, json.dumps(per_seed[objective, strategy][-1]), flush=True
            )
    rows = {key: metrics.aggregate_seeds(values) for key, values in per_seed.items()}
    # Every figure of any row, in order of appearance (a strategy's classifier adds some).
    names = list(dict.fromkeys(k for agg in rows.values() for k in agg if isinstance(agg[k], dict)))
    lines = [
        f"`python {' '.join(sys.argv)}`",
        "",
        f"{len(_SEEDS.value)} seeds ({', '.join(_SEEDS.value)}); accuracies in percent, mean of "
        "the tasks' test accuracy, mean +- std over seeds",
        "",
        "| objective | strategy | " + " | ".join(names) + " |",
        "|---|---|" + "---:|" * len(names),
    ]
    for (objective, strategy), agg in rows.items():
        cells = [
            "-"
            if n not in agg or math.isnan(agg[n]["mean"])
            else f"{agg[n]['mean']:.2f} +- {agg[n]['std']:.2f}"
            for n in names
        ]
        lines.append(f"| {objective} | {strategy} | " + " | ".join(cells) + " |")
    print("\n" + "\n".join(lines))
    if _OUTPUT.value:
        os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
        with open(_OUTPUT.value, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)
