"""Packaging: `pip install nnteleport` is the library core on torch, numpy and scipy; the application layer
(`nnteleport.lab`, the CLI's `experiment` and `demo`) needs the `lab` extra and says so in one line when it is missing.

The subprocess tests hide the lab-only packages with a `sys.meta_path` finder that refuses them, as an
environment with a plain `pip install nnteleport` would.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
import tomllib
import types
from pathlib import Path

import pytest

from nnteleport import _extras
from nnteleport._extras import EXTRAS, MissingExtraError, require, require_extra
from nnteleport.cli import main
from nnteleport.errors import NNTeleportError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "nnteleport"
CORE_DEPENDENCIES = {"torch", "numpy", "scipy"}
LAB_MODULES = set(EXTRAS["lab"])  # matplotlib, sklearn, mnist1d, tqdm, yaml
# top-level module -> distribution, where they differ (the rest are spelled alike)
DISTRIBUTIONS = {**EXTRAS["lab"], "torchvision": "torchvision", "tensorboard": "tensorboard"}

HIDE_LAB = textwrap.dedent(
    """
    import importlib.abc
    import sys

    HIDDEN = set({hidden!r})
    assert not HIDDEN & {{m.partition(".")[0] for m in sys.modules}}, "already imported"


    class _Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)", name=name)
            return None


    sys.meta_path.insert(0, _Hide())
    """
).format(hidden=sorted(LAB_MODULES))


def run_python(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env_code = "import os; os.environ.setdefault('OMP_NUM_THREADS', '1')\n" + code
    r = subprocess.run([sys.executable, "-c", env_code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return r


def dist_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()


# --------------------------------------------------------------------------------------------------
# what pyproject.toml declares matches what the code imports


def test_core_dependencies_and_lab_extra_match_the_registry_of_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {dist_name(r) for r in project["dependencies"]} == CORE_DEPENDENCIES
    extras = project["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert {dist_name(r) for r in extras[extra]} == set(modules.values()), extra


def imported_top_level(path: Path) -> set[str]:
    """Top-level names of every absolute import in ``path``, inside functions too."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.partition(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names) - {"nnteleport", "__future__"}


def test_every_third_party_import_is_declared():
    """The core imports only its dependencies; the lab only those and its extras (optional: vision, tb, ray)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared_lab = {dist_name(r) for r in project["optional-dependencies"]["lab"]}
    optional = {dist_name(r) for e in ("vision", "tensorboard", "ray") for r in project["optional-dependencies"][e]}
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    seen_core: set[str] = set()
    for path in files:
        modules = imported_top_level(path)
        if "lab" in path.relative_to(PACKAGE).parts:
            allowed = CORE_DEPENDENCIES | declared_lab | optional
        else:
            allowed = CORE_DEPENDENCIES
            seen_core |= modules
        dists = {DISTRIBUTIONS.get(m, m) for m in modules}
        assert dists <= allowed, f"{path.relative_to(ROOT)} imports undeclared {sorted(dists - allowed)}"
    assert seen_core == CORE_DEPENDENCIES  # scipy is declared because the core uses it (fixing, canonicalize)


# --------------------------------------------------------------------------------------------------
# the check itself


def test_require_names_the_packages_and_the_extra_in_one_line(monkeypatch):
    require("torch", extra="lab")  # present: nothing happens
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` raises ModuleNotFoundError
    with pytest.raises(MissingExtraError) as info:
        require("json", "yaml", "no_such_module_xyz", extra="lab", feature="`nnteleport experiment`")
    msg = str(info.value)
    assert isinstance(info.value, NNTeleportError) and isinstance(info.value, ImportError)
    assert "\n" not in msg
    assert msg.startswith("`nnteleport experiment` needs the optional package(s) pyyaml, no_such_module_xyz, which")
    assert msg.endswith("install them with: pip install 'nnteleport[lab]'")
    assert _extras.missing("json", "yaml") == ["yaml"]
    with pytest.raises(KeyError, match="unknown extra 'nope'"):
        require_extra("nope")


@pytest.mark.parametrize("hidden", sorted(LAB_MODULES))
@pytest.mark.parametrize("command", [["experiment", "list"], ["demo", "--out", "{tmp}/d"]])
def test_lab_commands_refuse_without_the_extra_before_running(hidden, command, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, hidden, None)
    ran = []
    fake_demo = types.ModuleType("nnteleport.lab.demo")
    fake_demo.run_demo = lambda out, progress=True: ran.append(out)  # without the check it would run
    monkeypatch.setitem(sys.modules, "nnteleport.lab.demo", fake_demo)
    args = [a.format(tmp=tmp_path) for a in command]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"nnteleport: error: `nnteleport {args[0]}` needs the optional package(s) {EXTRAS['lab'][hidden]}, which is "
        "not installed; install them with: pip install 'nnteleport[lab]'"
    ]
    assert not (tmp_path / "d").exists() and ran == []


# --------------------------------------------------------------------------------------------------
# in a fresh interpreter without the lab's packages


LIBRARY_WITHOUT_LAB = """
import torch
from torch import nn

import nnteleport
import nnteleport.distance
import nnteleport.engine
import nnteleport.ensembles
import nnteleport.gspace
import nnteleport.gspace.fixing
from nnteleport.lab.models import build_model  # the zoo is torch only

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
x = torch.randn(7, 4, dtype=torch.float64)
teleported = nnteleport.teleport(model, x, cob_range=0.5, sampling="inter")
with torch.no_grad():
    err = float((teleported(x) - model(x)).abs().max())
    moved = float(sum((p - q).abs().sum() for p, q in zip(teleported.parameters(), model.parameters())))
canonical = nnteleport.canonicalize(model, x)  # scipy's sparse Newton steps (a chain, cold start)
with torch.no_grad():
    err_canonical = float((canonical(x) - model(x)).abs().max())
penalty = nnteleport.CheckpointDistance(model, sigma=1.0, invariant=True, example_input=x)
penalty.add_checkpoint()
value = penalty()
value.backward()
gspace = nnteleport.GSpace(model)
fixed = nnteleport.fix_weights(model, select="hungarian")  # scipy.optimize.linear_sum_assignment
fixed.remove()
zoo = build_model("mlp", in_shape=(1, 8, 8), num_classes=10)
print("RESULT", err, moved, err_canonical, float(value), type(gspace).__name__, type(zoo).__name__)
leaked = HIDDEN & {m.partition(".")[0] for m in sys.modules if sys.modules[m] is not None}
print("LEAKED", sorted(leaked))
"""


def test_library_works_without_the_lab_packages():
    r = run_python(HIDE_LAB + LIBRARY_WITHOUT_LAB)
    assert r.returncode == 0, r.stderr
    (result,) = [ln.split()[1:] for ln in r.stdout.splitlines() if ln.startswith("RESULT")]
    err, moved, err_canonical, value = (float(v) for v in result[:4])
    assert err < 1e-12 and moved > 0.1  # function preserved (float64 round-off), weights moved
    assert err_canonical < 1e-12
    assert abs(value - 1.0) < 1e-12  # RBF kernel at (numerically) distance 0: exp(0) = 1, strength 1
    assert result[4:] == ["GSpace", "MLP"]
    assert "LEAKED []" in r.stdout


CLI_WITHOUT_LAB = """
import contextlib
import io
import json

from nnteleport.cli import main

results = {}
for args in COMMANDS:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as e:
            code = e.code
    results[" ".join(args)] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


def test_cli_without_the_lab_packages(tmp_path):
    lab_commands = [
        ["experiment", "list"],
        ["experiment", "training", "--set", "epochs=1", "--out", str(tmp_path / "e")],
        ["experiment", "micro-teleport", "--help"],
        ["demo", "--out", str(tmp_path / "d")],
    ]
    other = [["--help"], ["teleport", "--input-shape", "1,8,8"]]
    r = run_python(HIDE_LAB + CLI_WITHOUT_LAB.replace("COMMANDS", repr(lab_commands + other)))
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout.splitlines()[-1])
    for args in lab_commands:
        code, out, err = results[" ".join(args)]
        assert code == 2 and out == "", (args, out, err)
        (line,) = err.splitlines()
        assert line.startswith(f"nnteleport: error: `nnteleport {args[0]}` needs the optional package(s) ")
        assert all(EXTRAS["lab"][m] in line for m in LAB_MODULES), line
        assert line.endswith("install them with: pip install 'nnteleport[lab]'"), line
    assert not (tmp_path / "e").exists() and not (tmp_path / "d").exists()
    code, out, _ = results["--help"]
    assert code == 0 and "experiments:" in out and "micro-teleport" in out
    code, out, err = results["teleport --input-shape 1,8,8"]
    assert code == 0, err
    m = re.search(r"max \|f\(x\) - g\(x\)\|: ([0-9.e+-]+)", out)
    assert m is not None and float(m.group(1)) < 1e-12


MODULES_BEYOND_TORCH = """
import json
import sys

import numpy
import torch

allowed = {"nnteleport", "torch", "numpy"}
report = {}
for module in ("nnteleport.engine", "nnteleport.gspace", "nnteleport.distance", "nnteleport.ensembles",
               "nnteleport.cli"):
    before = set(sys.modules)
    __import__(module)
    new = {m.partition(".")[0] for m in set(sys.modules) - before}
    report[module] = sorted(n for n in new if n not in sys.stdlib_module_names and n not in allowed)
before = set(sys.modules)
import scipy.optimize  # a third-party import, as fix_weights(select="hungarian") makes it: the control
report["fixing"] = sorted({m.partition(".")[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names))
print(json.dumps(report))
"""


def test_engine_imports_nothing_beyond_torch_and_numpy():
    """Compared with ``sys.modules`` after a bare ``import torch, numpy``."""
    r = run_python(MODULES_BEYOND_TORCH)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.splitlines()[-1])
    fixing = report.pop("fixing")
    assert report == {m: [] for m in report}, report
    assert "scipy" in fixing  # the check sees a third-party import when there is one
