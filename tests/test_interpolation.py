"""interpolation: B trained to A's train loss (within a reported cap), several seeds, the barrier over the segment,
and the ``augment`` key reaching the data."""

from __future__ import annotations

import numpy as np
import pytest

from nnteleport.lab.data import load_dataset
from nnteleport.lab.experiments import interpolation
from nnteleport.lab.plotting import read_csv
from tests.test_data import write_cifar

TINY = {
    "model_kwargs": {"mlp": {"hidden": [24, 24]}},
    "batch_sizes": [32, 512],
    "epochs": 1,
    "num_alphas": 5,
    "eval_examples": 128,
    "cob_ranges": [0.9],
}


def test_barrier_linear_is_the_height_above_the_chord():
    a = [-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
    # on the chord from 1 (A) to 3 (B) except a bump of 0.7 at alpha 0.75; the points outside [0, 1] are ignored
    loss = [100.0, 1.0, 1.5, 2.0, 2.5 + 0.7, 3.0, 100.0]
    assert interpolation.barrier_linear(a, loss) == pytest.approx(0.7)
    # the old "barrier" (max inside minus the larger endpoint) would call this profile flat: 3.2 - 3 = 0.2
    flat = [0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 0.0]
    assert interpolation.barrier_linear(a, flat) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="alpha = 0"):
        interpolation.barrier_linear([0.5, 1.0], [1.0, 2.0])


def test_seed_list():
    assert interpolation.seed_list({"seeds": 3, "seed": 5}) == [5, 6, 7]
    assert interpolation.seed_list({"seeds": [2, 9], "seed": 0}) == [2, 9]


def test_b_trains_to_a_train_loss_over_seeds(tmp_path):
    res = interpolation.run({**TINY, "seeds": 2}, tmp_path, progress=False)
    assert res["seeds"] == [0, 1] and len(res["per_seed"]) == 2 and len(res["training"]) == 2
    for t, p in zip(res["training"], res["per_seed"]):
        assert t["reached"] is True and t["steps_B"] <= t["step_cap"]
        assert t["loss_B"] <= t["loss_A"]  # measured the way the stop rule measures it
        assert p["profiles"]["original"]["loss_B"] == pytest.approx(t["loss_B"], rel=1e-6)
        assert p["profiles"]["original"]["barrier_linear"] >= 0.0
    assert res["num_reached"] == 2
    s = res["summary"]["s=0.9"]["barrier_linear"]
    vals = [p["profiles"]["s=0.9"]["barrier_linear"] for p in res["per_seed"]]
    assert s["n"] == 2 and s["mean"] == pytest.approx(np.mean(vals))
    rows = read_csv(tmp_path / "profiles.csv")
    assert {r["seed"] for r in rows} == {0, 1} and len(rows) == 2 * 2 * 5
    # the first seed keeps the old result keys
    assert set(res["profiles"]) == {"original", "s=0.9"} and "barrier" in res["profiles"]["original"]
    sec, _ = interpolation.report_section(res, tmp_path)
    assert "2 seeds" in sec.numbers[0][1] or "over 2 seeds" in sec.numbers[0][1]


def test_b_that_hits_the_step_cap_is_counted_not_dropped(tmp_path):
    res = interpolation.run({**TINY, "seeds": 1, "max_steps": 1}, tmp_path, progress=False)
    (t,) = res["training"]
    assert t["reached"] is False and t["steps_B"] == t["step_cap"] == 3  # 1 step, rounded up to an epoch
    assert t["loss_B"] > t["loss_A"]
    assert res["num_reached"] == 0 and len(res["per_seed"]) == 1
    sec, _ = interpolation.report_section(res, tmp_path)
    assert "did not reach A's train loss in 1/1 seeds" in sec.verdict


def test_unmatched_training_keeps_the_old_protocol(tmp_path):
    res = interpolation.run({**TINY, "seeds": 1, "match_train_loss": False}, tmp_path, progress=False)
    (t,) = res["training"]
    assert t["reached"] is None and t["steps_B"] == 3 and t["steps_A"] == 45  # 1438 examples, 1 epoch each


def test_augment_key_switches_cifar_augmentation(tmp_path, monkeypatch):
    write_cifar(tmp_path)
    assert load_dataset("cifar10", tmp_path).train.augment  # the dataset's default: on
    assert not load_dataset("cifar10", tmp_path, augment=False).train.augment
    assert load_dataset("cifar10", tmp_path, augment=True).train.augment
    assert not load_dataset("cifar10", tmp_path, augment=False).val.augment
    load_dataset("digits", augment=False)  # datasets without augmentation ignore the key
    seen = []

    class _Stop(Exception):
        pass

    def fake_load(*args, **kwargs):
        seen.append(kwargs.get("augment"))
        raise _Stop

    monkeypatch.setattr(interpolation, "load_dataset", fake_load)
    for value in (True, False):
        with pytest.raises(_Stop):
            interpolation.run({**TINY, "augment": value}, tmp_path / "out", progress=False)
    assert seen == [True, False]
    assert interpolation.DEFAULTS["augment"] is True  # as before the key existed
    with pytest.raises(ValueError, match="augment"):
        interpolation.run({**TINY, "augment": "no"}, tmp_path / "out", progress=False)


def test_training_experiment_passes_augment_to_the_data(monkeypatch):
    """The training experiments' CIFAR augmentation is a config key (off in a paper configuration)."""
    from nnteleport.lab.experiments import training as tr

    seen = []
    monkeypatch.setattr("nnteleport.lab.data.load_dataset", lambda *a, **k: seen.append(k.get("augment")))
    tr._data.cache_clear()
    cfg = {**tr.DEFAULTS, "augment": False}
    task = tr.grid_tasks(cfg, [tr.arm("none")])[0]
    assert task["augment"] is False
    tr._data(task["dataset"], task["data_root"], task["augment"])
    tr._data.cache_clear()
    assert seen == [False]
