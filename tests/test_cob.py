"""CoB sampling (paper, Sec. 4): ranges, signs, the expectation E[tau_a^2 / tau_b^2], the CoB mapping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nnteleport as nt
from nnteleport.engine.cob import expected_squared_ratio, sample_flat


def _model():
    m = nn.Sequential(nn.Linear(4, 300), nn.Tanh(), nn.Linear(300, 200), nn.Tanh(), nn.Linear(200, 3))
    return m, torch.randn(2, 4)


@pytest.mark.parametrize("s", [0.1, 0.5, 0.99])
def test_intra_range(s):
    m, x = _model()
    cob = nt.sample_cob(m, x, cob_range=s, sampling="intra", generator=torch.Generator().manual_seed(0))
    assert set(cob) == {"0", "2"} and cob["0"].shape == (300,) and cob["2"].shape == (200,)
    t = cob.flat()
    assert t.dtype == torch.float64
    assert bool(((t >= 1 - s) & (t <= 1 + s)).all())
    assert float(t.min()) < 1 - 0.8 * s and float(t.max()) > 1 + 0.8 * s  # the whole interval is used


@pytest.mark.parametrize("s", [0.1, 0.9])
def test_inter_range_and_signs(s):
    m, x = _model()
    t = nt.sample_cob(m, x, cob_range=s, sampling="inter", generator=torch.Generator().manual_seed(1)).flat()
    a = t.abs()
    assert bool(((a >= 1 - s) & (a <= 1 + s)).all())
    frac_neg = float((t < 0).double().mean())
    # 500 fair coin flips: 5 standard deviations (0.11) around 1/2
    assert abs(frac_neg - 0.5) < 5 * 0.5 / math.sqrt(t.numel())


def test_sampling_is_reproducible():
    m, x = _model()
    a = nt.sample_cob(m, x, 0.5, "inter", torch.Generator().manual_seed(3)).flat()
    b = nt.sample_cob(m, x, 0.5, "inter", torch.Generator().manual_seed(3)).flat()
    assert torch.equal(a, b)


@pytest.mark.parametrize("s", [0.2, 0.5, 0.8, 0.95])
def test_expected_squared_ratio(s):
    """E[tau_a^2 / tau_b^2] = (s^2 + 3) / (3 (1 - s^2)) for independent uniform factors (paper, Sec. 5.4)."""
    n = 400_000
    g = torch.Generator().manual_seed(5)
    ta = sample_flat(n, s, "intra", generator=g)
    tb = sample_flat(n, s, "intra", generator=g)
    r = (ta / tb) ** 2
    mean, se = float(r.mean()), float(r.std()) / math.sqrt(n)
    assert abs(mean - expected_squared_ratio(s)) < 5 * se
    assert expected_squared_ratio(s) == pytest.approx((s * s + 3) / (3 * (1 - s * s)))


def test_cob_mapping_algebra():
    c = nt.CoB({"a": torch.tensor([2.0, -4.0]), "b": torch.tensor([0.5])})
    d = nt.CoB({"a": torch.tensor([0.5, 0.25])})
    assert len(c) == 2 and list(c) == ["a", "b"]
    torch.testing.assert_close((c * d)["a"], torch.tensor([1.0, -1.0]))
    torch.testing.assert_close((c * d)["b"], torch.tensor([0.5]))
    torch.testing.assert_close(c.inverse()["a"], torch.tensor([0.5, -0.25]))
    torch.testing.assert_close(c.flat(), torch.tensor([2.0, -4.0, 0.5]))
    assert "a" in repr(c)


def test_partial_cob_and_flat_round_trip():
    m, x = _model()
    plan = nt.analyze(m, x)
    flat = plan.flat({"2": torch.full((200,), 2.0)})
    assert float(flat[:300].sub(1).abs().max()) == 0.0 and float(flat[300:].sub(2).abs().max()) == 0.0
    cob = plan.cob_from_flat(flat)
    assert torch.equal(plan.flat(cob), flat)
    with pytest.raises(ValueError, match=r"shape \(500,\)"):
        plan.cob_from_flat(torch.ones(3))


def test_sampling_enum_parse():
    assert nt.Sampling.parse("inter") is nt.Sampling.INTER
    with pytest.raises(ValueError, match=r"unknown sampling .*; choose one of"):
        nt.Sampling.parse("INTRA ")
