"""Continual scenarios: which training and test samples each task holds.

A scenario is a set of index arrays into the whole-data-set splits of `cl_ssl.data.sources`,
computed once from the labels, for the three settings of CaSSLe (Fini et al., CVPR 2022):

- class-incremental: disjoint groups of classes; task t trains on every training image of its
  classes and tests on the test images of its classes;
- data-incremental: disjoint i.i.d. subsets of the training set; every task tests on the whole
  test set;
- domain-incremental: one input domain per task, the same classes in every task; task t trains on
  every training image of its domain and tests on the test images of its domain.

Class orders are ``'natural'`` (0..C-1), ``'random'`` (a seeded NumPy permutation) or a split
file shipped under ``cl_ssl/data/splits`` (for orders that NumPy cannot regenerate, such as
CaSSLe's torch permutation) or for tasks of different sizes (Genifer's 50 base classes, then 5
tasks of 10). Split files use the order-of-appearance convention: the tasks cut the permutation
into consecutive runs, task k holding ``permutation[n_0 + ... + n_{k-1} : n_0 + ... + n_k]``.
``experiments/make_splits.py`` regenerates them.

Every random draw here uses NumPy's legacy ``RandomState``, whose streams NumPy keeps fixed across
versions; ``np.random.RandomState(1993).permutation(100)`` is the iCaRL order.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from cl_ssl import storage

CLASS_INCREMENTAL = "class_incremental"
DATA_INCREMENTAL = "data_incremental"
DOMAIN_INCREMENTAL = "domain_incremental"
KINDS = (CLASS_INCREMENTAL, DATA_INCREMENTAL, DOMAIN_INCREMENTAL)
ORDER_OF_APPEARANCE = "order_of_appearance"
SPLITS_DIR = pathlib.Path(__file__).parent / "splits"
SPLIT_FILE_FIELDS = (
    "name",
    "dataset",
    "dataset_labels",
    "num_classes",
    "num_tasks",
    "convention",
    "permutation",
    "task_classes",
    "description",
    "checksum",
)


@dataclasses.dataclass(frozen=True, eq=False)
class Scenario:
    """The task structure of a continual run.

    Attributes:
      kind: ``'class_incremental'``, ``'data_incremental'`` or ``'domain_incremental'``.
      num_tasks: number of tasks T.
      train_indices: T sorted int32 arrays of indices into the training split.
      test_indices: T sorted int32 arrays of indices into the test split: the test images of the
        task's classes (class-IL), the whole test set (data-IL) or the test images of the task's
        domain (domain-IL).
      test_task_ids: int32 [N_test], the task of each test sample for task-aware probes: the task
        of its class (class-IL; -1 for a sample of no task's classes), of its domain (domain-IL),
        and -1 everywhere for data-IL, where no task owns a sample.
      task_classes: class-IL only: T tuples of original class ids, in order of appearance.
    """

    kind: str
    num_tasks: int
    train_indices: tuple[np.ndarray, ...]
    test_indices: tuple[np.ndarray, ...]
    test_task_ids: np.ndarray
    task_classes: tuple[tuple[int, ...], ...] | None = None


def _as_labels(labels, what: str) -> np.ndarray:
    """Checks and returns integer labels as an int64 [N] array."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{what} must be a 1-D integer array; got shape {labels.shape}, dtype {labels.dtype}."
        )
    return labels.astype(np.int64)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _not_divisible(num_classes: int, num_tasks: int) -> ValueError:
    return ValueError(
        f"{num_classes} classes do not divide into {num_tasks} tasks; choose num_tasks among the "
        f"divisors {_divisors(num_classes)}, or a class_order split file whose tasks differ in "
        "size."
    )


def class_order_tasks(order: Sequence[int], num_tasks: int) -> list[list[int]]:
    """Cuts a class order into equal tasks, order-of-appearance convention.

    The convention of iCaRL (Rebuffi et al., CVPR 2017), PyCIL, FACIL and Continuum.

    Args:
      order: distinct class ids, e.g. a permutation of 0..C-1.
      num_tasks: T; must divide len(order).

    Returns:
      T lists of class ids; task k is ``order[k*C:(k+1)*C]`` with C = len(order) // T.
    """
    order = [int(c) for c in order]
    repeated = sorted(c for c, n in collections.Counter(order).items() if n > 1)
    if repeated:
        raise ValueError(f"The class order repeats classes {repeated}; each class may appear once.")
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be at least 1; got {num_tasks}.")
    if len(order) % num_tasks:
        raise _not_divisible(len(order), num_tasks)
    size = len(order) // num_tasks
    return [order[k * size : (k + 1) * size] for k in range(num_tasks)]


def cut_class_order(order: Sequence[int], task_sizes: Sequence[int]) -> list[list[int]]:
    """Cuts a class order into consecutive tasks of the given sizes (order of appearance).

    Args:
      order: distinct class ids, e.g. a permutation of 0..C-1.
      task_sizes: the number of classes of each task, each at least 1, summing to len(order)
        (Genifer's CIFAR-100 split: 50, 10, 10, 10, 10, 10).

    Returns:
      len(task_sizes) lists of class ids.
    """
    sizes = [int(n) for n in task_sizes]
    if not sizes or min(sizes) < 1 or sum(sizes) != len(order):
        raise ValueError(
            f"task sizes {sizes} must be at least 1 each and sum to the {len(order)} classes of "
            "the order."
        )
    bounds = np.cumsum([0, *sizes])
    return [[int(c) for c in order[a:b]] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def class_incremental(
    train_labels: np.ndarray, test_labels: np.ndarray, *, task_classes: Sequence[Sequence[int]]
) -> Scenario:
    """Builds a class-incremental scenario from explicit per-task class lists.

    Args:
      train_labels: int [N_train] labels of the training split.
      test_labels: int [N_test] labels of the test split.
      task_classes: per task, the original class ids it introduces; tasks must be disjoint. Classes
        in no task are left out of the run.

    Returns:
      The scenario; task t holds every sample whose label is in ``task_classes[t]``.
    """
    train_labels = _as_labels(train_labels, "train_labels")
    test_labels = _as_labels(test_labels, "test_labels")
    tasks = tuple(tuple(int(c) for c in classes) for classes in task_classes)
    if not tasks or not all(tasks):
        raise ValueError("task_classes needs at least one task, and every task at least one class.")
    counts = collections.Counter(c for classes in tasks for c in classes)
    repeated = sorted(c for c, n in counts.items() if n > 1)
    if repeated:
        raise ValueError(
            f"Classes {repeated} appear in more than one task; class-incremental tasks must be "
            "disjoint."
        )
    if min(counts) < 0:
        raise ValueError(f"Class ids must be non-negative; task_classes holds {min(counts)}.")
    train_indices, test_indices = [], []
    test_task_ids = np.full(test_labels.shape, -1, np.int32)
    for task, classes in enumerate(tasks):
        train_idx = np.flatnonzero(np.isin(train_labels, classes)).astype(np.int32)
        if train_idx.size == 0:
            raise ValueError(
                f"Task {task} (classes {list(classes)}) has no training samples; the class lists "
                "do not fit this data set's labels."
            )
        test_idx = np.flatnonzero(np.isin(test_labels, classes)).astype(np.int32)
        test_task_ids[test_idx] = task
        train_indices.append(train_idx)
        test_indices.append(test_idx)
    return Scenario(
        kind=CLASS_INCREMENTAL,
        num_tasks=len(tasks),
        train_indices=tuple(train_indices),
        test_indices=tuple(test_indices),
        test_task_ids=test_task_ids,
        task_classes=tasks,
    )


def data_incremental(
    num_train: int,
    test_labels: np.ndarray,
    *,
    num_tasks: int,
    seed: int,
    remainder_to_first: bool = True,
) -> Scenario:
    """Builds a data-incremental scenario: a seeded i.i.d. partition of the training set.

    Each task gets floor(N/T) samples of a random permutation (``np.random.RandomState(seed)``).
    The N mod T left over go to task 0 (CaSSLe, ``cassle/utils/pretrain_dataloader.py``) or, with
    ``remainder_to_first=False``, one each to the first N mod T tasks. The split is not
    class-balanced. Every task tests on the whole test set.

    Args:
      num_train: N, the size of the training split.
      test_labels: int [N_test] labels of the test split (only their number is used).
      num_tasks: T, between 1 and N.
      seed: the split seed (keep it apart from the training seed).
      remainder_to_first: where the N mod T left-over samples go.

    Returns:
      The scenario, with ``task_classes=None`` and ``test_task_ids`` all -1.
    """
    test_labels = _as_labels(test_labels, "test_labels")
    if not 1 <= num_tasks <= num_train:
        raise ValueError(
            f"num_tasks must lie between 1 and the {num_train} training samples; got {num_tasks}."
        )
    base, remainder = divmod(num_train, num_tasks)
    sizes = [base] * num_tasks
    if remainder_to_first:
        sizes[0] += remainder
    else:
        sizes = [s + (k < remainder) for k, s in enumerate(sizes)]
    permutation = np.random.RandomState(seed).permutation(num_train)
    bounds = np.cumsum([0, *sizes])
    train_indices = tuple(
        np.sort(permutation[bounds[k] : bounds[k + 1]]).astype(np.int32) for k in range(num_tasks)
    )
    all_test = np.arange(test_labels.size, dtype=np.int32)
    return Scenario(
        kind=DATA_INCREMENTAL,
        num_tasks=num_tasks,
        train_indices=train_indices,
        test_indices=(all_test,) * num_tasks,
        test_task_ids=np.full(test_labels.shape, -1, np.int32),
    )


def domain_incremental(train_domains, test_domains, *, num_tasks: int) -> Scenario:
    """One task per domain: task t holds the images of domain t.

    CaSSLe's domain-incremental DomainNet setting (Fini et al., CVPR 2022; DALI loader
    ``cassle/utils/dali_dataloader.py``).

    Args:
      train_domains: int [N_train], the domain of each training image, numbered in task order
        (`cl_ssl.data.sources` numbers them in the order of the domain list it read).
      test_domains: int [N_test], the same for the test images.
      num_tasks: T, the number of domains; every domain needs training and test images.

    Returns:
      The scenario, with ``task_classes=None`` and ``test_task_ids`` the test images' domains.
    """
    train_domains = _as_labels(train_domains, "train_domains")
    test_domains = _as_labels(test_domains, "test_domains")
    for what, domains in (("training", train_domains), ("test", test_domains)):
        ids, counts = np.unique(domains, return_counts=True)
        if ids.tolist() != list(range(num_tasks)):
            raise ValueError(
                f"num_tasks={num_tasks} must equal the number of domains read, and every domain "
                f"needs {what} images; the {what} images hold domains {ids.tolist()} "
                f"({counts.tolist()} images)."
            )
    return Scenario(
        kind=DOMAIN_INCREMENTAL,
        num_tasks=num_tasks,
        train_indices=tuple(
            np.flatnonzero(train_domains == t).astype(np.int32) for t in range(num_tasks)
        ),
        test_indices=tuple(
            np.flatnonzero(test_domains == t).astype(np.int32) for t in range(num_tasks)
        ),
        test_task_ids=test_domains.astype(np.int32),
    )


def split_file_checksum(content: dict) -> str:
    """Returns ``'sha256:<hex>'`` of the canonical JSON (sorted keys, no spaces) of ``content``.

    ``content`` is a split file's fields without ``'checksum'``.
    """
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def split_file_names() -> list[str]:
    """Names of the split files shipped with cl_ssl, sorted."""
    return sorted(p.stem for p in SPLITS_DIR.glob("*.json"))


def load_split_file(name: str | os.PathLike) -> dict:
    """Reads and verifies a split file.

    Args:
      name: a shipped split file's name (see `split_file_names`), e.g.
        ``'cifar100_icarl1993_10x10'``, or the path of a ``.json`` file of the same format.

    Returns:
      The file's content: ``name``, ``dataset`` (tfds name), ``dataset_labels`` (which label ids),
      ``num_classes``, ``num_tasks``, ``convention``, ``permutation`` (list of C ints),
      ``task_classes`` (T lists of ints), ``description`` and ``checksum``.

    Raises:
      ValueError: unknown name, missing fields, failed checksum, or task lists that do not follow
        from the permutation.
    """
    path = storage.path(name) if str(name).endswith(".json") else SPLITS_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"No split file {str(name)!r}; the shipped ones are {split_file_names()}.")
    content = json.loads(path.read_text(encoding="utf-8"))
    missing = [f for f in SPLIT_FILE_FIELDS if f not in content]
    if missing:
        raise ValueError(f"Split file {path} lacks the fields {missing}.")
    stored = content["checksum"]
    computed = split_file_checksum({k: v for k, v in content.items() if k != "checksum"})
    if stored != computed:
        raise ValueError(
            f"Split file {path} fails its checksum (stored {stored}, computed {computed}): it was "
            "changed after generation. Restore it, or regenerate the shipped files with "
            "`python -m experiments.make_splits`."
        )
    if content["convention"] != ORDER_OF_APPEARANCE:
        raise ValueError(
            f"Split file {path} uses the {content['convention']!r} convention; cl_ssl reads "
            f"{ORDER_OF_APPEARANCE!r} files only."
        )
    if sorted(content["permutation"]) != list(range(content["num_classes"])):
        raise ValueError(
            f"Split file {path}: 'permutation' is not a permutation of "
            f"0..{content['num_classes'] - 1}."
        )
    tasks = content["task_classes"]
    if (
        len(tasks) != content["num_tasks"]
        or not all(tasks)
        or [c for task in tasks for c in task] != content["permutation"]
    ):
        raise ValueError(
            f"Split file {path}: 'task_classes' must cut 'permutation' into {content['num_tasks']} "
            "non-empty runs of consecutive classes, in order."
        )
    return content


def _split_file_for(
    class_order: str, *, dataset: str | None, num_classes: int, num_tasks: int
) -> dict:
    """Finds the split file for ``class_order`` and checks it against the run."""
    names = split_file_names()
    if class_order.endswith(".json"):
        found = class_order
    else:
        candidates = [class_order]
        if num_classes % num_tasks == 0:
            candidates.append(f"{class_order}_{num_tasks}x{num_classes // num_tasks}")
        found = next((n for n in candidates if n in names), None)
    if found is None:
        related = [n for n in names if n.startswith(class_order)]
        raise ValueError(
            f"Unknown class_order {class_order!r} for {num_tasks} tasks of {num_classes} classes: "
            "use 'natural', 'random', a .json split file, or one of the shipped split files "
            f"{related or names}."
        )
    split = load_split_file(found)
    if dataset is None:
        raise ValueError(
            f"Split file {found!r} is for data set {split['dataset']!r}; pass dataset=<the run's "
            "data set name> so that the run can be checked against it."
        )
    if dataset.split(":")[0] != split["dataset"]:
        raise ValueError(
            f"Split file {found!r} is for data set {split['dataset']!r}, but the run's data set "
            f"is {dataset!r}; choose a class_order made for {dataset!r}."
        )
    if split["num_classes"] != num_classes:
        raise ValueError(
            f"Split file {found!r} covers {split['num_classes']} classes, but "
            f"num_classes={num_classes}."
        )
    if split["num_tasks"] != num_tasks:
        raise ValueError(
            f"Split file {found!r} has {split['num_tasks']} tasks, but num_tasks={num_tasks}; set "
            f"num_tasks={split['num_tasks']} or choose another split file."
        )
    return split


def check_settings(
    kind: str,
    *,
    num_tasks: int,
    class_order: str,
    dataset: str | None,
    num_domains: int | None,
) -> None:
    """The scenario checks that need no data (a run makes them before reading its data set).

    Args:
      kind, num_tasks, class_order, dataset: as for `make_scenario`.
      num_domains: how many domains the data set provides; None for a single-domain data set.

    Raises:
      ValueError: an unknown kind, fewer than 1 task, a class order outside class-IL, or a
        domain-IL run without domains or with a task count other than the number of domains.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown scenario kind {kind!r}; choose one of {list(KINDS)}.")
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be at least 1; got {num_tasks}.")
    if kind == DOMAIN_INCREMENTAL:
        if num_domains is None:
            raise ValueError(
                f"scenario {DOMAIN_INCREMENTAL!r} needs a multi-domain data set (e.g. "
                f"dataset.name='domainnet'); {dataset!r} has no domains."
            )
        if num_tasks != num_domains:
            raise ValueError(
                f"num_tasks={num_tasks} but the data set provides {num_domains} domains; set "
                f"num_tasks={num_domains} or change dataset.domains."
            )
    if kind != CLASS_INCREMENTAL and class_order != "natural":
        tasks_from = "dataset.domains" if kind == DOMAIN_INCREMENTAL else "split_seed"
        raise ValueError(
            f"class_order={class_order!r} applies to class-incremental scenarios only; leave "
            f"it at 'natural' for {kind}, whose tasks follow {tasks_from}."
        )


def make_scenario(
    kind: str,
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    num_tasks: int,
    class_order: str = "natural",
    split_seed: int = 0,
    dataset: str | None = None,
    train_domains: np.ndarray | None = None,
    test_domains: np.ndarray | None = None,
) -> Scenario:
    """Builds the scenario a config asks for, after checking the config.

    Args:
      kind: ``'class_incremental'``, ``'data_incremental'`` or ``'domain_incremental'``.
      train_labels: int [N_train] labels of the training split.
      test_labels: int [N_test] labels of the test split.
      num_classes: C, the data set's number of classes.
      num_tasks: T; for a class-IL natural or random order it must divide C (a split file may
        cut the classes into tasks of different sizes).
      class_order: class-IL only: ``'natural'`` (0..C-1), ``'random'``
        (``np.random.RandomState(split_seed).permutation(C)``; seed 1993 gives the iCaRL order), a
        shipped split file name, either full (``'cifar100_icarl1993_10x10'``,
        ``'cifar100_icarl1993_50+5x10'``) or without its ``_TxC`` suffix
        (``'cifar100_icarl1993'``, completed from num_tasks), or a ``.json`` path.
      split_seed: seed of the ``'random'`` class order or of the data-IL partition.
      dataset: the run's data set name (tfds ``'name'`` or ``'name:version'``); required with a
        split file, which must be for that data set.
      train_domains, test_domains: domain-IL only: int [N] domain of each image, in task order.

    Returns:
      The scenario.

    Raises:
      ValueError: a config that does not fit; the message says what to change.
    """
    check_settings(
        kind,
        num_tasks=num_tasks,
        class_order=class_order,
        dataset=dataset,
        num_domains=None if train_domains is None else int(np.unique(train_domains).size),
    )
    train_labels = _as_labels(train_labels, "train_labels")
    test_labels = _as_labels(test_labels, "test_labels")
    for what, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"{what} hold labels in [{labels.min()}, {labels.max()}], outside "
                f"[0, {num_classes}); set num_classes to the data set's number of classes."
            )
    if kind == DOMAIN_INCREMENTAL:
        return domain_incremental(train_domains, test_domains, num_tasks=num_tasks)
    if kind == DATA_INCREMENTAL:
        return data_incremental(
            train_labels.size, test_labels, num_tasks=num_tasks, seed=split_seed
        )
    if class_order in ("natural", "random") and num_classes % num_tasks:
        raise _not_divisible(num_classes, num_tasks)
    if class_order == "natural":
        tasks = class_order_tasks(range(num_classes), num_tasks)
    elif class_order == "random":
        tasks = class_order_tasks(
            np.random.RandomState(split_seed).permutation(num_classes), num_tasks
        )
    else:
        split = _split_file_for(
            class_order, dataset=dataset, num_classes=num_classes, num_tasks=num_tasks
        )
        tasks = split["task_classes"]
    return class_incremental(train_labels, test_labels, task_classes=tasks)


def hold_out(
    scenario: Scenario, train_labels: np.ndarray, *, fraction: float, seed: int
) -> Scenario:
    """``scenario`` without a held-out share of every task's training images: of each class's n
    images in a task, round(fraction * n) drawn at random (``np.round``, halves to even) leave the
    task's ``train_indices``, so that nothing trains or fits a probe on them; the test indices are
    unchanged. The validation split of FACIL-based code, which POCON's official runs hold out
    (``alviur/pocon_wacv2024`` ``src/datasets/data_loader.py`` l.17, ``validation=.1``, and
    ``src/datasets/memory_dataset.py`` l.140-151) and never score.

    Args:
      scenario: the scenario to thin.
      train_labels: int [N_train] labels of the training split.
      fraction: share in [0, 1) held out per class and task; 0 returns ``scenario`` itself.
      seed: seed of the draw (``np.random.RandomState``).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"hold-out fraction {fraction}; set a share in [0, 1)")
    if fraction == 0.0:
        return scenario
    rng = np.random.RandomState(seed)
    labels = np.asarray(train_labels)
    kept = []
    for indices in scenario.train_indices:
        held = [
            rng.choice(rows, int(np.round(len(rows) * fraction)), replace=False)
            for rows in (indices[labels[indices] == c] for c in np.unique(labels[indices]))
        ]
        kept.append(np.setdiff1d(indices, np.concatenate(held)).astype(np.int32))
    return dataclasses.replace(scenario, train_indices=tuple(kept))
