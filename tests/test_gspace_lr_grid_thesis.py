"""The thesis-faithful G-space / weight-fixing variants initialise as the thesis says (every mask entry +1, the
first layer's pred edges included), ours keep sign(w); both "best validation loss" definitions are offered."""

from __future__ import annotations

import math

import pytest
import torch

from nnteleport.errors import InvalidValueError
from nnteleport.gspace import GSpace
from nnteleport.gspace.fixing import fix_weights
from nnteleport.lab.experiments import gspace_lr_grid as g


def _net(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return g.thesis_mlp(12, [8, 8, 8], 5)


def test_thesis_masks_are_the_diagonal_skeleton_plus_first_layer_pred_edges():
    model = _net()
    masks = g.thesis_masks(model)
    # Algorithm 1: W_1[r, r] (the free skeleton weights w_j) and the diagonal of every later layer
    for i, lin in enumerate(m for m in model if isinstance(m, torch.nn.Linear)):
        want = torch.zeros_like(lin.weight, dtype=torch.bool)
        out, inp = lin.weight.shape
        if i == 0:
            want[torch.arange(out), torch.arange(out) % inp] = True
        else:
            want[torch.arange(inp) % out, torch.arange(inp)] = True
        assert torch.equal(masks[f"{list(dict(model.named_children()))[2 * i]}.weight"], want), i


@pytest.mark.parametrize("method", ["gsgd-thesis", "gadam-thesis", "gadam-reset-thesis"])
def test_gspace_thesis_variants_set_every_mask_entry_to_plus_one(method):
    model = _net()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks = g.thesis_masks(model)
    assert any((before[k][m] < 0).any() for k, m in masks.items())  # the test can fail: some entries negative
    g.make_optimizer(method, model, 1e-2)
    n_first = 0
    for name, m in masks.items():
        w = model.get_parameter(name).detach()
        assert torch.all(w[m] == 1.0), name  # +1, not sign(w)
        assert torch.equal(w[~m], before[name][~m]), name  # nothing else changed
        n_first += int(m.sum()) if name == "0.weight" else 0
    assert n_first == 8  # the first layer's pred edges are set too


def test_gspace_set1_variant_keeps_signs_and_leaves_first_layer():
    model = _net()
    before = model.get_parameter("0.weight").detach().clone()
    sk = GSpace(model, skeleton="greedy").skeleton_masks
    g.make_optimizer("gsgd-set1", model, 1e-2)
    for name, m in sk.items():
        assert torch.all(model.get_parameter(name).detach()[m].abs() == 1.0)
    assert torch.equal(model.get_parameter("0.weight").detach(), before)  # ours: first layer untouched


@pytest.mark.parametrize("method", ["fixed-sgd-thesis", "fixed-adam-thesis"])
def test_fixed_thesis_variants_set_fixed_weights_to_plus_one(method):
    model = _net()
    probe = fix_weights(model)
    fix_weights_copy = {k: v.clone() for k, v in probe.masks.items()}
    probe.remove()
    assert any((model.get_parameter(k).detach()[m] < 0).any() for k, m in fix_weights_copy.items())
    model = _net()
    opt, handle = g.make_optimizer(method, model, 1e-2)
    try:
        for name, m in fix_weights_copy.items():
            assert torch.all(model.get_parameter(name).detach()[m] == 1.0), name
        x = torch.randn(16, 12)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        for name, m in fix_weights_copy.items():
            assert torch.all(model.get_parameter(name).detach()[m] == 1.0), name  # they stay fixed
    finally:
        handle.remove()


def test_fixed_sgd_ours_keeps_signs():
    model = _net()
    probe = fix_weights(model)
    masks = {k: v.clone() for k, v in probe.masks.items()}
    probe.remove()
    model = _net()
    sign = {k: torch.sign(model.get_parameter(k).detach()[m]) for k, m in masks.items()}
    _, handle = g.make_optimizer("fixed-sgd", model, 1e-2)
    handle.remove()
    for k, m in masks.items():
        assert torch.equal(model.get_parameter(k).detach()[m], sign[k])
    assert any((s < 0).any() for s in sign.values())


def test_best_val_loss_definitions():
    diverging = {"val_loss": [5.0, 3265.0, math.inf], "val_loss_init": 2.31}
    assert g.best_val_loss(diverging, "epochs") == 5.0
    assert g.best_val_loss(diverging, "incl_init") == 2.31
    nan_run = {"val_loss": [math.nan, math.nan], "val_loss_init": 2.3}
    assert g.best_val_loss(nan_run, "epochs") == math.inf
    assert g.best_val_loss({"val_loss": [1.0]}, "incl_init") == 1.0  # old records: no init loss
    with pytest.raises(InvalidValueError):
        g.best_val_loss(diverging, "thesis")


def test_summary_offers_both_definitions_and_counts_diverged():
    cfg = {"methods": ["a"], "lrs": [0.1], "good_factor": 1.5, "best_definition": "incl_init"}
    runs = [
        {"method": "a", "lr": 0.1, "seed": 0, "val_loss": [0.5, 0.4], "val_acc": [0.8, 0.9], "diverged": False,
         "val_loss_init": 2.3},
        {"method": "a", "lr": 0.1, "seed": 1, "val_loss": [9.0, math.inf], "val_acc": [0.1, math.nan],
         "diverged": True, "val_loss_init": 2.3},
    ]  # fmt: skip
    res = g.summarise(cfg, runs)
    cell = res["grid"]["a"]["0.1"]
    assert cell["n_diverged"] == 1 and cell["n_runs"] == 2
    assert cell["mean_best_val_loss"] == pytest.approx((0.4 + 9.0) / 2)
    assert cell["mean_best_val_loss_incl_init"] == pytest.approx((0.4 + 2.3) / 2)
    assert res["findings"]["best_definition"] == "incl_init"
    assert res["findings"]["overall_best_val_loss"] == pytest.approx((0.4 + 2.3) / 2)


def test_tiny_run_records_init_loss(tmp_path):
    cfg = {"methods": ["sgd", "gsgd-thesis", "fixed-sgd-thesis"], "lrs": [1e-1], "seeds": 1, "epochs": 1,
           "train_size": 200, "val_size": 100}  # fmt: skip
    res = g.run(cfg, tmp_path, progress=False)
    for r in res["runs"]:
        assert math.isfinite(r["val_loss_init"])
    for m in cfg["methods"]:
        assert "mean_best_val_loss_incl_init" in res["grid"][m]["0.1"]
    assert (tmp_path / "lr_grid_thesis.png").exists()
    with pytest.raises(InvalidValueError):
        g.run({**cfg, "best_definition": "x"}, tmp_path, progress=False)
