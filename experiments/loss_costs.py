"""CPU cost of each loss in cl_ssl.losses: forward and backward, jitted.

    python experiments/loss_costs.py --batch=1024 --dim=2048 --repeats=5

For every loss of ``cl_ssl.losses.__all__`` (the utilities too; ``sinkhorn``, ``whiten`` and
``nearest_neighbours`` have no gradient, so their forward alone is timed), jits the value and the
gradient with respect to its float batch inputs, runs it once to compile, then times
``--repeats`` calls (each waited for with ``block_until_ready``) and prints a markdown table of
the median and the fastest, in milliseconds, with the compile time. Inputs are random float32
[B, D] embeddings; prototype scores, logits and queues have ``--classes`` columns or rows.
``wmse_loss`` and ``whiten`` take the first 64 features, whitened in sub-batches of 128 rows
(solo-learn's CIFAR setting): whitening needs more rows per sub-batch than features.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cl_ssl import losses

_BATCH = flags.DEFINE_integer("batch", 1024, "Rows B of each input.")
_DIM = flags.DEFINE_integer("dim", 2048, "Embedding width D.")
_CLASSES = flags.DEFINE_integer("classes", 3000, "Prototypes, classes and queue rows K.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per loss (after the compiling one).")
_ONLY = flags.DEFINE_list("only", [], "Time only these functions (default: all).")


def cases(b: int, d: int, k: int) -> dict:
    """{name: (fn of the differentiated inputs, the inputs, differentiate?)}."""
    rng = np.random.default_rng(0)

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    z1, z2, z3, z4 = normal(b, d), normal(b, d), normal(b, d), normal(b, d)
    s1, s2 = normal(b, k), normal(b, k)
    queue, center, covariance = normal(k, d), normal(k), jnp.zeros((d, d))
    labels = jnp.asarray(rng.integers(-1, k, b), jnp.int32)
    rows = jnp.asarray(rng.random(b) < 0.5)
    classes = jnp.arange(k) < k // 2
    pair = (z1, z2)
    return {
        "nt_xent": (losses.nt_xent, pair, True),
        "info_nce": (lambda q, p: losses.info_nce(q, p, queue), pair, True),
        "byol_loss": (losses.byol_loss, pair, True),
        "simsiam_loss": (losses.simsiam_loss, pair, True),
        "barlow_twins_loss": (losses.barlow_twins_loss, pair, True),
        "vicreg_loss": (losses.vicreg_loss, pair, True),
        "vicreg_terms": (lambda a, c: sum(losses.vicreg_terms(a, c).values()), pair, True),
        "vibcreg_loss": (losses.vibcreg_loss, pair, True),
        "swav_loss": (losses.swav_loss, (s1, s2), True),
        "deepclusterv2_loss": (lambda s: losses.deepclusterv2_loss(s, labels), (s1,), True),
        "dino_loss": (lambda s, t: losses.dino_loss(s, t, center), (s1, s2), True),
        "similarity_kl": (losses.similarity_kl, (s1, s2), True),
        "dcl_loss": (losses.dcl_loss, pair, True),
        "dclw_loss": (losses.dclw_loss, pair, True),
        "nnclr_loss": (losses.nnclr_loss, pair, True),
        "ressl_loss": (lambda q, p: losses.ressl_loss(q, p, queue), pair, True),
        "tico_loss": (lambda a, c: losses.tico_loss(a, c, covariance), pair, True),
        "tico_covariance": (lambda a: losses.tico_covariance(a, covariance), (z1,), False),
        "wmse_loss": (
            lambda a, c: losses.wmse_loss(a[:, :64], c[:, :64], whitening_size=min(128, b)),
            pair,
            True,
        ),
        "alignment_loss": (losses.alignment_loss, pair, True),
        "uniformity_loss": (losses.uniformity_loss, (z1,), True),
        "hypersphere_loss": (losses.hypersphere_loss, pair, True),
        "koleo_loss": (losses.koleo_loss, (z1,), True),
        "mmcr_loss": (lambda a, c: losses.mmcr_loss((a, c)), pair, True),
        "frossl_loss": (lambda a, c: losses.frossl_loss((a, c)), pair, True),
        "contrastive_distillation": (
            lambda *v: losses.contrastive_distillation(v[:2], v[2:]),
            (z1, z2, z3, z4),
            True,
        ),
        "predictive_distillation": (
            lambda *v: losses.predictive_distillation(v[:2], v[2:]),
            (z1, z2, z3, z4),
            True,
        ),
        "cosine_distillation": (
            lambda *v: losses.cosine_distillation(v[:2], v[2:]),
            (z1, z2, z3, z4),
            True,
        ),
        "decorrelative_distillation": (
            lambda *v: losses.decorrelative_distillation(v[:2], v[2:]),
            (z1, z2, z3, z4),
            True,
        ),
        "mse_distillation": (
            lambda *v: losses.mse_distillation(v[:2], v[2:]),
            (z1, z2, z3, z4),
            True,
        ),
        "knowledge_distillation": (
            lambda a, c: losses.knowledge_distillation((a,), (c,)),
            (s1, s2),
            True,
        ),
        "similarity_distillation": (
            lambda *v: losses.similarity_distillation(v[:2], v[2:]),
            (z1, z2, z3, z4),
            True,
        ),
        "relational_distillation": (losses.relational_distillation, (z1, z2, z3, z4), True),
        "labelled_cross_entropy": (
            lambda s: losses.labelled_cross_entropy(s, labels),
            (s1,),
            True,
        ),
        "soft_cross_entropy": (losses.soft_cross_entropy, (s1, s2), True),
        "old_class_distillation": (
            lambda s, t: losses.old_class_distillation(
                s, t, old=classes, seen=jnp.ones(k, bool), rows=rows
            ),
            (s1, s2),
            True,
        ),
        "feature_distance": (lambda a, c: losses.feature_distance(a, c, rows=rows), pair, True),
        "l2_normalize": (lambda a: jnp.sum(losses.l2_normalize(a)), (z1,), True),
        "sinkhorn": (losses.sinkhorn, (s1,), False),
        "nearest_neighbours": (lambda a: losses.nearest_neighbours(a, queue), (z1,), False),
        "whiten": (lambda a: losses.whiten(a[:, :64], whitening_size=min(128, b)), (z1,), False),
        "macl_loss": (losses.macl_loss, pair, True),
        "co2_loss": (lambda q, p: losses.co2_loss(q, p, queue), pair, True),
        "visreg_loss": (
            lambda a, c: losses.visreg_loss((a, c), key=jax.random.key(0)),
            pair,
            True,
        ),
        "visreg_terms": (
            lambda a, c: sum(losses.visreg_terms((a, c), key=jax.random.key(0)).values()),
            pair,
            True,
        ),
    }


def time_case(fn, inputs, differentiate: bool, repeats: int) -> tuple[float, float, float]:
    """(compile-and-first-call, median, fastest) seconds."""
    if differentiate:
        fn = jax.value_and_grad(fn, argnums=tuple(range(len(inputs))))
    step = jax.jit(fn)
    start = time.perf_counter()
    jax.block_until_ready(step(*inputs))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(*inputs))
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), min(times)


def main(argv):
    del argv
    b, d, k = _BATCH.value, _DIM.value, _CLASSES.value
    table = cases(b, d, k)
    missing = set(losses.__all__) - set(table)
    if missing:
        raise SystemExit(f"no timing case for {sorted(missing)}: add one to cases()")
    print(
        f"B = {b}, D = {d}, K = {k}; jax {jax.__version__}, {jax.devices()[0].platform}; "
        f"median and fastest of {_REPEATS.value} calls\n"
    )
    print("| function | timed | median (ms) | fastest (ms) | compile + first call (s) |")
    print("|---|---|---:|---:|---:|")
    for name in losses.__all__:
        if _ONLY.value and name not in _ONLY.value:
            continue
        fn, inputs, differentiate = table[name]
        first, median, fastest = time_case(fn, inputs, differentiate, _REPEATS.value)
        timed = "value + grad" if differentiate else "value"
        print(
            f"| `{name}` | {timed} | {1e3 * median:.1f} | {1e3 * fastest:.1f} | {first:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
