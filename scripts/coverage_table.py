"""Coverage and exactness of the engine on a list of timm / torchvision models, as a Markdown table (docs/engine.md).

Run: ``python scripts/coverage_table.py [--models timm:cspdarknet53,tv:convnext_tiny,...]`` (needs timm and/or
torchvision; random initialisation, float64, input 2 x 3 x 64 x 64, ``cob_range=0.5``). For each model: free / hidden
neurons, the share of parameter elements a teleport moves, and the relative output error of ``teleport`` in eval and
in train mode (same RNG seed for both forwards, so dropout and stochastic depth draw the same masks).
"""

from __future__ import annotations

import argparse
import warnings

import torch

import nnteleport as nt

DEFAULT = (
    "timm:cspdarknet53,timm:dpn68,timm:vovnet39a,timm:repvgg_a0,timm:convnext_atto,timm:rexnet_100,"
    "timm:mobileone_s0,timm:regnetz_b16,timm:lcnet_050,timm:resnet18@drop_path_rate=0.2,tv:convnext_tiny"
)


def build(spec: str) -> torch.nn.Module:
    src, _, rest = spec.partition(":")
    name, _, opt = rest.partition("@")
    kw = {k: float(v) for k, v in (o.split("=") for o in opt.split(",") if o)}
    if src == "timm":
        import timm

        return timm.create_model(name, num_classes=10, **kw)
    import torchvision

    return torchvision.models.get_model(name, num_classes=10, **kw)


def row(spec: str) -> str:
    torch.manual_seed(0)
    model = build(spec).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    r = nt.analyze(model, x).report
    errs = []
    for train in (False, True):
        model.train(train)
        t = nt.teleport(model, x, cob_range=0.5, generator=torch.Generator().manual_seed(1))
        t.train(train)
        torch.manual_seed(5)
        a = model(x)
        torch.manual_seed(5)
        b = t(x)
        errs.append(float((a - b).abs().max() / a.abs().max()))
    moved = r.parameters_moving / r.parameters_total
    return f"| {spec} | {r.free_neurons} / {r.hidden_neurons} | {moved:.1%} | {errs[0]:.0e} | {errs[1]:.0e} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print("| model | free / hidden neurons | parameters moved | rel. error eval | rel. error train |")
    print("|---|---|---|---|---|")
    for spec in args.models.split(","):
        print(row(spec), flush=True)


if __name__ == "__main__":
    main()
