"""DomainNet with CaSSLe's settings: 6 domain-incremental tasks, SimCLR fine-tuning by default.

    python -m cl_ssl.main --config=configs/domainnet.py --workdir=runs/domainnet
    python -m cl_ssl.main --config=configs/domainnet.py:cassle --config.objective=barlow_twins --workdir=DIR

The argument after ':' is a comma-separated list of variants: cassle, pfr, replay, lump, kaizen,
finetune, offline (the continual strategy), runlocal (a tiny smoke-test variant: the tiny ResNet,
1 epoch per task, 32-pixel images).

One task per domain, all 345 classes in every task, in CaSSLe's order real -> quickdraw ->
painting -> sketch -> infograph -> clipart (``cassle/methods/base.py``;
``--config.dataset.domains`` picks another order or a subset, with num_tasks set to its length).
Each task tests on its own domain's test images. CaSSLe's recipe otherwise (Fini et al., CVPR
2022; ``bash_files/continual/domainnet/*.sh``): 200 epochs per task, batch 256, the ImageNet-100
settings of each objective (ResNet-18, ImageNet stem, 224-pixel crops, LARS), the offline linear
probe trained on all domains ("domain-agnostic") and one per domain ("domain-aware", the
``*_domain_aware`` matrices), as ``bash_files/linear/domainnet/domain/*.sh`` run them.

As for ImageNet-100, images are streamed from their records (``dataset.streaming=True``): each
step's batch is read and decoded on the host when the step needs it, each view cropped there from
the image at its own size (``dataset.host_crop=True``), and the batch is sent to the devices; the
probes see every image as its 224 x 224 central square (shorter side resized). Stored whole the
squares would take 62 GB for the six training domains and 27 GB for their test images
(``--config.dataset.streaming=false --config.dataset.host_crop=false`` holds them in host
memory). DomainNet must be prepared once with tfds (``domainnet/<domain>``
for each domain, needs TensorFlow): ``python -m cl_ssl.data.prepare --dataset=domainnet/real --data_dir=DIR`` and so on.
"""

from cl_ssl import config as config_lib
from cl_ssl.data import sources


def get_config(arg: str | None = None):
    config = config_lib.base_config()
    config.dataset.name = "domainnet"
    config.dataset.domains = sources.DOMAINNET_CASSLE_ORDER
    config.scenario = "domain_incremental"
    config.num_tasks = len(sources.DOMAINNET_CASSLE_ORDER)
    config.epochs_per_task = 200
    config.eval.domain_aware = True
    config_lib.use_imagenet_setting(config)
    variants = config_lib.apply_variants(config, "domainnet", arg, ("domain_incremental",))
    if "runlocal" in variants:
        config_lib.use_imagenet_setting(config, image_size=32)
    return config
