"""LARS, SGD and the warmup-cosine schedule against NumPy transcriptions of the references.

CaSSLe's ``cassle/utils/lars.py`` and pl_bolts' ``LinearWarmupCosineAnnealingLR``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cl_ssl.models.heads import MLPHead
from cl_ssl.models.resnet import make_backbone
from cl_ssl.optim import (
    bias_and_norm_mask,
    lars,
    make_optimizer,
    multistep_schedule,
    radam,
    sgd,
    switch,
    warmup_cosine_schedule,
)

LRS = [0.4, 0.01, 0.2, 0.005, 0.3]  # alternate between clipped (r < lr) and unclipped steps


def _params(rng):
    return {
        "conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
        "dense": {
            "kernel": rng.normal(size=(5, 4)).astype(np.float32),
            "bias": rng.normal(size=(4,)).astype(np.float32),
        },
        "bn": {
            "scale": (1.0 + 0.1 * rng.normal(size=(4,))).astype(np.float32),
            "bias": (0.1 * rng.normal(size=(4,))).astype(np.float32),
        },
    }


def _grads(rng, params):
    return jax.tree.map(lambda p: (0.5 * rng.normal(size=p.shape)).astype(np.float32), params)


def _numpy_lars(params, grads_seq, lrs, *, wd, eta, clip, exclude, momentum=0.9, eps=1e-8):
    """Transcription of CaSSLe's LARSWrapper around torch SGD, in float64.

    Returns the final parameters and which branch each non-excluded tensor took
    ('clipped', 'unclipped', 'raw', 'zero_norm').
    """
    flat, treedef = jax.tree.flatten(params)
    w = [np.asarray(p, np.float64) for p in flat]
    v = [np.zeros_like(p) for p in w]
    branches = set()
    for grads, lr in zip(grads_seq, lrs, strict=True):
        for i, g in enumerate(np.asarray(x, np.float64) for x in jax.tree.leaves(grads)):
            d = g  # excluded or zero-norm tensors: group weight decay is zeroed, no scaling
            if not (exclude and w[i].ndim == 1):
                p_norm, g_norm = np.linalg.norm(w[i]), np.linalg.norm(g)
                if p_norm != 0 and g_norm != 0:
                    new_lr = eta * p_norm / (g_norm + p_norm * wd + eps)
                    if clip:
                        branches.add("clipped" if new_lr / lr < 1 else "unclipped")
                        new_lr = min(new_lr / lr, 1)
                    else:
                        branches.add("raw")
                    d = (g + wd * w[i]) * new_lr
                else:
                    branches.add("zero_norm")
            v[i] = momentum * v[i] + d  # torch SGD: buf = clone(d) on the first step
            w[i] = w[i] - lr * v[i]
    return jax.tree.unflatten(treedef, w), branches


def _run_optax(tx, params, grads_seq):
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for grads in grads_seq:
        params, state = step(params, state, grads)
    return params


def _assert_trees_close(actual, expected, rtol=2e-5, atol=1e-6):
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(np.asarray(a), e, rtol=rtol, atol=atol),
        actual,
        expected,
    )


@pytest.mark.parametrize("exclude", [True, False])
@pytest.mark.parametrize("clip", [True, False])
def test_lars_matches_numpy_transcription(exclude, clip):
    rng = np.random.default_rng(0)
    params = _params(rng)
    grads_seq = [_grads(rng, params) for _ in LRS]
    wd, eta = 1e-2, 0.02
    tx = lars(
        lambda count: jnp.asarray(LRS)[count],
        weight_decay=wd,
        eta=eta,
        clip_lr=clip,
        exclude_bias_and_norm=exclude,
    )
    got = _run_optax(tx, params, grads_seq)
    want, branches = _numpy_lars(params, grads_seq, LRS, wd=wd, eta=eta, clip=clip, exclude=exclude)
    assert branches == ({"clipped", "unclipped"} if clip else {"raw"})
    _assert_trees_close(got, want)


def test_lars_exclusion_changes_only_one_dimensional_tensors():
    rng = np.random.default_rng(1)
    params = _params(rng)
    grads_seq = [_grads(rng, params) for _ in range(2)]
    with_excl = _run_optax(lars(0.3, weight_decay=1e-4), params, grads_seq)
    without = _run_optax(
        lars(0.3, weight_decay=1e-4, exclude_bias_and_norm=False), params, grads_seq
    )
    mask = bias_and_norm_mask(params)
    differs = jax.tree.map(lambda a, b: not np.allclose(a, b), with_excl, without)
    assert differs == mask


def test_lars_zero_norms_pass_the_gradient_through():
    rng = np.random.default_rng(2)
    params = {
        "zero_w": {"kernel": np.zeros((3, 4), np.float32)},
        "zero_g": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)},
        "normal": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)},
    }
    grads_seq = []
    for _ in range(3):
        g = _grads(rng, params)
        g["zero_g"]["kernel"] = np.zeros((3, 4), np.float32)
        grads_seq.append(g)
    wd, lr = 0.1, 0.2
    got = _run_optax(lars(lr, weight_decay=wd), params, grads_seq)
    want, branches = _numpy_lars(
        params, grads_seq, [lr] * 3, wd=wd, eta=0.02, clip=True, exclude=True
    )
    assert "zero_norm" in branches
    _assert_trees_close(got, want)
    # a zero gradient gets no weight-decay step (d = g = 0), so the tensor stays put
    np.testing.assert_array_equal(got["zero_g"]["kernel"], params["zero_g"]["kernel"])
    # a zero tensor takes the raw SGD-momentum step: first step w = -lr * g
    first = _run_optax(lars(lr, weight_decay=wd), params, grads_seq[:1])
    np.testing.assert_allclose(
        first["zero_w"]["kernel"], -lr * grads_seq[0]["zero_w"]["kernel"], rtol=1e-6
    )


def test_lars_requires_params():
    tx = lars(0.1, weight_decay=0.0)
    params = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="parameters"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize("exclude", [True, False])
def test_sgd_matches_pytorch_coupled_decay(exclude):
    rng = np.random.default_rng(3)
    params = _params(rng)
    grads_seq = [_grads(rng, params) for _ in range(3)]
    wd, lr, m = 5e-2, 0.1, 0.9
    got = _run_optax(
        sgd(lr, weight_decay=wd, momentum=m, exclude_bias_and_norm=exclude), params, grads_seq
    )
    w = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    v = jax.tree.map(np.zeros_like, w)
    decay = jax.tree.map(lambda p: 0.0 if exclude and p.ndim == 1 else wd, w)
    for g in grads_seq:
        v = jax.tree.map(lambda v_, g_, w_, wd_: m * v_ + g_ + wd_ * w_, v, g, w, decay)
        w = jax.tree.map(lambda w_, v_: w_ - lr * v_, w, v)
    _assert_trees_close(got, w)


def test_sgd_nesterov_matches_pytorch():
    """torch.optim.SGD(nesterov=True): d = g + wd w; b = m b + d; w -= lr (d + m b)."""
    rng = np.random.default_rng(4)
    params = _params(rng)
    grads_seq = [_grads(rng, params) for _ in range(3)]
    wd, lr, m = 5e-4, 0.1, 0.9
    got = _run_optax(sgd(lr, weight_decay=wd, momentum=m, nesterov=True), params, grads_seq)
    w = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    b = jax.tree.map(np.zeros_like, w)
    for g in grads_seq:
        d = jax.tree.map(lambda g_, w_: g_ + wd * w_, g, w)
        b = jax.tree.map(lambda b_, d_: m * b_ + d_, b, d)
        w = jax.tree.map(lambda w_, d_, b_: w_ - lr * (d_ + m * b_), w, d, b)
    _assert_trees_close(got, w)


def _numpy_radam(params, grads_seq, *, lr, wd, b1, b2, eps, degenerated_to_sgd):
    """Transcription of LiyuanLucasLiu/RAdam ``radam/radam.py`` (class RAdam, ``step``), in
    float64: the moments move at every step; with N_sma >= 5 a rectified step, else a momentum
    step when degenerated_to_sgd, else nothing (no weight decay either); decay p -= wd lr p."""
    w = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    m = jax.tree.map(np.zeros_like, w)
    v = jax.tree.map(np.zeros_like, w)
    n_max = 2 / (1 - b2) - 1
    for t, g in enumerate(grads_seq, start=1):
        g = jax.tree.map(lambda x: np.asarray(x, np.float64), g)
        v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
        m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
        b2t = b2**t
        n_sma = n_max - 2 * t * b2t / (1 - b2t)
        if n_sma >= 5:
            size = math.sqrt(
                (1 - b2t) * (n_sma - 4) / (n_max - 4) * (n_sma - 2) / n_sma * n_max / (n_max - 2)
            ) / (1 - b1**t)
        elif degenerated_to_sgd:
            size = 1.0 / (1 - b1**t)
        else:
            size = -1
        if n_sma >= 5:
            w = jax.tree.map(lambda w_: w_ - wd * lr * w_, w)
            w = jax.tree.map(lambda w_, m_, v_: w_ - size * lr * m_ / (np.sqrt(v_) + eps), w, m, v)
        elif size > 0:
            w = jax.tree.map(lambda w_: w_ - wd * lr * w_, w)
            w = jax.tree.map(lambda w_, m_: w_ - size * lr * m_, w, m)
    return w


@pytest.mark.parametrize("degenerated_to_sgd", [True, False])
def test_radam_matches_the_reference_implementation(degenerated_to_sgd):
    """LiyuanLucasLiu/RAdam radam.py: 8 steps cross rho_t = 5 (between steps 5 and 6 at b2 =
    0.999); before it momentum steps (degenerated_to_sgd) or none at all (the class's default,
    Genifer's), rectified Adam steps with eps added to sqrt(v) after."""
    rng = np.random.default_rng(5)
    params = _params(rng)
    grads_seq = [_grads(rng, params) for _ in range(8)]
    lr, wd, b1, b2, eps = 1e-2, 5e-4, 0.9, 0.999, 1e-3  # a large eps tests where it is added
    tx = radam(lr, weight_decay=wd, eps=eps, degenerated_to_sgd=degenerated_to_sgd)
    want = _numpy_radam(
        params,
        grads_seq,
        lr=lr,
        wd=wd,
        b1=b1,
        b2=b2,
        eps=eps,
        degenerated_to_sgd=degenerated_to_sgd,
    )
    _assert_trees_close(_run_optax(tx, params, grads_seq), want, rtol=1e-5, atol=1e-6)
    if not degenerated_to_sgd:  # the first 5 steps leave the parameters as they were
        five = _run_optax(tx, params, grads_seq[:5])
        jax.tree.map(np.testing.assert_array_equal, five, params)
        assert not np.allclose(
            _run_optax(tx, params, grads_seq[:6])["conv"]["kernel"], params["conv"]["kernel"]
        )


def test_switch_runs_one_optimizer_and_keeps_the_other_state():
    params = {"w": jnp.ones((3,))}
    grads = {"w": jnp.array([1.0, -2.0, 0.5])}
    first, second = sgd(0.1, weight_decay=0.0), radam(0.1, weight_decay=0.0)
    for flag, expected in ((0.0, first), (1.0, second)):
        tx = switch(first, second, jnp.float32(flag))
        state = tx.init(params)
        updates, new = tx.update(grads, state, params)
        want, _ = expected.update(grads, expected.init(params), params)
        np.testing.assert_allclose(updates["w"], want["w"], rtol=1e-6)
        idle = new.first if flag else new.second
        before = state.first if flag else state.second
        jax.tree.map(np.testing.assert_array_equal, idle, before)


def test_multistep_schedule_hand_values():
    """Genifer's x0.2 at epochs 30, 60 and 80 of 100, 3 steps an epoch."""
    schedule = multistep_schedule(
        0.1, total_epochs=100, steps_per_epoch=3, milestones=(0.3, 0.6, 0.8), factor=0.2
    )
    steps = np.array([0, 89, 90, 179, 180, 239, 240, 299])
    want = [0.1, 0.1, 0.02, 0.02, 0.004, 0.004, 0.0008, 0.0008]
    np.testing.assert_allclose(jax.vmap(schedule)(steps), want, rtol=1e-6)


def test_make_optimizer_names():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
    for name in ("lars", "sgd", "adamw", "radam"):
        tx = make_optimizer(name, learning_rate=0.1, weight_decay=1e-4)
        updates, _ = tx.update(params, tx.init(params), params)
        assert jax.tree.structure(updates) == jax.tree.structure(params)
    tx = make_optimizer("lars", learning_rate=0.1, weight_decay=1e-4, eta=0.001, clip_lr=False)
    assert isinstance(tx, optax.GradientTransformation)
    with pytest.raises(ValueError, match=r"adamw.*lars.*radam.*sgd"):
        make_optimizer("adam", learning_rate=0.1, weight_decay=0.0)


def test_bias_and_norm_mask_on_resnet_and_head():
    shapes = jax.eval_shape(
        lambda: make_backbone("resnet_tiny").init(
            jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False
        )
    )["params"]
    mask = bias_and_norm_mask(shapes)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    for path, excluded in flat:
        leaf_name = path[-1].key
        assert excluded == (leaf_name in ("scale", "bias")), path
    assert mask["bn1"] == {"scale": True, "bias": True}
    assert mask["conv1"] == {"kernel": False}
    assert mask["layer2_0"]["downsample_bn"] == {"scale": True, "bias": True}
    head = jax.eval_shape(
        lambda: MLPHead((8,), 4, batch_norm=True).init(
            jax.random.key(0), jnp.zeros((2, 3)), train=False
        )
    )["params"]
    assert bias_and_norm_mask(head) == {
        "linear0": {"kernel": False, "bias": True},
        "bn0": {"scale": True, "bias": True},
        "linear1": {"kernel": False, "bias": True},
    }


def _pl_bolts(e, *, base, start, min_lr, warmup, total):
    """pl_bolts LinearWarmupCosineAnnealingLR closed form, W >= 2."""
    if e < warmup:
        return start + e * (base - start) / (warmup - 1)
    progress = (e - warmup) / (total - warmup)
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * progress))


def test_warmup_cosine_per_epoch_hand_values():
    spe = 3
    sched = warmup_cosine_schedule(0.4, total_epochs=20, warmup_epochs=10, steps_per_epoch=spe)

    def lr_at_epoch(e):
        return float(sched(e * spe))

    assert lr_at_epoch(0) == pytest.approx(0.003)
    assert lr_at_epoch(5) == pytest.approx(0.003 + 5 * 0.397 / 9)
    assert lr_at_epoch(9) == pytest.approx(0.4)  # end of warmup
    assert lr_at_epoch(10) == pytest.approx(0.4)  # cosine starts at the peak
    assert lr_at_epoch(15) == pytest.approx(0.2)  # middle of the cosine
    assert lr_at_epoch(19) == pytest.approx(0.2 * (1 + math.cos(math.pi * 0.9)))  # last epoch
    assert lr_at_epoch(20) == pytest.approx(0.0)
    assert lr_at_epoch(25) == pytest.approx(0.0)  # held at min_lr after the end
    for e in range(20):
        within = [float(sched(e * spe + k)) for k in range(spe)]
        assert within == [within[0]] * spe  # constant within an epoch
        assert within[0] == pytest.approx(
            _pl_bolts(e, base=0.4, start=0.003, min_lr=0.0, warmup=10, total=20), rel=1e-6
        )


def test_warmup_cosine_min_lr_per_step_and_jit():
    sched = warmup_cosine_schedule(
        0.6, total_epochs=4, warmup_epochs=2, steps_per_epoch=5, min_lr=6e-4, per_epoch=False
    )
    steps = jnp.arange(25)
    values = np.asarray(jax.jit(jax.vmap(sched))(steps))
    want = [
        _pl_bolts(s, base=0.6, start=0.003, min_lr=6e-4, warmup=10, total=20) for s in range(20)
    ]
    np.testing.assert_allclose(values[:20], want, rtol=1e-6, atol=1e-7)  # float32
    assert values[1] == pytest.approx(0.003 + 0.597 / 9)
    assert values[15] == pytest.approx((0.6 + 6e-4) / 2)
    np.testing.assert_allclose(values[20:], 6e-4, rtol=1e-6)


def test_warmup_cosine_short_warmups_and_bad_arguments():
    no_warmup = warmup_cosine_schedule(1.0, total_epochs=4, warmup_epochs=0, steps_per_epoch=2)
    assert [float(no_warmup(2 * e)) for e in range(4)] == pytest.approx(
        [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2]
    )
    one = warmup_cosine_schedule(1.0, total_epochs=3, warmup_epochs=1, steps_per_epoch=2)
    assert [float(one(2 * e)) for e in range(3)] == pytest.approx([0.003, 1.0, 0.5])
    with pytest.raises(ValueError):
        warmup_cosine_schedule(1.0, total_epochs=5, warmup_epochs=5, steps_per_epoch=2)
    with pytest.raises(ValueError):
        warmup_cosine_schedule(1.0, total_epochs=5, warmup_epochs=1, steps_per_epoch=0)


def test_lars_uses_the_schedule_of_its_own_step_count():
    """The clip divides by the same scheduled lr that scales the step, step for step."""
    rng = np.random.default_rng(4)
    params = _params(rng)
    grads_seq = [_grads(rng, params) for _ in range(6)]
    sched = warmup_cosine_schedule(0.4, total_epochs=3, warmup_epochs=2, steps_per_epoch=2)
    lrs = [float(sched(s)) for s in range(6)]
    got = _run_optax(lars(sched, weight_decay=1e-5), params, grads_seq)
    want, _ = _numpy_lars(params, grads_seq, lrs, wd=1e-5, eta=0.02, clip=True, exclude=True)
    _assert_trees_close(got, want)


def test_lars_under_inject_hyperparams_with_lr_set_per_step():
    """The training step injects the scheduled lr as a hyperparameter; LARS clips with it."""
    rng = np.random.default_rng(5)
    params = _params(rng)
    grads_seq = [_grads(rng, params) for _ in LRS]

    def factory(learning_rate):
        return make_optimizer("lars", learning_rate=learning_rate, weight_decay=1e-2)

    tx = optax.inject_hyperparams(factory)(learning_rate=0.0)
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads, lr):
        state = state._replace(hyperparams={**state.hyperparams, "learning_rate": lr})
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    got = params
    for grads, lr in zip(grads_seq, LRS, strict=True):
        got, state = step(got, state, grads, jnp.float32(lr))
    want, branches = _numpy_lars(params, grads_seq, LRS, wd=1e-2, eta=0.02, clip=True, exclude=True)
    assert branches == {"clipped", "unclipped"}
    _assert_trees_close(got, want)
