"""Backbones and heads: shapes, parameter counts, BatchNorm state, mixed precision, prototypes."""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_ssl.models.heads import MLPHead
from cl_ssl.models.resnet import feature_dim, make_backbone
from cl_ssl.models.ssl import Prototypes


def _key(seed):
    """A PRNG key; the 'rbg' implementation compiles several times faster than threefry on CPU."""
    return jax.random.key(seed, impl="rbg")


def _init_shapes(model, input_shape):
    """Variable shapes of `model` for an input of `input_shape`, without computing anything."""
    return jax.eval_shape(
        lambda: model.init(_key(0), jnp.zeros(input_shape, jnp.float32), train=False)
    )


def _intermediate_shapes(model, input_shape):
    """(features, {module path: output ShapeDtypeStruct}) via capture_intermediates, shapes only."""
    variables = _init_shapes(model, input_shape)

    def run(v, x):
        return model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"])

    features, state = jax.eval_shape(run, variables, jax.ShapeDtypeStruct(input_shape, jnp.float32))
    flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
    return features, {k.removesuffix("/__call__"): v[0] for k, v in flat.items()}


def _num_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _torchvision_param_count(stage_sizes, block, width, stem_kernel):
    """Parameters of torchvision's ResNet without `fc`, counted layer by layer from the layout.

    A conv k x k from c_in to c_out has k*k*c_in*c_out weights (no bias); a BatchNorm over c
    channels has 2c (scale, shift).
    """

    def conv(k, c_in, c_out):
        return k * k * c_in * c_out

    def bn(c):
        return 2 * c

    expansion = 4 if block == "bottleneck" else 1
    total = conv(stem_kernel, 3, width) + bn(width)
    in_ch = width
    for i, n in enumerate(stage_sizes):
        planes = width * 2**i
        out_ch = planes * expansion
        for j in range(n):
            stride = 2 if i > 0 and j == 0 else 1
            if block == "basic":
                total += conv(3, in_ch, planes) + bn(planes) + conv(3, planes, planes) + bn(planes)
            else:
                total += conv(1, in_ch, planes) + bn(planes)
                total += conv(3, planes, planes) + bn(planes)
                total += conv(1, planes, out_ch) + bn(out_ch)
            if stride != 1 or in_ch != out_ch:
                total += conv(1, in_ch, out_ch) + bn(out_ch)
            in_ch = out_ch
    return total


@pytest.mark.parametrize("padding, final_hw, stem_hw", [(2, 5, 34), (1, 4, 32)])
def test_resnet18_cifar_stem_spatial_sizes(padding, final_hw, stem_hw):
    model = make_backbone("resnet18", cifar_stem_padding=padding)
    features, inter = _intermediate_shapes(model, (2, 32, 32, 3))
    assert features.shape == (2, 512) and features.dtype == jnp.float32
    assert inter["conv1"].shape == (2, stem_hw, stem_hw, 64)
    assert inter["layer4_1"].shape == (2, final_hw, final_hw, 512)


def test_cifar_stem_keeps_pytorchs_default_conv_init_and_the_rest_torchvisions():
    """The CIFAR stem's conv1, a fresh ``nn.Conv2d`` in the reference code: U(+-1/sqrt(27)), its
    largest entries near the bound (N(0, 2 / fan_out) would pass it); the ImageNet stem's and the
    blocks' convolutions: N(0, 2 / fan_out). The tiny ResNet, 8 channels wide."""
    init = {
        stem: make_backbone("resnet_tiny", stem=stem).init(
            _key(0), jnp.zeros((1, 32, 32, 3)), False
        )["params"]
        for stem in ("cifar", "imagenet")
    }
    stem = np.abs(init["cifar"]["conv1"]["kernel"])  # [3, 3, 3, 8]
    bound = 1.0 / np.sqrt(27)
    assert 0.95 * bound < stem.max() <= bound
    imagenet = np.asarray(init["imagenet"]["conv1"]["kernel"])  # [7, 7, 3, 8]
    assert np.std(imagenet) == pytest.approx(np.sqrt(2 / (49 * 8)), rel=0.1)
    block = np.asarray(init["cifar"]["layer1_0"]["conv1"]["kernel"])  # [3, 3, 8, 8]
    assert np.std(block) == pytest.approx(np.sqrt(2 / (9 * 8)), rel=0.1)


def test_resnet18_parameter_count_matches_torchvision():
    by_hand = _torchvision_param_count((2, 2, 2, 2), "basic", 64, stem_kernel=3)
    assert by_hand == 11_168_832
    cifar = _init_shapes(make_backbone("resnet18"), (1, 32, 32, 3))
    assert _num_params(cifar["params"]) == by_hand
    # torchvision resnet18: 11,689,512 parameters including fc (512 * 1000 + 1000).
    imagenet = _init_shapes(make_backbone("resnet18", stem="imagenet"), (1, 64, 64, 3))
    assert _num_params(imagenet["params"]) == 11_689_512 - 513_000
    by_hand_imagenet = _torchvision_param_count((2, 2, 2, 2), "basic", 64, stem_kernel=7)
    assert by_hand_imagenet == 11_689_512 - 513_000


def test_resnet50_imagenet_stem_shapes_and_count():
    model = make_backbone("resnet50", stem="imagenet")
    features, inter = _intermediate_shapes(model, (2, 64, 64, 3))
    assert features.shape == (2, 2048) == (2, model.feature_dim)
    assert inter["conv1"].shape == (2, 32, 32, 64)
    assert inter["layer1_0"].shape == (2, 16, 16, 256)  # after the stride-2 max-pool
    assert inter["layer4_2"].shape == (2, 2, 2, 2048)
    params = _init_shapes(model, (2, 64, 64, 3))["params"]
    # torchvision resnet50: 25,557,032 parameters including fc (2048 * 1000 + 1000).
    assert _num_params(params) == 25_557_032 - 2_049_000
    assert _num_params(params) == _torchvision_param_count((3, 4, 6, 3), "bottleneck", 64, 7)
    assert params["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)  # stride on the 3x3


def test_width_multiplier_scales_widths():
    assert feature_dim("resnet18", 1.0) == 512
    assert feature_dim("resnet18", 0.5) == 256
    assert feature_dim("resnet50", 2.0) == 4096
    assert feature_dim("resnet_tiny", 2.0) == 32
    half = make_backbone("resnet18", width_multiplier=0.5)
    params = _init_shapes(half, (1, 32, 32, 3))["params"]
    assert params["conv1"]["kernel"].shape == (3, 3, 3, 32)
    assert params["layer4_1"]["conv2"]["kernel"].shape == (3, 3, 256, 256)
    assert half.feature_dim == 256


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match=r"resnet18.*resnet50.*resnet_tiny"):
        make_backbone("resnet34")


def test_resnet_tiny_forward_and_batch_stats():
    model = make_backbone("resnet_tiny")
    x = jax.random.normal(_key(1), (4, 8, 8, 3)) + 1.0
    variables = jax.jit(model.init, static_argnames="train")(_key(0), x, train=False)
    assert set(variables) == {"params", "batch_stats"}
    assert model.feature_dim == 16
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))

    out, updates = apply(variables, x, train=True, mutable=("batch_stats",))
    assert out.shape == (4, 16) and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
    stats0, stats1 = variables["batch_stats"], updates["batch_stats"]
    assert jax.tree.structure(stats0) == jax.tree.structure(stats1)
    mean0, mean1 = stats0["bn1"]["mean"], stats1["bn1"]["mean"]
    np.testing.assert_array_equal(mean0, 0.0)
    # momentum 0.9: running mean <- 0.9 * 0 + 0.1 * batch mean
    assert np.abs(mean1).max() > 0
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), stats0, stats1)
    assert all(jax.tree.leaves(changed))

    out_eval, eval_updates = apply(variables, x, train=False, mutable=("batch_stats",))
    jax.tree.map(np.testing.assert_array_equal, eval_updates["batch_stats"], stats0)
    np.testing.assert_array_equal(apply(variables, x, train=False), out_eval)
    assert not np.allclose(out_eval, out)


def test_bfloat16_computes_in_bf16_keeps_float32_params_and_outputs():
    model = make_backbone("resnet_tiny", dtype=jnp.bfloat16)
    x = jax.random.normal(_key(1), (2, 8, 8, 3))
    variables = jax.jit(model.init, static_argnames="train")(_key(0), x, train=False)
    assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    out, updates = apply(variables, x, train=True, mutable=("batch_stats",))
    assert out.dtype == jnp.float32 and out.shape == (2, 16)
    assert np.all(np.isfinite(out))
    assert {v.dtype for v in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}
    _, inter = _intermediate_shapes(model, (2, 8, 8, 3))
    assert inter["conv1"].dtype == jnp.bfloat16
    assert inter["layer2_0"].dtype == jnp.bfloat16


@pytest.mark.parametrize("batch_norm", [False, True])
def test_mlp_head_shapes_and_batch_norm(batch_norm):
    head = MLPHead(hidden_dims=(32, 24), out_dim=8, batch_norm=batch_norm)
    x = jax.random.normal(_key(0), (6, 16))
    variables = head.init(_key(1), x, train=True)
    params = variables["params"]
    assert params["linear0"]["kernel"].shape == (16, 32)
    assert params["linear1"]["kernel"].shape == (32, 24)
    assert params["linear2"]["kernel"].shape == (24, 8)
    assert ("bn0" in params) == batch_norm and ("bn1" in params) == batch_norm
    assert "bn2" not in params
    assert ("batch_stats" in variables) == batch_norm
    if batch_norm:
        out, _ = head.apply(variables, x, train=True, mutable=["batch_stats"])
    else:
        out = head.apply(variables, x, train=True)
    assert out.shape == (6, 8) and out.dtype == jnp.float32
    assert head.apply(variables, x, train=False).shape == (6, 8)


def test_mlp_head_last_batch_norm_and_bf16():
    head = MLPHead(
        hidden_dims=(32,), out_dim=8, batch_norm=True, last_batch_norm=True, dtype=jnp.bfloat16
    )
    x = jax.random.normal(_key(0), (6, 16))
    variables = head.init(_key(1), x, train=True)
    assert variables["params"]["bn1"]["scale"].shape == (8,)
    assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out, _ = head.apply(variables, x, train=True, mutable=["batch_stats"])
    assert out.dtype == jnp.float32
    # last BN in training mode with scale 1, shift 0: every output column is standardised
    np.testing.assert_allclose(np.mean(np.asarray(out), axis=0), 0.0, atol=0.05)


def test_mlp_head_pytorch_linear_init():
    head = MLPHead(hidden_dims=(), out_dim=256)
    params = head.init(_key(0), jnp.zeros((1, 64)), train=False)["params"]["linear0"]
    bound = 1.0 / np.sqrt(64)
    for leaf in (params["kernel"], params["bias"]):
        assert np.abs(leaf).max() <= bound
        assert np.abs(leaf).max() > 0.9 * bound  # uniform over the whole interval


def test_mlp_head_dino_init_and_exact_gelu():
    """``init_std``: kernels N(0, std^2), zero biases; ``gelu``: x Phi(x), with the erf (PyTorch's
    ``nn.GELU`` default), after the hidden Linear."""
    head = MLPHead(hidden_dims=(512,), out_dim=512, gelu=True, init_std=0.02)
    variables = head.init(_key(0), jnp.zeros((1, 256)), train=False)
    params = variables["params"]
    for layer in ("linear0", "linear1"):
        assert np.std(params[layer]["kernel"]) == pytest.approx(0.02, rel=0.02)
        assert not np.any(params[layer]["bias"])
    x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
    hidden = x @ np.asarray(params["linear0"]["kernel"], np.float64)
    erf = np.vectorize(math.erf)
    gelu = hidden * 0.5 * (1.0 + erf(hidden / np.sqrt(2.0)))
    expected = gelu @ np.asarray(params["linear1"]["kernel"], np.float64)
    np.testing.assert_allclose(head.apply(variables, x, train=False), expected, atol=1e-5)


def _np_normalize(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


@pytest.mark.parametrize("learnable_norm", [False, True])
def test_prototypes_against_numpy_weight_normalised_scores(learnable_norm):
    """PyTorch's weight_norm(Linear(D, K, bias=False)) on n(z): g_k (v_k . n(z)) / |v_k|, with g
    starting at |v_k| (about 1/sqrt(3) under Linear's init) when learnable, 1 otherwise."""
    z = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    module = Prototypes(num_prototypes=500, learnable_norm=learnable_norm)
    params = module.init(_key(0), z)["params"]
    kernel = np.asarray(params["kernel"], np.float64)
    assert set(params) == ({"kernel", "norm"} if learnable_norm else {"kernel"})
    g = np.ones((1, 500))
    if learnable_norm:
        assert params["norm"].shape == (1, 500)
        np.testing.assert_allclose(
            params["norm"], np.linalg.norm(kernel, axis=0, keepdims=True), rtol=1e-6
        )
        assert abs(float(np.mean(params["norm"])) - 1 / np.sqrt(3)) < 0.02
        g = np.random.default_rng(1).uniform(0.2, 2.0, (1, 500))  # a trained norm
        params = {**params, "norm": jnp.asarray(g, jnp.float32)}
    expected = g * (_np_normalize(z.astype(np.float64)) @ _np_normalize(kernel, axis=0))
    np.testing.assert_allclose(module.apply({"params": params}, z), expected, rtol=1e-5, atol=1e-6)
    if learnable_norm:  # g is learned
        grad = jax.grad(lambda p: jnp.sum(module.apply({"params": p}, z) ** 2))(params)
        assert np.all(np.abs(grad["norm"]) > 0)
