"""Smoke tests of the G-space and weight-fixing benchmarks at the smallest scale (one block, one repetition).

They keep the benchmark code runnable; the timings themselves are not asserted (performance targets belong in
the benchmarks' output, never in unit tests). What is asserted: every configuration ran, produced finite positive
times, and the G-space configurations are the charts and implementations they claim to be.
"""

from __future__ import annotations

import math

from benchmarks import bench_canonicalize, bench_fixing, bench_gspace

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
