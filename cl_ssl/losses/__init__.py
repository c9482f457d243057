"""Pure JAX losses for self-supervised and continual learning: the catalogue.

No Flax, no config objects, no global state: other JAX projects import these functions alone
(``pip install cl_ssl`` needs only JAX and NumPy). Search this page for the method's name.

Conventions, the same for every function:

* Views. A two-view objective takes one [B, D] array per view, ``fn(z1, z2)``, row i of each the
  same image. A loss over any number of views (``mmcr_loss``, ``frossl_loss``) and every
  distiller take a tuple with one [B, D] array per view, ``fn((z1, z2))`` or
  ``fn((p1, p2), (t1, t2))``; a bare array there raises ``TypeError`` saying so.
* Returns. Every loss returns a scalar float32 array (float64 for float64 inputs; bfloat16 and
  float16 inputs are computed in float32). Where training logs named terms, ``<name>_terms``
  returns them as a dict and the loss is their documented weighted sum (``vicreg_terms``); a
  loss with state has a function for the next state (``tico_covariance``). The utilities return
  arrays, as their docstrings say.
* Hyper-parameters are keyword-only; shapes that cannot work, non-positive temperatures and
  misplaced arguments raise an error at trace time that says what to change.
* Targets (teachers, momentum keys, codes) pass through ``stop_gradient`` inside the function.

Sharding. Batch means and statistics cover the global batch. Under ``jax.jit`` with inputs
sharded along the batch, on a mesh of Explicit axes (``jax.make_mesh``'s default) or of Auto
axes, call the functions as on one device. Inside ``jax.shard_map`` pass the mesh axis that
splits the batch as ``axis_name=``: each device holds the same number of rows, negatives are
gathered and statistics reduced over the axis, and the value equals the one-device value on
every device. Gradients taken inside ``shard_map`` (``jax.grad`` of a loss called with
``axis_name``) are already those of the global loss: with respect to parameters replicated over
the axis they come out summed over the devices, so add no ``psum`` or ``pmean`` of your own.
Called inside ``shard_map`` without ``axis_name``, a function sees the local rows only (CaSSLe's
per-device SimCLR negatives and VICReg statistics); average the value yourself then.

Each entry: the function, the method it implements, the paper (section, equation), the formula
in one line (n(x) = x / ||x||_2, sg = stop_gradient, N the global batch), the shapes, and the
reference code its tests transcribe. Docstrings give the details.

SSL objectives (``cl_ssl.losses.objectives``)
---------------------------------------------

  ``nt_xent``  SimCLR. Chen et al., ICML 2020, Sec. 2.1, Eq. 1. Mean over the 2N rows of
      -log softmax over j != i of n(z)_i . n(z)_j / tau at the other view. z1, z2 [B, D].
      CaSSLe ``cassle/losses/simclr.py``.
  ``info_nce``  MoCo v2+ (one direction; average the two). He et al., CVPR 2020, Eq. 1; Chen
      et al., arXiv:2003.04297. -mean log softmax([q.k, q.Q] / tau)_0 with sg(k), sg(Q).
      q, k [B, D], queue [K, D]. CaSSLe ``cassle/losses/moco.py``.
  ``byol_loss``  BYOL (one direction; sum the two). Grill et al., NeurIPS 2020, Sec. 3.1.
      2 - 2 mean cos(p, sg(z)). p, z [B, D]. CaSSLe ``cassle/losses/byol.py``.
  ``simsiam_loss``  SimSiam (one direction; average the two). Chen & He, CVPR 2021, Sec. 3,
      Eq. 1. -mean cos(p, sg(z)). p, z [B, D]. solo-learn ``solo/losses/simsiam.py``.
  ``barlow_twins_loss``  Barlow Twins. Zbontar et al., ICML 2021, Eqs. 1-2. scale * [sum_i
      (1 - C_ii)^2 + lambd sum_{i!=j} C_ij^2], C the cross-correlation of the standardised
      views. z1, z2 [B, D]. CaSSLe ``cassle/losses/barlow.py``.
  ``vicreg_loss``  VICReg. Bardes et al., ICLR 2022, Sec. 3. 25 invariance + 25 variance +
      1 covariance. z1, z2 [B, D]. CaSSLe ``cassle/losses/vicreg.py``.
  ``vicreg_terms``  VICReg's unweighted invariance, variance and covariance (a dict), for logs.
  ``vibcreg_loss``  VIbCReg. Lee & Aune, arXiv:2109.00783, Sec. 3. VICReg with the covariance
      term on column-normalised features: (1/D^2) sum_{i!=j} G_ij^2. z1, z2 [B, D]. solo-learn
      ``solo/losses/vibcreg.py``.
  ``swav_loss``  SwAV. Caron et al., NeurIPS 2020, Sec. 3.1. Swapped prediction: -(1/2) sum
      mean_i sum_k q^a_ik log softmax(s^b_i / tau)_k, q = sinkhorn(s). scores [B, K], optional
      queue scores [Q, K]. solo-learn ``solo/losses/swav.py``.
  ``deepclusterv2_loss``  DeepCluster-v2. Caron et al., NeurIPS 2020, appendix. Cross-entropy
      of softmax(s / tau) at the k-means cluster. scores [B, K], assignments int [B].
      solo-learn ``solo/losses/deepclusterv2.py``.
  ``dino_loss``  DINO (one view pair). Caron et al., ICCV 2021, Sec. 3.1. -mean sum_k
      softmax((t - c) / tau_t)_k log softmax(s / tau_s)_k. logits [B, P], center [P]. CaSSLe
      ``cassle/losses/dino.py``.
  ``similarity_kl``  ISD. Tejankar et al., ICCV 2021, Sec. 3. KL(softmax(t / tau_t) ||
      softmax(s / tau_s)) over an anchor bank, batch mean. logits [B, K]. UMBCvision/ISD
      ``train_isd_plus.py``.
  ``dcl_loss``  DCL. Yeh et al., ECCV 2022, Sec. 3. NT-Xent without the positive in the
      denominator. z1, z2 [B, D]. lightly ``lightly/loss/dcl_loss.py``.
  ``dclw_loss``  DCLW: DCL with von Mises-Fisher weights on the positives. Yeh et al., ECCV
      2022, Sec. 3. z1, z2 [B, D]. lightly ``lightly/loss/dcl_loss.py``.
  ``nnclr_loss``  NNCLR (one direction). Dwibedi et al., ICCV 2021, Sec. 3. NT-Xent between the
      nearest neighbours NN(z^1) and the predictions p^2. [B, D] each. solo-learn
      ``solo/losses/nnclr.py``.
  ``ressl_loss``  ReSSL. Zheng et al., NeurIPS 2021, Sec. 3. -mean sum_j softmax(k.Q_j /
      tau_k) log softmax(q.Q_j / tau_q). q, k [B, D], queue [K, D]. solo-learn
      ``solo/losses/ressl.py``.
  ``tico_loss``  TiCo. Zhu et al., arXiv:2206.10698, Sec. 3. 1 - mean u1.u2 + rho mean
      u1^T C' u1. z1, z2 [B, D], covariance [D, D]. lightly ``lightly/loss/tico_loss.py``.
  ``tico_covariance``  TiCo's next running covariance C' = beta C + (1 - beta) sg(u1^T u1 / N).
  ``wmse_loss``  W-MSE. Ermolov et al., ICML 2021, Sec. 3. 2 - 2 mean cos(whiten(z1),
      whiten(z2)). z1, z2 [B, D]. solo-learn ``solo/losses/wmse.py``.
  ``alignment_loss``  Alignment. Wang & Isola, ICML 2020, Sec. 4.1, Eq. 4. mean ||u1 -
      u2||^alpha. z1, z2 [B, D]. SsnL/align_uniform ``align_uniform/__init__.py``.
  ``uniformity_loss``  Uniformity. Wang & Isola, ICML 2020, Sec. 4.1, Eq. 5. log mean_{i<j}
      exp(-t ||u_i - u_j||^2). z [B, D]. SsnL/align_uniform ``align_uniform/__init__.py``.
  ``hypersphere_loss``  Alignment + uniformity, lightly's HypersphereLoss. z1, z2 [B, D].
      lightly ``lightly/loss/hypersphere_loss.py``.
  ``koleo_loss``  KoLeo (DINOv2's regulariser). Sablayrolles et al., ICLR 2019, Sec. 3.3;
      Oquab et al., TMLR 2024, Sec. 4. -mean log(||u_i - u_nn(i)|| + eps). z [B, D].
      facebookresearch/dinov2 ``dinov2/loss/koleo_loss.py`` (= lightly ``koleo_loss.py``).
  ``mmcr_loss``  MMCR. Yerxa et al., NeurIPS 2023, Sec. 3. -||C||_* + lambd mean_i ||U_i||_*,
      C the centroids over views. views: tuple of K >= 2 [B, D]. lightly
      ``lightly/loss/mmcr_loss.py``.
  ``frossl_loss``  FroSSL. Skean et al., ECCV 2024, Sec. 3. sum_v 2 log ||K_v / tr K_v||_F +
      w sum_v V D mse(z_v, mean view). views: tuple of V >= 2 [B, D]. lightly
      ``lightly/loss/frossl_loss.py``.
  ``macl_loss``  MACL. Huang et al., ICML 2023, arXiv:2207.07874. NT-Xent at the model-aware
      temperature t = tau (1 + alpha (sg(A) - A_0)), A the mean positive cosine, each row weighted
      by sg(1 / (1 - P_i)). z1, z2 [B, D]. lightly ``lightly/loss/macl_loss.py``.
  ``co2_loss``  CO2's consistency regulariser. Wei et al., ICLR 2021, Sec. 3. alpha (1/2) mean
      [KL(P || Q) + KL(Q || P)], P, Q = softmax([u1.u2, u.n_1..n_K] / tau) of the query u1 and
      the key u2. z1, z2 [B, D], optional queue [K, D] (else in-batch negatives). lightly
      ``lightly/loss/regularizer/co2.py``.
  ``visreg_loss``  VISReg. Wu et al., arXiv:2606.02572, Algorithm 1. (1 - l) pred + l (scale +
      shape + center): LeJEPA's invariance, per-feature std to 1, sliced Wasserstein to N(0, I),
      batch mean to 0. global_views, local_views: tuples of [B, D]; a PRNG key for the slices.
      lightly ``lightly/loss/visreg_loss.py``.
  ``visreg_terms``  VISReg's unweighted pred, center, scale and shape terms (a dict), for logs.

Continual distillers (``cl_ssl.losses.distill``): the student's predictions h(z^v) against the
frozen previous model's outputs of the same view, averaged over views; tuples of [B, D] per view.
-------------------------------------------------------------------------------------------------

  ``contrastive_distillation``  CaSSLe with SimCLR or MoCo v2+. Fini et al., CVPR 2022, Sec. 3.
      (1/2)[CE(P, Z) + CE(Z, P)] over all N columns. CaSSLe ``cassle/losses/simclr.py``
      (``simclr_distill_loss_func``).
  ``predictive_distillation``  CaSSLe with BYOL. mean_v [2 - 2 mean cos(p^v, z^v)]. CaSSLe
      ``cassle/distillers/predictive.py``.
  ``cosine_distillation``  PFR (Gomez-Villa et al., CVPRW 2022) on backbone features, and CaSSLe
      with SimSiam. -mean_v mean cos(p^v, t^v). alviur/CVPR_PFR ``cassle/distillers/pfr.py``.
  ``decorrelative_distillation``  CaSSLe with Barlow Twins. mean_v BT(p^v, z^v). CaSSLe
      ``cassle/distillers/decorrelative.py``.
  ``mse_distillation``  CaSSLe with VICReg. mean_v mse(p^v, z^v). CaSSLe
      ``cassle/distillers/predictive_mse.py``.
  ``knowledge_distillation``  CaSSLe with SwAV. mean_v soft cross-entropy of prototype scores.
      scores [B, K] per view. CaSSLe ``cassle/distillers/knowledge.py``.
  ``similarity_distillation``  ISD as a distiller (this project's: the teacher's similarities
      to the other images of the batch). mean_v similarity_kl. No reference code exists.
  ``relational_distillation``  CCL. Lin et al., ICME 2022, Sec. 3.3. KL of the teacher's to the
      student's similarity distributions over anchors. queries [B, D], anchors [K, D].
      VDIGPKU/ContinualContrastiveLearning ``moco/builder.py``.

Classification terms (``cl_ssl.losses.classification``)
-------------------------------------------------------

  ``labelled_cross_entropy``  Cross-entropy on the labelled rows (label < 0: none), 0 without
      any; Kaizen's classifier (Tang et al., WACV 2024). logits [B, C], labels int [B]. Kaizen
      ``kaizen/methods/base.py``.
  ``soft_cross_entropy``  Knowledge distillation (Hinton et al., NIPS 2014 DL Workshop, Sec. 2);
      Kaizen's classifier distillation. -mean sum_k softmax(t / T)_k log softmax(s / T)_k.
      logits [B, C]. Kaizen ``kaizen/distiller_factories/soft_label.py``.
  ``old_class_distillation``  Genifer's KD_sep on the old classes (Thandiackal et al.). logits
      [B, C], masks [C] and [B]. kevthan/feature-driven-image-replay ``genifer_trainer.py``.
  ``feature_distance``  Genifer's single_L2 feature distillation: mean ||s_i - t_i||_2. [B, ...].
      kevthan/feature-driven-image-replay ``genifer_trainer.py``.

Utilities (``cl_ssl.losses.objectives``): arrays in, arrays out
----------------------------------------------------------------

  ``l2_normalize``  n(x) = x / max(||x||, 1e-12), as PyTorch's ``F.normalize``. [..., D].
  ``sinkhorn``  SwAV's Sinkhorn-Knopp codes. scores [B, K] -> codes [B, K], no gradient.
      solo-learn ``solo/utils/sinkhorn_knopp.py``.
  ``nearest_neighbours``  NNCLR's support-set lookup: (neighbours [B, D], indices int [B]).
      solo-learn ``solo/methods/nnclr.py``.
  ``whiten``  W-MSE's Cholesky whitening of sub-batches. [B, D] -> [B, D]. solo-learn
      ``solo/utils/whitening.py``.

Genifer's GAN terms (StyleGAN2's logistic losses, lazy R1, generator distillation) are in
``cl_ssl.losses.gan``, outside this namespace.
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
    co2_loss,
    dcl_loss,
    dclw_loss,
    deepclusterv2_loss,
    dino_loss,
    frossl_loss,
    hypersphere_loss,
    info_nce,
    koleo_loss,
    l2_normalize,
    macl_loss,
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
    visreg_loss,
    visreg_terms,
    whiten,
    wmse_loss,
)

__all__ = [
    # SSL objectives
    "nt_xent",
    "info_nce",
    "byol_loss",
    "simsiam_loss",
    "barlow_twins_loss",
    "vicreg_loss",
    "vicreg_terms",
    "vibcreg_loss",
    "swav_loss",
    "deepclusterv2_loss",
    "dino_loss",
    "similarity_kl",
    "dcl_loss",
    "dclw_loss",
    "nnclr_loss",
    "ressl_loss",
    "tico_loss",
    "tico_covariance",
    "wmse_loss",
    "alignment_loss",
    "uniformity_loss",
    "hypersphere_loss",
    "koleo_loss",
    "mmcr_loss",
    "frossl_loss",
    "macl_loss",
    "co2_loss",
    "visreg_loss",
    "visreg_terms",
    # Continual distillers
    "contrastive_distillation",
    "predictive_distillation",
    "cosine_distillation",
    "decorrelative_distillation",
    "mse_distillation",
    "knowledge_distillation",
    "similarity_distillation",
    "relational_distillation",
    # Classification terms
    "labelled_cross_entropy",
    "soft_cross_entropy",
    "old_class_distillation",
    "feature_distance",
    # Utilities
    "l2_normalize",
    "sinkhorn",
    "nearest_neighbours",
    "whiten",
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
