"""Tests of nnteleport.gspace.fixing: fixed entries never move, rescaling to ±value keeps the function, selections."""

from __future__ import annotations

import contextlib
import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnteleport import FixedWeights, fix_weights

DT = torch.float64


def mlp(widths, bias=True):
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(DT)


def convnet():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 3, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 5),
        nn.ReLU(),
        nn.Linear(5, 2),
    ).to(DT)


MODELS = {"mlp": (lambda: mlp((5, 7, 3, 6, 2)), (5,)), "conv": (convnet, (2, 8, 8))}


def make(name, seed=0):
    torch.manual_seed(seed)
    build, shape = MODELS[name]
    return build(), torch.randn(16, *shape, dtype=DT)


OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=True),
    "adam-wd": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.5),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, weight_decay=0.1),
}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize(("value", "select"), [(None, "diagonal"), (1.0, "diagonal"), (0.5, "hungarian")])
@pytest.mark.parametrize("name", list(MODELS))
def test_fixed_entries_never_move(name, value, select, opt):
    model, x = make(name)
    handle = fix_weights(model, value=value, select=select)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = OPTIMIZERS[opt](model.parameters())
    y = torch.randint(0, 2, (16,))
    for _ in range(30):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    for n, mask in handle.masks.items():
        p = model.get_parameter(n)
        assert torch.equal(p[mask], before[n][mask]), n  # bitwise
        assert not torch.equal(p[~mask], before[n][~mask]), n  # the rest trained
    handle.remove()


@pytest.mark.parametrize("select", ["diagonal", "hungarian"])
@pytest.mark.parametrize("value", [1.0, 0.3])
@pytest.mark.parametrize("name", list(MODELS))
def test_value_rescaling_keeps_function(name, value, select):
    model, x = make(name)
    y = model(x)
    handle = fix_weights(model, value=value, select=select)
    torch.testing.assert_close(model(x), y, rtol=1e-12, atol=1e-13)
    for n, mask in handle.masks.items():
        w = model.get_parameter(n)[mask]
        torch.testing.assert_close(w.abs(), torch.full_like(w, value), rtol=1e-13, atol=0)
    handle.remove()


@pytest.mark.parametrize("name", list(MODELS))
def test_one_fixed_outgoing_weight_per_hidden_neuron(name):
    model, _ = make(name)
    handle = fix_weights(model)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert list(handle.masks) == [f"{n}.weight" for n in names[1:]]
    for prev, n in zip(layers[:-1], names[1:]):
        mask = handle.masks[f"{n}.weight"]
        per_source = mask.reshape(mask.shape[0], prev.weight.shape[0], -1).sum(dim=(0, 2))
        assert torch.equal(per_source, torch.ones_like(per_source))
    assert handle.num_fixed == sum(m.weight.shape[0] for m in layers[:-1])
    handle.remove()


def test_diagonal_positions_linear():
    model = mlp((4, 5, 3, 2), bias=False)
    handle = fix_weights(model, select="diagonal")
    mask = handle.masks["2.weight"]  # 3 x 5: neuron k of layer 0 -> row k mod 3, column k
    expected = torch.zeros(3, 5, dtype=torch.bool)
    for k in range(5):
        expected[k % 3, k] = True
    assert torch.equal(mask, expected)
    handle.remove()


def test_hungarian_minimises_log_distance_brute_force():
    """The last layer's selection (no rescaling before it) is an optimal assignment."""
    torch.manual_seed(4)
    model = mlp((3, 4, 4), bias=False)
    W = model[2].weight.detach().clone()
    handle = fix_weights(model, value=0.7, select="hungarian")
    mask = handle.masks["2.weight"]
    cost = (W.abs().log() - np.log(0.7)).abs()
    chosen = cost[mask].sum().item()
    best = min(sum(cost[perm[k], k].item() for k in range(4)) for perm in itertools.permutations(range(4)))
    assert chosen == pytest.approx(best, rel=1e-12)
    diag = fix_weights(copy.deepcopy(mlp((3, 4, 4), bias=False)), select="diagonal")
    diag.remove()
    handle.remove()


def test_gradients_of_fixed_entries_are_zero_and_remove_releases():
    model, x = make("mlp")
    handle = fix_weights(model, value=1.0)
    model(x).pow(2).sum().backward()
    for n, mask in handle.masks.items():
        assert torch.all(model.get_parameter(n).grad[mask] == 0)
    handle.remove()
    before = {n: model.get_parameter(n).detach().clone() for n in handle.masks}
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    n, mask = next(iter(handle.masks.items()))
    assert not torch.equal(model.get_parameter(n)[mask], before[n][mask])


def test_restore_after_manual_change():
    model, _ = make("mlp")
    handle = fix_weights(model, value=1.0)
    n, mask = next(iter(handle.masks.items()))
    with torch.no_grad():
        model.get_parameter(n).add_(1.0)
    handle.restore()
    assert torch.all(model.get_parameter(n)[mask].abs() == 1.0)
    assert isinstance(handle, FixedWeights)
    handle.remove()


def test_bad_inputs_raise():
    model, _ = make("mlp")
    with pytest.raises(ValueError, match="positive"):
        fix_weights(model, value=-1.0)
    with pytest.raises(ValueError, match="'diagonal', 'hungarian'"):
        fix_weights(model, select="random")
    with torch.no_grad():
        model[2].weight[0, 0] = 0.0  # diagonal pick of neuron 0 of layer 0
    with pytest.raises(ValueError, match=r"neurons \[0\].*zero"):
        fix_weights(model, value=1.0)
    with pytest.raises(ValueError, match="Sigmoid"):
        fix_weights(nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2)))


@pytest.mark.parametrize("mode", ["auto", "optimizer=", "attach", "context"])
def test_unrelated_optimizer_does_not_restore_and_modes_keep_the_guarantee(mode):
    """Only the optimizers that train the fixed parameters restore them: a second model's optimizer steps
    without touching the first model (whose fixed entries were edited by hand, so a restore would show), while
    the first model's optimizer keeps its fixed entries bitwise, in each way of tying the handle to it."""
    model, x = make("mlp")
    other, _ = make("mlp", seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1)
    other_opt = torch.optim.AdamW(other.parameters(), lr=0.01, weight_decay=0.5)
    kw = {"optimizer": opt} if mode in ("optimizer=", "context") else {}
    handle = fix_weights(model, value=1.0, **kw)
    if mode == "attach":
        assert handle.attach(opt) is handle
    y = torch.randint(0, 2, (16,))
    n, mask = next(iter(handle.masks.items()))
    with handle if mode == "context" else contextlib.nullcontext():
        with torch.no_grad():
            model.get_parameter(n).add_(0.25)  # off the fixed values: a restore would undo it
        edited = model.get_parameter(n).detach().clone()
        for _ in range(3):
            other_opt.zero_grad()
            F.cross_entropy(other(x), y).backward()
            other_opt.step()
        assert torch.equal(model.get_parameter(n), edited)  # the unrelated optimizer left the model alone
        handle.restore()
        before = {k: model.get_parameter(k).detach().clone() for k in handle.masks}
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        for k, m in handle.masks.items():
            p = model.get_parameter(k)
            assert torch.equal(p[m], before[k][m]), k
            assert not torch.equal(p[~m], before[k][~m]), k
    if mode != "context":
        handle.remove()
    after = model.get_parameter(n).detach().clone()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()  # released: the fixed entries move again (weight decay, momentum)
    assert not torch.equal(model.get_parameter(n)[mask], after[mask])
