"""toy-surfaces: the thesis' two-parameter and fixed-weight toy loss surfaces with ``L(y) = sin(y)``.

Jestädt (2025), Figs. 1.5, 1.6, 4.9 (input ``x = 1``, or ``x1 = x2 = 1``):

* Fig. 1.5 / 1.6 -- network a: ``y = relu(w)``; network b: ``y = w2 relu(w1)`` (one rescaling symmetry:
  ``(w1, w2) -> (w1 / alpha, alpha w2)``). The surface of b over ``(w1, w2)`` with its invariant lines
  ``w1 w2 = const`` and the gradient field, whose arrows scale as ``1 / alpha`` along an invariant line
  (``|dL/dw1| = |cos(y)| |w2|``, ``|dL/dw2| = |cos(y)| |w1|``). Added here: the same loss as a function of the
  G-space coordinate (the path value ``v = w1 w2``, for ``w1 > 0``) is ``sin(v)`` again -- the undistorted 1-d
  landscape of network a.
* Fig. 4.9 -- network a: ``y = relu(w1 + w2)``; network b: ``y = w3 relu(w1 + w2)`` with ``w1`` fixed at several
  values, the surface over ``(w2, w3)`` (positive weights).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from nnteleport.lab.devices import resolve_device
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.plotting import new_figure, save_figure, write_csv, write_json
from nnteleport.lab.report_html import Figure, Headline, Section, sci

__all__ = [
    "DEFAULTS",
    "DEMO",
    "DEMO_SECONDS",
    "DESCRIPTION",
    "TITLE",
    "plot",
    "report_section",
    "run",
]

DESCRIPTION = (
    "Toy loss surfaces with L(y) = sin(y): y = w2 relu(w1) with invariant lines and gradient field (Figs. 1.5, "
    "1.6) and its G-space view, and y = w3 relu(w1 + w2) with w1 fixed at several values (Fig. 4.9)."
)

DEFAULTS: dict[str, Any] = {
    "points": 81,
    "range_1d": [-3.0, 8.0],
    "range_b": [-1.0, 4.0],
    "range_fixed": [0.0, 5.0],
    "fixed_w1": [0.0, 0.5, 1.0, 2.0, 4.0],
    "arrows": 9,
    "invariant_levels": [0.5, 1.0, 2.0, 4.0],
    "device": "auto",  # accepted like every experiment's; these surfaces are NumPy arrays (nothing runs on it)
}


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def surfaces(cfg: dict[str, Any]) -> dict[str, Any]:
    n = int(cfg["points"])
    w = np.linspace(*cfg["range_1d"], n)
    one_d = {"w": w.tolist(), "loss": np.sin(relu(w)).tolist()}

    g = np.linspace(*cfg["range_b"], n)
    W1, W2 = np.meshgrid(g, g, indexing="xy")  # x: w1, y: w2
    Lb = np.sin(W2 * relu(W1))
    k = int(cfg["arrows"])
    ga = np.linspace(*cfg["range_b"], k)
    A1, A2 = np.meshgrid(ga, ga, indexing="xy")
    c = np.cos(A2 * relu(A1))
    grad_w1 = c * A2 * (A1 > 0)
    grad_w2 = c * relu(A1)
    v = np.linspace(cfg["range_b"][0] * cfg["range_b"][1], cfg["range_b"][1] ** 2, n)
    gspace = {"v": v.tolist(), "loss": np.sin(v).tolist()}

    gf = np.linspace(*cfg["range_fixed"], n)
    X, Y = np.meshgrid(gf, gf, indexing="xy")
    net_a = np.sin(relu(X + Y))  # x: w1, y: w2
    fixed = {repr(float(w1)): np.sin(Y * relu(w1 + X)).tolist() for w1 in cfg["fixed_w1"]}  # x: w2, y: w3
    return {
        "fig_1_5_network_a": one_d,
        "fig_1_5_network_b": {"w1": g.tolist(), "w2": g.tolist(), "loss": Lb.tolist()},
        "fig_1_6_gradients": {
            "w1": ga.tolist(),
            "w2": ga.tolist(),
            "dL_dw1": grad_w1.tolist(),
            "dL_dw2": grad_w2.tolist(),
        },
        "gspace_network_b": gspace,
        "fig_4_9_network_a": {"w1": gf.tolist(), "w2": gf.tolist(), "loss": net_a.tolist()},
        "fig_4_9_network_b_fixed_w1": {"w2": gf.tolist(), "w3": gf.tolist(), "loss": fixed},
    }


def run(config: dict[str, Any], out: Path, *, progress: bool = True) -> dict[str, Any]:
    cfg = merge_config(DEFAULTS, config or {}, source="toy-surfaces")
    validate_config("toy-surfaces", cfg)
    resolve_device(cfg["device"])  # checked like everywhere; the surfaces are computed with NumPy
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = surfaces(cfg)
    # a numerical fact behind Fig. 1.6: along an invariant line the gradient scales with the rescaling
    w1, w2, alpha = 1.0, 1.0, 4.0
    g_orig = np.hypot(np.cos(w1 * w2) * w2, np.cos(w1 * w2) * w1)
    g_res = np.hypot(np.cos(w1 * w2) * (alpha * w2), np.cos(w1 * w2) * (w1 / alpha))
    results = {
        "config": cfg,
        "surfaces": data,
        "gradient_norm_at_(1,1)": float(g_orig),
        "gradient_norm_at_(1/4,4)": float(g_res),
        "seconds": time.perf_counter() - t0,
    }
    write_json(out / "results.json", results)
    write_csv(out / "fig_1_5_network_a.csv", [{"w": a, "loss": b} for a, b in zip(*data["fig_1_5_network_a"].values())])
    write_csv(out / "gspace_network_b.csv", [{"v": a, "loss": b} for a, b in zip(*data["gspace_network_b"].values())])
    rows = []
    for w1, grid in data["fig_4_9_network_b_fixed_w1"]["loss"].items():
        gf = data["fig_4_9_network_b_fixed_w1"]["w2"]
        for i, w3 in enumerate(gf):
            for j, w2 in enumerate(gf):
                rows.append({"w1_fixed": float(w1), "w2": w2, "w3": w3, "loss": grid[i][j]})
    write_csv(out / "fig_4_9_fixed_surfaces.csv", rows)
    plot(results, out)
    return results


def plot(results: dict[str, Any], out: Path) -> None:
    s = results["surfaces"]
    cfg = results["config"]
    fig, axes = new_figure(1, 3, size=(3.8, 3.3))
    a = s["fig_1_5_network_a"]
    axes[0, 0].plot(a["w"], a["loss"])
    axes[0, 0].set_xlabel("w")
    axes[0, 0].set_ylabel("L = sin(relu(w))")
    axes[0, 0].set_title("network a (Fig. 1.5)", fontsize=9)
    b = s["fig_1_5_network_b"]
    ax = axes[0, 1]
    ext = [b["w1"][0], b["w1"][-1], b["w2"][0], b["w2"][-1]]
    im = ax.imshow(np.array(b["loss"]), origin="lower", extent=ext, cmap="coolwarm", aspect="auto")
    w1 = np.linspace(1e-2, ext[1], 200)
    for c in cfg["invariant_levels"]:
        w2 = c / w1
        keep = (w2 >= ext[2]) & (w2 <= ext[3])
        ax.plot(w1[keep], w2[keep], "k--", lw=0.8)
    gr = s["fig_1_6_gradients"]
    G1, G2 = np.meshgrid(gr["w1"], gr["w2"], indexing="xy")
    ax.quiver(G1, G2, -np.array(gr["dL_dw1"]), -np.array(gr["dL_dw2"]), color="k", width=0.004)
    ax.set_xlabel("w1")
    ax.set_ylabel("w2")
    ax.set_title("network b: w2 relu(w1) (Figs. 1.5, 1.6)", fontsize=9)
    fig.colorbar(im, ax=ax)
    g = s["gspace_network_b"]
    axes[0, 2].plot(g["v"], g["loss"])
    axes[0, 2].set_xlabel("path value v = w1 w2  (w1 > 0)")
    axes[0, 2].set_ylabel("L = sin(v)")
    axes[0, 2].set_title("network b in G-space", fontsize=9)
    save_figure(fig, out / "fig_1_5_1_6_two_parameter.png")

    fixed = s["fig_4_9_network_b_fixed_w1"]
    k = len(fixed["loss"]) + 1
    fig, axes = new_figure(1, k, size=(3.0, 2.8))
    na = s["fig_4_9_network_a"]
    ext = [na["w1"][0], na["w1"][-1], na["w2"][0], na["w2"][-1]]
    axes[0, 0].imshow(np.array(na["loss"]), origin="lower", extent=ext, cmap="coolwarm", aspect="auto")
    axes[0, 0].set_xlabel("w1")
    axes[0, 0].set_ylabel("w2")
    axes[0, 0].set_title("a: relu(w1 + w2)", fontsize=8)
    ext = [fixed["w2"][0], fixed["w2"][-1], fixed["w3"][0], fixed["w3"][-1]]
    for i, (w1v, grid) in enumerate(fixed["loss"].items(), start=1):
        axes[0, i].imshow(np.array(grid), origin="lower", extent=ext, cmap="coolwarm", aspect="auto")
        axes[0, i].set_xlabel("w2")
        axes[0, i].set_ylabel("w3")
        axes[0, i].set_title(f"b: w3 relu(w1 + w2), w1 = {float(w1v):g}", fontsize=8)
    save_figure(fig, out / "fig_4_9_fixed_weight_surfaces.png")


# --------------------------------------------------------------------------------------------------
# the demo (nnteleport.lab.demo): a small configuration and the report section

#: Title of this experiment's section in the demo report.
TITLE = "Toy loss surfaces and their G-space view"

#: The demo's configuration: changes to :data:`DEFAULTS` (none: the surfaces take a second).
DEMO: dict[str, Any] = {}

#: About how long :data:`DEMO` takes on one core, in seconds (the demo starts the longest experiments first).
DEMO_SECONDS = 2


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNGs): the gradient
    norm at two points of one invariant line ``w1 w2 = 1`` (same loss), and the two figures."""
    cfg = res["config"]
    g0, g1 = res["gradient_norm_at_(1,1)"], res["gradient_norm_at_(1/4,4)"]
    ratio = g1 / g0
    sec = Section(
        title=TITLE,
        claim=(
            "Thesis (Jestädt 2025, Figs. 1.5, 1.6, 4.9): for y = w2·relu(w1) and L = sin(y), the loss is "
            "constant along the invariant lines w1·w2 = const, but the gradient is not -- (w1, w2) -> "
            "(w1/α, α·w2) keeps L and changes ‖∇L‖, so plain gradient descent depends on where on the orbit it "
            "starts; in the G-space coordinate v = w1·w2 the loss is sin(v), the landscape of y = relu(w). "
            f"Here: {cfg['points']} x {cfg['points']} grids, fixed w1 in {cfg['fixed_w1']} for Fig. 4.9."
        ),
        numbers=[
            ("‖∇L‖ at (w1, w2) = (1, 1)", sci(g0)),
            ("‖∇L‖ at (1/4, 4) (same loss, α = 4)", f"{sci(g1)} (× {ratio:.3g})"),
        ],
        figures=[
            Figure(
                d / "fig_1_5_1_6_two_parameter.png",
                "Left: network a, L = sin(relu(w)). Middle: network b over (w1, w2), invariant lines "
                f"w1·w2 = {cfg['invariant_levels']} (dashed) and the negative gradient field. Right: network b "
                "as a function of its path value v = w1·w2.",
            ),
            Figure(
                d / "fig_4_9_fixed_weight_surfaces.png",
                "Fig. 4.9: relu(w1 + w2) over (w1, w2), then w3·relu(w1 + w2) over (w2, w3) with w1 fixed at "
                "each value: fixing a weight changes the shape of the surface.",
            ),
        ],
        verdict=f"same loss, gradient norm × {ratio:.3g} along the invariant line",
        status="good" if ratio > 1 else "bad",
    )
    return sec, []
