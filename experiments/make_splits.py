"""Regenerates the class-order split files shipped under cl_ssl/data/splits.

    python -m experiments.make_splits [OUT_DIR]   # from the repository root; OUT_DIR defaults to
                                                  # cl_ssl/data/splits

Files (iCaRL's order, Rebuffi et al., CVPR 2017; CaSSLe's, ``main_pretrain.py``; CCL's, Lin et
al., ICME 2022, ``train.py``), all in the order-of-appearance convention:
- cifar100_icarl1993_{5x20,10x10,20x5}: ``np.random.seed(1993); np.random.permutation(100)``;
- cifar100_icarl1993_50+5x10: the same order in Genifer's tasks, 50 base classes then 5 of 10
  (Thandiackal et al.; kevthan/feature-driven-image-replay ``genifer/config/examples/*.json``,
  ``class_ids_per_task``);
- fashion_mnist_idx_natural_4+3x2: Fashion-MNIST's natural order in Genifer's shape, 4 base classes
  then 3 tasks of 2;
- caltech_birds2011_natural_100+10x10: CUB-200's natural order as Avalanche's ``SplitCUB200`` cuts
  it by default, a first task of 100 classes then 10 of 10;
- imagenet_sub_ccl_seed1_10x10: ``order = np.arange(100); np.random.seed(1);
  np.random.shuffle(order)``, cut into 10 tasks of 10 classes;
- cifar100_cassle_seed5 and imagenet100_cassle_seed5 (5x20): ``torch.manual_seed(5);
  torch.randperm(100).chunk(5)``, the same call for both data sets. They need torch; without torch
  the existing files are kept. Their descriptions record the torch version used.

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
IMAGENET100_LABELS = (
    "ImageNet-100 labels 0-99: the CMC classes in sorted WordNet-id order "
    "(cl_ssl/data/classes/imagenet100_cmc.txt; torchvision ImageFolder on an imagenet-100 folder)"
)
FASHION_MNIST_LABELS = (
    "Fashion-MNIST labels 0-9 of the original IDX files (T-shirt/top, Trouser, Pullover, Dress, "
    "Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot; tfds fashion_mnist 'label')"
)
CUB200_LABELS = (
    "CUB-200-2011 labels 0-199: the class ids of the archive's classes.txt minus 1 (tfds "
    "caltech_birds2011 'label'; Avalanche's CUB200 targets)"
)
IMAGENET_SUB_LABELS = (
    "ImageNet-Sub labels 0-99: ImageNet's first 100 classes in sorted WordNet-id order, unchanged "
    "(tfds imagenet2012 labels 0-99; torchvision ImageFolder on the whole of ImageNet)"
)


def _content(
    *,
    name: str,
    dataset: str,
    dataset_labels: str,
    permutation: list[int],
    num_tasks: int,
    description: str,
    task_sizes: list[int] | None = None,
) -> dict:
    """Assembles a split file's fields, checksum last; ``task_sizes`` (one per task) cut the
    permutation into tasks of different sizes, instead of ``num_tasks`` equal ones."""
    if task_sizes is None:
        task_classes = scenarios.class_order_tasks(permutation, num_tasks)
    else:
        task_classes = scenarios.cut_class_order(permutation, task_sizes)
    content = {
        "name": name,
        "dataset": dataset,
        "dataset_labels": dataset_labels,
        "num_classes": len(permutation),
        "num_tasks": num_tasks,
        "convention": scenarios.ORDER_OF_APPEARANCE,
        "permutation": permutation,
        "task_classes": task_classes,
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
    files.append(
        _content(
            name="cifar100_icarl1993_50+5x10",
            dataset="cifar100",
            dataset_labels=CIFAR100_LABELS,
            permutation=permutation,
            num_tasks=6,
            task_sizes=[50] + [10] * 5,
            description=(
                "iCaRL class order (np.random.seed(1993); np.random.permutation(100)) in "
                "Genifer's tasks: 50 base classes, then 5 tasks of 10, in order of appearance "
                "(Thandiackal et al.; kevthan/feature-driven-image-replay "
                "genifer/config/examples/incremental_training.json, class_ids_per_task)."
            ),
        )
    )
    return files


def fashion_mnist_genifer_files() -> list[dict]:
    """Fashion-MNIST in Genifer's shape at CPU scale: a base task, then smaller ones."""
    return [
        _content(
            name="fashion_mnist_idx_natural_4+3x2",
            dataset="fashion_mnist_idx",
            dataset_labels=FASHION_MNIST_LABELS,
            permutation=list(range(10)),
            num_tasks=4,
            task_sizes=[4, 2, 2, 2],
            description=(
                "Fashion-MNIST classes in their natural order, cut as Genifer cuts CIFAR-100 "
                "(a base task of many classes, then equal smaller ones): 4 base classes, then 3 "
                "tasks of 2. cl_ssl's CPU-scale counterpart of cifar100_icarl1993_50+5x10."
            ),
        )
    ]


def cub200_files() -> list[dict]:
    """Avalanche's default class-incremental CUB-200 (``avalanche/benchmarks/classic/ccub200.py``,
    ``SplitCUB200(n_experiences=11, classes_first_batch=100, shuffle=False)``): the classes in
    their natural order, a first task of 100 then 10 tasks of 10."""
    return [
        _content(
            name="caltech_birds2011_natural_100+10x10",
            dataset="caltech_birds2011",
            dataset_labels=CUB200_LABELS,
            permutation=list(range(200)),
            num_tasks=11,
            task_sizes=[100] + [10] * 10,
            description=(
                "CUB-200-2011 classes in their natural order, as Avalanche's SplitCUB200 keeps "
                "them by default (shuffle=False), cut into its default 11 experiences: a first "
                "task of 100 classes (classes_first_batch=100), then 10 tasks of 10 "
                "(avalanche/benchmarks/classic/ccub200.py)."
            ),
        )
    ]


def ccl_seed1_files() -> list[dict]:
    """CCL's ImageNet-Sub order in 10 tasks (VDIGPKU/ContinualContrastiveLearning ``train.py``
    l. 296-312, with its default ``--n-tasks`` of 10, l. 47)."""
    order = np.arange(100)
    np.random.RandomState(1).shuffle(order)  # the stream of np.random.seed(1); np.random.shuffle
    return [
        _content(
            name="imagenet_sub_ccl_seed1_10x10",
            dataset="imagenet_sub",
            dataset_labels=IMAGENET_SUB_LABELS,
            permutation=order.tolist(),
            num_tasks=10,
            description=(
                "CCL class-incremental ImageNet-Sub order (Lin et al., ICME 2022; "
                "VDIGPKU/ContinualContrastiveLearning train.py l. 296-305): order = "
                "np.arange(100); np.random.seed(1); np.random.shuffle(order) (NumPy's legacy "
                "RandomState stream, fixed across NumPy versions). Task t holds "
                "order[10t:10(t+1)] (train.py l. 299 and 311: nb_cl = 100 / n_tasks, with "
                "--n-tasks 10 by default, l. 47)."
            ),
        )
    ]


def cassle_seed5_files() -> list[dict]:
    """CaSSLe's 5-task orders of CIFAR-100 and ImageNet-100, or [] when torch is not importable."""
    try:
        import torch
    except ImportError:
        return []
    torch.manual_seed(5)
    permutation = torch.randperm(100).tolist()
    common = (
        "torch.manual_seed(5); torch.randperm(100).chunk(5) (CaSSLe main_pretrain.py calls "
        "Lightning's seed_everything(5), which seeds torch with manual_seed(5), then randperm). "
        "Task k holds permutation[20k:20(k+1)]. "
        f"Generated on the CPU with torch {torch.__version__}. "
        "CaSSLe's reference environment pins torch 1.10.2, which was not run: equality with "
        "its output is unverified. The permutation does equal a NumPy re-implementation of "
        "the CPU randperm algorithm of the PyTorch sources (mt19937 seeded by "
        "init_genrand(5); for i in 0..n-2 swap i with i + random() % (n - i)). "
        "Also unverified: that nothing in CaSSLe draws from the torch RNG between seeding "
        "and randperm."
    )
    return [
        _content(
            name="cifar100_cassle_seed5",
            dataset="cifar100",
            dataset_labels=CIFAR100_LABELS,
            permutation=permutation,
            num_tasks=5,
            description="CaSSLe class-incremental CIFAR-100 order: " + common,
        ),
        _content(
            name="imagenet100_cassle_seed5",
            dataset="imagenet100",
            dataset_labels=IMAGENET100_LABELS,
            permutation=permutation,
            num_tasks=5,
            description=(
                "CaSSLe class-incremental ImageNet-100 order, the same call as for CIFAR-100: "
                + common
                + " Also unverified: that CaSSLe's DALI loader of its ImageNet-100 runs splits "
                "the classes with this call too."
            ),
        ),
    ]


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
    files = icarl1993_files() + fashion_mnist_genifer_files() + cub200_files() + ccl_seed1_files()
    cassle = cassle_seed5_files()
    if not cassle:
        print("torch is not importable: the *_cassle_seed5.json files are left as they are.")
    files += cassle
    os.makedirs(out_dir, exist_ok=True)
    for content in files:
        path = os.path.join(out_dir, content["name"] + ".json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(dumps(content))
        print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
