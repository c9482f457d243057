"""ImageNet-100 with CaSSLe's settings: 5 class-incremental tasks, SimCLR fine-tuning by default.

    python -m cl_ssl.main --config=configs/imagenet100.py --workdir=runs/in100
    python -m cl_ssl.main --config=configs/imagenet100.py:cassle --config.objective=byol --workdir=DIR
    python -m cl_ssl.main --config=configs/imagenet100.py:data_incremental,cassle --workdir=DIR

The argument after ':' is a comma-separated list of variants:
  class_incremental (the default): 5 tasks of 20 classes in CaSSLe's order (torch seed 5, the same
    permutation as its CIFAR-100 order).
  data_incremental: 5 random fifths of the training set, the remainder to the first task, drawn
    with numpy from ``split_seed`` 42 (CaSSLe's sizes and rule, not its images).
  cassle, pfr, replay, lump, kaizen, ccl, finetune, offline: the continual strategy (kaizen also
    applies Kaizen's settings: every label, its recipes and heads, ``use_kaizen_setting``).
  ccl: CCL's ImageNet-Sub run instead of ImageNet-100 (``use_ccl_setting``): the first 100 ImageNet
    classes in 10 tasks of 10 (NumPy seed 1), ResNet-50, MoCoV2+ with MoCo v2's augmentation,
    200 epochs per task, SGD lr 0.03 with its momentum carried across tasks, and CCL's probe.
  runlocal: a tiny smoke-test variant (the tiny ResNet, 1 epoch per task, 32-pixel images).

Everything else is CaSSLe's ImageNet-100 recipe (Fini et al., CVPR 2022; its scripts
``bash_files/continual/imagenet-100/class/*.sh``): the 100 CMC classes, ResNet-18 with the
ImageNet stem on 224-pixel crops, 400 epochs per task, batch 256, SGD momentum 0.9 with LARS, and
each objective's ImageNet-100 learning rate, weight decay and augmentations (only SimCLR, BYOL,
Barlow Twins, SwAV and VICReg have one). CaSSLe's offline linear probe (``main_linear.py`` with
``bash_files/linear/imagenet-100/class/*.sh``) evaluates every task.

The images are streamed from their records (``dataset.streaming=True``): each step's batch is
read and decoded on the host when the step needs it, and each view is cropped there from the
image at its own size and resized to 224 (``dataset.host_crop=True``), as CaSSLe's DALI pipeline
crops the decoded image; the devices run the rest of the augmentation. One difference from
CaSSLe's pipeline: the probes, and the memories of the strategies that keep images, see each image
stored once at 224 x 224 (shorter side resized to 224, then the central square), not the usual
256-pixel resize with a central 224 crop. Stored whole, the training set would take 19 GB
(``--config.dataset.streaming=false --config.dataset.host_crop=false`` holds it in host memory
and crops the views from the stored squares on the devices; with
``--config.dataset.on_device=true`` too, an accelerator with room for it keeps it instead).

ImageNet must be prepared once with tfds (``imagenet2012``; needs TensorFlow,
``pip install '.[prepare]'``): put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
DIR/downloads/manual (tfds does not download ImageNet), run ``python -m cl_ssl.data.prepare
--dataset=imagenet2012 --data_dir=DIR``, then add ``--config.dataset.data_dir=DIR``. A run reads
the labels of all of imagenet2012's records at its start (a pass that decodes no image) to find
the 100 classes' images, then decodes each batch's images when the step needs them.
"""

from cl_ssl import config as config_lib


def get_config(arg: str | None = None):
    config = config_lib.base_config()
    config.dataset.name = "imagenet100"
    config.class_order = "imagenet100_cassle_seed5"
    config.epochs_per_task = 400
    config_lib.use_imagenet_setting(config)
    variants = config_lib.apply_variants(
        config, "imagenet100", arg, ("class_incremental", "data_incremental")
    )
    if "runlocal" in variants:
        config_lib.use_imagenet_setting(config, image_size=32)
    return config
