"""Split CIFAR-100 with CaSSLe's settings: 5 tasks, SimCLR fine-tuning unless told otherwise.

    python -m cl_ssl.main --config=configs/cifar100.py --workdir=runs/c100
    python -m cl_ssl.main --config=configs/cifar100.py:cassle --config.objective=byol --workdir=DIR
    python -m cl_ssl.main --config=configs/cifar100.py:cassle,data_incremental --workdir=DIR
    python -m cl_ssl.main --config=configs/cifar100.py:genifer --workdir=runs/genifer

The argument after ':' is a comma-separated list of variants:
  class_incremental (the default): 5 tasks of 20 classes in CaSSLe's order (torch seed 5).
  data_incremental: 5 random, not class-balanced, fifths of the training set, the remainder to the
    first task (``cassle/utils/pretrain_dataloader.py::split_dataset``). The partition is drawn
    with numpy from ``split_seed`` 42: the same sizes and rule as CaSSLe's ``random_split`` with a
    torch generator seeded 42, not the same images (JAX cannot regenerate a torch permutation).
  cassle, pfr, replay, lump, kaizen, ccl, pocon, finetune, offline: the continual strategy
    (kaizen also applies Kaizen's settings: every label, its recipes and heads,
    ``use_kaizen_setting``).
  pocon: POCON's official CIFAR-100 run (``use_pocon_setting``): 10 tasks, Barlow Twins experts
    trained for 500 epochs per task, then 250 epochs of adaptation-retrospection (500 on the first
    task), SGD at lr 0.01 without a schedule, no online probe.
  ccl: CCL over MoCoV2+ (``use_ccl_setting``); CaSSLe's MoCoV2+ recipe, the optimizer's momentum
    carried across tasks as in CCL's code (the paper's CIFAR-100 settings are not released).
  genifer: Genifer's supervised setting instead (``use_genifer_setting``): 50 base classes then 5
    tasks of 10, a ResNet-18 classifier trained with cross-entropy, SGD then RAdam, 100 epochs per
    task at batch 32, generative feature-driven replay. ``--config.strategy=finetune_supervised``
    and ``replay_supervised`` are its baselines.
  runlocal: a tiny smoke-test variant (the tiny ResNet, 1 epoch per task).

Everything else is CaSSLe's CIFAR-100 recipe (Fini et al., CVPR 2022;
``bash_files/continual/cifar/*.sh``): ResNet-18 with the CIFAR stem, 500 epochs per task, batch
256, SGD momentum 0.9 with LARS (eta 0.02, clipping, bias and norm excluded except for SwAV), 10
warm-up epochs from 0.003 and a per-epoch cosine, and each objective's learning rate, weight decay
and augmentations (its ``Recipe``, filled when the run starts). CaSSLe's online linear probe
trains in the train step on one extra batch per step of the full labelled training set
(``eval.online``; its ``online`` matrix holds the numbers CaSSLe reports for CIFAR-100), and the
offline linear probe of CaSSLe's ``main_linear.py`` evaluates every task too. Genifer's
supervised setting scores its own classifier instead.

CIFAR-100 must be prepared once with tfds (needs TensorFlow, ``pip install '.[prepare]'``):
``python -m cl_ssl.data.prepare --dataset=cifar100 --data_dir=DIR``, then add
``--config.dataset.data_dir=DIR``.
"""

from cl_ssl import config as config_lib


def get_config(arg: str | None = None):
    config = config_lib.base_config()
    config.dataset.name = "cifar100"
    config.class_order = "cifar100_cassle_seed5"
    config_lib.apply_variants(config, "cifar100", arg, ("class_incremental", "data_incremental"))
    # CaSSLe's main_pretrain.py feeds the online probe on CIFAR-100 only; POCON's code has none.
    config.eval.online = config.objective != "supervised" and config.strategy != "pocon"
    return config
