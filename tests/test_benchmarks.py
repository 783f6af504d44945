"""Smoke tests of the benchmarks at the smallest scale (one block, one repetition, one model).

They keep the benchmark code runnable; the timings themselves are not asserted (performance targets belong in
the benchmarks' output, never in unit tests). What is asserted: every configuration ran, produced finite positive
times, and the G-space configurations are the charts and implementations they claim to be.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from benchmarks import __main__ as bench_all
from benchmarks import (
    bench_analysis,
    bench_canonicalize,
    bench_distance,
    bench_epoch,
    bench_fixing,
    bench_gspace,
    bench_teleport,
    bench_training,
    bench_vmap,
)

from nnteleport.gspace import _native


def test_bench_gspace_runs_every_configuration():
    configs = {"unit": {"reparametrize": True}, "thesis, eager": {"reparametrize": False, "native": False}}
    res = bench_gspace.bench(blocks=1, reps=1, configs=configs)
    assert set(res) == set(bench_gspace.OPTIMIZERS)
    for per in res.values():
        assert set(per) == set(configs)
        for label, r in per.items():
            assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("step_ratio", "iter_ratio", "step_plain_us"))
            assert r["direct"] == (label == "unit")
            assert r["native"] == (label == "unit" and _native.load() is not None)
            assert r["ops_gspace"] > 0 and r["ops_plain"] > 0


def test_bench_fixing_runs():
    res = bench_fixing.bench(blocks=1, reps=1)
    assert set(bench_fixing.OPTIMIZERS) <= set(res)
    for name in bench_fixing.OPTIMIZERS:
        assert math.isfinite(res[name]["step_ratio"]) and res[name]["iter_fixed_us"] > 0
    assert all(res[f"fix_weights({s})"]["setup_ms"] > 0 for s in ("diagonal", "hungarian"))


def test_bench_canonicalize_runs():
    rows = bench_canonicalize.bench([3, 6], reps=1, gs_max_depth=6)
    assert [r["depth"] for r in rows] == [3, 6]
    for r in rows:
        assert r["seconds"] > 0 and r["newton_steps"] >= 1 and r["gs_sweeps"] >= 1 and r["imbalance"] <= 1e-10


def test_bench_analysis_runs_and_reports_coverage():
    (spec,) = bench_analysis.resolve(["nt:mlp"])
    r = bench_analysis.bench(spec, reps=1, max_single=10.0)
    assert "error" not in r, r
    assert r["seconds"] > 0 and r["cpu"] > 0 and r["forward"] > 0 and r["walks"] >= 1 and r["traces"] >= r["graphs"]
    assert 0 < r["free"] <= r["hidden"] and 0 < r["moving"] <= r["total"]
    assert "nt:mlp" in bench_analysis.format_row(r)


def test_bench_training_runs(monkeypatch, capsys):
    monkeypatch.setattr(bench_training, "EPOCHS", 1)
    monkeypatch.setattr(bench_training, "REPEATS", 1)
    bench_training.main([])
    out = capsys.readouterr().out
    ratios = [float(line.split()[-1].rstrip("x")) for line in out.splitlines() if line.rstrip().endswith("x")]
    assert len(ratios) >= 5 and all(math.isfinite(r) and r > 0 for r in ratios), out


ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_doc_tables", ROOT / "scripts" / "make_doc_tables.py")
mdt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mdt)

#: benchmark -> (its smallest command line, the doc table generated from its results file)
SMALL = {
    "bench_gspace": (["--blocks", "1", "--reps", "1"], "bench-gspace"),
    "bench_fixing": (["--blocks", "1", "--reps", "1"], "bench-fixing"),
    "bench_distance": (["--width", "0.125", "--reps", "1", "--checkpoints", "1,2", "--invariant"], "bench-distance"),
    "bench_canonicalize": (["--depths", "3,6", "--reps", "1", "--gs-max-depth", "6"], "bench-canonicalize"),
    "bench_teleport": (["--quick", "--reps", "1", "--threads", "1"], "bench-teleport"),
    "bench_vmap": (["--models", "mlp", "--ks", "2", "--reps", "1", "--epochs", "1", "--device", "cpu"], "bench-vmap"),
    "bench_epoch": (["--quick", "--device", "cpu", "--batch", "2", "--iters", "1", "--reps", "1"], "bench-epoch"),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_benchmark_json_feeds_its_doc_table(name, tmp_path, monkeypatch):
    """``--json`` writes the command, machine, date and results, and the doc table's generator reads that file: a
    benchmark and its documented table cannot drift apart."""
    argv, table = SMALL[name]
    if name == "bench_teleport":  # the quick models are still ~10 M parameters: shrink them for the test
        monkeypatch.setattr(bench_teleport, "build_model", _tiny_model(bench_teleport.build_model))
    path = tmp_path / "docs" / "data" / f"{name}.json"
    module = {"bench_gspace": bench_gspace, "bench_fixing": bench_fixing, "bench_distance": bench_distance,
              "bench_canonicalize": bench_canonicalize, "bench_teleport": bench_teleport,
              "bench_vmap": bench_vmap, "bench_epoch": bench_epoch}[name]  # fmt: skip
    module.main([*argv, "--json", str(path)])
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == name and doc["command"].startswith(f"python -m benchmarks.{name} ")
    assert doc["date"][:2] == "20" and doc["machine"]["cpu_count"] and doc["machine"]["torch"]
    assert "load_average_start" in doc["machine"] and doc["config"] and doc["results"]
    body = mdt.generate(table, f"docs/data/{name}.json", tmp_path)
    assert mdt.table_structure(body), body
    assert doc["command"] in body and doc["date"][:10] in body  # the command and the date beside the table
    assert "nan" not in body.split("\n\n")[1]  # every cell of the table was measured


def _tiny_model(build):
    def tiny(name, **kw):
        if name == "mlp":
            kw["hidden"] = (32,)
        else:
            kw["width"] = 0.125
        return build(name, **kw)

    return tiny


def test_run_all_writes_one_file_per_benchmark(tmp_path, monkeypatch):
    calls = []
    for name in bench_all.BENCHMARKS:
        module = __import__(f"benchmarks.{name}", fromlist=["main"])
        monkeypatch.setattr(module, "main", lambda argv, n=name: calls.append((n, argv)))
    bench_all.main(["--json-dir", str(tmp_path), "--only", "gspace,bench_distance"])
    assert calls == [
        ("bench_gspace", ["--json", f"{tmp_path}/bench-gspace.json"]),
        ("bench_distance", ["--json", f"{tmp_path}/bench-distance.json"]),
    ]
    with pytest.raises(SystemExit):
        bench_all.main(["--only", "nosuch"])


def test_bench_vmap_runs_both_ways():
    rows = bench_vmap.bench(["mlp"], [2], epochs=1, reps=1, max_iters_per_epoch=2, warmup=False)
    assert [(r["model"], r["k"]) for r in rows] == [("mlp", 2)]
    keys = ("seq_s", "vec_s", "speedup", "floor_vec_s", "floor_seq_s", "ceiling")
    assert all(math.isfinite(r[k]) and r[k] > 0 for r in rows for k in keys)
    (row,) = rows
    assert row["steps"] == 2 and row["ceiling"] == pytest.approx(row["seq_s"] / row["floor_vec_s"])  # one rep


def test_bench_vmap_refuses_a_device_this_machine_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="bench_vmap: --device"):
        bench_vmap.bench(["mlp"], [2], epochs=1, reps=1, max_iters_per_epoch=1, warmup=False, device="cuda")


def test_bench_epoch_times_both_arms_and_scales_to_an_epoch():
    rows = bench_epoch.bench(["resnet18", "mlp-5x500"], device="cpu", batch=2, iters=1, reps=1, shape=(3, 16, 16),
                             width=0.125)  # fmt: skip
    assert [r["network"] for r in rows] == ["resnet18", "mlp-5x500"]
    for r in rows:
        assert r["wrappers"] > 0  # the teleported arm carries the activation wrappers (inter)
        assert r["baseline_s_per_iter"] > 0 and r["teleported_s_per_iter"] > 0
        # 782 iterations of batch 64 = 25 024 iterations of the timed batch 2
        assert r["baseline_s_per_epoch"] == pytest.approx(r["baseline_s_per_iter"] * 782 * 32)
