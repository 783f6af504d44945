"""Users hand us torchvision models: they must teleport exactly, untouched, in train and eval mode.

Skipped when torchvision is absent (it is an optional extra: ``pip install -e ".[vision]"``).
"""

from __future__ import annotations

import copy

import pytest
import torch

import nnteleport as nt

tv = pytest.importorskip("torchvision")

# (builder, input size): residual (resnet), depthwise + ReLU6 (mobilenet_v2), concatenation (densenet, squeezenet),
# channel shuffle (shufflenet), squeeze-excitation + SiLU + stochastic depth (efficientnet), BN + max pooling (vgg),
# LayerNorm over permuted channels + layer scale + GELU (convnext)
CASES = [
    ("resnet18", 32),
    ("mobilenet_v2", 32),
    ("densenet121", 32),
    ("squeezenet1_1", 64),
    ("shufflenet_v2_x0_5", 32),
    ("efficientnet_b0", 32),
    ("vgg11_bn", 32),
    ("convnext_tiny", 32),
]
EPS64 = torch.finfo(torch.float64).eps


@pytest.mark.slow
@pytest.mark.parametrize("name,size", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("sampling", ["intra", "inter"])
def test_torchvision_models_exact(name, size, sampling):
    torch.manual_seed(0)
    model = getattr(tv.models, name)(weights=None, num_classes=10).double()
    _randomize_normalisation(model)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    s = 0.9
    v = nt.teleport(model, x, cob_range=s, sampling=sampling, generator=torch.Generator().manual_seed(1))
    report = nt.analyze(model, x).report
    assert report.free_neurons > 0
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in v.named_parameters()]
    r = (1 + s) / (1 - s)  # largest factor ratio
    for train in (False, True):
        a, b = _run(model, x, train), _run(v, x, train)
        # round-off bound of tests/test_teleport.py for deep nets (L = 100 layers): 100 * L * r * eps, or -- for
        # ill-conditioned nets (batch norm over 2 values on 1x1 maps in train mode) -- 10x the change of the
        # original under random relative weight noise of r * eps: the teleport is then within round-off.
        tol = max(100 * 100 * r * EPS64, 10 * _noise_floor(model, x, train, r * EPS64))
        err = float((a - b).abs().max() / a.abs().max())
        assert err < tol, (name, train)
        assert err > 0 or train, (name, "bitwise equal outputs: the features do not reach the logits")


def _run(model, x, train):
    model = copy.deepcopy(model).train(train)  # train-mode forwards must not change the statistics we compare
    torch.manual_seed(3)  # same dropout / stochastic-depth draws
    with torch.no_grad():
        return model(x)


def _noise_floor(model, x, train, rel):
    a = _run(model, x, train)
    p = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for q in p.parameters():
            q.mul_(1 + rel * torch.randn(q.shape, generator=g, dtype=q.dtype))
    return float((_run(p, x, train) - a).abs().max() / a.abs().max())


def _randomize_normalisation(model):
    """Fresh torchvision models have gamma = 1, beta = 0, unit running statistics (and ConvNeXt a layer scale of
    1e-6), so in eval mode the final features are so small that the logits equal the classifier bias to the last bit:
    the comparison would prove nothing. Random affine parameters, statistics and layer scales make every layer
    matter."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("layer_scale"):  # ConvNeXt starts at 1e-6: its branches would not reach the output
                p.uniform_(0.5, 1.5, generator=g)
        for m in model.modules():
            if isinstance(m, (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.uniform_(0.5, 1.5, generator=g)
                if getattr(m, "bias", None) is not None:
                    m.bias.uniform_(-0.5, 0.5, generator=g)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.uniform_(-0.2, 0.2, generator=g)
                    m.running_var.uniform_(0.5, 1.5, generator=g)
