"""Tiny-scale runs of the G-space / weight-fixing experiments (seconds each): files written, numbers sane."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nnteleport.lab.experiments import get_experiment


def test_gspace_lr_grid_tiny(tmp_path):
    mod = get_experiment("gspace-lr-grid")
    cfg = {
        "methods": ["sgd", "gadam-reset-set1", "fixed-sgd"],
        "lrs": [1e-1, 1e-3],
        "seeds": 1,
        "epochs": 3,
        "train_size": 512,
        "val_size": 128,
        "hidden": [16, 16],
    }
    res = mod.run(cfg, tmp_path, progress=False)
    assert (tmp_path / "results.json").exists()
    assert (tmp_path / "lr_grid.csv").exists() and (tmp_path / "curves_best_lr.csv").exists()
    assert (tmp_path / "lr_grid_gspace.png").exists()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["grid"]) == set(cfg["methods"])
    assert len(res["runs"]) == len(cfg["methods"]) * 2
    # every best loss is finite or marked diverged, and the best rate is one of the grid
    for m, g in res["grid"].items():
        assert res["findings"]["best_lr"][m] in cfg["lrs"]
        for v in g.values():
            assert math.isfinite(v["mean_best_val_loss"]) or v["n_diverged"] > 0
    # SGD and Fixed-SGD at 0.1 on standardised digits learn something (chance level: ln 10 = 2.30)
    assert res["grid"]["sgd"][repr(0.1)]["mean_best_val_loss"] < 2.29
    assert res["grid"]["fixed-sgd"][repr(0.1)]["mean_best_val_loss"] < 2.2


def test_gspace_lr_grid_rejects_unknown_method(tmp_path):
    mod = get_experiment("gspace-lr-grid")
    with pytest.raises(ValueError, match="unknown method"):
        mod.run({"methods": ["sgd", "nope"]}, tmp_path, progress=False)


def test_fixed_value_grid_tiny(tmp_path):
    mod = get_experiment("fixed-value-grid")
    cfg = {"values": [0.1, 1.0], "lrs": [1e-2], "seeds": 2, "epochs": 1, "train_size": 256, "val_size": 128,
           "hidden": [16, 16]}  # fmt: skip
    res = mod.run(cfg, tmp_path, progress=False)
    assert (tmp_path / "grid.csv").exists() and (tmp_path / "fixed_value_grid.png").exists()
    assert len(res["grid"]) == 2 and len(res["runs"]) == 4
    for g in res["grid"]:
        finals = [r["final_val_loss"] for r in res["runs"] if r["value"] == g["value"]]
        assert g["median_val_loss"] == pytest.approx(float(np.median(finals)))
    res2 = mod.run({**cfg, "mode": "rescale", "seeds": 1}, tmp_path / "r", progress=False)
    assert len(res2["grid"]) == 2
    with pytest.raises(ValueError, match="mode"):
        mod.run({**cfg, "mode": "bad"}, tmp_path / "b", progress=False)


def test_toy_surfaces(tmp_path):
    mod = get_experiment("toy-surfaces")
    res = mod.run({"points": 21, "arrows": 5}, tmp_path, progress=False)
    s = res["surfaces"]
    b = np.array(s["fig_1_5_network_b"]["loss"])
    w1 = np.array(s["fig_1_5_network_b"]["w1"])
    w2 = np.array(s["fig_1_5_network_b"]["w2"])
    np.testing.assert_allclose(b, np.sin(w2[:, None] * np.maximum(w1[None, :], 0)), atol=1e-15)
    # rescaling (w1, w2) -> (w1/4, 4 w2) keeps the loss and scales the gradient as in Fig. 1.6
    assert res["gradient_norm_at_(1/4,4)"] > 2 * res["gradient_norm_at_(1,1)"]
    fixed = s["fig_4_9_network_b_fixed_w1"]["loss"]
    assert len(fixed) == len(mod.DEFAULTS["fixed_w1"])
    assert (tmp_path / "fig_4_9_fixed_weight_surfaces.png").exists()
