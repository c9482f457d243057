"""Tests of cl_ssl.data.sources, cl_ssl.data.scenarios, the split files and their generator."""

import gzip
import importlib.util
import json
import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import ClSslTestImages, write_tiny_fashion_mnist

from cl_ssl.data import scenarios, sources

REPO = pathlib.Path(__file__).resolve().parents[1]
DEBIAN_DIR = sources.DEFAULT_IDX_DIR

# iCaRL's class order (Rebuffi et al., CVPR 2017): np.random.seed(1993);
# np.random.permutation(100).
ICARL_PERMUTATION = """
    68 56 78  8 23 84 90 65 74 76  40 89  3 92 55  9 26 80 43 38
    58 70 77  1 85 19 17 50 28 53  13 81 45 82  6 59 83 16 15 44
    91 41 72 60 79 52 20 10 31 54  37 95 14 71 96 98 97  2 64 66
    42 22 35 86 24 34 87 21 99  0  88 27 18 94 11 12 47 25 30 46
    62 69 36 61  7 63 75  5 32  4  51 48 73 93 39 67 29 49 57 33
"""
# iCaRL order: per-task class sets, order-of-appearance convention, sorted within a task.
ICARL_5X20 = """
    3 8 9 23 26 38 40 43 55 56 65 68 74 76 78 80 84 89 90 92
    1 6 13 15 16 17 19 28 44 45 50 53 58 59 70 77 81 82 83 85
    2 10 14 20 31 37 41 52 54 60 64 66 71 72 79 91 95 96 97 98
    0 11 12 18 21 22 24 25 27 30 34 35 42 46 47 86 87 88 94 99
    4 5 7 29 32 33 36 39 48 49 51 57 61 62 63 67 69 73 75 93
"""
ICARL_10X10 = """
    8 23 56 65 68 74 76 78 84 90
    3 9 26 38 40 43 55 80 89 92
    1 17 19 28 50 53 58 70 77 85
    6 13 15 16 44 45 59 81 82 83
    10 20 31 41 52 54 60 72 79 91
    2 14 37 64 66 71 95 96 97 98
    0 21 22 24 34 35 42 86 87 99
    11 12 18 25 27 30 46 47 88 94
    4 5 7 32 36 61 62 63 69 75
    29 33 39 48 49 51 57 67 73 93
"""


def _table(text: str) -> list[list[int]]:
    return [[int(c) for c in line.split()] for line in text.strip().splitlines()]


# --------------------------------------------------------------------------------------------
# IDX files


def _write_idx(path: pathlib.Path, array: np.ndarray, *, type_code: int = 0x08, header_dims=None):
    """Writes ``array`` (uint8) as a gzip IDX file; ``header_dims`` overrides the stored shape."""
    dims = array.shape if header_dims is None else header_dims
    header = bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_idx_split(directory: pathlib.Path, split: str, images: np.ndarray, labels: np.ndarray):
    image_file, label_file = sources._IDX_FILES[split]
    _write_idx(directory / image_file, images)
    _write_idx(directory / label_file, labels)


def test_idx_reader_known_bytes(tmp_path):
    # Hand-written bytes: 3 images of 2 x 3 pixels, pixel values 0..17 in C order.
    image_file, label_file = sources._IDX_FILES["train"]
    with gzip.open(tmp_path / image_file, "wb") as f:
        f.write(
            b"\x00\x00\x08\x03"
            + b"\x00\x00\x00\x03"
            + b"\x00\x00\x00\x02"
            + b"\x00\x00\x00\x03"
            + bytes(range(18))
        )
    with gzip.open(tmp_path / label_file, "wb") as f:
        f.write(b"\x00\x00\x08\x01" + b"\x00\x00\x00\x03" + bytes([0, 9, 4]))
    split = sources.load_split("fashion_mnist_idx", "train", data_dir=str(tmp_path))
    assert split.images.dtype == np.uint8 and split.images.shape == (3, 2, 3, 1)
    np.testing.assert_array_equal(split.images[..., 0], np.arange(18).reshape(3, 2, 3))
    assert split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.labels, [0, 9, 4])
    assert split.num_classes == 10


def test_idx_test_split_reads_t10k_files(tmp_path):
    images = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    _write_idx_split(tmp_path, "test", images, np.array([7, 1]))
    split = sources.load_split("fashion_mnist_idx", "test", data_dir=str(tmp_path))
    np.testing.assert_array_equal(split.images[..., 0], images)
    np.testing.assert_array_equal(split.labels, [7, 1])


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (
            lambda d: _write_idx(
                d / "train-images-idx3-ubyte.gz", np.zeros((2, 2, 2)), type_code=0x0D
            ),
            "only uint8",
        ),
        (
            lambda d: _write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((2, 4))),
            "has 2 dimensions; expected 3",
        ),
        (
            lambda d: _write_idx(
                d / "train-images-idx3-ubyte.gz", np.zeros((2, 2, 2)), header_dims=(3, 2, 2)
            ),
            "announces shape",
        ),
        (lambda d: _write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(5)), "2 images but"),
        (lambda d: _write_idx(d / "train-labels-idx1-ubyte.gz", np.array([1, 10])), "label 10"),
        (
            lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(
                gzip.compress(b"\x08\x03\x00\x00")
            ),
            "not an IDX file",
        ),
    ],
)
def test_idx_reader_rejects_malformed_files(tmp_path, corrupt, message):
    _write_idx_split(tmp_path, "train", np.zeros((2, 2, 2)), np.array([0, 1]))
    corrupt(tmp_path)
    with pytest.raises(ValueError, match=message):
        sources.load_split("fashion_mnist_idx", "train", data_dir=str(tmp_path))


def test_idx_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        sources.load_split("fashion_mnist_idx", "train", data_dir=str(tmp_path))
    assert "apt-get install dataset-fashion-mnist" in str(e.value)
    assert "data_dir=" in str(e.value)


def test_idx_unknown_split(tmp_path):
    with pytest.raises(ValueError, match=r"use one of \['test', 'train'\]"):
        sources.load_split("fashion_mnist_idx", "validation", data_dir=str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(DEBIAN_DIR), reason="apt-get install dataset-fashion-mnist")
def test_debian_fashion_mnist_files():
    for split, size in (("train", 60000), ("test", 10000)):
        data = sources.load_split("fashion_mnist_idx", split)
        assert data.images.shape == (size, 28, 28, 1) and data.images.dtype == np.uint8
        assert data.labels.shape == (size,) and data.labels.dtype == np.int32
        assert data.num_classes == 10
        np.testing.assert_array_equal(np.bincount(data.labels, minlength=10), [size // 10] * 10)


# --------------------------------------------------------------------------------------------
# tfds


@pytest.mark.parametrize(
    "name, shape, num_classes", [("cifar100", (32, 32, 3), 100), ("fashion_mnist", (28, 28, 1), 10)]
)
def test_tfds_mock_data(mock_tfds, monkeypatch, name, shape, num_classes):
    monkeypatch.setattr(sources, "_READ_BATCH", 4)
    with mock_tfds(num_examples=10):
        split = sources.load_split(name, "train")
    assert split.images.shape == (10, *shape) and split.images.dtype == np.uint8
    assert split.labels.shape == (10,) and split.labels.dtype == np.int32
    assert split.num_classes == num_classes
    assert split.labels.min() >= 0 and split.labels.max() < num_classes


def _count_passes(monkeypatch) -> list[int]:
    """The number of records of each pass ``sources`` makes over a tfds split, as it goes."""
    passes, batches = [], sources._batches

    def counted(source, records):
        passes.append(len(records))
        return batches(source, records)

    monkeypatch.setattr(sources, "_batches", counted)
    return passes


@pytest.mark.parametrize("streaming", [False, True])
def test_tfds_archive_rank_is_the_order_of_the_id_feature(mock_tfds, monkeypatch, streaming):
    """CIFAR-100's ``id`` (``train_00000``, ...) numbers the archive's order, which tfds shuffles
    into its records: each row's ``archive_rank`` is its id's place in sorted order, in memory and
    streamed alike, read in the one pass over the records that either makes."""
    monkeypatch.setattr(sources, "_READ_BATCH", 4)
    passes = _count_passes(monkeypatch)
    with mock_tfds(num_examples=10):
        split = sources.load_split("cifar100", "train", streaming=streaming)
        source = tfds.builder("cifar100").as_data_source(split="train")
        ids = [source[i]["id"] for i in range(10)]
    assert passes == [10]
    ids = [i.decode() if isinstance(i, bytes) else i for i in ids]
    expected = [sorted(ids).index(i) for i in ids]
    assert len(set(ids)) == 10
    np.testing.assert_array_equal(split.archive_rank, expected)


@pytest.mark.parametrize("streaming", [False, True])
def test_imagenet_archive_rank_is_the_order_of_the_file_names(mock_tfds, monkeypatch, streaming):
    """imagenet2012 has no ``id``; its ``file_name`` (``n01440764_10026.JPEG``) sorts as an
    ImageFolder lists a class's images. Each ImageNet-100 row's ``archive_rank`` is its file
    name's place in sorted order, read in the pass that finds the rows of the 100 classes (the
    only pass of a streamed split; the rows held in memory are read in a second)."""
    monkeypatch.setattr(sources, "_READ_BATCH", 64)
    classes = set(sources.imagenet100_classes())
    with mock_tfds(num_examples=1500):
        names = tfds.builder("imagenet2012").info.features["label"].names
        records = tfds.data_source("imagenet2012", split="train").__getitems__(list(range(1500)))
        passes = _count_passes(monkeypatch)
        split = sources.load_split("imagenet100", "train", image_size=4, streaming=streaming)
    assert passes == [1500] if streaming else passes == [1500, len(split.labels)]
    kept = [ex["file_name"] for ex in records if names[ex["label"]] in classes]
    kept = [f.decode() if isinstance(f, bytes) else f for f in kept]
    assert len(set(kept)) == len(kept) == len(split.labels) > 0
    np.testing.assert_array_equal(split.archive_rank, [sorted(kept).index(f) for f in kept])


def test_a_data_set_without_ids_has_no_archive_rank(tmp_path):
    write_tiny_fashion_mnist(tmp_path)
    assert (
        sources.load_split("fashion_mnist_idx", "train", data_dir=str(tmp_path)).archive_rank
        is None
    )


def test_tfds_prepared_array_record(tmp_path, monkeypatch):
    ClSslTestImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    monkeypatch.setattr(sources, "_READ_BATCH", 4)
    split = sources.load_split("cl_ssl_test_images", "train", data_dir=str(tmp_path))
    assert split.images.shape == (11, 4, 4, 3) and split.images.dtype == np.uint8
    assert split.num_classes == 7 and split.labels.dtype == np.int32
    ids = split.images[:, 0, 0, 0]
    np.testing.assert_array_equal(np.sort(ids), np.arange(11))
    np.testing.assert_array_equal(split.labels, ids % 7)
    assert (split.images == ids[:, None, None, None]).all()
    assert len(sources.load_split("cl_ssl_test_images", "test", data_dir=str(tmp_path)).labels) == 3


def test_tfds_not_prepared_names_the_prepare_command(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        sources.load_split("cifar10", "train", data_dir=str(tmp_path))
    message = str(e.value)
    assert f"python -m cl_ssl.data.prepare --dataset=cifar10 --data_dir={tmp_path}" in message
    assert "pip install '.[prepare]'" in message
    assert not any(tmp_path.iterdir()), "nothing may be downloaded or written"


def test_tfds_unknown_name():
    with pytest.raises(ValueError, match="Unknown data set 'no_such_data_set'"):
        sources.load_split("no_such_data_set", "train")


def test_tfds_variable_size_images_need_an_image_size(tmp_path):
    with pytest.raises(ValueError, match="varying size.*--config.dataset.image_size"):
        sources.load_split("imagenette", "train", data_dir=str(tmp_path))


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed"
)
def test_prepare_without_tensorflow_says_what_to_install(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cl_ssl.data.prepare",
            "--dataset=cifar10",
            f"--data_dir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "pip install '.[prepare]'" in result.stderr


# --------------------------------------------------------------------------------------------
# Scenarios


def _labels(num_classes: int, per_class: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


TRAIN_LABELS = _labels(100, 5, seed=0)
TEST_LABELS = _labels(100, 2, seed=1)


def _check_class_incremental(scenario, task_classes):
    assert scenario.kind == "class_incremental" and scenario.num_tasks == len(task_classes)
    assert scenario.task_classes == tuple(tuple(t) for t in task_classes)
    for indices, labels in (
        (scenario.train_indices, TRAIN_LABELS),
        (scenario.test_indices, TEST_LABELS),
    ):
        joined = np.concatenate(indices)
        assert len(np.unique(joined)) == len(joined), "tasks overlap"
        np.testing.assert_array_equal(np.sort(joined), np.arange(len(labels)))
        for idx, classes in zip(indices, task_classes, strict=True):
            assert idx.dtype == np.int32 and (np.diff(idx) > 0).all()
            np.testing.assert_array_equal(idx, np.flatnonzero(np.isin(labels, classes)))
    assert scenario.test_task_ids.dtype == np.int32
    for task, idx in enumerate(scenario.test_indices):
        assert (scenario.test_task_ids[idx] == task).all()


def test_class_incremental_natural_order():
    scenario = scenarios.make_scenario(
        "class_incremental", TRAIN_LABELS, TEST_LABELS, num_classes=100, num_tasks=5
    )
    _check_class_incremental(scenario, [list(range(20 * k, 20 * (k + 1))) for k in range(5)])


def test_class_incremental_from_split_file():
    scenario = scenarios.make_scenario(
        "class_incremental",
        TRAIN_LABELS,
        TEST_LABELS,
        num_classes=100,
        num_tasks=10,
        class_order="cifar100_icarl1993",
        dataset="cifar100:3.0.2",
    )
    _check_class_incremental(
        scenario, scenarios.load_split_file("cifar100_icarl1993_10x10")["task_classes"]
    )


def test_class_incremental_subset_of_classes():
    scenario = scenarios.class_incremental(
        [0, 1, 2, 3, 2], [3, 0, 1, 2], task_classes=[[2], [0, 1]]
    )
    assert [i.tolist() for i in scenario.train_indices] == [[2, 4], [0, 1]]
    assert [i.tolist() for i in scenario.test_indices] == [[3], [1, 2]]
    assert scenario.test_task_ids.tolist() == [-1, 1, 1, 0]


def test_random_class_order_is_the_seeded_numpy_permutation():
    random = scenarios.make_scenario(
        "class_incremental",
        TRAIN_LABELS,
        TEST_LABELS,
        num_classes=100,
        num_tasks=5,
        class_order="random",
        split_seed=1993,
    )
    assert [sorted(t) for t in random.task_classes] == _table(ICARL_5X20)
    other = scenarios.make_scenario(
        "class_incremental",
        TRAIN_LABELS,
        TEST_LABELS,
        num_classes=100,
        num_tasks=5,
        class_order="random",
        split_seed=1994,
    )
    assert other.task_classes != random.task_classes


def test_hold_out_leaves_out_a_rounded_share_of_each_class_in_each_task():
    """Classes of 10, 15 and 25 images in two tasks, 10% held out: np.round(1.0), np.round(1.5)
    and np.round(2.5) are 1, 2 and 2 (halves to even, as FACIL's ``np.round``)."""
    labels = np.repeat(np.arange(3), [10, 15, 25])
    scenario = scenarios.class_incremental(labels, np.arange(3), task_classes=[[0, 1], [2]])
    thinned = scenarios.hold_out(scenario, labels, fraction=0.1, seed=3)
    for full, kept, held in zip(
        scenario.train_indices, thinned.train_indices, ([1, 2], [2]), strict=True
    ):
        assert kept.dtype == np.int32 and (np.diff(kept) > 0).all() and np.isin(kept, full).all()
        classes = np.unique(labels[full])
        removed = [np.sum(labels[full] == c) - np.sum(labels[kept] == c) for c in classes]
        assert removed == held
    assert thinned.test_indices is scenario.test_indices
    again = scenarios.hold_out(scenario, labels, fraction=0.1, seed=3).train_indices
    other = scenarios.hold_out(scenario, labels, fraction=0.1, seed=4).train_indices
    assert all(np.array_equal(a, b) for a, b in zip(again, thinned.train_indices, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(other, thinned.train_indices, strict=True))
    assert scenarios.hold_out(scenario, labels, fraction=0.0, seed=3) is scenario
    with pytest.raises(ValueError, match="set a share in"):
        scenarios.hold_out(scenario, labels, fraction=1.0, seed=3)


def test_class_order_tasks_order_of_appearance():
    assert scenarios.class_order_tasks([5, 0, 3, 1, 4, 2], 3) == [[5, 0], [3, 1], [4, 2]]


def test_data_incremental_partition():
    scenario = scenarios.data_incremental(1003, TEST_LABELS, num_tasks=5, seed=42)
    assert scenario.kind == "data_incremental" and scenario.task_classes is None
    assert [len(i) for i in scenario.train_indices] == [203, 200, 200, 200, 200]
    joined = np.concatenate(scenario.train_indices)
    np.testing.assert_array_equal(np.sort(joined), np.arange(1003))
    for idx in scenario.train_indices:
        assert idx.dtype == np.int32 and (np.diff(idx) > 0).all()
    for idx in scenario.test_indices:
        np.testing.assert_array_equal(idx, np.arange(len(TEST_LABELS)))
    assert (
        scenario.test_task_ids == -1
    ).all() and scenario.test_task_ids.shape == TEST_LABELS.shape

    again = scenarios.data_incremental(1003, TEST_LABELS, num_tasks=5, seed=42)
    other = scenarios.data_incremental(1003, TEST_LABELS, num_tasks=5, seed=43)
    for a, b, c in zip(
        scenario.train_indices, again.train_indices, other.train_indices, strict=True
    ):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)

    spread = scenarios.data_incremental(
        1003, TEST_LABELS, num_tasks=5, seed=42, remainder_to_first=False
    )
    assert [len(i) for i in spread.train_indices] == [201, 201, 201, 200, 200]


def test_make_scenario_data_incremental_uses_split_seed():
    a = scenarios.make_scenario(
        "data_incremental", TRAIN_LABELS, TEST_LABELS, num_classes=100, num_tasks=3, split_seed=7
    )
    b = scenarios.data_incremental(len(TRAIN_LABELS), TEST_LABELS, num_tasks=3, seed=7)
    for x, y in zip(a.train_indices, b.train_indices, strict=True):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------------------------
# Split files


def test_split_files_shipped():
    assert scenarios.split_file_names() == [
        "caltech_birds2011_natural_100+10x10",
        "cifar100_cassle_seed5",
        "cifar100_icarl1993_10x10",
        "cifar100_icarl1993_20x5",
        "cifar100_icarl1993_50+5x10",
        "cifar100_icarl1993_5x20",
        "fashion_mnist_idx_natural_4+3x2",
        "imagenet100_cassle_seed5",
        "imagenet_sub_ccl_seed1_10x10",
    ]
    for name in scenarios.split_file_names():
        content = scenarios.load_split_file(name)
        assert content["name"] == name and name.startswith(content["dataset"] + "_")
        assert content["convention"] == "order_of_appearance" and content["description"]
        assert sorted(content["permutation"]) == list(range(content["num_classes"]))


def test_icarl_split_files_match_protocols_tables():
    permutation = [int(c) for c in ICARL_PERMUTATION.split()]
    for name, table in (
        ("cifar100_icarl1993_5x20", ICARL_5X20),
        ("cifar100_icarl1993_10x10", ICARL_10X10),
    ):
        content = scenarios.load_split_file(name)
        assert content["permutation"] == permutation
        assert [sorted(t) for t in content["task_classes"]] == _table(table)
    twenty = scenarios.load_split_file("cifar100_icarl1993_20x5")
    assert twenty["task_classes"] == [permutation[5 * k : 5 * (k + 1)] for k in range(20)]


def _torch_cpu_randperm(seed: int, n: int) -> list[int]:
    """NumPy re-implementation of PyTorch's CPU ``torch.manual_seed(seed); torch.randperm(n)``.

    mt19937 seeded by init_genrand(seed) (NumPy's legacy seeding of an int is the same), then for
    i in 0..n-2 swap positions i and i + random() % (n - i), random() being one 32-bit output.
    """
    raw = np.random.RandomState(seed).randint(0, 2**32, size=n, dtype=np.uint32)
    perm = list(range(n))
    for i in range(n - 1):
        j = i + int(raw[i]) % (n - i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def test_cassle_split_file_matches_torch_randperm_algorithm():
    content = scenarios.load_split_file("cifar100_cassle_seed5")
    assert content["num_tasks"] == 5
    assert content["permutation"] == _torch_cpu_randperm(5, 100)
    assert content["task_classes"] == [
        content["permutation"][20 * k : 20 * (k + 1)] for k in range(5)
    ]
    assert "torch" in content["description"] and "unverified" in content["description"]


def test_ccl_split_file_is_numpy_legacy_shuffle_seed1():
    """CCL's ImageNet-Sub order, transcribed from its train.py (l. 296-311): order =
    np.arange(100); np.random.seed(1); np.random.shuffle(order); task t holds
    order[10t:10(t+1)]."""
    state = np.random.get_state()
    try:
        order = np.arange(100)
        np.random.seed(1)
        np.random.shuffle(order)
    finally:
        np.random.set_state(state)
    content = scenarios.load_split_file("imagenet_sub_ccl_seed1_10x10")  # validates the file
    assert (content["dataset"], content["num_classes"], content["num_tasks"]) == (
        "imagenet_sub",
        100,
        10,
    )
    assert content["permutation"] == order.tolist()
    assert content["task_classes"] == [order[10 * t : 10 * (t + 1)].tolist() for t in range(10)]
    scenario = scenarios.make_scenario(
        "class_incremental",
        TRAIN_LABELS,
        TEST_LABELS,
        num_classes=100,
        num_tasks=10,
        class_order="imagenet_sub_ccl_seed1",  # the _10x10 suffix follows from num_tasks
        dataset="imagenet_sub",
    )
    assert [list(t) for t in scenario.task_classes] == content["task_classes"]


def test_make_splits_regenerates_the_numpy_files():
    spec = importlib.util.spec_from_file_location(
        "make_splits", REPO / "experiments" / "make_splits.py"
    )
    make_splits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_splits)
    for content in make_splits.icarl1993_files() + make_splits.ccl_seed1_files():
        shipped = (scenarios.SPLITS_DIR / f"{content['name']}.json").read_text(encoding="utf-8")
        assert make_splits.dumps(content) == shipped


def _copy_split_file(tmp_path, edit) -> pathlib.Path:
    content = json.loads((scenarios.SPLITS_DIR / "cifar100_icarl1993_5x20.json").read_text())
    edit(content)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(content))
    return path


def test_split_file_checksum_detects_tampering(tmp_path):
    untouched = _copy_split_file(tmp_path, lambda c: None)
    assert scenarios.load_split_file(str(untouched))["num_tasks"] == 5

    def swap(content):
        tasks = content["task_classes"]
        tasks[0][0], tasks[1][0] = tasks[1][0], tasks[0][0]

    with pytest.raises(ValueError, match="fails its checksum"):
        scenarios.load_split_file(str(_copy_split_file(tmp_path, swap)))


def test_split_file_tasks_must_follow_the_permutation(tmp_path):
    def swap_and_resign(content):
        tasks = content["task_classes"]
        tasks[0][0], tasks[1][0] = tasks[1][0], tasks[0][0]
        del content["checksum"]
        content["checksum"] = scenarios.split_file_checksum(content)

    def leave_a_task_empty(content):
        content["task_classes"] = [[], *content["task_classes"][1:]]
        content["num_tasks"] = 5
        del content["checksum"]
        content["checksum"] = scenarios.split_file_checksum(content)

    for edit in (swap_and_resign, leave_a_task_empty):
        with pytest.raises(ValueError, match="non-empty runs of consecutive classes"):
            scenarios.load_split_file(str(_copy_split_file(tmp_path, edit)))


def test_uneven_split_file_gives_tasks_of_its_sizes():
    """Genifer's CIFAR-100 tasks: the iCaRL order cut into 50 base classes, then 5 tasks of 10."""
    genifer = scenarios.load_split_file("cifar100_icarl1993_50+5x10")
    icarl = scenarios.load_split_file("cifar100_icarl1993_10x10")["task_classes"]
    assert genifer["task_classes"] == [sum(icarl[:5], []), *icarl[5:]]
    assert genifer["task_classes"][1] == [37, 95, 14, 71, 96, 98, 97, 2, 64, 66]  # Genifer's
    scenario = scenarios.make_scenario(
        "class_incremental",
        TRAIN_LABELS,
        TEST_LABELS,
        num_classes=100,
        num_tasks=6,
        class_order="cifar100_icarl1993_50+5x10",
        dataset="cifar100",
    )
    _check_class_incremental(scenario, genifer["task_classes"])
    assert [len(t) for t in scenario.task_classes] == [50, 10, 10, 10, 10, 10]
    assert scenarios.cut_class_order([3, 1, 2, 0], [1, 3]) == [[3], [1, 2, 0]]
    for sizes in ([2, 1], [4, 0], []):
        with pytest.raises(ValueError, match="sum to the 4 classes"):
            scenarios.cut_class_order([3, 1, 2, 0], sizes)


def test_split_file_missing_fields(tmp_path):
    path = _copy_split_file(tmp_path, lambda c: c.pop("convention"))
    with pytest.raises(ValueError, match=r"lacks the fields \['convention'\]"):
        scenarios.load_split_file(str(path))


def test_split_file_as_class_order_path(tmp_path):
    path = _copy_split_file(tmp_path, lambda c: None)
    scenario = scenarios.make_scenario(
        "class_incremental",
        TRAIN_LABELS,
        TEST_LABELS,
        num_classes=100,
        num_tasks=5,
        class_order=str(path),
        dataset="cifar100",
    )
    assert [sorted(t) for t in scenario.task_classes] == _table(ICARL_5X20)


def test_unknown_split_file():
    with pytest.raises(ValueError, match="No split file 'cifar100_nope'; the shipped ones are"):
        scenarios.load_split_file("cifar100_nope")


# --------------------------------------------------------------------------------------------
# Configuration errors


def _make(**overrides):
    kwargs = dict(
        kind="class_incremental",
        train_labels=TRAIN_LABELS,
        test_labels=TEST_LABELS,
        num_classes=100,
        num_tasks=5,
    )
    kwargs.update(overrides)
    return scenarios.make_scenario(
        kwargs.pop("kind"), kwargs.pop("train_labels"), kwargs.pop("test_labels"), **kwargs
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(kind="task_incremental"),
            r"Unknown scenario kind 'task_incremental'; "
            r"choose one of \['class_incremental', 'data_incremental', 'domain_incremental'\]",
        ),
        (
            dict(num_tasks=7),
            r"100 classes do not divide into 7 tasks; "
            r"choose num_tasks among the divisors \[1, 2, 4, 5, 10, 20, 25, 50, 100\]",
        ),
        (dict(num_tasks=0), "num_tasks must be at least 1"),
        (dict(num_classes=50), r"outside \[0, 50\); set num_classes"),
        (
            dict(train_labels=TRAIN_LABELS.astype(np.float32)),
            "train_labels must be a 1-D integer array",
        ),
        (dict(class_order="cifar100_icarl1993"), "pass dataset="),
        (
            dict(class_order="cifar100_icarl1993", dataset="cifar10"),
            "is for data set 'cifar100', but the run's data set is 'cifar10'",
        ),
        (
            dict(class_order="cifar100_cassle_seed5", num_tasks=10, dataset="cifar100"),
            "has 5 tasks, but num_tasks=10; set num_tasks=5",
        ),
        (
            dict(class_order="cifar100_icarl1993", num_tasks=4, dataset="cifar100"),
            r"Unknown class_order 'cifar100_icarl1993' for 4 tasks of 100 classes"
            r".*cifar100_icarl1993_10x10",
        ),
        (dict(class_order="shuffled"), "Unknown class_order 'shuffled'"),
        (
            dict(kind="data_incremental", class_order="random"),
            "applies to class-incremental scenarios only",
        ),
        (
            dict(kind="data_incremental", num_tasks=501),
            "num_tasks must lie between 1 and the 500 training samples",
        ),
    ],
)
def test_make_scenario_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        _make(**overrides)


def test_split_file_for_other_class_count(tmp_path):
    def forty(content):
        content.update(
            num_classes=40,
            permutation=list(range(40)),
            num_tasks=4,
            task_classes=[list(range(10 * k, 10 * (k + 1))) for k in range(4)],
        )
        del content["checksum"]
        content["checksum"] = scenarios.split_file_checksum(content)

    path = _copy_split_file(tmp_path, forty)
    with pytest.raises(ValueError, match="covers 40 classes, but num_classes=100"):
        _make(class_order=str(path), dataset="cifar100", num_tasks=4)


@pytest.mark.parametrize(
    "task_classes, message",
    [
        ([[0, 1], [1, 2]], r"Classes \[1\] appear in more than one task"),
        ([[0], []], "every task at least one class"),
        ([[0], [-1]], "must be non-negative"),
        ([[0], [999]], r"Task 1 \(classes \[999\]\) has no training samples"),
    ],
)
def test_class_incremental_errors(task_classes, message):
    with pytest.raises(ValueError, match=message):
        scenarios.class_incremental(TRAIN_LABELS, TEST_LABELS, task_classes=task_classes)


def test_class_order_tasks_errors():
    with pytest.raises(ValueError, match=r"repeats classes \[3\]"):
        scenarios.class_order_tasks([3, 1, 3, 0], 2)
    with pytest.raises(
        ValueError,
        match=r"6 classes do not divide into 4 tasks; "
        r"choose num_tasks among the divisors \[1, 2, 3, 6\]",
    ):
        scenarios.class_order_tasks(range(6), 4)
