"""Tests of ``train(..., loader_workers=N)``: DataLoader worker processes for generic datasets.

The contract: the same batches (index slices, loader-generator state) as without workers; with a deterministic
dataset the same run bit for bit; with a random transform in ``__getitem__`` reproducible per (seed, epoch,
worker count), also across a resume; workers shut down when an epoch is cut short or training raises;
nnteleport's own datasets never use workers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, get_worker_info

from nnteleport.errors import ConfigMismatchError, InvalidValueError
from nnteleport.lab.data import TensorPairDataset, load_dataset
from nnteleport.lab.training import Callback, load_checkpoint, train
from nnteleport.lab.training.batches import batches
from nnteleport.lab.training.loop import Trainer


class Pairs(Dataset):
    """A generic (non-nnteleport) dataset of ``(x[i], y[i])``; ``noise > 0`` adds ``noise * randn`` drawn from
    torch's global generator in ``__getitem__`` (a random transform)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, noise: float = 0.0) -> None:
        self.x, self.y, self.noise = x, y, noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        if self.noise:
            x = x + self.noise * torch.randn(x.shape, dtype=x.dtype)
        return x, self.y[i]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=96, val_size=32)


def generic(digits, noise: float = 0.0) -> tuple[Dataset, Dataset]:
    return Pairs(digits.train.x, digits.train.y, noise), digits.val


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging) when the block takes longer than ``seconds``."""

    def fail(*_):
        raise TimeoutError(f"took longer than {seconds} s (a worker hang?)")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class ChildCount(Callback):
    """Records the number of live child processes at every step."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def on_step_end(self, trainer, step) -> None:
        self.counts.append(len(multiprocessing.active_children()))


KW = dict(epochs=2, batch_size=16, optimizer="momentum", lr=0.05, seed=5, progress=False)


def test_deterministic_generic_dataset_same_run_with_workers(digits):
    models, hists, gens, global_states = [], [], [], []
    for workers in (0, 2):
        model = mlp()
        torch.manual_seed(1)
        opt = lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)  # noqa: E731
        trainer = Trainer(model, generic(digits)[0], optimizer=opt, batch_size=16, seed=5,
                          loader_workers=workers)  # fmt: skip
        trainer.fit(2)
        models.append(model)
        gens.append(trainer.loader_generator.get_state())
        global_states.append(torch.get_rng_state())
    assert state_equal(*models)
    assert torch.equal(*gens)  # the same order was drawn, and nothing else from the loader generator
    assert torch.equal(*global_states)  # the workers' seeds do not come from the global generator
    for workers in (0, 2):
        model = mlp()
        hists.append(train(model, generic(digits), loader_workers=workers, **KW))
        models.append(model)
    assert hists[0] == hists[1] and state_equal(models[2], models[3])


def test_random_transform_reproducible_and_resumable(digits, tmp_path):
    kw = {**KW, "epochs": 3, "max_iters_per_epoch": 4, "loader_workers": 2}
    ref_model, again_model = mlp(), mlp()
    ref = train(ref_model, generic(digits, 0.5), **kw)
    again = train(again_model, generic(digits, 0.5), **kw)
    assert ref == again and state_equal(ref_model, again_model)
    # the workers' streams, not the main process's generator: a different run than without workers
    no_workers_model = mlp()
    train(no_workers_model, generic(digits, 0.5), **{**kw, "loader_workers": 0})
    assert not state_equal(no_workers_model, ref_model)

    class Interrupt(Exception):
        pass

    def crash_at_2(model, epoch, history):
        if epoch == 2:
            raise Interrupt  # dies during epoch 2, after the epoch-1 checkpoint

    with pytest.raises(Interrupt):
        train(mlp(), generic(digits, 0.5), checkpoint_dir=tmp_path, callbacks=[crash_at_2], **kw)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert multiprocessing.active_children() == []
    model = mlp()
    resumed = train(model, generic(digits, 0.5), checkpoint_dir=tmp_path, **kw)
    assert resumed == ref and state_equal(model, ref_model)
    # another worker count draws other numbers: its checkpoint is not resumed
    with pytest.raises(ConfigMismatchError, match="loader_workers"):
        train(mlp(), generic(digits, 0.5), checkpoint_dir=tmp_path, **{**kw, "loader_workers": 1, "epochs": 4})


def test_worker_streams_depend_on_seed_and_epoch(digits):
    ds = Pairs(torch.zeros(12, 2, dtype=torch.float64), torch.arange(12), noise=1.0)

    def run(worker_seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(1)
        xs, ys = zip(*batches(ds, 5, gen, shuffle=True, workers=2, worker_seed=worker_seed))
        return torch.cat(xs), torch.cat(ys), gen.get_state()

    x1, y1, g1 = run(7)
    x2, y2, g2 = run(7)
    x3, y3, g3 = run(8)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(g1, g2)
    assert not torch.equal(x1, x3)
    gen0 = torch.Generator().manual_seed(1)
    y0 = torch.cat([y for _, y in batches(ds, 5, gen0, shuffle=True)])
    assert torch.equal(y1, y0) and torch.equal(y3, y0)  # the order of the 0-worker path
    assert torch.equal(g1, gen0.get_state()) and torch.equal(g3, g1)

    seen: list[dict[int, torch.Tensor]] = []

    class Record(Callback):
        def on_epoch_start(self, trainer):
            seen.append({})

        def on_step_end(self, trainer, step):
            seen[-1].update({int(i): x for i, x in zip(step.y, step.x)})

    model = nn.Linear(2, 12).double()
    opt = lambda m: torch.optim.SGD(m.parameters(), lr=0.0)  # noqa: E731
    Trainer(model, ds, optimizer=opt, batch_size=5, callbacks=[Record()], seed=3, loader_workers=2).fit(2)
    assert len(seen) == 2 and sorted(seen[0]) == sorted(seen[1]) == list(range(12))
    assert not any(torch.equal(seen[0][i], seen[1][i]) for i in range(12))  # fresh streams every epoch


def test_cut_epoch_and_exception_shut_workers_down(digits):
    counts = ChildCount()
    with deadline(60):
        h = train(mlp(), generic(digits, 0.1), callbacks=[counts], **{**KW, "max_iters_per_epoch": 2,
                  "loader_workers": 2})  # fmt: skip
    assert len(h.train_loss) == 2
    assert counts.counts and min(counts.counts) >= 2  # the workers were running during the steps
    assert multiprocessing.active_children() == []

    class Boom(Callback):
        def on_step_end(self, trainer, step):
            raise RuntimeError("boom")

    with deadline(60), pytest.raises(RuntimeError, match="boom") as raised:
        train(mlp(), generic(digits), callbacks=[Boom()], **{**KW, "loader_workers": 2})
    assert raised.tb is not None  # the traceback (holding the epoch's frames) is alive, the workers are not
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True, None])
def test_bad_loader_workers_refused(digits, bad):
    with pytest.raises(InvalidValueError, match=r"train: loader_workers.*" + repr(bad).replace(".", r"\.")):
        train(mlp(), generic(digits), loader_workers=bad, **KW)
    with pytest.raises(InvalidValueError, match="loader_workers"):
        Trainer(mlp(), generic(digits)[0], optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                loader_workers=bad)  # fmt: skip


def test_own_tensor_dataset_never_uses_workers(digits):
    assert isinstance(digits.train, TensorPairDataset)
    models, hists, counts = [], [], []
    for workers in (0, 2):
        model, count = mlp(), ChildCount()
        hists.append(train(model, digits, loader_workers=workers, callbacks=[count], **KW))
        models.append(model)
        counts.append(count.counts)
    assert hists[0] == hists[1] and state_equal(*models)
    assert max(counts[1]) == 0  # one vectorised gather in the main process


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_workers_on_cuda_pinned_batches(digits):
    models = []
    for workers in (0, 2):
        model = mlp()
        train(model, generic(digits), loader_workers=workers, device="cuda", **KW)
        models.append(model)
    assert state_equal(*models)


class Broken(Pairs):
    """Example 7 cannot be read in a worker process (the main process reads it, for the fingerprint)."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i == 7 and get_worker_info() is not None:
            raise ValueError("example 7 is broken")
        return super().__getitem__(i)


def test_worker_error_is_raised_and_workers_stop(digits):
    with deadline(60), pytest.raises(ValueError, match="example 7 is broken") as raised:
        train(mlp(), (Broken(digits.train.x, digits.train.y), None), **{**KW, "loader_workers": 2})
    assert raised.tb is not None  # the traceback (holding the loader's iterator) is alive, the workers are not
    assert multiprocessing.active_children() == []
