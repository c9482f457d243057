"""Representation quality on Split Fashion-MNIST over several seeds: strategies, objectives and
random initialisation.

Runs a config (by default configs/fashion_mnist.py, the demo: 5 class-incremental tasks) for each
objective, strategy and seed, each in its own workdir (an interrupted sweep resumes), and prints
``python -m cl_ssl.summarize``'s markdown table of those runs: per objective, strategy and
accuracy matrix (linear probe, kNN, a strategy's own classifier), mean +- std over seeds of the
final accuracy (over the test images of every task), its gain over the random-initialisation row
(the same backbone initialisation for every objective and strategy of a seed), the average
incremental accuracy, forgetting (``max_prev``), backward and forward transfer (T-1 norm).
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
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cl_ssl import config as config_lib
from cl_ssl import summarize, train
from cl_ssl.objectives import resolve_config

_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_STRATEGIES = flags.DEFINE_list("strategies", ["finetune", "offline"], "Strategies to compare.")
_OBJECTIVES = flags.DEFINE_list("objectives", ["simclr"], "SSL objectives to compare.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/fashion_mnist.py", "Config file, optionally with ':ARG' for get_config(ARG)."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/quality", "Parent folder of the runs.")
_OUTPUT = flags.DEFINE_string("output", "", "Optional markdown file for the command and table.")


def _finished(config, workdir: str) -> bool:
    """Whether ``workdir`` holds complete results (every row evaluated) of ``config``."""
    run = summarize.load_run(workdir)
    resolved = json.loads(resolve_config(config).to_json())  # results.json holds the resolved one
    return run is not None and not config_lib.differing_fields(run.config, resolved)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    workdirs = []
    # Seeds outermost: a sweep stopped early has complete seeds for every row.
    for seed in _SEEDS.value:
        for objective in _OBJECTIVES.value:
            for strategy in _STRATEGIES.value:
                config = _CONFIG.value.copy_and_resolve_references()
                config.objective, config.strategy = objective, strategy
                config.seed, config.progress_bar = int(seed), False
                workdir = os.path.join(_WORKDIR.value, f"{objective}_{strategy}_seed{seed}")
                if not _finished(config, workdir):
                    train.run(config, workdir)
                run = summarize.load_run(workdir)
                print(objective, strategy, seed, json.dumps(run.figures), flush=True)
                workdirs.append(workdir)
    markdown, _, _ = summarize.summarize_runs(workdirs)
    text = (
        f"`python {' '.join(sys.argv)}`\n\n"
        f"{len(_SEEDS.value)} seeds ({', '.join(_SEEDS.value)}); accuracies in percent over the "
        "test images of every task, mean ± std over seeds (python -m cl_ssl.summarize)\n\n"
        + markdown
    )
    print("\n" + text, end="")
    if _OUTPUT.value:
        os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
        with open(_OUTPUT.value, "w") as f:
            f.write(text)


if __name__ == "__main__":
    app.run(main)
