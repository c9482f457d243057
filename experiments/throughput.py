"""Train-step throughput of SimCLR with a ResNet-18 (CIFAR stem), augmentation included.

Measures cl_ssl's jitted step (on-device augmentation of two views, forward and backward of both,
NT-Xent, LARS update) and, in the same run, the peer: a plain PyTorch loop of the same model, loss
and augmentations, fed the way solo-learn feeds its model (torchvision transforms on PIL images in
a DataLoader with worker processes). Prints images/s for both and their ratio, and the model-FLOPs
utilisation of the JAX step when the device's peak is known.

    python experiments/throughput.py                       # CPU, batch 256
    python experiments/throughput.py --dtype=bfloat16      # GPU: bf16 compute, f32 parameters
    python experiments/throughput.py --strategy=cassle --peer=false   # the distillation step
    python experiments/throughput.py --replicas=1,2,4 --peer=false    # several runs per program
    python experiments/throughput.py --replicas=2 --replica_program=vmap --peer=false

``--replicas=R`` steps R runs (seeds 0 to R-1) as one program (``step.jit_replicated_step``) and
reports images/s summed over them; ``--barrier`` lines up the timed loops of separate processes
that share a device, the alternative (experiments/gpu_bench.sh runs both).
With ``--strategy=cassle`` (or ``pfr``) the step runs in the second task, so it includes the frozen
teacher's forward pass and the distillation predictor; compare its images/s with finetune's.
``--on_device=false`` keeps the images in host memory and sends each step's batch to the devices
(``dataset.on_device=False``); the timed loop then includes reading and transferring the batch.
The ImageNet-100 and DomainNet presets also decode each batch from its records
(``dataset.streaming``), whose cost experiments/input_throughput.py measures.

The PyTorch peer needs the `bench` extra (`pip install -e '.[bench]'`); it is skipped if absent.
"""

from __future__ import annotations

import ast
import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from cl_ssl import config as config_lib
from cl_ssl import parallel
from cl_ssl import state as state_lib
from cl_ssl import step as step_lib
from cl_ssl.data.batch import TrainData
from cl_ssl.data.sources import ArraySplit
from cl_ssl.objectives import get_objective, resolve_config
from cl_ssl.strategies import STRATEGIES, get_strategy

_BATCH = flags.DEFINE_integer("batch_size", 256, "Global batch size (images per step).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps before timing (compilation included).")
_BACKBONE = flags.DEFINE_string("backbone", "resnet18", "Backbone name.")
_STRATEGY = flags.DEFINE_enum("strategy", "finetune", list(STRATEGIES), "Continual strategy.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_PEER = flags.DEFINE_bool("peer", True, "Also time the PyTorch peer loop.")
_ON_DEVICE = flags.DEFINE_bool(
    "on_device", True, "Keep the images on the devices (else in host memory, a batch per step)."
)
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count(), "DataLoader workers of the peer.")
_PEAK = flags.DEFINE_float(
    "peak_tflops", 0.0, "Device peak TFLOP/s for MFU; 0 looks the device kind up."
)
_OUTPUT = flags.DEFINE_string("output", "", "Optional JSON file for the figures.")
_SET = flags.DEFINE_list(
    "set",
    [],
    "Config fields FIELD=VALUE (Python literals), e.g. objective='mocov2plus' for CCL, "
    "labels.fraction=1.0 for Kaizen.",
)
_REPLICAS = flags.DEFINE_list(
    "replicas",
    ["1"],
    "Runs per program, each R in turn: R seeds' states stepped at once "
    "(step.jit_replicated_step); images/s summed over the replicas.",
)
_REPLICA_PROGRAM = flags.DEFINE_enum(
    "replica_program",
    "loop",
    list(step_lib.REPLICA_PROGRAMS),
    "With --replicas above 1: each replica's step in turn (loop) or one step mapped over them "
    "(vmap).",
)
_BARRIER = flags.DEFINE_string(
    "barrier",
    "",
    "FOLDER:N: after the warm-up, wait until N processes (this one included) have warmed up, so "
    "that the timed loops of separate processes sharing a device overlap.",
)

# Dense peak TFLOP/s per device (vendor figures, no sparsity). Under XLA's default precision the
# float32 convolutions and matmuls of a Hopper GPU run on TF32 tensor cores, so float32 is rated
# at the TF32 peak, not the 67 TFLOP/s of plain FP32.
PEAK_TFLOPS = {
    ("NVIDIA H100 80GB HBM3", "bfloat16"): 989.4,
    ("NVIDIA H100 80GB HBM3", "float32"): 494.7,
    ("NVIDIA H200", "bfloat16"): 989.4,
    ("NVIDIA H200", "float32"): 494.7,
}
NUM_IMAGES = 4096


def _config():
    config = config_lib.base_config()  # SimCLR, CaSSLe's CIFAR recipe
    config.batch_size = _BATCH.value
    config.model.backbone = _BACKBONE.value
    config.model.dtype = _DTYPE.value
    config.strategy = _STRATEGY.value
    config.update_from_flattened_dict(
        {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in _SET.value)}
    )
    return resolve_config(config)


def _wait_for_the_others() -> None:
    """The ``--barrier``: this process's mark in the folder, then the others'."""
    if not _BARRIER.value:
        return
    folder, count = _BARRIER.value.rsplit(":", 1)
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, str(os.getpid())), "w").close()
    while len(os.listdir(folder)) < int(count):
        time.sleep(0.01)


def time_jax(replicas: int = 1) -> dict:
    """images/s (summed over ``replicas`` runs stepped at once) and FLOPs per step of cl_ssl's
    train step on random CIFAR-sized uint8 images."""
    if replicas > 1 and not _ON_DEVICE.value:
        raise app.UsageError("--replicas above 1 needs the images on the devices (--on_device)")
    config = _config()
    mesh = parallel.make_mesh()
    objective = get_objective(config)
    strategy = get_strategy(config, objective)
    tx = step_lib.make_tx(config, objective, strategy)
    rng = np.random.default_rng(0)
    train = ArraySplit(
        images=rng.integers(0, 256, (NUM_IMAGES, 32, 32, 3), np.uint8),
        labels=rng.integers(0, 10, NUM_IMAGES).astype(np.int32),
        num_classes=10,
    )
    # The second task: distillation (if any) is on, a replay sub-batch (if any) joins the batch.
    states = [
        state_lib.initial_state(
            objective=objective, strategy=strategy, tx=tx, seed=seed, train=train
        ).replace(task=np.int32(1))
        for seed in range(replicas)
    ]
    # Host copies, stacked for replicas: a leaf that shares its buffer with another (CCL's
    # teacher starts as the student) could not be donated to the step twice.
    state = jax.tree.map(
        lambda *leaves: np.stack(leaves) if replicas > 1 else np.array(leaves[0]), *states
    )
    state = parallel.put_replicated(mesh, state)
    # Each replica's labels and tasks (the run's of its seed; here the same).
    per_replica = (lambda x: np.stack([x] * replicas)) if replicas > 1 else (lambda x: x)
    data = TrainData(
        images=parallel.put_replicated(mesh, train.images) if _ON_DEVICE.value else None,
        labels=parallel.put_replicated(mesh, per_replica(train.labels)),
        classes=parallel.put_replicated(mesh, train.labels),
        tasks=parallel.put_replicated(mesh, per_replica(np.zeros(NUM_IMAGES, np.int32))),
        on_device=_ON_DEVICE.value,
    )
    shape = (_BATCH.value,) if replicas == 1 else (replicas, _BATCH.value)
    indices = [
        np.random.default_rng(i).integers(0, NUM_IMAGES, shape).astype(np.int32) for i in range(4)
    ]
    ids = parallel.batch_sharded(mesh) if replicas == 1 else parallel.replica_batch_sharded(mesh)
    batches = [jax.device_put(i, ids) for i in indices]

    def inputs(i):
        if _ON_DEVICE.value:
            return data, batches[i % 4]
        # Read and sent inside the timed loop, as in training.
        images = parallel.gather_batch(mesh, train.images, indices[i % 4])
        return data.replace(images=images), batches[i % 4]

    step_fn = step_lib.build_step_fn(objective, strategy, tx, extend=strategy.extends_batch(1))
    if replicas == 1:
        step = step_lib.jit_step(step_fn, mesh, on_device=_ON_DEVICE.value)
    else:
        step = step_lib.jit_replicated_step(step_fn, mesh, program=_REPLICA_PROGRAM.value)
    # The per-step scalars once the warm-up is over: every group at its base learning rate.
    warmup = config.optimizer.warmup_epochs
    hyper = step_lib.stage_hyper(
        config, objective, strategy, num_epochs=warmup + 1, steps_per_epoch=1
    )
    lr = parallel.put_replicated(mesh, {k: v[-1] for k, v in hyper.items()})
    lowered = step.lower(state, *inputs(0), lr)
    # FLOPs of the lowered program: after compilation for a GPU the convolutions are cuDNN custom
    # calls, which XLA's cost analysis does not count (it reports about 1% of the FLOPs).
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float((cost or {}).get("flops", 0.0))  # some JAX versions give no analysis (None)
    step = lowered.compile()
    for i in range(_WARMUP.value):
        state, metrics = step(state, *inputs(i), lr)
    jax.block_until_ready(metrics)
    _wait_for_the_others()
    start = time.perf_counter()
    for i in range(_STEPS.value):
        state, metrics = step(state, *inputs(i), lr)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    return {
        "replicas": replicas,
        "images_per_s": replicas * _STEPS.value * _BATCH.value / seconds,
        "step_ms": 1e3 * seconds / _STEPS.value,
        "flops_per_step": flops,
        "loss": float(np.mean(metrics["loss"])),
    }


def time_torch() -> dict:
    """images/s of the PyTorch peer: torchvision ResNet-18 (CIFAR stem), DataLoader of two views."""
    import torch
    import torchvision
    from torch import nn
    from torchvision import transforms as T

    class TwoViews(torch.utils.data.Dataset):
        def __init__(self, images):
            self.images = images
            self.transform = T.Compose(
                [
                    T.RandomResizedCrop(
                        32, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC
                    ),
                    T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
                    T.RandomGrayscale(p=0.2),
                    T.RandomHorizontalFlip(),
                    T.ToTensor(),
                    T.Normalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
                ]
            )

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            from PIL import Image

            image = Image.fromarray(self.images[i])
            return self.transform(image), self.transform(image)

    def nt_xent(z1, z2, temperature=0.2):
        z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)
        logits = z @ z.T / temperature
        logits.fill_diagonal_(float("-inf"))
        n = z1.shape[0]
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return nn.functional.cross_entropy(logits, targets)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = torchvision.models.resnet18()
    backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
    backbone.maxpool = nn.Identity()
    backbone.fc = nn.Identity()
    model = nn.Sequential(backbone, nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 256)).to(
        device
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.4, momentum=0.9, weight_decay=1e-5)
    images = np.random.default_rng(0).integers(0, 256, (NUM_IMAGES, 32, 32, 3), np.uint8)
    loader = torch.utils.data.DataLoader(
        TwoViews(images),
        batch_size=_BATCH.value,
        shuffle=True,
        drop_last=True,
        num_workers=_WORKERS.value,
        persistent_workers=_WORKERS.value > 0,
        pin_memory=device == "cuda",
    )
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=_DTYPE.value == "bfloat16")

    def batches():
        while True:
            yield from loader

    it = batches()

    def step():
        x1, x2 = next(it)
        x1, x2 = x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)
        with autocast:
            loss = nt_xent(model(x1), model(x2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(_WARMUP.value):
        loss = step()
    loss.item()
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        loss = step()
    loss.item()
    seconds = time.perf_counter() - start
    return {
        "images_per_s": _STEPS.value * _BATCH.value / seconds,
        "step_ms": 1e3 * seconds / _STEPS.value,
        "torch": torch.__version__,
    }


def main(argv):
    del argv
    results = {
        "batch_size": _BATCH.value,
        "backbone": _BACKBONE.value,
        "dtype": _DTYPE.value,
        "strategy": _STRATEGY.value,
        "on_device": _ON_DEVICE.value,
        "replica_program": _REPLICA_PROGRAM.value,
    }
    if _PEER.value:
        # The peer runs first: its DataLoader forks worker processes, which is unsafe once JAX
        # has started its thread pools.
        try:
            results["torch"] = time_torch()
        except ImportError as error:
            print(f"PyTorch peer skipped ({error}); install it with pip install -e '.[bench]'")
    device = jax.devices()[0]
    peak = _PEAK.value or PEAK_TFLOPS.get((device.device_kind, _DTYPE.value), 0.0)
    runs = []
    for replicas in map(int, _REPLICAS.value):
        figures = time_jax(replicas)
        if peak:  # the lowered program's FLOPs cover every replica
            achieved = figures["flops_per_step"] * 1e3 / figures["step_ms"]
            figures["mfu"] = achieved / (peak * 1e12 * jax.device_count())
        runs.append(figures)
    results.update(device=device.device_kind, num_devices=jax.device_count(), jax=runs[0])
    if len(runs) > 1:
        results["jax_replicas"] = runs
    print(json.dumps(results, indent=2))
    print(f"\n{'loop':<14}{'images/s':>12}{'ms/step':>12}{'MFU':>8}")
    for r in runs:
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        print(
            f"{'jax x' + str(r['replicas']):<14}{r['images_per_s']:>12.1f}{r['step_ms']:>12.1f}{mfu:>8}"
        )
    if "torch" in results:
        r = results["torch"]
        print(f"{'torch':<14}{r['images_per_s']:>12.1f}{r['step_ms']:>12.1f}{'-':>8}")
        ratio = results["jax"]["images_per_s"] / results["torch"]["images_per_s"]
        print(f"ratio jax/torch: {ratio:.2f}")
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
