"""Regenerates the class-order split files shipped under cl_ssl/data/splits.

    python -m experiments.make_splits [OUT_DIR]   # from the repository root; OUT_DIR defaults to
                                                  # cl_ssl/data/splits

Files (PROTOCOLS.md 2.2, 2.3, 2.7), all in the order-of-appearance convention:
- cifar100_icarl1993_{5x20,10x10,20x5}: ``np.random.seed(1993); np.random.permutation(100)``;
- cifar100_cassle_seed5 (5x20): ``torch.manual_seed(5); torch.randperm(100).chunk(5)``. It needs
  torch; without torch the existing file is kept. Its description records the torch version used.

The output is deterministic: the same NumPy (any version) and torch versions give the same bytes.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app

from cl_ssl.data import scenarios

CIFAR100_LABELS = (
    "CIFAR-100 fine labels 0-99 with the ids of the original archive (alphabetical class names; "
    "tfds cifar100 'label', torchvision CIFAR100 targets)"
)


def _content(
    *,
    name: str,
    dataset: str,
    dataset_labels: str,
    permutation: list[int],
    num_tasks: int,
    description: str,
) -> dict:
    """Assembles a split file's fields, checksum last."""
    content = {
        "name": name,
        "dataset": dataset,
        "dataset_labels": dataset_labels,
        "num_classes": len(permutation),
        "num_tasks": num_tasks,
        "convention": scenarios.ORDER_OF_APPEARANCE,
        "permutation": permutation,
        "task_classes": scenarios.class_order_tasks(permutation, num_tasks),
        "description": description,
    }
    content["checksum"] = scenarios.split_file_checksum(content)
    return content


def icarl1993_files() -> list[dict]:
    """The iCaRL CIFAR-100 order cut into 5, 10 and 20 tasks."""
    permutation = np.random.RandomState(1993).permutation(100).tolist()
    files = []
    for num_tasks in (5, 10, 20):
        files.append(
            _content(
                name=f"cifar100_icarl1993_{num_tasks}x{100 // num_tasks}",
                dataset="cifar100",
                dataset_labels=CIFAR100_LABELS,
                permutation=permutation,
                num_tasks=num_tasks,
                description=(
                    "iCaRL class order: np.random.seed(1993); np.random.permutation(100) "
                    "(NumPy's legacy RandomState stream, fixed across NumPy versions). Equal to "
                    "FACIL's cifar100_icarl class_order and PyCIL with shuffle and seed 1993. "
                    f"Cut into {num_tasks} tasks of "
                    f"{100 // num_tasks} classes in order of appearance: task k holds "
                    f"permutation[{100 // num_tasks}k:{100 // num_tasks}(k+1)]."
                ),
            )
        )
    return files


def cassle_seed5_file() -> dict | None:
    """CaSSLe's CIFAR-100 5-task order, or None when torch is not importable."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(5)
    permutation = torch.randperm(100).tolist()
    return _content(
        name="cifar100_cassle_seed5",
        dataset="cifar100",
        dataset_labels=CIFAR100_LABELS,
        permutation=permutation,
        num_tasks=5,
        description=(
            "CaSSLe class-incremental CIFAR-100 order: torch.manual_seed(5); "
            "torch.randperm(100).chunk(5) (CaSSLe main_pretrain.py calls Lightning's "
            "seed_everything(5), which seeds torch with manual_seed(5), then randperm). "
            "Task k holds permutation[20k:20(k+1)]. "
            f"Generated on the CPU with torch {torch.__version__}. "
            "CaSSLe's reference environment pins torch 1.10.2, which was not run: equality with "
            "its output is unverified. The permutation does equal a NumPy re-implementation of "
            "the CPU randperm algorithm of the PyTorch sources (mt19937 seeded by "
            "init_genrand(5); for i in 0..n-2 swap i with i + random() % (n - i)). "
            "Also unverified: that nothing in CaSSLe draws from the torch RNG between seeding "
            "and randperm."
        ),
    )


def dumps(content: dict) -> str:
    """Formats a split file: one field per line, one task per line."""
    lines = []
    for key, value in content.items():
        if key == "task_classes":
            tasks = ",\n".join(f"    {json.dumps(task)}" for task in value)
            lines.append(f'  "{key}": [\n{tasks}\n  ]')
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(argv):
    if len(argv) > 2:
        raise app.UsageError("Usage: python -m experiments.make_splits [OUT_DIR]")
    out_dir = argv[1] if len(argv) == 2 else str(scenarios.SPLITS_DIR)
    files = icarl1993_files()
    cassle = cassle_seed5_file()
    if cassle is None:
        print("torch is not importable: cifar100_cassle_seed5.json is left as it is.")
    else:
        files.append(cassle)
    os.makedirs(out_dir, exist_ok=True)
    for content in files:
        path = os.path.join(out_dir, content["name"] + ".json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(dumps(content))
        print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
