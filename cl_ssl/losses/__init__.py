"""Pure loss functions on arrays: the public, reusable API of cl_ssl.

They use no Flax, no config objects and no global state, so that other JAX projects can import
them. The SSL objectives (``objectives.py``), the continual strategies' distillation terms
(``distill.py``), the classification terms of strategies that train a classifier
(``classification.py``) and the GAN terms of Genifer's generator (``gan.py``). Every function
returns a scalar loss, except ``vicreg_loss`` (``(loss, terms)``), ``tico_loss`` (``(loss,
new_covariance)``), ``sinkhorn`` (the [batch, prototypes] codes), ``nearest_neighbours``
(``(neighbours, indices)``), ``whiten`` and ``l2_normalize`` (their input, whitened or normalised).
"""

from cl_ssl.losses.classification import (
    feature_distance,
    labelled_cross_entropy,
    old_class_distillation,
    soft_cross_entropy,
)
from cl_ssl.losses.distill import (
    contrastive_distillation,
    cosine_distillation,
    decorrelative_distillation,
    knowledge_distillation,
    mse_distillation,
    predictive_distillation,
    relational_distillation,
    similarity_distillation,
)
from cl_ssl.losses.objectives import (
    alignment_loss,
    barlow_twins_loss,
    byol_loss,
    dcl_loss,
    dclw_loss,
    deepclusterv2_loss,
    dino_loss,
    frossl_loss,
    hypersphere_loss,
    info_nce,
    koleo_loss,
    l2_normalize,
    mmcr_loss,
    nearest_neighbours,
    nnclr_loss,
    nt_xent,
    ressl_loss,
    similarity_kl,
    simsiam_loss,
    sinkhorn,
    swav_loss,
    tico_covariance,
    tico_loss,
    uniformity_loss,
    vibcreg_loss,
    vicreg_loss,
    vicreg_terms,
    whiten,
    wmse_loss,
)

__all__ = [
    "alignment_loss",
    "frossl_loss",
    "hypersphere_loss",
    "koleo_loss",
    "mmcr_loss",
    "uniformity_loss",
    "vibcreg_loss",
    "barlow_twins_loss",
    "byol_loss",
    "contrastive_distillation",
    "cosine_distillation",
    "dcl_loss",
    "dclw_loss",
    "decorrelative_distillation",
    "deepclusterv2_loss",
    "dino_loss",
    "feature_distance",
    "info_nce",
    "knowledge_distillation",
    "l2_normalize",
    "labelled_cross_entropy",
    "mse_distillation",
    "nearest_neighbours",
    "nnclr_loss",
    "nt_xent",
    "old_class_distillation",
    "predictive_distillation",
    "relational_distillation",
    "ressl_loss",
    "similarity_distillation",
    "similarity_kl",
    "simsiam_loss",
    "sinkhorn",
    "soft_cross_entropy",
    "swav_loss",
    "tico_covariance",
    "tico_loss",
    "vicreg_loss",
    "vicreg_terms",
    "whiten",
    "wmse_loss",
]


_MOVED_TO_GAN = ("discriminator_loss", "generator_distillation", "generator_loss", "r1_penalty")


def __getattr__(name: str):
    """A clear error for the GAN terms, which live in ``cl_ssl.losses.gan``."""
    if name in _MOVED_TO_GAN:
        raise AttributeError(
            f"cl_ssl.losses.{name} moved to cl_ssl.losses.gan: use "
            f"`from cl_ssl.losses.gan import {name}`"
        )
    raise AttributeError(f"module 'cl_ssl.losses' has no attribute {name!r}")
