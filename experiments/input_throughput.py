"""Images/s that the streaming input delivers on this host, against what the train step consumes.

Reads batches of random examples through ``streaming.StreamedImages``, as a streamed run does
(``dataset.streaming=True``, the ImageNet-100, DomainNet and CUB-200 presets), with ``--threads``
grain threads, in two ways:

- stored squares: each JPEG record decoded and resized to the stored square
  (``sources.central_square``: shorter side to ``--image_size``, bicubic, central crop), as a
  streamed run without host crops reads its batches;
- with host crops: each record decoded once into its stored square and, for each of the two
  views, a random resized crop of the decoded image at its own size, resized to ``--image_size``
  (``StreamedImages.read_with_crops``, the presets' ``dataset.host_crop=True``), with the boxes
  a run draws (``host_crop.crop_uniforms``, scale 0.08 to 1).

The records are synthetic JPEGs of ImageNet's typical size (500 x 375 pixels, quality 90: smooth
colour fields with noise, about as costly to decode as photographs of that size), held in memory,
so the figure is the decoding cost without the disk.

    python experiments/input_throughput.py                     # threads 1, 2, ... up to the cores
    python experiments/input_throughput.py --threads=1,16 --images=2048

It also prints the train step's need: the images/s of one step on a GPU at ``--image_size``, from
the step's FLOPs (XLA's count of the lowered SimCLR + ResNet-18 ImageNet-stem step, on this
machine) at the MFU measured for the 32-pixel step on an H100 (``--mfu``, ``--peak_tflops``),
and the cores that feed it at the measured images/s per thread with host crops.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
from absl import app, flags
from PIL import Image

from cl_ssl.data import augment, host_crop, sources, streaming

_THREADS = flags.DEFINE_list("threads", [], "Thread counts to time (default 1, 2, 4, ... cores).")
_IMAGES = flags.DEFINE_integer("images", 1024, "Images decoded per thread count.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per read (one step's batch).")
_SIZE = flags.DEFINE_integer("image_size", 224, "Side of the stored square.")
_RECORDS = flags.DEFINE_integer("records", 256, "Distinct synthetic JPEG records.")
_STEP = flags.DEFINE_bool("step", True, "Also estimate the GPU step's need from its FLOPs.")
_MFU = flags.DEFINE_float("mfu", 0.184, "MFU of the step on the GPU (H100, bfloat16, 32 px).")
_PEAK = flags.DEFINE_float("peak_tflops", 989.4, "GPU dense peak TFLOP/s (H100 SXM, bfloat16).")


def synthetic_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """``count`` JPEGs of 500 x 375 pixels: low-frequency colour fields with pixel noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500] / 100.0
    out = []
    for _ in range(count):
        f = rng.uniform(0.2, 2.0, (3, 2))
        phase = rng.uniform(0, 2 * np.pi, 3)
        field = np.stack([np.sin(f[c, 0] * x + f[c, 1] * y + phase[c]) for c in range(3)], axis=-1)
        image = 127.5 * (field + 1) + rng.normal(0, 12, field.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def time_reads(records: list[bytes], threads: int, crops: bool) -> float:
    """Images/s of batched random reads through StreamedImages with ``threads`` threads: stored
    squares only, or with ``crops`` also the two views' host crops of every image."""
    source = [{"image": r} for r in records]
    size = _SIZE.value
    images = streaming.StreamedImages(
        [(source, np.arange(len(records)))],
        (size, size, 3),
        lambda image: sources.central_square(image, size),
        num_threads=threads,
        open_image=sources.open_image,
    )
    views = (augment.ViewConfig(crop_size=size),) * 2

    def read(step: int, batch: np.ndarray) -> None:
        if crops:
            uniforms = host_crop.crop_uniforms(0, 0, step, len(batch), len(views))
            images.read_with_crops(batch, uniforms, views)
        else:
            images[batch]

    rng = np.random.default_rng(1)
    read(0, rng.integers(0, len(records), 8))  # thread start-up, outside the timing
    done, step, start = 0, 1, time.perf_counter()
    while done < _IMAGES.value:
        batch = rng.integers(0, len(records), _BATCH.value)
        read(step, batch)
        done, step = done + len(batch), step + 1
    return done / (time.perf_counter() - start)


def step_flops_per_image() -> float:
    """FLOPs per image of the SimCLR + ResNet-18 (ImageNet stem) train step at ``--image_size``,
    from XLA's cost analysis of the lowered step (nothing is compiled or run)."""
    import jax  # noqa: PLC0415 -- only for this estimate

    from cl_ssl import config as config_lib  # noqa: PLC0415
    from cl_ssl import state as state_lib  # noqa: PLC0415
    from cl_ssl import step as step_lib  # noqa: PLC0415
    from cl_ssl.data.batch import TrainData  # noqa: PLC0415
    from cl_ssl.objectives import get_objective, resolve_config  # noqa: PLC0415
    from cl_ssl.strategies import get_strategy  # noqa: PLC0415

    config = config_lib.base_config()
    config_lib.use_imagenet_setting(config, image_size=_SIZE.value)
    config.batch_size = _BATCH.value
    config = resolve_config(config)
    objective = get_objective(config)
    strategy = get_strategy(config, objective)
    tx = step_lib.make_tx(config, objective, strategy)
    b, s = _BATCH.value, _SIZE.value
    shapes = jax.ShapeDtypeStruct
    train = sources.ArraySplit(
        images=np.zeros((1, s, s, 3), np.uint8), labels=np.zeros(1, np.int32), num_classes=100
    )
    state = jax.eval_shape(
        lambda: state_lib.initial_state(
            objective=objective, strategy=strategy, tx=tx, seed=0, train=train
        )
    )
    data = TrainData(
        images=shapes((b, s, s, 3), np.uint8),
        labels=shapes((b,), np.int32),
        classes=shapes((b,), np.int32),
        tasks=shapes((b,), np.int32),
        on_device=False,
    )
    hyper = step_lib.stage_hyper(config, objective, strategy, num_epochs=20, steps_per_epoch=1)
    hyper = {k: shapes((), np.asarray(v).dtype) for k, v in hyper.items()}
    step = jax.jit(step_lib.build_step_fn(objective, strategy, tx, extend=False))
    lowered = step.lower(state, data, shapes((b,), np.int32), hyper)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / b


def main(argv):
    del argv
    cores = os.cpu_count() or 1
    counts = [int(t) for t in _THREADS.value] or sorted(
        {2**k for k in range(cores.bit_length()) if 2**k <= cores} | {cores}
    )
    records = synthetic_jpegs(_RECORDS.value)
    mean_kb = np.mean([len(r) for r in records]) / 1024
    print(
        f"{len(records)} synthetic JPEGs of 500 x 375, {mean_kb:.0f} KB on average; "
        f"{cores} cores; decoded to {_SIZE.value} x {_SIZE.value}"
    )
    print(f"{'':>8} {'stored squares':>22} {'squares + 2 host crops':>24}")
    print(f"{'threads':>8} {'images/s':>10} {'per thread':>11} {'images/s':>12} {'per thread':>11}")
    rates = {}
    for threads in counts:
        squares = time_reads(records, threads, crops=False)
        rates[threads] = time_reads(records, threads, crops=True)
        print(
            f"{threads:>8} {squares:>10.0f} {squares / threads:>11.0f} "
            f"{rates[threads]:>12.0f} {rates[threads] / threads:>11.0f}"
        )
    if _STEP.value:
        flops = step_flops_per_image()
        need = _MFU.value * _PEAK.value * 1e12 / flops
        per_core = rates[min(counts)] / min(counts)
        print(
            f"train step: {flops / 1e9:.1f} GFLOP per image at {_SIZE.value} px; at {_MFU.value:.1%} "
            f"MFU of {_PEAK.value} TFLOP/s it takes {need:,.0f} images/s, which {need / per_core:.0f} "
            f"cores decode and crop at {per_core:.0f} images/s each"
        )


if __name__ == "__main__":
    app.run(main)
