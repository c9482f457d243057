"""Representation quality of the demo setting over several seeds: strategy vs random init.

Runs configs/fashion_mnist.py (Split Fashion-MNIST, 5 tasks) for each objective, strategy and
seed, each in its own workdir (an interrupted sweep resumes), and prints a markdown table of the
final linear-probe and kNN accuracy next to the random-initialisation row (the same backbone
initialisation for every objective of a seed), as mean +- std over seeds.

    python experiments/quality.py --seeds=0,1,2 --strategies=finetune,offline --workdir=runs/quality
    python experiments/quality.py --objectives=simclr,byol --strategies=offline --seeds=0
"""

from __future__ import annotations

import importlib.util
import json
import os

from absl import app, flags, logging

from cl_ssl import train
from cl_ssl.evaluation import metrics

_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_STRATEGIES = flags.DEFINE_list("strategies", ["finetune", "offline"], "Strategies to compare.")
_OBJECTIVES = flags.DEFINE_list("objectives", ["simclr"], "SSL objectives to compare.")
_CONFIG = flags.DEFINE_string("config", "configs/fashion_mnist.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/quality", "Parent folder of the runs.")


def _load_config(path: str):
    spec = importlib.util.spec_from_file_location("config_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _final_and_random(result) -> dict[str, float]:
    out = {}
    for name, R in result["matrices"].items():
        out[f"{name}_final"] = float(R[-1].mean())
        out[f"{name}_random_init"] = float(R[0].mean())
        out[f"{name}_gain"] = out[f"{name}_final"] - out[f"{name}_random_init"]
    return out


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    rows = {}
    for objective in _OBJECTIVES.value:
        for strategy in _STRATEGIES.value:
            per_seed = []
            for seed in _SEEDS.value:
                config = _load_config(_CONFIG.value)
                config.objective, config.strategy = objective, strategy
                config.seed, config.progress_bar = int(seed), False
                workdir = os.path.join(_WORKDIR.value, f"{objective}_{strategy}_seed{seed}")
                per_seed.append(_final_and_random(train.run(config, workdir)))
                print(objective, strategy, seed, json.dumps(per_seed[-1]), flush=True)
            rows[objective, strategy] = metrics.aggregate_seeds(per_seed)
    first = next(iter(rows.values()))
    names = [k for k in first if isinstance(first[k], dict)]
    print(
        f"\n{len(_SEEDS.value)} seeds ({', '.join(_SEEDS.value)}); accuracies in percent, "
        "mean of the 5 tasks' test accuracy, mean +- std over seeds\n"
    )
    print("| objective | strategy | " + " | ".join(names) + " |")
    print("|---|---|" + "---:|" * len(names))
    for (objective, strategy), agg in rows.items():
        cells = [f"{agg[n]['mean']:.2f} +- {agg[n]['std']:.2f}" for n in names]
        print(f"| {objective} | {strategy} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    app.run(main)
