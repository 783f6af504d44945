"""No host synchronisation per training step (issue 17): the ops that make the host wait for the device
(``item``, ``float(t)``, ``bool(t)``, ``tolist``, ``numpy``, ``cpu``, ...) are counted under a
``TorchFunctionMode`` during ``train`` / ``train_stacked``, attributed to the innermost nnteleport frame, for
two runs that differ only in the number of steps per epoch. Whatever is counted per step shows up as a
difference between them. This runs on the CPU (where a read costs nothing) and checks the code paths that
would wait on a GPU.

Not counted: torch's own optimizers reading their step counters (``torch.optim.optimizer._get_value``; those
live on the CPU even for CUDA parameters unless ``capturable=True``, so reading them never waits for the GPU).
"""

from __future__ import annotations

import collections
import traceback
from collections.abc import Callable

import pytest
import torch
from torch.overrides import TorchFunctionMode

import nnteleport
from nnteleport.lab.data import load_dataset
from nnteleport.lab.models import build_model
from nnteleport.lab.training import train, train_stacked

#: Tensor methods that copy a value to the host (and so wait for the device)
READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu", "__format__", "__repr__"}


class CountReads(TorchFunctionMode):
    """Counts host reads by ``(op, nnteleport file, function)`` of the innermost nnteleport frame."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: collections.Counter[tuple[str, str, str]] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS:
            frames = traceback.extract_stack()[:-1]
            if not any(f.name == "_get_value" and "torch/optim" in f.filename for f in frames):
                ours = [f for f in frames if "/nnteleport/" in f.filename and "test_host_sync" not in f.filename]
                where = (ours[-1].filename.split("/nnteleport/")[-1], ours[-1].name) if ours else ("?", "?")
                self.reads[(name, *where)] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits")


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", in_shape=(1, 8, 8), num_classes=10, hidden=[16, 16])


def _reads(run: Callable[[int], None], steps: int) -> collections.Counter[tuple[str, str, str]]:
    with CountReads() as c:
        run(steps)
    return c.reads


def _per_step_reads(run: Callable[[int], None]) -> dict[tuple[str, str, str], tuple[int, int]]:
    """The read sites whose counts differ between 2 and 5 steps per epoch (3 epochs each)."""
    a, b = _reads(run, 2), _reads(run, 5)
    assert sum(a.values()) > 0  # the counter sees the epoch-end reads (history, evaluation)
    return {k: (a[k], b[k]) for k in set(a) | set(b) if a[k] != b[k]}


def _train(data, **kw) -> Callable[[int], None]:
    def run(steps: int) -> None:
        train(_mlp(), data, epochs=3, max_iters_per_epoch=steps, progress=False, **kw)

    return run


CASES: dict[str, dict] = {
    "momentum, teleport, reset, lr decay": dict(
        optimizer="momentum", teleport_at=[1], reset_optimizer_at=[1], lr_decay_epochs=[2], weight_decay=5e-4
    ),
    "adam": dict(optimizer="adam", lr=1e-3),
    "pseudo-teleport": dict(optimizer="sgd", pseudo_teleport=True, teleport_at=[1]),
    "G-SGD": dict(optimizer=lambda m: nnteleport.GSpaceOptimizer(m, torch.optim.SGD, lr=0.01)),
    "G-Adam": dict(optimizer=lambda m: nnteleport.GSpaceOptimizer(m, torch.optim.Adam, lr=1e-3)),
    "G-SGD reparametrized": dict(
        optimizer=lambda m: nnteleport.GSpaceOptimizer(m, torch.optim.SGD, lr=0.01, reparametrize=True)
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_train_reads_nothing_per_step(data, case):
    assert _per_step_reads(_train(data, **CASES[case])) == {}


def test_fixed_weights_read_nothing_per_step(data):
    def run(steps: int) -> None:
        model = _mlp()
        nnteleport.fix_weights(model)
        train(model, data, epochs=3, max_iters_per_epoch=steps, progress=False, optimizer="momentum")

    assert _per_step_reads(run) == {}


def test_distance_penalty_reads_nothing_per_step(data):
    def run(steps: int) -> None:
        model = _mlp()
        dist = nnteleport.CheckpointDistance(model, sigma=2.0, strength=0.1)
        dist.add_checkpoint()
        train(model, data, epochs=3, max_iters_per_epoch=steps, progress=False, penalty=lambda m: dist())

    assert _per_step_reads(run) == {}


def test_invariant_distance_reads_once_per_balancing_sweep(data):
    """The invariant penalty balances at every call, warm-started, until the largest Gauss-Seidel step is below
    its tolerance: that stopping rule reads one number per sweep (not one per neuron class), nothing else is
    read per step."""
    warm_sweeps: list[int] = []

    def run(steps: int) -> None:
        model = _mlp()
        dist = nnteleport.CheckpointDistance(model, sigma=2.0, strength=0.1, invariant=True,
                                             example_input=torch.randn(4, 1, 8, 8))  # fmt: skip
        dist.add_checkpoint()
        solve = dist._balancer.solve

        def counted(masses, u0=None, **kw):
            out = solve(masses, u0, **kw)
            if u0 is not None:
                warm_sweeps.append(out[1])
            return out

        dist._balancer.solve = counted
        train(model, data, epochs=3, max_iters_per_epoch=steps, progress=False, penalty=lambda m: dist())

    site = ("__float__", "distance/canonical.py", "_solve_gauss_seidel")
    for steps in (2, 5):
        warm_sweeps.clear()
        reads = _reads(run, steps)
        assert len(warm_sweeps) == 3 * steps - 1  # one cold (Newton) start, then one warm balancing per step
        assert reads[site] == sum(warm_sweeps) > 0
    assert {k[1:] for k in _per_step_reads(run)} == {site[1:]}


def test_invariant_distance_on_a_batchnorm_net_reads_nothing_per_step(data):
    """BatchNorm decouples the neurons: one balancing sweep is exact, so no stopping rule is read."""

    def run(steps: int) -> None:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                    torch.nn.Flatten(), torch.nn.Linear(4 * 64, 10))  # fmt: skip
        dist = nnteleport.CheckpointDistance(model, sigma=2.0, strength=0.1, invariant=True,
                                             example_input=torch.randn(4, 1, 8, 8))  # fmt: skip
        assert dist._balancer.exact_in_one_sweep
        dist.add_checkpoint()
        train(model, data, epochs=3, max_iters_per_epoch=steps, progress=False, penalty=lambda m: dist())

    assert _per_step_reads(run) == {}


def test_teleport_every_reads_only_in_the_teleports(data):
    """Teleports every 2 steps: the reads per step are the teleport's own (the engine's range check, the
    records), none in the step itself, the loop or the recording callbacks."""
    diff = _per_step_reads(_train(data, optimizer="momentum", teleport_every=2))
    assert diff, "more teleports must read more"
    files = {f for _, f, _ in diff}
    assert files <= {"lab/training/teleport.py", "engine/apply.py", "engine/cob.py"}, diff


def test_train_stacked_reads_nothing_per_step(data):
    def run(steps: int) -> None:
        train_stacked([_mlp(), _mlp()], data, seeds=[0, 1], teleport_at=[None, 1], epochs=3,
                      max_iters_per_epoch=steps, optimizer="momentum")  # fmt: skip

    assert _per_step_reads(run) == {}


def test_the_counter_sees_a_per_step_read(data):
    """The counter itself can fail: a penalty that reads a value every step is caught, once per step."""

    def penalty(m: torch.nn.Module) -> None:
        if float(next(m.parameters()).detach().sum()) > 1e9:
            raise AssertionError("unreachable")

    diff = _per_step_reads(_train(data, penalty=penalty))
    assert [(op, n_few, n_many) for (op, _, _), (n_few, n_many) in diff.items()] == [("__float__", 6, 15)], diff


def test_training_experiment_reads_nothing_per_step(tmp_path):
    """The ``training`` grid (teleported and baseline arms, its recording callbacks) at a tiny config."""
    from nnteleport.lab.experiments import training

    def run(steps: int) -> None:
        cfg = {"seeds": 1, "epochs": 2, "lrs": [0.01], "optimizers": ["momentum"], "workers": 1, "tensorboard": False,
               "max_iters_per_epoch": steps, "device": "cpu"}  # fmt: skip
        training.run(cfg, tmp_path / f"steps{steps}", progress=False)

    assert _per_step_reads(run) == {}
