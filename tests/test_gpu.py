"""Devices (issue 17): the ``device`` key of every experiment and of ``train``, on the CPU; and the engine, the
G-space optimizer, weight fixing, the distance penalty, ``train`` and an experiment on CUDA (``gpu`` marker:
skipped without CUDA). CUDA results are compared with the same computation on the CPU in float64."""

from __future__ import annotations

import ast
import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnteleport as nt
from nnteleport.cli import main
from nnteleport.errors import InvalidValueError
from nnteleport.lab.data import ImageDataset, TensorPairDataset, load_dataset
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.experiments import EXPERIMENTS, get_experiment
from nnteleport.lab.experiments.config import load_config, validate_config
from nnteleport.lab.models import build_model
from nnteleport.lab.training import evaluate, train
from nnteleport.lab.training.batches import batches, on_device

CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")]


@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 on CUDA without TF32: on Ampere and later GPUs cuDNN computes float32 convolutions in TF32 by
    default (10-bit mantissa, relative error ~1e-3), which would hide a wrong teleport at the float32
    tolerances below; the comparisons are of float32 round-off. Restored after each test."""
    if not CUDA:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --------------------------------------------------------------------------------------------------
# the device key, on any machine


def test_resolve_device_specs(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    _no_cuda(monkeypatch)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "cpu:0", "", 3):
        with pytest.raises(InvalidValueError, match="is not a device; choose one of: auto, cpu, cuda, cuda:N"):
            resolve_device(bad)
    with pytest.raises(InvalidValueError, match=r"device='cuda:1': CUDA is not available"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(InvalidValueError, match="has 1 CUDA device"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_experiment_has_the_device_key_and_checks_it(name, monkeypatch):
    module = get_experiment(name)
    assert module.DEFAULTS["device"] == "auto"
    cfg = load_config(name, None, ["device=cpu"], check_files=False)
    assert cfg["device"] == "cpu"
    with pytest.raises(InvalidValueError, match=rf"experiment '{name}': device='gpu' is not a device"):
        validate_config(name, {**cfg, "device": "gpu"}, check_files=False)
    _no_cuda(monkeypatch)
    with pytest.raises(InvalidValueError, match="CUDA is not available"):
        load_config(name, None, ["device=cuda"], check_files=False)


def _calls(tree: ast.AST) -> set[str]:
    return {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
            for n in ast.walk(tree) if isinstance(n, ast.Call)}  # fmt: skip


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_experiment_resolves_its_device(name):
    """The key is used, not only accepted: ``run`` (or the per-run function it hands its tasks to) resolves it;
    the three training-grid experiments hand theirs to ``training.grid_tasks``, whose ``train_one`` resolves it."""
    module = get_experiment(name)
    calls = _calls(ast.parse(inspect.getsource(module)))
    if "resolve_device" not in calls:
        assert "grid_tasks" in calls and "run_grid" in calls, name
        assert "resolve_device" in _calls(ast.parse(inspect.getsource(get_experiment("training").train_one)))


def test_cli_device_cuda_without_cuda_is_one_line_before_work(monkeypatch, capsys, tmp_path):
    _no_cuda(monkeypatch)
    assert main(["experiment", "weight-histograms", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "device='cuda'" in err and "CUDA is not available" in err
    assert not (tmp_path / "o").exists()
    assert main(["experiment", "weight-histograms", "--device", "tpu", "--dry-run"]) == 2
    assert "device='tpu' is not a device" in capsys.readouterr().err


def _digits_run(**kw):
    data = load_dataset("random", seed=0, input_shape=(1, 8, 8), num_train=256, num_val=64)
    torch.manual_seed(0)
    model = build_model("mlp", in_shape=data.input_shape, num_classes=10)
    return train(model, data, epochs=2, batch_size=64, teleport_at=1, progress=False, seed=1, **kw), model


def test_train_device_cpu_and_auto_give_the_default_result_bit_for_bit(monkeypatch):
    _no_cuda(monkeypatch)
    h0, m0 = _digits_run()
    for spec in ("cpu", "auto", torch.device("cpu")):
        h, m = _digits_run(device=spec)
        assert h == h0
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), m0.parameters()))


def test_experiment_with_device_cpu_gives_the_default_result(tmp_path, monkeypatch):
    _no_cuda(monkeypatch)
    from nnteleport.lab.experiments import weight_histograms

    small = {"dataset": "random", "model_kwargs": {"mlp": {"hidden": [32, 32]}}}
    a = weight_histograms.run(small, tmp_path / "a", progress=False)
    b = weight_histograms.run({**small, "device": "cpu"}, tmp_path / "b", progress=False)
    assert a["before"] == b["before"] and a["after"] == b["after"] and a["layers"] == b["layers"]


def test_on_device_cpu_is_the_dataset_itself():
    ds = TensorPairDataset(torch.randn(10, 3), torch.arange(10))
    assert on_device(ds, "cpu") is ds


def test_evaluate_sums_like_the_host_in_float64():
    """The on-device sums give the float64 mean of the batch losses weighted by size, and the accuracy."""
    g = torch.Generator().manual_seed(0)
    ds = TensorPairDataset(torch.randn(37, 5, generator=g), torch.randint(0, 3, (37,), generator=g))
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    loss, acc = evaluate(model, ds, batch_size=8)
    ref_sum, ref_correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, 37, 8):
            x, y = ds.x[i : i + 8], ds.y[i : i + 8]
            out = model(x)
            ref_sum += float(F.cross_entropy(out, y)) * len(x)
            ref_correct += int((out.argmax(1) == y).sum())
    assert loss == ref_sum / 37 and acc == ref_correct / 37


# --------------------------------------------------------------------------------------------------
# CUDA (skipped without it)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).abs().max() / b.double().abs().max().cpu())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
@pytest.mark.parametrize("name", ["mlp", "resnet18", "densenet"])
def test_cuda_teleport_preserves_the_function(name, dtype, tol):
    shape = (3, 16, 16) if name != "mlp" else (20,)
    torch.manual_seed(0)
    model = build_model(name, in_shape=shape, num_classes=7).to("cuda", dtype).eval()
    x = torch.randn(8, *shape, device="cuda", dtype=dtype)
    v = nt.teleport(model, x, cob_range=0.9, sampling="inter", generator=torch.Generator().manual_seed(0)).eval()
    assert all(p.is_cuda for p in v.parameters()) and all(b.is_cuda for b in v.buffers())
    with torch.no_grad():
        assert _rel(v(x), model(x)) < tol
    # the same generator on the CPU gives the same weights: the CoB is drawn on the CPU
    cpu = copy.deepcopy(model).cpu()
    v_cpu = nt.teleport(cpu, x.cpu(), cob_range=0.9, sampling="inter", generator=torch.Generator().manual_seed(0))
    for p, q in zip(v.parameters(), v_cpu.parameters()):
        torch.testing.assert_close(p.cpu(), q, rtol=1e-10 if dtype == torch.float64 else 1e-5, atol=1e-12)


def _relu_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def _steps(model: nn.Module, opt, n: int = 4, device: str = "cpu") -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        x = torch.randn(16, 6, generator=g, dtype=torch.float64).to(device)
        y = torch.randint(0, 3, (16,), generator=g).to(device)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_gsgd_step_matches_cpu():
    cpu = _relu_mlp()
    dev = copy.deepcopy(cpu).cuda()
    oc = nt.GSpaceOptimizer(cpu, torch.optim.SGD, lr=0.05)
    og = nt.GSpaceOptimizer(dev, torch.optim.SGD, lr=0.05)
    _steps(cpu, oc)
    _steps(dev, og, device="cuda")
    for p, q in zip(cpu.parameters(), dev.parameters()):
        assert q.is_cuda
        torch.testing.assert_close(q.cpu(), p, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_weight_fixing_keeps_the_fixed_weights_and_matches_cpu():
    cpu = _relu_mlp()
    dev = copy.deepcopy(cpu).cuda()
    hc, hg = nt.fix_weights(cpu), nt.fix_weights(dev)
    fixed = {n: dev.get_parameter(n).detach()[m.to("cuda")].clone() for n, m in hg.masks.items()}
    _steps(cpu, torch.optim.SGD(cpu.parameters(), lr=0.05))
    _steps(dev, torch.optim.SGD(dev.parameters(), lr=0.05), device="cuda")
    for n, m in hg.masks.items():
        assert torch.equal(dev.get_parameter(n).detach()[m.to("cuda")], fixed[n])
    for p, q in zip(cpu.parameters(), dev.parameters()):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-10, atol=1e-12)
    hc.remove()
    hg.remove()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("invariant", [False, True])
def test_cuda_distance_penalty_value_and_gradient_match_cpu(invariant):
    ref = _relu_mlp()
    cpu = copy.deepcopy(ref)
    with torch.no_grad():
        for p in cpu.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dev = copy.deepcopy(cpu).cuda()
    x = torch.randn(8, 6, dtype=torch.float64)
    dc = nt.CheckpointDistance(cpu, sigma=2.0, strength=1.5, invariant=invariant, example_input=x)
    dg = nt.CheckpointDistance(dev, sigma=2.0, strength=1.5, invariant=invariant, example_input=x.cuda())
    dc.add_checkpoint(ref)
    dg.add_checkpoint(copy.deepcopy(ref).cuda())
    vc, vg = dc(cpu), dg(dev)
    assert vg.is_cuda and float(vc) > 0
    vc.backward()
    vg.backward()
    torch.testing.assert_close(vg.cpu(), vc, rtol=1e-10, atol=1e-12)
    for p, q in zip(cpu.parameters(), dev.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_train_runs_on_the_device_and_tracks_cpu():
    hc, _ = _digits_run(device="cpu", dtype=torch.float64)
    hg, mg = _digits_run(device="cuda", dtype=torch.float64)
    assert all(p.is_cuda for p in mg.parameters())
    assert len(hg.iter_loss) == len(hc.iter_loss) and hg.teleports[0]["epoch"] == 1
    torch.testing.assert_close(torch.tensor(hg.iter_loss), torch.tensor(hc.iter_loss), rtol=1e-8, atol=1e-10)
    assert hg.val_acc == hc.val_acc


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_resident_images_augment_like_the_cpu():
    g = torch.Generator().manual_seed(0)
    ds = ImageDataset(torch.randint(0, 256, (50, 3, 8, 8), generator=g, dtype=torch.uint8),
                      torch.randint(0, 10, (50,), generator=g), [0.5] * 3, [0.25] * 3, augment=True, pad=2)  # fmt: skip
    dev = on_device(ds, "cuda")
    assert dev.images.is_cuda and on_device(ds, "cuda") is dev
    torch.manual_seed(3)
    a = list(batches(ds, 16, torch.Generator().manual_seed(1), shuffle=True))
    torch.manual_seed(3)
    b = list(batches(dev, 16, torch.Generator().manual_seed(1), shuffle=True))
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xb.is_cuda and torch.equal(xb.cpu(), xa) and torch.equal(yb.cpu(), ya)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_experiment_at_a_tiny_config(tmp_path):
    from nnteleport.lab.experiments import training

    cfg = {"seeds": 1, "epochs": 2, "lrs": [0.01], "optimizers": ["sgd"], "workers": 1, "tensorboard": False,
           "max_iters_per_epoch": 3, "device": "cuda"}  # fmt: skip
    res = training.run(cfg, tmp_path / "gpu", progress=False)
    assert res["num_runs"] == 2 and res["config"]["device"] == "cuda"
    cpu = training.run({**cfg, "device": "cpu"}, tmp_path / "cpu", progress=False)
    for g, c in zip(res["gaps"], cpu["gaps"]):  # float32 on another device: round-off apart
        assert g["gap_first_epoch"]["median"] == pytest.approx(c["gap_first_epoch"]["median"], abs=1e-4)


def _schedule_task(cob: str, device: str | None, tmp_path) -> dict:
    from nnteleport.lab.experiments import teleport_schedule
    from nnteleport.lab.experiments.config import merge_config

    cfg = merge_config(teleport_schedule.DEFAULTS, {
        "dataset": "random", "models": ["mlp"], "model_kwargs": {"mlp": {"hidden": [16, 16]}}, "optimizers": ["adam"],
        "seeds": 1, "epochs": 1, "max_iters_per_epoch": 6, "every_steps": 2, "cobs": [cob], "schedules": ["every"],
        "lr_multipliers": [], "optimize_steps": 3, "dtype": "float64", "resnet_if_cifar": False})  # fmt: skip
    (task,) = [t for t in teleport_schedule.tasks(cfg) if t["cob"] == cob]
    if device is None:
        task.pop("device")
    else:
        task["device"] = device
    return teleport_schedule.train_one(task, tmp_path)["history"]


def _without_timing(h: dict) -> dict:
    """A history without its clock readings (``timing``, ``seconds``): what must not depend on the machine."""
    return {k: v for k, v in h.items() if k not in ("timing", "seconds")}


@pytest.mark.parametrize("cob", ["random", "optimized"])
def test_teleport_schedule_device_cpu_is_the_default_run(cob, tmp_path, monkeypatch):
    _no_cuda(monkeypatch)
    a, b = _schedule_task(cob, None, tmp_path), _schedule_task(cob, "cpu", tmp_path)
    assert len(a["teleports"]) == 2 and _without_timing(a) == _without_timing(b)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("cob", ["random", "optimized", "balanced"])
def test_cuda_teleport_schedule_run_tracks_cpu(cob, tmp_path):
    """Every-K teleports with a CoB choice on CUDA: the float64 losses and teleport records of the CPU run."""
    hc, hg = _schedule_task(cob, "cpu", tmp_path), _schedule_task(cob, "cuda", tmp_path)
    torch.testing.assert_close(torch.tensor(hg["iter_loss"]), torch.tensor(hc["iter_loss"]), rtol=1e-8, atol=1e-10)
    assert len(hg["teleports"]) == len(hc["teleports"]) == 2
    for rg, rc in zip(hg["teleports"], hc["teleports"]):
        assert rg["grad_norm_sq_after"] == pytest.approx(rc["grad_norm_sq_after"], rel=1e-7)
    assert all(s > 0 for s in hg["timing"]["step_seconds"]) and len(hg["timing"]["step_seconds"]) == 6


def _cuda_syncs(steps: int, **kw) -> int:
    """Synchronising CUDA calls (``torch.cuda.set_sync_debug_mode("warn")``) in a 3-epoch ``train`` on CUDA
    with ``steps`` steps per epoch."""
    import warnings

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("mlp", in_shape=(1, 8, 8), num_classes=10, hidden=[32, 32])
    old = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train(model, data, epochs=3, max_iters_per_epoch=steps, progress=False, device="cuda", **kw)
        finally:
            torch.cuda.set_sync_debug_mode(old)
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("kw", [dict(optimizer="momentum", teleport_at=[1]), dict(optimizer="adam", lr=1e-3)],
                         ids=["momentum-teleport", "adam"])  # fmt: skip
def test_cuda_train_does_not_synchronise_per_step(kw):
    """The GPU counterpart of tests/test_host_sync.py: CUDA's own sync detector counts the same synchronising
    calls with 2 and with 6 steps per epoch (the reads happen at the epochs' ends and at teleports only)."""
    few, many = _cuda_syncs(2, **kw), _cuda_syncs(6, **kw)
    assert few == many, (few, many)
