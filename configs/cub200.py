"""CUB-200-2011, class-incremental as Avalanche cuts it: a first task of 100 classes, then 10 of 10.

    python -m cl_ssl.main --config=configs/cub200.py --workdir=runs/cub
    python -m cl_ssl.main --config=configs/cub200.py:cassle --config.objective=byol --workdir=DIR

The argument after ':' is a comma-separated list of variants: cassle, pfr, replay, lump, kaizen,
ccl, finetune, offline (the continual strategy), runlocal (a tiny smoke-test variant: the tiny
ResNet, 1 epoch per task, 32-pixel images).

The tasks are those of Avalanche's default ``SplitCUB200`` (``avalanche/benchmarks/classic/
ccub200.py``: 11 experiences, ``classes_first_batch=100``, ``shuffle=False``): the 200 classes in
their natural order (tfds ``caltech_birds2011`` labels, the archive's class ids minus 1), 100 in
the first task and 10 in each of the next ten, on the data set's own train/test split (5,994 and
5,794 images, about 30 training images per class). Genifer reports class-incremental CUB-200
(Thandiackal et al.), but its repository lacks the modules for images larger than 32 pixels, and
no continual self-supervised paper fixes a CUB-200 schedule: everything else is CaSSLe's
ImageNet-100 recipe (ResNet-18 with the ImageNet stem on 224-pixel crops, 400 epochs per task,
batch 256, each objective's ImageNet-100 optimizer and views, the offline linear probe after every
task). With about 300 training images in each later task, an epoch there is a single step of 256.

Images are streamed from their records, as in the ImageNet-100 preset: each view is cropped on
the host from the photograph at its own size (about 500 x 375 pixels) and resized to 224
(``dataset.host_crop``, as CaSSLe's DALI pipeline crops ImageNet), while the evaluation and the
memories use the stored 224 x 224 image (shorter side resized to 224, then the central square).
Stored whole, the training set's squares take 0.9 GB and fit on a device:
``--config.dataset.on_device=true --config.dataset.streaming=false
--config.dataset.host_crop=false`` keeps them there and crops the views from them, without
reading records during training. CUB-200 must be prepared once with tfds (needs TensorFlow and
OpenCV, ``pip install '.[prepare]'``): ``python -m cl_ssl.data.prepare
--dataset=caltech_birds2011 --data_dir=DIR``, then add ``--config.dataset.data_dir=DIR``.
"""

from cl_ssl import config as config_lib


def get_config(arg: str | None = None):
    config = config_lib.base_config()
    config.dataset.name = "caltech_birds2011"
    config.num_tasks = 11
    config.class_order = "caltech_birds2011_natural_100+10x10"
    config.epochs_per_task = 400
    config_lib.use_imagenet_setting(config)
    variants = config_lib.apply_variants(config, "cub200", arg, ("class_incremental",))
    if "runlocal" in variants:
        config_lib.use_imagenet_setting(config, image_size=32)
    return config
