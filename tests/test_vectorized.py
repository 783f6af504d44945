"""Equivalence of nnteleport.lab.training.train_stacked (k members in one vmapped process) with sequential train().

Reference: each member trained alone by ``train(model, data, seed=s, teleport_at=...)`` with the same options.
Measured (torch 2.13, MKL, CPU): the runs are *not* bit-identical -- vmap's batching rules call other kernels
(F.linear as matmul + add instead of addmm with the bias inside the GEMM, a grouped convolution for a batched
one, reductions of the weight gradients and of the loss mean in another order), so one step differs by about one
ulp and the difference then grows like any round-off perturbation of gradient descent. After the ~20-40 steps
of these tests the largest relative difference of losses and parameters is ~2e-15 in float64 and ~6e-7 in
float32; the tolerances below (1e-12 and 2e-5) leave room for that growth on other BLAS builds and nothing
else: a wrong batch order, seed, learning rate, weight decay or optimizer formula changes the losses at the
first step by orders of magnitude more (the tests check the schedule, teleport records and batch counts
exactly).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from nnteleport.errors import InvalidValueError, UnsupportedModelError
from nnteleport.lab.data import TensorPairDataset
from nnteleport.lab.training import train, train_stacked

# round-off after ~40 steps (see the module docstring): float64 measured ~2e-15, float32 ~6e-7
RTOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 5))


def cnn() -> nn.Module:
    """Small CNN with BatchNorm (running statistics are stacked buffers). No conv bias before BN: its gradient is
    zero up to round-off, which Adam would amplify into steps of size ``lr`` in a round-off-chosen direction."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4, 5),
    )  # fmt: skip


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(150, 1, 4, 4, generator=g), torch.randint(0, 5, (150,), generator=g)
    xv, yv = torch.randn(40, 1, 4, 4, generator=g), torch.randint(0, 5, (40,), generator=g)
    return TensorPairDataset(x, y), TensorPairDataset(xv, yv)


def build(make, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return make()


def assert_close_runs(stacked, sequential, models, ref_models, rtol: float) -> None:
    """Same schedule, batch counts and teleport records; losses, accuracies and parameters to ``rtol``."""
    for h, r, m, rm in zip(stacked, sequential, models, ref_models):
        assert h.epoch == r.epoch and h.lr == r.lr and h.iters_per_epoch == r.iters_per_epoch
        assert [t["epoch"] for t in h.teleports] == [t["epoch"] for t in r.teleports]
        for a, b in zip(h.teleports, r.teleports):
            assert a["kind"] == b["kind"] and math.isclose(a["distance"], b["distance"], rel_tol=rtol)
        for name in ("iter_loss", "train_loss", "val_loss"):
            torch.testing.assert_close(torch.tensor(getattr(h, name)), torch.tensor(getattr(r, name)), rtol=rtol,
                                       atol=0, equal_nan=True, msg=name)  # fmt: skip
        assert math.isclose(h.initial["val_loss"], r.initial["val_loss"], rel_tol=rtol)
        for name in ("train_acc", "val_acc"):  # counts of argmax hits: exact (a round-off tie would be a fluke)
            torch.testing.assert_close(torch.tensor(getattr(h, name)), torch.tensor(getattr(r, name)), rtol=0, atol=0,
                                       equal_nan=True, msg=name)  # fmt: skip
        sd, ref = m.state_dict(), rm.state_dict()
        assert list(sd) == list(ref)  # the same structure as train() leaves (teleport wrappers only where it adds them)
        scale = max(float(v.abs().max()) for v in ref.values() if v.is_floating_point())
        for k in ref:
            if ref[k].is_floating_point():
                torch.testing.assert_close(sd[k], ref[k], rtol=rtol, atol=rtol * scale, msg=k)
            else:
                assert torch.equal(sd[k], ref[k]), k


# k = 3 seeds, the teleported arm of seed 0 (at initialisation) and of seed 1 (after one epoch: re-stacking)
MEMBERS = [(0, None), (1, None), (2, None), (0, 0), (1, 1)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    ("make", "optimizer"),
    [(mlp, "sgd"), (mlp, "momentum"), (mlp, "adam"), (cnn, "momentum"), (cnn, "adam")],
    ids=["mlp-sgd", "mlp-momentum", "mlp-adam", "cnn-momentum", "cnn-adam"],
)
def test_stacked_runs_equal_sequential_runs(data, make, optimizer, dtype):
    kw = dict(epochs=3, batch_size=32, optimizer=optimizer, lr=0.005 if optimizer == "adam" else 0.05,
              weight_decay=1e-3, lr_decay_epochs=(2,), init="kaiming", reset_optimizer_at=[0, 1], dtype=dtype,
              max_iters_per_epoch=4, eval_every=2)  # fmt: skip
    ref_models, sequential = [], []
    for seed, at in MEMBERS:
        ref_models.append(build(make, seed))
        sequential.append(train(ref_models[-1], data, seed=seed, teleport_at=at, progress=False, **kw))
    models = [build(make, seed) for seed, _ in MEMBERS]
    stacked = train_stacked(models, data, seeds=[s for s, _ in MEMBERS], teleport_at=[a for _, a in MEMBERS], **kw)
    assert [len(h.teleports) for h in stacked] == [0, 0, 0, 1, 1]
    assert stacked[0].lr == [kw["lr"], kw["lr"], kw["lr"] * 0.1]
    assert all(p.dtype == dtype for m in models for p in m.parameters())
    assert_close_runs(stacked, sequential, models, ref_models, RTOL[dtype])


class NoisyDataset(Dataset):
    """Draws noise from torch's global generator in ``__getitem__`` (like an augmentation)."""

    def __init__(self, ds: TensorPairDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        x, y = self.ds[i]
        return x + 0.1 * torch.randn(x.shape, dtype=x.dtype), y


def test_augmentation_draws_each_members_own_global_stream(data):
    """Each member's global generators are swapped in around its batches (and the extra draw that ends an epoch
    cut by max_iters_per_epoch is made), so the noise matches the sequential runs."""
    noisy = (NoisyDataset(data[0]), data[1])
    kw = dict(epochs=2, batch_size=32, optimizer="momentum", lr=0.05, dtype=torch.float64, max_iters_per_epoch=3)
    ref_models = [build(mlp, s) for s in (3, 4)]
    sequential = [train(m, noisy, seed=s, progress=False, **kw) for m, s in zip(ref_models, (3, 4))]
    models = [build(mlp, s) for s in (3, 4)]
    stacked = train_stacked(models, noisy, seeds=[3, 4], **kw)
    assert_close_runs(stacked, sequential, models, ref_models, RTOL[torch.float64])


def test_batchnorm_running_statistics_are_stacked(data):
    models = [build(cnn, s) for s in (0, 1)]
    before = [m[1].running_mean.clone() for m in models]
    train_stacked(models, data, seeds=[0, 1], epochs=1, max_iters_per_epoch=2, dtype=torch.float64)
    for m, b in zip(models, before):
        assert int(m[1].num_batches_tracked) == 2 and not torch.equal(m[1].running_mean, b)
    assert not torch.equal(models[0][1].running_mean, models[1][1].running_mean)


def test_refuses_what_it_cannot_stack(data):
    with pytest.raises(UnsupportedModelError, match="another architecture"):
        train_stacked([mlp(), cnn()], data, seeds=[0, 1], epochs=1)
    wide = nn.Sequential(nn.Flatten(), nn.Linear(16, 25), nn.ReLU(), nn.Linear(25, 24), nn.ReLU(), nn.Linear(24, 5))
    with pytest.raises(UnsupportedModelError, match=r"1\.weight"):
        train_stacked([mlp(), wide], data, seeds=[0, 1], epochs=1)
    dropout = [nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 5)) for _ in range(2)]
    with pytest.raises(UnsupportedModelError, match="random operation"):
        train_stacked(dropout, data, seeds=[0, 1], epochs=1)
    m = mlp()
    with pytest.raises(InvalidValueError, match="twice"):
        train_stacked([m, m], data, seeds=[0, 1], epochs=1)
    with pytest.raises(InvalidValueError, match="callable optimizer"):
        train_stacked([mlp()], data, seeds=[0], epochs=1, optimizer=lambda mod: torch.optim.SGD(mod.parameters()))
    with pytest.raises(InvalidValueError, match="seeds has 1 entries for 2 models"):
        train_stacked([mlp(), mlp()], data, seeds=[0], epochs=1)
    with pytest.raises(InvalidValueError, match="transform"):
        train_stacked([mlp()], data, seeds=[0], epochs=1, teleport_at=0, optimizer_state_on_teleport="transform")
    with pytest.raises(InvalidValueError, match="lr"):
        train_stacked([mlp()], data, seeds=[0], epochs=1, lr=-1.0)
