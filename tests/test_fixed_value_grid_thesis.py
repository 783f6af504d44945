"""fixed-value-grid: mode "set-thesis" sets the fixed weights to +b (the thesis), "set" to sign(w) * b (ours)."""

from __future__ import annotations

import pytest
import torch

from nnteleport.errors import InvalidValueError
from nnteleport.gspace.fixing import fix_weights
from nnteleport.lab.experiments import fixed_value_grid as fv
from nnteleport.lab.experiments.gspace_lr_grid import thesis_mlp


def _fixed_values(mode: str, b: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    model = thesis_mlp(10, [6, 6], 4)
    probe = fix_weights(model)
    masks = {k: v.clone() for k, v in probe.masks.items()}
    probe.remove()
    signs = [torch.sign(model.get_parameter(k).detach()[m]) for k, m in masks.items()]
    _, handle = fv._builder(b, 1e-2, mode, torch.optim.SGD)(model)
    handle.remove()
    return [model.get_parameter(k).detach()[m] for k, m in masks.items()], signs


@pytest.mark.parametrize("b", [0.3, 3.0])
def test_set_thesis_is_plus_b_and_set_is_signed(b):
    vals, signs = _fixed_values("set-thesis", b)
    assert any((s < 0).any() for s in signs)  # there are negative entries that "set" would keep negative
    assert all(torch.all(v == b) for v in vals)
    vals, signs = _fixed_values("set", b)
    assert all(torch.equal(v, s * b) for v, s in zip(vals, signs))


def test_unknown_mode_refused(tmp_path):
    with pytest.raises(InvalidValueError):
        fv.run({"mode": "thesis", "seeds": 1}, tmp_path, progress=False)
