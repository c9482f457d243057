"""Random resized crops of full-resolution images, taken on the host as the images are decoded.

CaSSLe's ImageNet-100 and DomainNet pipelines crop every view from the image as decoded, at its
own size, and resize the crop to the view's side: DALI's ``ops.RandomResizedCrop`` on the output
of ``ops.decoders.Image`` (``ImagenetTransform`` in ``cassle/utils/dali_dataloader.py``), as
solo-learn's torchvision ``RandomResizedCrop`` does on the PIL image. A stored square
(``sources.central_square``) has lost the image's borders and every pixel beyond its side, so a
streamed run with ``dataset.host_crop`` takes each view's crop here, from the decoded image, and
the step runs the rest of the view's pipeline (colour jitter, grayscale, blur, solarisation,
flip) on the device (``augment.augment_image(..., cropped=True)``). Rows that a strategy joins to
the batch (a replay memory's) and the online probe's batch are cropped on the device from their
stored squares, which are what a memory keeps.

The box is torchvision's (``augment.crop_box``, the step's own box drawing, run with NumPy), the
resampling PIL's bicubic resize of the cropped region, as torchvision's ``F.resized_crop`` does
on PIL images. The uniforms that draw a step's boxes depend on (seed, task, step of the task)
only, so every host draws the same boxes for the global batch whatever the number of hosts, and
a resumed run draws those of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from cl_ssl.data import augment

# Distinguishes these draws from the run's other NumPy draws of the same (seed, task, step).
_STREAM = 0x63726F70  # "crop"


def crop_uniforms(
    seed: int, task: int, task_step: int, batch_size: int, num_views: int
) -> np.ndarray:
    """float32 [batch_size, num_views, augment.CROP_UNIFORMS]: the uniforms in [0, 1) that draw
    the crop box of every view of every row of one step's global batch."""
    rng = np.random.default_rng([_STREAM, seed, task, task_step])
    return rng.random((batch_size, num_views, augment.CROP_UNIFORMS), dtype=np.float32)


def resized_crop(image: Image.Image, u: np.ndarray, view: augment.ViewConfig) -> np.ndarray:
    """One view's random resized crop of a decoded image.

    Args:
      image: the image at its own size, in mode "RGB" or "L".
      u: float32 [augment.CROP_UNIFORMS], the uniforms that draw the box (``crop_uniforms``).
      view: the view: its ``crop_size`` and crop scale range (ratio 3/4 to 4/3).

    Returns:
      uint8 [view.crop_size, view.crop_size, C], C 3 for "RGB" and 1 for "L".
    """
    width, height = image.size
    top, left, crop_h, crop_w = augment.crop_box(
        u, height, width, (view.min_scale, view.max_scale), xp=np
    ).tolist()
    crop = image.crop((left, top, left + crop_w, top + crop_h))
    side = view.crop_size
    out = np.asarray(crop.resize((side, side), Image.BICUBIC))
    return out.reshape(side, side, -1)


def check_views(views: Sequence[augment.ViewConfig]) -> None:
    """Raises ValueError for a view that host crops cannot take (a padded random crop)."""
    padded = [i + 1 for i, view in enumerate(views) if view.crop_padding > 0]
    if padded:
        raise ValueError(
            f"view{padded[0]} crops with padding (crop_padding > 0), which is taken from the stored "
            "image on the device; set dataset.host_crop=False, or crop_padding=0"
        )
