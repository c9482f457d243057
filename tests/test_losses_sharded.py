"""Every public function of cl_ssl.losses gives one value however the batch is spread: called on
one device, under ``jax.jit`` on batch-sharded inputs over a mesh of Explicit axes (what
``jax.make_mesh`` makes by default) and of Auto axes, and inside ``jax.shard_map`` with
``axis_name``, on 4 devices (tests/conftest.py forces 4 CPU devices).

Each setting compiles one program that computes every case (its value and its gradient with
respect to the float batch inputs), so the whole comparison costs four compilations. A case that
fails in the joint program is computed again alone, so that its own error is reported.

Tolerance: rtol = atol = 1e-5 (float32; the settings sum the batch in different orders).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import chex
import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from cl_ssl import losses
from cl_ssl.losses import gan

RTOL = 1e-5
ATOL = 1e-5
BATCH = 8  # 2 rows per device


def _normal(seed, shape, scale=0.5):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


X, Y, Z, W = (_normal(seed, (BATCH, 4)) for seed in range(4))
# Cosines of 5 prototypes to 4 sets of unit embeddings, as SwAV's scores.
SCORES = [_unit(_normal(10 + v, (BATCH, 4))) @ _unit(_normal(20, (5, 4))).T for v in range(4)]
# Rows 4 to 7 invalid: with 4 devices, devices 2 and 3 hold none.
VALID = np.array([1, 0, 1, 1, 0, 0, 0, 0], bool)
LABELS = np.array([0, 1, -1, 2, 3, -1, -1, 1], np.int32)
OLD = np.array([1, 1, 0, 0], bool)
SEEN = np.array([1, 1, 1, 0], bool)
# A running covariance (symmetric, positive semi-definite) for TiCo.
COVARIANCE = (lambda a: a.T @ a / 6)(_normal(32, (6, 4)))


@dataclasses.dataclass(frozen=True)
class Case:
    """``fn(diff, data, replicated, axis_name)``: ``diff`` the float batch inputs (sharded,
    differentiated), ``data`` other batch inputs (sharded: labels, masks), ``replicated`` inputs
    the same on every device. ``kind``: "loss" (a scalar; compared with its gradient), "value"
    (outputs the same on every device, no gradient: a dict of terms, a new state) or "rows" (one
    output row per input row, no gradient)."""

    fn: Callable
    diff: tuple
    data: tuple = ()
    replicated: tuple = ()
    kind: str = "loss"


def _distiller(fn, **kwargs):
    return Case(
        lambda d, _, __, axis_name: fn(d[:2], d[2:], axis_name=axis_name, **kwargs),
        (X, Y, Z, W),
    )


CASES = {
    "alignment_loss": Case(
        lambda d, _, __, axis_name: losses.alignment_loss(*d, alpha=1.5, axis_name=axis_name),
        (X, Y),
    ),
    "barlow_twins_loss": Case(
        lambda d, _, __, axis_name: losses.barlow_twins_loss(*d, axis_name=axis_name), (X, Y)
    ),
    "byol_loss": Case(
        lambda d, _, __, axis_name: losses.byol_loss(*d, axis_name=axis_name), (X, Y)
    ),
    "co2_loss": Case(lambda d, _, __, axis_name: losses.co2_loss(*d, axis_name=axis_name), (X, Y)),
    "contrastive_distillation": _distiller(losses.contrastive_distillation),
    "cosine_distillation": _distiller(losses.cosine_distillation),
    "dcl_loss": Case(lambda d, _, __, axis_name: losses.dcl_loss(*d, axis_name=axis_name), (X, Y)),
    "dclw_loss": Case(
        lambda d, _, __, axis_name: losses.dclw_loss(*d, axis_name=axis_name), (X, Y)
    ),
    "decorrelative_distillation": _distiller(losses.decorrelative_distillation),
    "deepclusterv2_loss": Case(
        lambda d, m, _, axis_name: losses.deepclusterv2_loss(d[0], m[0], axis_name=axis_name),
        (SCORES[0],),
        (LABELS,),
    ),
    "dino_loss": Case(
        lambda d, _, r, axis_name: losses.dino_loss(*d, *r, axis_name=axis_name),
        (X, Y),
        replicated=(_normal(30, (4,), scale=0.1),),
    ),
    "discriminator_loss": Case(
        lambda d, _, __, axis_name: gan.discriminator_loss(
            d[0][:, 0], d[1][:, 1], axis_name=axis_name
        ),
        (X, Y),
    ),
    "feature_distance": Case(
        lambda d, m, _, axis_name: losses.feature_distance(*d, rows=m[0], axis_name=axis_name),
        (X, Y),
        (VALID,),
    ),
    "frossl_loss": Case(
        lambda d, _, __, axis_name: losses.frossl_loss(d, axis_name=axis_name), (X, Y, Z)
    ),
    "generator_distillation": Case(
        lambda d, _, __, axis_name: gan.generator_distillation(*d, axis_name=axis_name), (X, Y)
    ),
    "generator_loss": Case(
        lambda d, _, __, axis_name: gan.generator_loss(d[0][:, 2], axis_name=axis_name), (X,)
    ),
    "hypersphere_loss": Case(
        lambda d, _, __, axis_name: losses.hypersphere_loss(*d, axis_name=axis_name), (X, Y)
    ),
    "info_nce": Case(
        lambda d, _, r, axis_name: losses.info_nce(*d, *r, axis_name=axis_name),
        (X, Y),
        replicated=(_normal(31, (6, 4)),),
    ),
    "knowledge_distillation": Case(
        lambda d, _, __, axis_name: losses.knowledge_distillation(
            d[:2], d[2:], temperature=0.3, axis_name=axis_name
        ),
        tuple(SCORES),
    ),
    "koleo_loss": Case(
        lambda d, _, __, axis_name: losses.koleo_loss(*d, axis_name=axis_name), (X,)
    ),
    # Row-wise: no batch statistic, so nothing to pass inside shard_map.
    "l2_normalize": Case(lambda d, _, __, axis_name: losses.l2_normalize(d[0]), (X,), kind="rows"),
    "labelled_cross_entropy": Case(
        lambda d, m, _, axis_name: losses.labelled_cross_entropy(d[0], m[0], axis_name=axis_name),
        (X,),
        (LABELS,),
    ),
    "macl_loss": Case(
        lambda d, _, __, axis_name: losses.macl_loss(*d, axis_name=axis_name), (X, Y)
    ),
    "mmcr_loss": Case(
        lambda d, _, __, axis_name: losses.mmcr_loss(d, lambd=0.1, axis_name=axis_name), (X, Y, Z)
    ),
    "mse_distillation": _distiller(losses.mse_distillation),
    "nearest_neighbours": Case(
        lambda d, _, r, axis_name: losses.nearest_neighbours(d[0], r[0]),
        (X,),
        replicated=(_normal(33, (6, 4)),),
        kind="rows",
    ),
    "nnclr_loss": Case(
        lambda d, _, __, axis_name: losses.nnclr_loss(*d, axis_name=axis_name), (X, Y)
    ),
    "nt_xent": Case(lambda d, _, __, axis_name: losses.nt_xent(*d, axis_name=axis_name), (X, Y)),
    "old_class_distillation": Case(
        lambda d, m, r, axis_name: losses.old_class_distillation(
            *d, old=r[0], seen=r[1], rows=m[0], axis_name=axis_name
        ),
        (X, Y),
        (VALID,),
        (OLD, SEEN),
    ),
    "predictive_distillation": _distiller(losses.predictive_distillation),
    "r1_penalty": Case(
        lambda d, _, __, axis_name: gan.r1_penalty(
            d[0], gamma=0.5, interval=4, axis_name=axis_name
        ),
        (X,),
    ),
    "relational_distillation": Case(
        lambda d, m, _, axis_name: losses.relational_distillation(
            *d, valid=m[0], axis_name=axis_name
        ),
        (X, Y, Z, W),
        (VALID,),
    ),
    "ressl_loss": Case(
        lambda d, _, r, axis_name: losses.ressl_loss(*d, *r, axis_name=axis_name),
        (X, Y),
        replicated=(_normal(34, (6, 4)),),
    ),
    "similarity_distillation": _distiller(losses.similarity_distillation),
    "similarity_kl": Case(
        lambda d, _, __, axis_name: losses.similarity_kl(*d, axis_name=axis_name), (X, Y)
    ),
    "simsiam_loss": Case(
        lambda d, _, __, axis_name: losses.simsiam_loss(*d, axis_name=axis_name), (X, Y)
    ),
    "sinkhorn": Case(
        lambda d, _, __, axis_name: losses.sinkhorn(d[0], axis_name=axis_name),
        (SCORES[0],),
        kind="rows",
    ),
    "soft_cross_entropy": Case(
        lambda d, _, __, axis_name: losses.soft_cross_entropy(*d, axis_name=axis_name), (X, Y)
    ),
    "swav_loss": Case(
        lambda d, _, __, axis_name: losses.swav_loss(*d, axis_name=axis_name), tuple(SCORES[:2])
    ),
    "swav_loss with queues": Case(
        lambda d, _, __, axis_name: losses.swav_loss(
            d[0], d[1], queue_scores1=d[1][::-1], queue_scores2=2 * d[0], axis_name=axis_name
        ),
        tuple(SCORES[:2]),
    ),
    "tico_covariance": Case(
        lambda d, _, r, axis_name: losses.tico_covariance(d[0], *r, axis_name=axis_name),
        (X,),
        replicated=(COVARIANCE,),
        kind="value",
    ),
    "tico_loss": Case(
        lambda d, _, r, axis_name: losses.tico_loss(*d, *r, axis_name=axis_name),
        (X, Y),
        replicated=(COVARIANCE,),
    ),
    "uniformity_loss": Case(
        lambda d, _, __, axis_name: losses.uniformity_loss(*d, t=1.0, axis_name=axis_name), (X,)
    ),
    "vibcreg_loss": Case(
        lambda d, _, __, axis_name: losses.vibcreg_loss(*d, axis_name=axis_name), (X, Y)
    ),
    "vicreg_loss": Case(
        lambda d, _, __, axis_name: losses.vicreg_loss(*d, axis_name=axis_name), (X, Y)
    ),
    "vicreg_terms": Case(
        lambda d, _, __, axis_name: losses.vicreg_terms(*d, axis_name=axis_name),
        (X, Y),
        kind="value",
    ),
    # One set of slices from a fixed key; each row is compared with the quantile at its rank in
    # the global batch.
    "visreg_loss": Case(
        lambda d, _, __, axis_name: losses.visreg_loss(
            d[:1], key=jax.random.key(0), local_views=d[1:], num_slices=8, axis_name=axis_name
        ),
        (X, Y),
    ),
    "visreg_terms": Case(
        lambda d, _, __, axis_name: losses.visreg_terms(
            d, key=jax.random.key(1), num_slices=8, axis_name=axis_name
        ),
        (X,),
        kind="value",
    ),
    # Sub-batches of 4 rows of 2 features: on 4 devices each spans two devices.
    "whiten": Case(
        lambda d, _, __, axis_name: losses.whiten(
            d[0][:, :2], whitening_size=4, axis_name=axis_name
        ),
        (X,),
        kind="rows",
    ),
    "wmse_loss": Case(
        lambda d, _, __, axis_name: losses.wmse_loss(
            d[0][:, :2], d[1][:, 1:3], whitening_size=4, axis_name=axis_name
        ),
        (X, Y),
    ),
    "wmse_loss over the whole batch": Case(
        lambda d, _, __, axis_name: losses.wmse_loss(
            d[0][:, :3], d[1][:, :3], eps=0.1, axis_name=axis_name
        ),
        (X, Y),
    ),
}

# Every mode on 4 devices: 2 rows each, devices 2 and 3 holding no valid row.
SETTINGS = [(mode, 4) for mode in ("explicit jit", "auto jit", "shard_map")]


def _evaluate(case: Case, diff, data, replicated, mesh=None):
    """The case's output (value and gradient for a loss) on one device, or inside shard_map over
    ``mesh``."""
    if mesh is None:
        fn = functools.partial(case.fn, axis_name=None)
    else:
        fn = jax.shard_map(
            functools.partial(case.fn, axis_name="data"),
            mesh=mesh,
            in_specs=(P("data"), P("data"), P()),
            out_specs=P("data") if case.kind == "rows" else P(),
        )
    if case.kind != "loss":
        return fn(diff, data, replicated)
    return jax.value_and_grad(fn)(diff, data, replicated)


def _run(names, mode, devices):
    """{name: output} of the cases in one jitted program, in the setting (mode, devices)."""
    inputs = {name: (CASES[name].diff, CASES[name].data, CASES[name].replicated) for name in names}
    mesh = None
    if mode != "one device":
        axis_type = AxisType.Auto if mode == "auto jit" else AxisType.Explicit
        mesh = jax.make_mesh(
            (devices,), ("data",), axis_types=(axis_type,), devices=jax.devices()[:devices]
        )
        batch, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        inputs = {
            name: (
                jax.device_put(d, batch),
                jax.device_put(m, batch),
                jax.device_put(r, replicated),
            )
            for name, (d, m, r) in inputs.items()
        }
    inner_mesh = mesh if mode == "shard_map" else None
    return jax.jit(
        lambda inputs: {
            name: _evaluate(CASES[name], *args, mesh=inner_mesh) for name, args in inputs.items()
        }
    )(inputs)


@functools.cache
def _all_cases(mode, devices):
    """Every case's output in the setting, or None when the joint program fails."""
    try:
        return jax.device_get(_run(tuple(CASES), mode, devices))
    except Exception:  # noqa: BLE001 -- each case then runs alone and reports its own error
        return None


def _output(name, mode, devices):
    outputs = _all_cases(mode, devices)
    if outputs is None:
        return jax.device_get(_run((name,), mode, devices))[name]
    return outputs[name]


def test_every_public_function_has_a_case():
    assert {name.partition(" ")[0] for name in CASES} == set(losses.__all__) | set(gan.__all__)


# Settings vary slowest, so that each pytest-xdist worker starts on settings of its own.
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("mode, devices", SETTINGS, ids=[f"{m}-{d}" for m, d in SETTINGS])
def test_sharded_equals_one_device(name, mode, devices):
    assert jax.device_count() >= devices, "tests/conftest.py should force 4 CPU devices"
    expected = _output(name, "one device", 1)
    got = _output(name, mode, devices)
    chex.assert_trees_all_close(got, expected, rtol=RTOL, atol=ATOL)
    # The output is not trivially 0.
    assert np.any(np.asarray(jax.tree.leaves(expected)[0]) != 0)


def test_gradients_inside_shard_map_are_already_summed_over_the_axis():
    """The package docstring's promise: ``jax.grad`` taken *inside* ``shard_map`` of a loss with
    ``axis_name``, with respect to parameters replicated over the axis, is the gradient of the
    global loss on every device, without a further ``psum``."""
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Explicit,))
    weights = _normal(40, (4, 4))

    def loss(w, x, y, axis_name=None):
        return losses.nt_xent(x @ w, y @ w, axis_name=axis_name)

    inside = jax.jit(
        jax.shard_map(
            lambda w, x, y: jax.grad(loss)(w, x, y, axis_name="data"),
            mesh=mesh,
            in_specs=(P(), P("data"), P("data")),
            out_specs=P(),
        )
    )(
        *(
            jax.device_put(a, NamedSharding(mesh, s))
            for a, s in ((weights, P()), (X, P("data")), (Y, P("data")))
        )
    )
    np.testing.assert_allclose(inside, jax.grad(loss)(weights, X, Y), rtol=RTOL, atol=ATOL)
