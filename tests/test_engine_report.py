"""The report names what the engine did: wrapper sites (module and functional, with their kind explained),
black boxes, parameters used outside their module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import nnteleport as nt


class _OneSite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.act, self.b = nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


def test_one_wrapper_site_is_singular_and_its_kind_explained():
    text = str(nt.analyze(_OneSite(), torch.randn(2, 3)).report)
    assert "1 site\n" in text + "\n" and "1 sites" not in text
    assert "act (module; wrapped where tau != 1)" in text


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(F.gelu(self.a(x)))


def test_graph_mode_lists_functional_call_sites():
    report = nt.analyze(_Functional(), torch.randn(2, 3), functional="graph").report
    sites = [s for s in report.wrapper_sites if s["functional"]]
    assert [s["module"] for s in sites] == ["gelu"]
    assert "gelu (functional call; wrapped where tau != 1)" in str(report)


class _Hooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.mid, self.b = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.mid.register_forward_hook(lambda m, i, o: o * 2)

    def forward(self, x):
        return self.b(torch.relu(self.mid(torch.relu(self.a(x)))))


def test_hooked_module_is_a_named_black_box():
    report = nt.analyze(_Hooked(), torch.randn(2, 3)).report
    hook = [p for p in report.pinned if p["category"] == "hook"]
    assert hook and "'mid'" in hook[0]["why"] and "forward hooks" in hook[0]["why"]
    # the black box's input (a's neurons) and its own neurons are pinned: nothing is free
    assert report.free_neurons == 0


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.h = nn.Embedding(5, 4), nn.Linear(4, 4)

    def forward(self, idx):
        return F.linear(torch.relu(self.h(self.emb(idx))), self.emb.weight)


def test_parameter_read_outside_its_module_is_named():
    report = nt.analyze(_Tied(), torch.randint(0, 5, (2, 3))).report
    why = " ".join(p["why"] for p in report.pinned)
    assert "'emb.weight'" in why and "read directly in forward()" in why
    assert report.free_neurons == 0  # h feeds F.linear (pinned); emb's factors are pinned by the direct read
