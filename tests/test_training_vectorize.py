"""``vectorize: true`` in the training experiment (nnteleport.lab.experiments.stacked_grid): the seeds and arms of
each setting trained side by side by ``train_stacked`` give the sequential runs' results to round-off, under
their own run identities, resume per setting, and refuse what cannot be stacked before any run.

Reference: the same tiny config with ``vectorize: false`` (one ``train()`` per run). Everything in float64 (the
experiment has no dtype key: the models are built in torch's default dtype, set here; ``workers: 1`` trains in
this process). Measured on this machine: largest relative difference of any per-iteration loss 4e-16 (float32:
2e-7; on the longer DEMO config 2.6e-13 in float64 and up to 0.4 in float32, round-off amplified by chaotic
teleported momentum runs, hence float64); the tolerance 1e-12 is the one of tests/test_vectorized.py (round-off
growth on other BLAS builds, nothing else: a wrong seed, batch order, init or arm changes the first loss by orders
of magnitude more).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nnteleport.errors import ConfigMismatchError, Interrupted, InvalidValueError, UnsupportedModelError
from nnteleport.lab.experiments import training
from nnteleport.lab.experiments.sweep import config_sha256, read_result
from nnteleport.lab.training import vectorized

RTOL = 1e-12

CFG = {
    "models": ["mlp"],
    "model_kwargs": {"mlp": {"hidden": [16, 16]}},
    "datasets": ["digits"],
    "optimizers": ["sgd", "momentum"],
    "lrs": [0.05],
    "seeds": 2,
    "epochs": 3,
    "max_iters_per_epoch": 5,
    "workers": 1,
    "tensorboard": False,
}
N_RUNS = 8  # 2 optimizers x 2 seeds x 2 arms


@pytest.fixture(scope="module")
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.fixture(scope="module")
def both(float64, tmp_path_factory):
    """The same config in both modes, each in its own folder: ``{False: (out, results), True: (out, results)}``."""
    res = {}
    for vec in (False, True):
        out = tmp_path_factory.mktemp(f"vectorize-{vec}")
        res[vec] = (out, training.run({**CFG, "vectorize": vec}, out, progress=False))
    return res


def _records(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/result.json"))}


def _close(a, b, path: str = "") -> None:
    """Same structure; numbers equal to RTOL (relative, absolute near 0), everything else equal."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _close(u, v, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool) and isinstance(b, (int, float)):
        if math.isnan(a) or math.isinf(a):
            assert a == b or (math.isnan(a) and math.isnan(b)), path
        else:
            assert abs(a - b) <= RTOL * max(1.0, abs(a)), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_vectorized_runs_equal_the_sequential_runs_to_round_off(both):
    (seq_out, _), (vec_out, _) = both[False], both[True]
    seq, vec = _records(seq_out), _records(vec_out)
    assert len(seq) == N_RUNS and sorted(vec) == sorted(f"{rid}_vec" for rid in seq)
    worst = 0.0
    for rid, rec in seq.items():
        h, v = rec["result"]["history"], vec[f"{rid}_vec"]["result"]["history"]
        assert h["epoch"] == v["epoch"] and h["iters_per_epoch"] == v["iters_per_epoch"] and h["lr"] == v["lr"]
        assert len(h["iter_loss"]) == len(v["iter_loss"]) == 3 * 5
        for a, b in zip(
            h["iter_loss"] + h["train_loss"] + h["val_loss"], v["iter_loss"] + v["train_loss"] + v["val_loss"]
        ):
            worst = max(worst, abs(a - b) / abs(a))
        assert abs(h["train_loss"][-1] - v["train_loss"][-1]) <= RTOL * abs(h["train_loss"][-1]), rid
        assert h["val_acc"] == v["val_acc"] and h["train_acc"] == v["train_acc"], rid
        assert len(h["teleports"]) == len(v["teleports"]) == (1 if rid.endswith("_teleport") else 0)
        timed = ("seconds", "timing")  # wall times: the same entries, other values
        assert len(h["seconds"]) == len(v["seconds"]) and set(h["timing"]) == set(v["timing"]), rid
        assert all(len(np.atleast_1d(h["timing"][k])) == len(np.atleast_1d(v["timing"][k])) for k in h["timing"])
        _close({k: x for k, x in h.items() if k not in timed}, {k: x for k, x in v.items() if k not in timed}, rid)
        # the same per-run record format
        assert set(rec) | {"stacked"} == set(vec[f"{rid}_vec"])
    assert worst <= RTOL  # measured 4e-16: not bit-identical (other kernels), round-off only


def test_results_plots_and_verdict_have_the_same_structure_and_numbers(both):
    (seq_out, a), (vec_out, b) = both[False], both[True]
    a, b = json.loads((seq_out / "results.json").read_text()), json.loads((vec_out / "results.json").read_text())
    assert a["config"]["vectorize"] is False and b["config"]["vectorize"] is True
    a["config"].pop("vectorize"), b["config"].pop("vectorize")
    _close(a, b)
    assert sorted(p.name for p in seq_out.glob("*.png")) == sorted(p.name for p in vec_out.glob("*.png"))
    sec_a, _ = training.report_section(a, seq_out)
    sec_b, _ = training.report_section(b, vec_out)
    assert sec_a.status == sec_b.status and sec_a.verdict == sec_b.verdict


def test_run_identities_differ_between_the_modes(both):
    seq, vec = _records(both[False][0]), _records(both[True][0])
    assert not set(seq) & set(vec)
    for rid, rec in seq.items():
        v = vec[f"{rid}_vec"]
        assert "vectorize" not in rec["config"] and v["config"]["vectorize"] is True
        assert rec["config_sha256"] != v["config_sha256"]
        assert v["config_sha256"] == config_sha256(v["config"], ("tensorboard", "device"))
        stacked = json.loads((both[True][0] / v["stacked"]).read_text())
        assert stacked["result"]["runs"][f"{rid}_vec"] == v["result"]


def test_switching_the_mode_recomputes_and_never_reuses(float64, tmp_path, monkeypatch):
    cfg = {**CFG, "optimizers": ["sgd"]}
    training.run(cfg, tmp_path, progress=False)
    seq = _records(tmp_path)
    calls = []
    real = vectorized.train_stacked
    monkeypatch.setattr(vectorized, "train_stacked", lambda *a, **k: calls.append(1) or real(*a, **k))
    training.run({**cfg, "vectorize": True}, tmp_path, progress=False)
    assert calls == [1]  # trained, not read from the sequential runs
    both_modes = _records(tmp_path)
    assert len(both_modes) == 2 * len(seq) and all(both_modes[k] == seq[k] for k in seq)  # sequential ones untouched
    training.run({**cfg, "vectorize": True}, tmp_path, progress=False)  # finished: nothing trained again
    assert calls == [1]
    monkeypatch.setattr(training, "train_one", lambda *a, **k: pytest.fail("sequential run re-trained"))
    training.run(cfg, tmp_path, progress=False)  # and the sequential mode still finds its own runs


def test_interrupted_vectorized_sweep_resumes_only_the_missing_settings(both, tmp_path, monkeypatch):
    calls = []
    real = vectorized.train_stacked

    def interrupt_second(*a, **k):
        calls.append(k["optimizer"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(vectorized, "train_stacked", interrupt_second)
    with pytest.raises(Interrupted, match=r"1 of 2 runs finished.*run the same command again to resume"):
        training.run({**CFG, "vectorize": True}, tmp_path, progress=False)
    assert [p.parent.name for p in (tmp_path / "stacked" / "runs").glob("*/result.json")] == [
        "mlp_digits_relu_kaiming_sgd_lr0.05_vec"
    ]
    assert not (tmp_path / "results.json").exists() and not list(tmp_path.rglob("*.tmp"))
    calls.clear()
    monkeypatch.setattr(vectorized, "train_stacked", lambda *a, **k: calls.append(k["optimizer"]) or real(*a, **k))
    training.run({**CFG, "vectorize": True}, tmp_path, progress=False)
    assert calls == ["momentum"]  # only the setting that had not finished
    ref = _records(both[True][0])
    got = _records(tmp_path)
    assert sorted(got) == sorted(ref)
    for rid in ref:  # the same computation in the same process: the same numbers
        strip = lambda r: {k: v for k, v in r["result"]["history"].items() if k not in ("seconds", "timing")}  # noqa: E731
        assert strip(got[rid]) == strip(ref[rid]), rid
    assert read_result(tmp_path / "stacked", "mlp_digits_relu_kaiming_momentum_lr0.05_vec") is not None


def test_changed_config_of_a_vectorized_run_is_refused(both, tmp_path):
    out = both[True][0]
    expected = r"stacked/runs/mlp_digits_relu_kaiming_\w+_lr0.05_vec holds a result of another config.*epochs: stored 3"
    with pytest.raises(ConfigMismatchError, match=expected + ", now 4"):
        training.run({**CFG, "vectorize": True, "epochs": 4}, out, progress=False)


def test_model_that_cannot_be_stacked_is_refused_before_any_run(tmp_path):
    cfg = {**CFG, "vectorize": True, "model_kwargs": {"mlp": {"hidden": [16, 16], "dropout": 0.5}}}
    with pytest.raises(UnsupportedModelError) as info:
        training.run(cfg, tmp_path, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("vectorize: true cannot train mlp (relu) on digits with sgd")
    assert "random operation" in msg and "set vectorize: false" in msg
    assert not (tmp_path / "runs").exists() and not (tmp_path / "stacked").exists()
    with pytest.raises(InvalidValueError, match=r"writes no TensorBoard files .*; set tensorboard: false"):
        training.run({**CFG, "vectorize": True, "tensorboard": True}, tmp_path, progress=False)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "stacked").exists()


def test_pseudo_teleport_and_mid_training_take_the_key():
    from nnteleport.lab.experiments import mid_training, pseudo_teleport

    assert mid_training.DEFAULTS["vectorize"] is False and pseudo_teleport.DEFAULTS["vectorize"] is False
    arms = [training.arm("none"), training.arm("s=0.5", teleport_at=1, cob_range=0.5),
            training.arm("s=0.9", teleport_at=1, cob_range=0.9)]  # fmt: skip
    cfg = {**training.DEFAULTS, **CFG, "vectorize": True}
    from nnteleport.lab.experiments.stacked_grid import _stacks, setting_tasks

    settings = setting_tasks(training.grid_tasks(cfg, arms))
    assert len(settings) == 2 and all(len(s["members"]) == 6 for s in settings)
    # one stack per CoB range (train_stacked shares cob_range); the baselines join the first
    assert _stacks(settings[0]["members"]) == [[0, 1, 3, 4], [2, 5]]
