"""Smoke tests of the benchmarks at the smallest scale (one block, one repetition, one model).

They keep the benchmark code runnable; the timings themselves are not asserted (performance targets belong in
the benchmarks' output, never in unit tests). What is asserted: every configuration ran, produced finite positive
times, and the G-space configurations are the charts and implementations they claim to be.
"""

from __future__ import annotations

import math

from benchmarks import bench_analysis, bench_canonicalize, bench_fixing, bench_gspace, bench_training, bench_vmap

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
    bench_training.main()
    out = capsys.readouterr().out
    ratios = [float(line.split()[-1].rstrip("x")) for line in out.splitlines() if line.rstrip().endswith("x")]
    assert len(ratios) >= 5 and all(math.isfinite(r) and r > 0 for r in ratios), out


def test_bench_vmap_runs_both_ways():
    rows = bench_vmap.bench(["mlp"], [2], epochs=1, reps=1, max_iters_per_epoch=2, warmup=False)
    assert [(r["model"], r["k"]) for r in rows] == [("mlp", 2)]
    assert all(math.isfinite(r[k]) and r[k] > 0 for r in rows for k in ("seq_s", "vec_s", "speedup"))
