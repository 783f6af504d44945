"""Tests of the model zoo: shapes, parameter counts against published / hand-derived references, float64."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.fx
from torch import nn

from nnteleport.lab.models import MODELS, Activation, build_model

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (40,), (2, 16)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("in_shape", SHAPES, ids=str)
def test_forward_float64_shape_and_gradients(name, in_shape):
    torch.manual_seed(0)
    model = build_model(name, in_shape=in_shape, num_classes=7).double()
    x = torch.randn(3, *in_shape, dtype=torch.float64)
    y = model(x)
    loss = y.square().mean()
    loss.backward()
    assert y.shape == (3, 7)
    assert y.dtype == torch.float64
    assert torch.isfinite(y).all()
    # every parameter takes part in the function (no dead modules)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_mode_is_deterministic_and_batch_independent(name):
    torch.manual_seed(1)
    model = build_model(name, in_shape=(1, 8, 8), num_classes=5).double().eval()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    full = model(x)
    parts = torch.cat([model(x[:2]), model(x[2:])])
    torch.testing.assert_close(full, parts, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fx_traceable(name):
    model = build_model(name, in_shape=(3, 32, 32), num_classes=10)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    traced.eval()
    torch.testing.assert_close(traced(x), model(x))


def test_resnet18_paper_size_matches_cifar_reference():
    # the standard CIFAR ResNet-18 (3x3 stem, 64-128-256-512, 10 classes) has 11,173,962 parameters
    model = build_model("resnet18", in_shape=(3, 32, 32), num_classes=10, width=1.0)
    assert n_params(model) == 11_173_962


def test_mobilenetv2_paper_size_matches_torchvision_reference():
    # torchvision.models.mobilenet_v2(num_classes=1000) has 3,504,872 parameters (strides do not change it)
    model = build_model("mobilenetv2", in_shape=(3, 224, 224), num_classes=1000, width=1.0)
    assert n_params(model) == 3_504_872


def test_densenet121_matches_torchvision_reference_up_to_stem_and_head():
    # torchvision densenet121 (1000 classes): 7,978,856 parameters with a 7x7 stem conv (3*64*49) + BN (128);
    # ours has a 3x3 stem conv without BN (3*64*9) and a 10-class head.
    model = build_model("densenet", in_shape=(3, 32, 32), num_classes=10, blocks=(6, 12, 24, 16), growth_rate=32)
    expected = 7_978_856 - 3 * 64 * 49 - 128 + 3 * 64 * 9 - (1024 * 1000 + 1000) + (1024 * 10 + 10)
    assert n_params(model) == expected


def test_vgg11_param_count_by_hand():
    model = build_model("vgg", in_shape=(3, 32, 32), num_classes=10, width=1.0, batchnorm=True)
    chans = [3, 64, 128, 256, 256, 512, 512, 512, 512]
    convs = sum(9 * a * b + 2 * b for a, b in itertools.pairwise(chans))  # 3x3 kernels (no bias) + BN affine
    assert n_params(model) == convs + 512 * 10 + 10  # 32 -> 1 after 5 poolings
    # 8x8 inputs keep only 3 poolings: the classifier reads a 512 x 1 x 1 map as well
    small = build_model("vgg", in_shape=(1, 8, 8), num_classes=10, width=1.0, batchnorm=False)
    convs = sum(9 * a * b + b for a, b in zip([1, *chans[1:-1]], chans[1:]))
    assert n_params(small) == convs + 512 * 10 + 10


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batchnorm", [True, False])
def test_mlp_param_count_by_hand(bias, batchnorm):
    hidden = (13, 7, 5)
    model = build_model("mlp", in_shape=(1, 8, 8), num_classes=3, hidden=hidden, bias=bias, batchnorm=batchnorm)
    widths = [64, *hidden, 3]
    expected = sum(a * b + (b if bias else 0) for a, b in itertools.pairwise(widths))
    expected += 2 * sum(hidden) if batchnorm else 0
    assert n_params(model) == expected
    kinds = [type(m) for m in model.modules()]
    assert (nn.BatchNorm1d in kinds) == batchnorm


@pytest.mark.parametrize("activation", [a.value for a in Activation])
def test_every_activation_name_builds_and_runs(activation):
    for name in ("mlp", "resnet18"):
        model = build_model(name, in_shape=(1, 8, 8), num_classes=4, activation=activation).double()
        assert model(torch.randn(2, 1, 8, 8, dtype=torch.float64)).shape == (2, 4)


def test_width_multiplier_scales_params_quadratically():
    small = n_params(build_model("resnet18", in_shape=(3, 32, 32), num_classes=10, width=0.25))
    big = n_params(build_model("resnet18", in_shape=(3, 32, 32), num_classes=10, width=0.5))
    assert 3.5 < big / small < 4.1  # conv weights ~ width^2; BN and head ~ width


def test_densenet_concatenation_grows_channels():
    model = build_model("densenet", in_shape=(1, 8, 8), num_classes=2, blocks=(3,), growth_rate=5)
    assert model.linear.in_features == 2 * 5 + 3 * 5


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown model 'lenet'.*mlp"):
        build_model("lenet", in_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match=r"unknown activation 'relux'.*leaky_relu"):
        build_model("mlp", in_shape=(1, 8, 8), num_classes=10, activation="relux")
    with pytest.raises(ValueError, match="vgg: in_shape"):
        build_model("vgg", in_shape=(1, 1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match="width must be > 0"):
        build_model("resnet18", in_shape=(1, 8, 8), num_classes=10, width=0)
    with pytest.raises(TypeError, match="build_model\\('mlp'\\)"):
        build_model("mlp", in_shape=(1, 8, 8), num_classes=10, widht=3)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_kwargs_rebuild_the_default_model(name):
    from nnteleport.lab.models import default_kwargs

    kw = default_kwargs(name)
    assert "in_shape" not in kw and "num_classes" not in kw
    torch.manual_seed(0)
    a = build_model(name, in_shape=(1, 8, 8), num_classes=10)
    torch.manual_seed(0)
    b = build_model(name, in_shape=(1, 8, 8), num_classes=10, **kw)
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]
    with pytest.raises(ValueError, match="unknown model"):
        default_kwargs("lenet")
