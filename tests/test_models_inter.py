"""Inter sampling on the zoo models: every free hidden neuron can have its sign flipped.

A positively homogeneous activation written functionally (``F.relu``) holds no teleport wrapper under
``functional="constrain"``, so the engine pins the neurons it sees to positive CoB factors and ``"inter"`` sampling
flips only the others (the default ``functional="rewrite"`` wraps the call where a factor is negative). The zoo
uses one activation *module* per use, so no neuron is pinned: these tests measure the fraction of free neurons that
``"inter"`` sampling flips (the coverage) on every zoo model, and check that the measure sees a functional ReLU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnteleport as nt
from nnteleport.lab.models import MODELS, build_model

SHAPES = [(1, 8, 8), (40,)]


def flip_coverage(
    model: nn.Module, x: torch.Tensor, draws: int = 40, functional: str = "rewrite"
) -> tuple[int, int, int]:
    """``(free, allowed, flipped)``: free neurons of the plan, those the plan lets change sign, and those that
    ``draws`` inter samples did give a negative factor at least once."""
    plan = nt.analyze(model, x, functional=functional)
    gen = torch.Generator().manual_seed(0)
    seen = torch.zeros(plan.num_free, dtype=torch.bool)
    for _ in range(draws):
        cob = nt.sample_cob(model, x, 0.5, "inter", gen, functional=functional)
        flat = torch.cat([cob[name] for name in plan.groups])
        seen |= flat < 0
    return plan.num_free, int((~plan.positive_mask).sum()), int(seen.sum())


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("in_shape", SHAPES, ids=str)
def test_inter_sampling_flips_every_free_neuron_of_zoo_models(name, in_shape):
    torch.manual_seed(0)
    model = build_model(name, in_shape=in_shape, num_classes=5).double().eval()
    x = torch.randn(4, *in_shape, dtype=torch.float64)
    free, allowed, flipped = flip_coverage(model, x)
    assert free > 0
    assert allowed == free, f"{name}: {free - allowed} of {free} free neurons pinned to positive factors"
    assert flipped == free, f"{name}: inter sampling flipped {flipped} of {free} free neurons"
    tele = nt.teleport(model, x, cob_range=0.5, sampling="inter", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(tele(x), model(x), rtol=1e-9, atol=1e-9)


class _FunctionalReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(F.relu(self.b(self.act(self.a(x)))))


def test_flip_coverage_counts_neurons_pinned_by_a_functional_relu():
    # the measure of the test above can fail: the 8 neurons behind F.relu are free but never flipped
    torch.manual_seed(0)
    model = _FunctionalReLUNet().double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    free, allowed, flipped = flip_coverage(model, x, functional="constrain")
    assert (free, allowed, flipped) == (16, 8, 8)
    # the default functional="rewrite" wraps the F.relu call where a factor is negative: every neuron flips
    assert flip_coverage(model, x) == (16, 16, 16)
    tele = nt.teleport(model, x, cob_range=0.5, sampling="inter", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(tele(x), model(x), rtol=1e-9, atol=1e-9)


def test_resnet_activation_modules_hold_no_state_and_state_dict_round_trips():
    torch.manual_seed(0)
    model = build_model("resnet18", in_shape=(1, 8, 8), num_classes=5)
    keys = list(model.state_dict())
    assert not any(".act" in k or k.startswith("act") for k in keys)
    # the key list of the earlier functional-ReLU version (act2 was an nn.Identity there): unchanged
    assert len(keys) == 122
    other = build_model("resnet18", in_shape=(1, 8, 8), num_classes=5)
    other.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(other.eval()(x), model.eval()(x))
