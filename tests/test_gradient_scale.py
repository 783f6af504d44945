"""gradient-scale: the signed change of the normalised gradient beside the paper's absolute one, and the raw
squared gradient-norm ratio against E(s) (nnteleport.engine.cob.expected_squared_ratio)."""

from __future__ import annotations

import math

import pytest

from nnteleport.engine.cob import expected_squared_ratio
from nnteleport.lab.experiments import gradient_scale
from nnteleport.lab.plotting import read_csv

TINY_MLP = {"mlp": {"hidden": [24, 24]}}


def _row(signed: float, i: int, *, w=2.0, dw=1.0) -> dict:
    v = w * 1.5
    dv = (dw / w + signed) * v
    return {
        "abs_diff_normalized": abs(dw / w - dv / v),
        "signed_diff_normalized": dv / v - dw / w,
        "v_norm_ratio": v / w,
        "grad_ratio_sq": (dv / dw) ** 2,
        "teleport": i,
    }


def test_expected_ratio_is_the_engines_formula():
    for s in (0.1, 0.5, 0.9):
        assert gradient_scale.expected_ratio(s) == expected_squared_ratio(s)
    arr = gradient_scale.expected_ratio([0.1, 0.9])
    assert arr.shape == (2,) and arr[1] == pytest.approx(expected_squared_ratio(0.9), rel=1e-15)


def test_curve_point_keeps_the_sign_that_the_paper_quantity_hides():
    # two teleports down by 0.1, one up by 0.1: |.| says 0.1 for all three, the signed mean is -0.1/3
    rows = [_row(-0.1, 0), _row(-0.1, 1), _row(0.1, 2)]
    c = gradient_scale.curve_point(rows, "m", 0.5)
    assert c["abs_diff_mean"] == pytest.approx(0.1)
    assert c["signed_diff_mean"] == pytest.approx(-0.1 / 3)
    assert (c["num_down"], c["num_teleports"]) == (2, 3)
    assert c["v_norm_ratio_mean"] == pytest.approx(1.5)
    assert c["grad_ratio_sq_over_expected"] == pytest.approx(c["grad_ratio_sq_mean"] / expected_squared_ratio(0.5))
    sig = gradient_scale.signed_summary([c, gradient_scale.curve_point([_row(-0.2, 0)], "m", 0.9)])
    assert sig["direction"] == "mixed" and (sig["num_down"], sig["num_teleports"]) == (3, 4)
    assert sig["largest_s"] == 0.9 and sig["num_down_at_largest_s"] == 1
    assert sig["signed_diff_mean_at_largest_s"] == pytest.approx(-0.2)
    down = gradient_scale.signed_summary([gradient_scale.curve_point([_row(-0.2, 0)], "m", 0.9)])
    assert down["direction"] == "down"


def test_run_records_signed_change_consistent_with_norms(tmp_path):
    res = gradient_scale.run(
        {"models": ["mlp"], "model_kwargs": TINY_MLP, "cob_ranges": [0.3, 0.9], "num_teleports": 4},
        tmp_path,
        progress=False,
    )
    rows = read_csv(tmp_path / "teleports.csv")
    assert len(rows) == 8
    for r in rows:
        signed = r["dv_norm"] / r["v_norm"] - r["dw_norm"] / r["w_norm"]
        assert r["signed_diff_normalized"] == pytest.approx(signed, rel=1e-12)
        assert abs(r["signed_diff_normalized"]) == pytest.approx(r["abs_diff_normalized"], rel=1e-12)
    curves = read_csv(tmp_path / "curves.csv")
    for c in curves:
        mine = [r for r in rows if r["cob_range"] == c["cob_range"]]
        assert c["num_down"] == sum(r["signed_diff_normalized"] < 0 for r in mine)
        assert c["expected_ratio"] == expected_squared_ratio(c["cob_range"])
        assert math.isclose(c["grad_ratio_sq_over_expected"], c["grad_ratio_sq_mean"] / c["expected_ratio"])
    sig = res["models"]["mlp"]["signed"]
    assert sig["num_teleports"] == 8 and sig["num_teleports_at_largest_s"] == 4
    assert sig["num_down"] == sum(r["signed_diff_normalized"] < 0 for r in rows)
    sec, heads = gradient_scale.report_section(res, tmp_path)
    assert any(h.label == "normalised gradient goes down" for h in heads)
    assert "signed" in sec.numbers[0][1]
    all_down = sig["num_down_at_largest_s"] == sig["num_teleports_at_largest_s"]
    assert ("goes down" in sec.verdict) == all_down
