"""Tests of nnteleport.lab.plotting: the one JSON writer (strict JSON, NaN as null) and headless figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnteleport.lab.plotting import read_csv, to_jsonable, write_csv, write_json

ROOT = Path(__file__).resolve().parents[1]


def test_write_json_is_strict_json_with_null_for_nonfinite(tmp_path):
    obj = {
        "a": [1.0, math.nan, math.inf, -math.inf],
        "t": torch.tensor([0.5, float("nan")]),
        "n": np.float32(2.5),
        "i": np.int64(3),
        "b": np.bool_(True),
        "p": tmp_path,
        (1, 2): (3, 4),
    }
    path = write_json(tmp_path / "sub" / "r.json", obj)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text and text.endswith("\n")
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert back == {
        "a": [1.0, None, None, None],
        "t": [0.5, None],
        "n": 2.5,
        "i": 3,
        "b": True,
        "p": str(tmp_path),
        "(1, 2)": [3, 4],
    }
    assert not list(tmp_path.rglob("*.tmp"))  # written atomically, no temporary file left
    assert to_jsonable({"x": math.nan}, keep_nonfinite=True)["x"] != to_jsonable({"x": math.nan})["x"]


def test_to_jsonable_uses_to_dict():
    class Rec:
        def to_dict(self):
            return {"v": np.float64(math.nan), "w": 1}

    assert to_jsonable([Rec()]) == [{"v": None, "w": 1}]


def test_old_files_with_nan_tokens_still_read(tmp_path):
    """Run records of earlier versions hold NaN / Infinity tokens; Python's json reads them back as floats."""
    p = tmp_path / "old.json"
    p.write_text('{"x": NaN, "y": Infinity, "z": null}')
    back = json.loads(p.read_text())
    assert math.isnan(back["x"]) and back["y"] == math.inf and back["z"] is None


def test_csv_round_trip(tmp_path):
    rows = [{"a": 1, "b": 0.1 + 0.2}, {"a": 2, "b": math.pi, "c": "x"}]
    back = read_csv(write_csv(tmp_path / "r.csv", rows))
    assert back[0]["b"] == 0.1 + 0.2 and back[1]["b"] == math.pi and back[1]["c"] == "x" and back[0]["a"] == 1


_HEADLESS = """
import sys
from pathlib import Path
import matplotlib
matplotlib.use("pdf")  # a user's choice (e.g. a notebook backend) that the experiments must not switch
from nnteleport.lab.experiments import distance_training, get_experiment
out = Path(sys.argv[1])
get_experiment("toy-surfaces").run({"points": 11, "arrows": 3}, out / "toy", progress=False)
distance_training.run(
    {"models": ["mlp"], "variants": ["baseline"], "epochs": 2, "warmup_epochs": 1, "checkpoint_every": 1,
     "train_size": 32, "val_size": 16, "batch_size": 16, "workers": 1},
    out / "dist", progress=False,
)
print("BACKEND", matplotlib.get_backend(), "PYPLOT", "matplotlib.pyplot" in sys.modules)
"""


def test_plots_are_headless_and_leave_the_backend_alone(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "MPLBACKEND": ""}
    proc = subprocess.run(
        [sys.executable, "-c", _HEADLESS, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "BACKEND pdf PYPLOT False" in proc.stdout, proc.stdout
    for png in ("toy/fig_1_5_1_6_two_parameter.png", "dist/curves.png", "dist/ensembles.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
