"""ImageNet-100, ImageNet-Sub and DomainNet: class subset, domains, images of varying size, the
domain-incremental scenario and the presets, on tfds mock data."""

import shutil

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import run as _run
from helpers import shipped_config

from cl_ssl import parallel, planning
from cl_ssl.data import augment, scenarios, sources


def test_imagenet100_keeps_the_cmc_classes_relabelled_in_sorted_order(mock_tfds):
    classes = sources.imagenet100_classes()
    assert len(classes) == len(set(classes)) == 100 and classes == sorted(classes)
    assert {"n02869837", "n02090622", "n01749939"} <= set(classes)  # first, last, second of CMC
    with mock_tfds(num_examples=1500):
        names = tfds.builder("imagenet2012").info.features["label"].names
        source = tfds.data_source("imagenet2012", split="validation")
        expected = [
            classes.index(names[ex["label"]])
            for ex in source.__getitems__(list(range(1500)))
            if names[ex["label"]] in classes
        ]
        test = sources.load_split("imagenet100", "test", image_size=12)
    assert test.num_classes == 100 and test.domains is None
    assert test.images.shape == (len(expected), 12, 12, 3) and test.images.dtype == np.uint8
    np.testing.assert_array_equal(test.labels, expected)  # 'test' is ImageNet's validation set


def test_imagenet_sub_keeps_imagenet_labels_0_to_99_unchanged(mock_tfds):
    """CCL's ImageNet-Sub: ImageNet's first 100 classes, in ImageFolder's sorted WordNet-id
    order, which is also imagenet2012's label order."""
    names = tfds.builder("imagenet2012").info.features["label"].names
    assert names == sorted(names)  # so ImageFolder's class ids are imagenet2012's labels
    classes = sources.imagenet_sub_classes()
    assert classes == names[:100] and classes[:2] == ["n01440764", "n01443537"]  # tench, goldfish
    with mock_tfds(num_examples=400):
        source = tfds.data_source("imagenet2012", split="validation")
        labels = np.array([ex["label"] for ex in source.__getitems__(list(range(400)))])
        test = sources.load_split("imagenet_sub", "test", image_size=4)
    kept = labels[labels < 100]
    assert 0 < kept.size < labels.size  # the mock labels span all 1000 classes
    assert test.num_classes == 100 and test.domains is None
    assert test.images.shape == (kept.size, 4, 4, 3)
    np.testing.assert_array_equal(test.labels, kept)  # labels 0-99 only, unchanged
    with pytest.raises(ValueError, match="Split 'validation' does not exist for 'imagenet_sub'"):
        sources.load_split("imagenet_sub", "validation", image_size=4)


def test_square_resize_keeps_the_central_square():
    image = np.zeros((40, 20, 3), np.uint8)
    image[4:36] = 255  # white around the central 20 x 20 square of a tall image, black ends
    out = sources.central_square(image, 10)  # resized to 10 x 20, then rows 5-14 kept
    assert out.shape == (10, 10, 3)
    assert out.min() >= 250  # only the white band: the black ends were cropped away
    gray = sources.central_square(np.full((7, 9, 1), 9, np.uint8), 4)
    np.testing.assert_array_equal(gray, np.full((4, 4, 3), 9))


class _ListSource(list):
    """A list as a tfds data source: random access, and ``__getitems__`` for batched reads."""

    def __getitems__(self, keys):
        return [self[k] for k in keys]


@pytest.mark.parametrize("streaming", [False, True])
def test_domainnet_concatenates_domains_in_the_order_given(monkeypatch, streaming):
    """Each domain's images land in its own rows, in the order asked for (a stand-in reader
    gives domain k of DOMAINNET_CASSLE_ORDER k + 1 images of value k and label k), whether read
    into memory or streamed."""
    read = []

    def reader(name, split, data_dir, image_size, classes=None, undecoded=False):
        k = sources.DOMAINNET_CASSLE_ORDER.index(name.split("/")[1])
        read.append((name, split, image_size, undecoded))
        shape = (image_size, image_size, 3)
        source = _ListSource([{"image": np.full(shape, k, np.uint8), "label": k}] * (k + 1))
        return sources._TfdsReader(source, np.arange(k + 1), np.arange(345), shape, 0, 345)

    monkeypatch.setattr(sources, "_tfds_reader", reader)
    split = sources.load_split(
        "domainnet", "test", image_size=4, domains=("sketch", "real"), streaming=streaming
    )
    assert read == [
        ("domainnet/sketch", "test", 4, streaming),
        ("domainnet/real", "test", 4, streaming),
    ]
    np.testing.assert_array_equal(split.labels, [3, 3, 3, 3, 0])  # sketch is domain 3, real 0
    np.testing.assert_array_equal(split.images[:, 0, 0, 0], [3, 3, 3, 3, 0])
    np.testing.assert_array_equal(split.domains, [0, 0, 0, 0, 1])
    default = sources.load_split("domainnet", "train", image_size=2, streaming=streaming)
    np.testing.assert_array_equal(np.bincount(default.domains), [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(default.labels, np.repeat(np.arange(6), np.arange(1, 7)))
    np.testing.assert_array_equal(default.images[[20, 0, 3]][:, 0, 0, 0], [5, 0, 2])


def test_domainnet_reads_every_domain_of_the_tfds_data(mock_tfds):
    with mock_tfds(num_examples=6):
        split = sources.load_split("domainnet", "train", image_size=8, domains=("sketch", "real"))
    assert split.images.shape == (12, 8, 8, 3) and split.num_classes == 345
    assert split.labels.dtype == np.int32 and split.labels.max() < 345


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("domainnet", dict(image_size=8, domains=("real", "photo")), "distinct DomainNet domains"),
        ("domainnet", dict(image_size=8, domains=("real", "real")), "distinct DomainNet domains"),
        ("cifar10", dict(domains=("real",)), "apply to 'domainnet' only"),
        ("domainnet", dict(), "varying size.*dataset.image_size"),
        ("imagenet100", dict(), "varying size.*dataset.image_size"),
    ],
)
def test_bad_data_settings_are_named(mock_tfds, name, kwargs, message):
    with mock_tfds(num_examples=4), pytest.raises(ValueError, match=message):
        sources.load_split(name, "train", **kwargs)


def test_domain_incremental_tasks_are_the_domains():
    train_domains = np.array([2, 0, 1, 0, 2, 1, 1])
    test_domains = np.array([1, 0, 2, 2])
    s = scenarios.make_scenario(
        "domain_incremental",
        np.array([0, 1, 2, 0, 1, 2, 0]),
        np.array([0, 1, 2, 0]),
        num_classes=3,
        num_tasks=3,
        train_domains=train_domains,
        test_domains=test_domains,
    )
    assert s.kind == "domain_incremental" and s.task_classes is None
    assert [t.tolist() for t in s.train_indices] == [[1, 3], [2, 5, 6], [0, 4]]
    assert [t.tolist() for t in s.test_indices] == [[1], [0], [2, 3]]
    np.testing.assert_array_equal(s.test_task_ids, test_domains)


@pytest.mark.parametrize(
    "num_tasks, kwargs, message",
    [
        (2, {}, "num_tasks=2 but the data set provides 3 domains"),
        (3, dict(test_domains=np.array([0, 1, 1])), "every domain needs test images"),
        (3, dict(class_order="random"), "class_order='random' applies to class-incremental"),
        (3, dict(train_domains=None), "needs a multi-domain data set"),
    ],
)
def test_domain_incremental_rejects_what_does_not_fit(num_tasks, kwargs, message):
    args = dict(train_domains=np.array([0, 1, 2]), test_domains=np.array([0, 1, 2]))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        scenarios.make_scenario(
            "domain_incremental",
            np.zeros(3, int),
            np.zeros(3, int),
            num_classes=1,
            num_tasks=num_tasks,
            **args,
        )


def test_presets_reproduce_cassle_settings():
    c = shipped_config("imagenet100", "cassle")
    assert (c.dataset.name, c.class_order, c.num_tasks, c.epochs_per_task) == (
        "imagenet100",
        "imagenet100_cassle_seed5",
        5,
        400,
    )
    assert (c.model.stem, c.dataset.image_size, c.augment.view1.crop_size, c.recipe) == (
        "imagenet",
        224,
        224,
        "imagenet",
    )
    assert c.strategy == "cassle" and c.byol.pred_hidden_dim == 8192
    # The SimCLR scripts leave --output_dim at cassle/methods/simclr.py's 128.
    assert c.simclr.proj_output_dim == 128
    assert (c.swav.queue_start_epoch, c.swav.freeze_prototypes_epochs) == (100, 5)
    same = scenarios.load_split_file("imagenet100_cassle_seed5")["permutation"]
    assert same == scenarios.load_split_file("cifar100_cassle_seed5")["permutation"]
    d = shipped_config("domainnet", "pfr")
    assert d.dataset.domains == ("real", "quickdraw", "painting", "sketch", "infograph", "clipart")
    assert (d.scenario, d.num_tasks, d.epochs_per_task, d.strategy) == (
        "domain_incremental",
        6,
        200,
        "pfr",
    )
    with pytest.raises(ValueError, match="unknown domainnet config variants"):
        shipped_config("domainnet", "data_incremental")


def test_imagenet_recipe_fills_the_imagenet100_values():
    from cl_ssl.objectives import resolve_config

    c = shipped_config("imagenet100")
    c.objective = "byol"
    r = resolve_config(c)
    assert (r.optimizer.lr, r.optimizer.weight_decay) == (0.6, 1e-5)
    # CaSSLe's bash_files/linear/imagenet-100/class/byol_linear.sh
    assert r.eval.linear.learning_rate == 3.0
    assert (r.augment.view1.blur_prob, r.augment.view2.blur_prob) == (1.0, 0.1)
    assert (r.augment.view1.solarize_prob, r.augment.view2.solarize_prob) == (0.0, 0.2)
    c.objective = "swav"  # imagenet-100/class/swav.sh l.20 excludes biases and norms from LARS
    assert resolve_config(c).optimizer.kwargs.exclude_bias_and_norm is True
    c.objective = "isd"
    with pytest.raises(ValueError, match="no 'imagenet' recipe"):
        resolve_config(c)


def test_domainnet_runlocal_preset_streams_the_numbers_of_the_in_memory_run(mock_tfds, tmp_path):
    """Two of DomainNet's domains as two domain-incremental tasks, streamed from the records (the
    ImageNet setting of the ImageNet-100 preset too, whose plan test_train checks): the
    accuracies and the final state equal those of the run with the images in host memory. (A
    streamed run resumed mid-task: the host-cropped run below.)"""
    config = shipped_config("domainnet", "runlocal,cassle")
    config.update(batch_size=8, progress_bar=False, num_tasks=2, checkpoint_every_steps=2)
    config.dataset.domains = ("real", "sketch")
    config.eval.update(train_examples=64, plots=False, evaluators=("knn",))
    assert config.dataset.streaming and config.dataset.host_crop and not config.dataset.on_device
    config.dataset.host_crop = False  # crops from the stored squares, as the in-memory run's
    in_memory = config.copy_and_resolve_references()
    in_memory.dataset.streaming = False
    with mock_tfds(num_examples=24):
        whole = _run(in_memory, tmp_path / "in_memory")
        result = _run(config, tmp_path / "streamed")
    R = result["matrices"]["knn"]
    assert R.shape == (3, 2) and np.all((R >= 0) & (R <= 100))
    assert int(result["state"].task) == 2
    np.testing.assert_array_equal(R, whole["matrices"]["knn"])
    chex.assert_trees_all_equal(result["state"].params, whole["state"].params)


@pytest.mark.parametrize(
    "preset, overrides, message",
    [
        ("domainnet", dict(num_tasks=5), "num_tasks=5 but the data set provides 6 domains"),
        ("domainnet", dict(class_order="random"), "class_order='random' applies to class-"),
        ("imagenet100", dict(scenario="domain_incremental"), "needs a multi-domain data set"),
        ("imagenet100", {"optimizer.warmup_epochs": 400}, "warmup_epochs=400 must lie in"),
    ],
)
def test_settings_fail_before_the_data_are_read(monkeypatch, preset, overrides, message):
    def no_reading(*args, **kwargs):
        raise AssertionError("the data set was read before the settings were checked")

    monkeypatch.setattr(sources, "load_split", no_reading)
    config = shipped_config(preset)
    config.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=message):
        planning.plan(config, parallel.make_mesh(1))


def test_a_run_cropped_on_the_host_resumes_mid_task_to_the_same_numbers(
    mock_tfds, tmp_path, monkeypatch
):
    """DomainNet's preset crops its views on the host from the records' images (of varying size,
    not the stored 32-pixel squares), and the step takes those crops for the current rows while
    replayed rows are cropped on the device: killed mid-task and resumed on two devices, the run
    ends with the accuracies and state of the uninterrupted run."""
    config = shipped_config("domainnet", "runlocal,replay")
    config.update(batch_size=8, progress_bar=False, num_tasks=2, checkpoint_every_steps=2)
    config.dataset.domains = ("real", "sketch")
    config.eval.update(train_examples=64, plots=False, evaluators=("knn",))
    config.replay.batch_size = 4
    crops_per_trace = []
    augment_batch = augment.augment_batch

    def recording(key, images, cfg, crops=None):
        crops_per_trace.append(None if crops is None else (crops.shape[0], images.shape[0]))
        return augment_batch(key, images, cfg, crops)

    monkeypatch.setattr(augment, "augment_batch", recording)
    with mock_tfds(num_examples=24):
        whole = _run(config, tmp_path / "whole", num_devices=2)
        # Killed after checkpoint 4, mid task 2 (3 steps of 8 of each task's 24 images).
        shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
        checkpoints = tmp_path / "resumed" / "checkpoints"
        assert sorted(int(c.name) for c in checkpoints.iterdir()) == [0, 3, 4, 6]
        shutil.rmtree(checkpoints / "6")
        result = _run(config, tmp_path / "resumed", num_devices=2)
    np.testing.assert_array_equal(result["matrices"]["knn"], whole["matrices"]["knn"])
    chex.assert_trees_all_equal(result["state"].params, whole["state"].params)
    # Two views of the first task's step (8 host-cropped rows), then of the replaying step (the 8
    # current rows cropped on the host, 4 replayed rows on the device).
    assert set(crops_per_trace) == {(8, 8), (8, 12)}
