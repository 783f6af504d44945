"""The neural-teleportation experiments at a tiny scale: files written, and the numbers mean what they claim.

Each experiment runs in a few seconds on small MLPs; the assertions check the paper's properties against
independent references (float64 round-off, Monte-Carlo expectations, identical pre-teleport training) rather
than hard-coded outputs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nnteleport.lab.experiments import get_experiment
from nnteleport.lab.experiments.config import load_config
from nnteleport.lab.plotting import read_csv

NAMES = [
    "level-curves",
    "micro-teleport",
    "interpolation",
    "gradient-scale",
    "training",
    "pseudo-teleport",
    "mid-training",
    "weight-histograms",
    "feature-maps",
]

TINY_MLP = {"mlp": {"hidden": [24, 24]}}


def _files_exist(out, results):
    assert (out / "results.json").is_file()
    stored = json.loads((out / "results.json").read_text())
    assert stored["experiment"] == results["experiment"]
    pngs = list(out.glob("*.png"))
    assert pngs, "no plot written"
    assert all(p.stat().st_size > 1000 for p in pngs)
    return stored


@pytest.mark.parametrize("name", NAMES)
def test_defaults_pass_the_config_checks(name):
    module = get_experiment(name)
    assert isinstance(module.DESCRIPTION, str) and len(module.DESCRIPTION) > 40
    cfg = load_config(name)  # DEFAULTS must satisfy their own CHOICES and types
    assert set(cfg) == set(module.DEFAULTS)
    with pytest.raises(ValueError, match="unknown key"):
        module.run({"no_such_key": 1}, None)


def test_level_curves_preserves_function_and_moves_weights(tmp_path):
    from nnteleport.lab.experiments import level_curves

    res = level_curves.run(
        {"models": ["mlp"], "model_kwargs": TINY_MLP, "num_teleports": 5, "num_examples": 32},
        tmp_path,
        progress=False,
    )
    stored = _files_exist(tmp_path, res)
    m = stored["models"]["mlp"]
    scale = m["float64"]["max_abs_output"]
    # float64: a teleport is ~4 roundings per weight and the forward pass ~depth*width roundings
    assert m["float64"]["max_output_diff"] < 1e-13 * max(1.0, scale) * 100
    assert m["float64"]["max_output_diff_train_mode"] < 1e-11
    assert m["float32"]["max_output_diff"] < 1e-4
    # s = 0.9 inter: factors in [0.1, 1.9] in magnitude, so weights move by a sizeable fraction of themselves
    assert m["float64"]["mean_abs_diff"]["mean"] > 0.3 * m["float64"]["mean_abs_w"]
    rows = read_csv(tmp_path / "teleports.csv")
    assert len(rows) == 2 * 5
    assert max(r["abs_loss_diff"] for r in rows if r["dtype"] == "float64") == pytest.approx(
        m["float64"]["abs_loss_diff"]["max"]
    )


def test_micro_teleport_angles_are_90_degrees_and_controls_spread(tmp_path):
    from nnteleport.lab.experiments import micro_teleport

    res = micro_teleport.run(
        {"models": ["mlp"], "datasets": ["digits", "random"], "batch_sizes": [8], "num_samples": 12},
        tmp_path,
        progress=False,
    )
    _files_exist(tmp_path, res)
    # the first-order term of <V - W, dW> vanishes exactly; what is left is O(s) relative: << 0.05 degrees
    assert res["micro_vs_grad_max_deviation"] < 0.05
    dim = res["configs"][0]["num_parameters"]
    expected_spread = math.degrees(1 / math.sqrt(dim))  # std of the angle of two random vectors in R^dim
    for kind in ("micro_vs_random", "grad_vs_random", "random_vs_random"):
        spread = res["controls_std"][kind]["mean"]
        assert 0.4 * expected_spread < spread < 2.5 * expected_spread
        assert spread > 20 * res["micro_vs_grad"]["std"]
    rows = read_csv(tmp_path / "angles.csv")
    assert len(rows) == 2 * 12
    assert {r["dataset"] for r in rows} == {"digits", "random"}


def test_micro_teleport_flat_grad_matches_autograd():
    from nnteleport.lab.experiments.micro_teleport import flat_grad
    from nnteleport.lab.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", in_shape=(4,), num_classes=3, hidden=[5]).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    g = flat_grad(model, x, y)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    ref = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(g, ref, rtol=0, atol=0)


def test_expected_ratio_matches_monte_carlo():
    from nnteleport.lab.experiments.gradient_scale import expected_ratio

    rng = np.random.default_rng(0)
    for s in (0.3, 0.6, 0.8):
        ta = rng.uniform(1 - s, 1 + s, 2_000_000)
        tb = rng.uniform(1 - s, 1 + s, 2_000_000) * rng.choice([-1, 1], 2_000_000)  # inter: signs do not matter
        mc = np.mean(ta**2 / tb**2)
        assert mc == pytest.approx(expected_ratio(s), rel=5e-3)


def test_gradient_scale_grows_with_cob_range(tmp_path):
    from nnteleport.lab.experiments import gradient_scale

    res = gradient_scale.run(
        {"models": ["mlp"], "model_kwargs": TINY_MLP, "cob_ranges": [0.2, 0.5, 0.9], "num_teleports": 6},
        tmp_path,
        progress=False,
    )
    _files_exist(tmp_path, res)
    curves = sorted(read_csv(tmp_path / "curves.csv"), key=lambda r: r["cob_range"])
    ratios = [c["grad_ratio_sq_mean"] for c in curves]
    assert ratios[0] < ratios[1] < ratios[2]
    # gradient theorem: ||dV|| = ||dW * tau_in / tau_out||, and the mixture of weight kinds keeps the ratio
    # between the input/output-layer expectations and the hidden-hidden one
    for c in curves:
        s = c["cob_range"]
        lo = min(1 + s**2 / 3, 1 / (1 - s**2), c["expected_ratio"])
        hi = max(1 + s**2 / 3, 1 / (1 - s**2), c["expected_ratio"])
        assert 0.5 * lo < c["grad_ratio_sq_mean"] < 2 * hi


def test_weight_histograms_counts_and_broadening(tmp_path):
    from nnteleport.lab.experiments import weight_histograms

    res = weight_histograms.run({"model_kwargs": {"mlp": {"hidden": [64, 64]}}, "bins": 21}, tmp_path, progress=False)
    _files_exist(tmp_path, res)
    n_weights = 64 * 64 + 64 * 64 + 64 * 10
    assert res["before"]["n"] == n_weights
    rows = read_csv(tmp_path / "histogram.csv")
    full = [r for r in rows if r["view"] == "full_range"]
    assert sum(r["before"] for r in full) == n_weights
    assert sum(r["after"] for r in full) == n_weights
    assert res["std_ratio"] > 1.2
    assert res["fraction_outside_init_range"] > 0


def _tiny_training_cfg(**kw):
    cfg = {
        "model_kwargs": TINY_MLP,
        "optimizers": ["sgd"],
        "lrs": [0.05],
        "seeds": 2,
        "epochs": 2,
        "max_iters_per_epoch": 6,
        "workers": 1,
        "tensorboard": False,
    }
    cfg.update(kw)
    return cfg


def test_training_experiment_pairs_runs_and_aggregates(tmp_path):
    from nnteleport.lab.experiments import training

    res = training.run(_tiny_training_cfg(), tmp_path, progress=False)
    _files_exist(tmp_path, res)
    assert res["num_runs"] == 4
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 4
    records = {}
    for r in runs:
        rec = json.loads((r / "result.json").read_text())
        records[(rec["config"]["arm"], rec["config"]["seed"])] = rec["result"]["history"]
    assert records[("teleport", 0)]["teleports"][0]["epoch"] == 0
    assert records[("none", 0)]["teleports"] == []
    # teleporting at initialisation preserves the function: the initial validation loss is the same
    assert records[("teleport", 0)]["initial"]["val_loss"] == pytest.approx(
        records[("none", 0)]["initial"]["val_loss"], rel=1e-5
    )
    # the aggregate is the mean / sample std across seeds, recomputed here with numpy
    curves = read_csv(tmp_path / "curves.csv")
    row = next(c for c in curves if c["arm"] == "teleport" and c["epoch"] == 1)
    vals = [records[("teleport", s)]["train_loss"][0] for s in (0, 1)]
    assert row["train_loss_mean"] == pytest.approx(np.mean(vals))
    assert row["train_loss_std"] == pytest.approx(np.std(vals, ddof=1))
    gap = res["gaps"][0]["gap_first_epoch"]["mean"]
    ref = np.mean([records[("none", s)]["train_loss"][0] - records[("teleport", s)]["train_loss"][0] for s in (0, 1)])
    assert gap == pytest.approx(ref)
    # a second run reads the finished runs back instead of training again
    stamp = {r.name: (r / "result.json").stat().st_mtime_ns for r in runs}
    again = training.run(_tiny_training_cfg(), tmp_path, progress=False)
    assert {r.name: (r / "result.json").stat().st_mtime_ns for r in runs} == stamp
    assert again["gaps"] == res["gaps"]


def test_paired_gaps_skip_diverged_runs():
    from nnteleport.lab.experiments.training import paired_gaps

    def rec(arm, seed, losses):
        task = {
            "model": "m",
            "dataset": "d",
            "activation": "relu",
            "optimizer": "sgd",
            "lr": 0.1,
            "arm": arm,
            "seed": seed,
        }
        hist = {"train_loss": losses, "iter_loss": losses, "val_acc": [0.5] * len(losses)}
        return {"task": task, "history": hist}

    records = [
        rec("none", 0, [2.0, 1.0]),
        rec("x", 0, [1.5, 0.5]),
        rec("none", 1, [2.0, 1.0]),
        rec("x", 1, [None, None]),
    ]
    (g,) = paired_gaps(records, baseline="none", arm_name="x", early_epochs=2, early_iters=2)
    assert g["diverged"] == {"none": 0, "x": 1}
    assert g["gap_first_epoch"]["n"] == 1
    assert g["gap_first_epoch"]["mean"] == pytest.approx(0.5)
    assert g["gap_early"]["mean"] == pytest.approx(0.5)


def test_pseudo_teleport_jumps_as_far_as_the_teleport(tmp_path):
    from nnteleport.lab.experiments import pseudo_teleport

    res = pseudo_teleport.run(_tiny_training_cfg(seeds=1), tmp_path, progress=False)
    _files_exist(tmp_path, res)
    jumps = read_csv(tmp_path / "jumps.csv")
    dist = {r["kind"]: r["distance"] for r in jumps}
    assert set(dist) == {"pseudo", "teleport"}
    assert dist["pseudo"] == pytest.approx(dist["teleport"], rel=1e-6)
    assert {g["arm"] for g in res["gaps"]} == {"pseudo", "teleport"}


def test_mid_training_arms_agree_until_the_teleport(tmp_path):
    from nnteleport.lab.experiments import mid_training

    cfg = _tiny_training_cfg(models=["mlp"], seeds=1, epochs=3, teleport_at=2, cob_ranges=[0.5, 0.9])
    res = mid_training.run(cfg, tmp_path, progress=False)
    _files_exist(tmp_path, res)
    hists = {}
    for r in (tmp_path / "runs").iterdir():
        rec = json.loads((r / "result.json").read_text())
        hists[rec["config"]["arm"]] = rec["result"]["history"]
    assert set(hists) == {"none", "s=0.5", "s=0.9"}
    for arm in ("s=0.5", "s=0.9"):
        # same seed, same initialisation, same batches: identical before the teleport at epoch 2
        assert hists[arm]["train_loss"][:2] == hists["none"]["train_loss"][:2]
        assert hists[arm]["teleports"][0]["epoch"] == 2
    assert {e["arm"] for e in res["effects"]} == {"s=0.5", "s=0.9"}
    with pytest.raises(ValueError, match="teleport_at"):
        mid_training.run({**cfg, "teleport_at": 3}, tmp_path / "bad", progress=False)


def test_interpolate_endpoints_and_midpoint():
    from nnteleport.lab.experiments.interpolation import interpolate
    from nnteleport.lab.models import build_model

    torch.manual_seed(0)
    a = build_model("mlp", in_shape=(3,), num_classes=2, hidden=[4], batchnorm=True).double()
    b = build_model("mlp", in_shape=(3,), num_classes=2, hidden=[4], batchnorm=True).double()
    b.features[1].running_mean.fill_(2.0)
    for alpha, ref in ((0.0, a), (1.0, b)):
        mixed = interpolate(a, b, alpha)
        for k, v in mixed.state_dict().items():
            torch.testing.assert_close(v, ref.state_dict()[k], rtol=0, atol=0)
    mid = interpolate(a, b, 0.5).state_dict()
    for k, v in mid.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (a.state_dict()[k] + b.state_dict()[k]) / 2)


def test_interpolation_profiles_keep_endpoints(tmp_path):
    from nnteleport.lab.experiments import interpolation

    res = interpolation.run(
        {
            "model_kwargs": TINY_MLP,
            "batch_sizes": [32, 512],
            "epochs": 1,
            "num_alphas": 5,
            "eval_examples": 128,
            "cob_ranges": [0.9],
        },
        tmp_path,
        progress=False,
    )
    _files_exist(tmp_path, res)
    assert set(res["profiles"]) == {"original", "s=0.9"}
    # teleportation preserves both endpoints' functions (float32 round-off on the loss)
    assert res["profiles"]["s=0.9"]["endpoint_loss_change"] < 1e-4
    rows = read_csv(tmp_path / "profiles.csv")
    # per seed: 0 and 1 are on the 5-point grid [-0.5, 0, 0.5, 1, 1.5]
    assert len(res["seeds"]) == 3 and len(rows) == 3 * 2 * 5


def test_feature_maps_are_channelwise_multiples(tmp_path):
    from nnteleport.lab.experiments import feature_maps

    res = feature_maps.run(
        {
            "max_iters_per_epoch": 4,
            "model": "vgg",
            "model_kwargs": {"vgg": {"width": 0.125, "config": "vgg11"}},
            "epochs": 1,
            "activations": ["tanh"],
            "layer": "features.2",
            "num_channels": 4,
        },
        tmp_path,
        progress=False,
    )
    _files_exist(tmp_path, res)
    r = res["activations"]["tanh"]
    assert r["max_output_diff"] < 1e-4 * max(1.0, r["max_abs_output"])
    # a_V = tau_c * a_W per channel (Eq. A9): the scalar fit leaves float32 round-off only
    assert r["max_residual_of_scalar_fit"] < 1e-4
    assert 0.1 - 1e-6 <= r["fitted_ratio_abs"]["min"] and r["fitted_ratio_abs"]["max"] <= 1.9 + 1e-6
    assert r["relative_feature_change"] > 0.05
    maps = np.load(tmp_path / "maps.npz")
    assert maps["tanh_original"].shape[1] == 4
    with pytest.raises(ValueError, match="no module 'nope'"):
        feature_maps.run({"layer": "nope", "activations": ["relu"], "epochs": 1}, tmp_path / "bad", progress=False)


def test_epochs_to_reach_interpolates():
    from nnteleport.lab.experiments.training import epochs_to_reach

    assert epochs_to_reach([3.0, 2.0, 1.0], 1.0) == 3.0
    assert epochs_to_reach([3.0, 2.0, 1.0], 1.5) == pytest.approx(2.5)  # halfway between epochs 2 and 3
    assert epochs_to_reach([0.5, 0.4], 1.0) == 1.0
    assert math.isnan(epochs_to_reach([3.0, 2.0], 1.0))
    assert math.isnan(epochs_to_reach([3.0, float("nan")], 1.0))


def test_calibrate_bn_sets_batch_statistics():
    from nnteleport.lab.experiments.level_curves import calibrate_bn
    from nnteleport.lab.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", in_shape=(4,), num_classes=2, hidden=[3], batchnorm=True).double().eval()
    x = torch.randn(16, 4, dtype=torch.float64)
    calibrate_bn(model, x)
    bn = model.features[1]
    z = model.features[0](x).detach()
    torch.testing.assert_close(bn.running_mean, z.mean(0))
    torch.testing.assert_close(bn.running_var, z.var(0, unbiased=True))
    assert bn.momentum == 0.1 and not model.training


def test_training_numbers_do_not_depend_on_workers(tmp_path):
    # the CLI's process has all cores; before, one worker ran in it with every thread and two workers got one
    # thread each, and the histories differed at round-off
    from nnteleport.lab.experiments import training

    # wide enough that one and two threads round differently (the 16-wide test MLP would hide it)
    wide = {"model_kwargs": {"mlp": {"hidden": [256, 256]}}}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = training.run(_tiny_training_cfg(workers=1, **wide), tmp_path / "w1", progress=False)
    finally:
        torch.set_num_threads(before)
    two = training.run(_tiny_training_cfg(workers=2, **wide), tmp_path / "w2", progress=False)
    assert one["gaps"] == two["gaps"]

    def histories(out):
        res = {}
        for p in sorted((out / "runs").glob("*/result.json")):
            h = json.loads(p.read_text())["result"]["history"]
            h.pop("seconds"), h.pop("timing")  # wall times
            res[p.parent.name] = h
        return res

    assert histories(tmp_path / "w1") == histories(tmp_path / "w2") and len(histories(tmp_path / "w1")) == 4
