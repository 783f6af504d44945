"""Tests of GSpaceOptimizer's per-step implementations: fused C kernels against whole-tensor PyTorch operations,
and the direct chart (unit skeleton: first layer and biases optimised in place) against the dense chart.

References: the eager path (itself checked against autograd in test_gspace.py) and the dense chart, whose
coordinates are the path values themselves. Both charts must give the same network functions along the whole
trajectory, since the direct chart only flips the sign of some coordinates (float64 round-off tolerances).
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import os
import shutil
import subprocess
import warnings

import pytest
import torch
import torch.nn.functional as F

from nnteleport import GSpaceOptimizer
from nnteleport.gspace import _native
from tests.test_gspace import DT, ZOO, make

HAVE_NATIVE = _native.load() is not None
needs_native = pytest.mark.skipif(not HAVE_NATIVE, reason=f"native kernels unavailable: {_native.status()}")

OPTS = {
    "sgd": (torch.optim.SGD, {"lr": 0.05}),
    "momentum-wd": (torch.optim.SGD, {"lr": 0.02, "momentum": 0.9, "weight_decay": 1e-3, "nesterov": True}),
    "adamw": (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.05}),
}
# Adam divides by the root of the second moment: a coordinate whose gradient is zero up to round-off (a pred edge
# whose corrections cancel) then takes O(lr) steps of round-off-dependent sign; eps keeps the two paths comparable
OPTS_EXACT = {**OPTS, "adamw": (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.05, "eps": 1e-6})}
CHAINS = list(ZOO)  # "single-layer": no hidden neuron, its skeleton is unit, so it always takes the direct chart


def _batches(name, n=12, seed=4):
    gen = torch.Generator().manual_seed(seed)
    shape = ZOO[name][1]
    return [
        (torch.randn(16, *shape, generator=gen, dtype=DT), torch.randint(0, 2, (16,), generator=gen)) for _ in range(n)
    ]


def _train(model, opt, batches):
    for xb, yb in batches:
        opt.zero_grad()
        out = model(xb)
        F.cross_entropy(out[:, :2] if out.shape[1] > 2 else out, yb).backward()
        opt.step()


@needs_native
@pytest.mark.parametrize("reparametrize", [False, True], ids=["dense", "direct"])
@pytest.mark.parametrize("opt", list(OPTS_EXACT))
@pytest.mark.parametrize("name", CHAINS)
def test_native_kernels_match_eager_path(name, opt, reparametrize):
    cls, kw = OPTS_EXACT[opt]
    model, x = make(name)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    oa = GSpaceOptimizer(a, cls, reparametrize=reparametrize, native=True, **kw)
    ob = GSpaceOptimizer(b, cls, reparametrize=reparametrize, native=False, **kw)
    assert oa.native and not ob.native and oa.direct == ob.direct == (reparametrize or name == "single-layer")
    batches = _batches(name, n=6)  # G-SGD amplifies round-off (1 / P factors): few steps, round-off tolerance
    _train(a, oa, batches)
    _train(b, ob, batches)
    assert (a(x) - model(x)).abs().max().item() > 1e-3  # it trained
    # Adam's normalisation turns the round-off of small gradients into relative step errors: looser bound
    tol = {"rtol": 1e-8, "atol": 1e-9} if opt == "adamw" else {"rtol": 1e-10, "atol": 1e-12}
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, **tol, msg=k)


@pytest.mark.parametrize("native", [True, False], ids=["native", "eager"])
@pytest.mark.parametrize("opt", [*OPTS, "lbfgs"])
@pytest.mark.parametrize("name", ["unequal-bias", "conv", "width-one", "functional"])
def test_direct_chart_trains_the_same_functions_as_dense_chart(name, opt, native):
    """Direct (reparametrised, unit skeleton) and dense (skeleton values kept) charts: same network function
    at every step, for element-wise optimizers with decoupled and coupled weight decay and for L-BFGS."""
    if native and not HAVE_NATIVE:
        pytest.skip(_native.status())
    model, x = make(name)
    direct, dense = copy.deepcopy(model), copy.deepcopy(model)
    if opt == "lbfgs":
        cls, kw = torch.optim.LBFGS, {"lr": 0.1, "max_iter": 4}  # lr 0.5: chaotic (1e-14 -> 1e-2)
    else:
        cls, kw = OPTS[opt]
    od = GSpaceOptimizer(direct, cls, reparametrize=True, native=native, **kw)
    oe = GSpaceOptimizer(dense, cls, native=native, **kw)
    assert od.direct and not oe.direct
    torch.testing.assert_close(direct(x), model(x), rtol=1e-12, atol=1e-13)  # reparametrising keeps f
    for xb, yb in _batches(name, n=8):
        for m, o in ((direct, od), (dense, oe)):

            def closure(m=m, o=o, xb=xb, yb=yb):
                o.zero_grad()
                out = m(xb)
                loss = F.cross_entropy(out[:, :2] if out.shape[1] > 2 else out, yb)
                loss.backward()
                return loss

            if opt == "lbfgs":
                o.step(closure)
            else:
                closure()
                o.step()
        torch.testing.assert_close(direct(x), dense(x), rtol=1e-9, atol=1e-10)
    assert (dense(x) - model(x)).abs().max().item() > 1e-3


@pytest.mark.parametrize("native", [True, False], ids=["native", "eager"])
@pytest.mark.parametrize("reparametrize", [False, True], ids=["dense", "direct"])
def test_step_leaves_the_models_gradients_as_backward_computed(reparametrize, native):
    if native and not HAVE_NATIVE:
        pytest.skip(_native.status())
    model, x = make("unequal-bias")
    opt = GSpaceOptimizer(model, torch.optim.SGD, lr=0.05, momentum=0.9, reparametrize=reparametrize, native=native)
    for _ in range(2):
        opt.zero_grad()
        F.mse_loss(model(x), torch.ones(7, 2, dtype=DT)).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
        assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


@needs_native
@pytest.mark.parametrize("reparametrize", [False, True], ids=["dense", "direct"])
def test_missing_first_layer_gradient_falls_back_and_matches(reparametrize):
    """A missing first-layer gradient (``.grad`` is None after backward): the native path hands over to the eager
    one, which gives the same steps; the corrections of the first layer's pred edges still move it."""
    model, _ = make("unequal-bias")
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    oa = GSpaceOptimizer(a, torch.optim.SGD, lr=0.05, reparametrize=reparametrize, native=True)
    ob = GSpaceOptimizer(b, torch.optim.SGD, lr=0.05, reparametrize=reparametrize, native=False)
    for m, o in ((a, oa), (b, ob)):
        for xb, yb in _batches("unequal-bias", n=4):
            o.zero_grad()
            F.cross_entropy(m(xb), yb).backward()
            m[0].weight.grad = None
            o.step()
    assert a[0].weight.grad is None
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-11, atol=1e-13)


@needs_native
def test_replaced_parameter_storage_is_picked_up_and_dtype_change_is_refused():
    model, _ = make("unequal-bias")
    ref = copy.deepcopy(model)
    opt = GSpaceOptimizer(model, torch.optim.SGD, lr=0.05, reparametrize=True, native=True)
    ro = GSpaceOptimizer(ref, torch.optim.SGD, lr=0.05, reparametrize=True, native=False)
    for p in model.parameters():
        p.data = p.data.clone()  # new storage, same values: the kernels must not write to the old one
    batches = _batches("unequal-bias", n=3)
    _train(model, opt, batches)
    _train(ref, ro, batches)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-11, atol=1e-13)
    model.float()
    with pytest.raises(RuntimeError, match="build the optimizer after moving the model"):
        _train(model, opt, [(b[0].float(), b[1]) for b in batches[:1]])


def test_native_unavailable_is_reported_or_falls_back(monkeypatch):
    monkeypatch.setattr(_native, "load", lambda: None)
    model, _ = make("unequal-bias")
    with pytest.raises(RuntimeError, match="native G-space kernels requested but unavailable"):
        GSpaceOptimizer(copy.deepcopy(model), torch.optim.SGD, lr=0.1, native=True)
    opt = GSpaceOptimizer(model, torch.optim.SGD, lr=0.1)
    assert not opt.native
    with pytest.raises(ValueError, match="reparametrize=True"):
        GSpaceOptimizer(model, torch.optim.SGD, lr=0.1, direct=True)


def test_state_dict_of_other_chart_is_refused():
    model, _ = make("unequal-bias")
    direct = GSpaceOptimizer(copy.deepcopy(model), torch.optim.SGD, lr=0.1, reparametrize=True)
    dense = GSpaceOptimizer(copy.deepcopy(model), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=r"direct \(unit skeleton\) chart"):
        dense.load_state_dict(direct.state_dict())


def test_float32_native_matches_float64_reference():
    model, x = make("conv")
    m32 = copy.deepcopy(model).float()
    o64 = GSpaceOptimizer(model, torch.optim.Adam, lr=0.01, reparametrize=True)
    o32 = GSpaceOptimizer(m32, torch.optim.Adam, lr=0.01, reparametrize=True)
    for xb, yb in _batches("conv", n=5):
        for m, o, dt in ((model, o64, DT), (m32, o32, torch.float32)):
            o.zero_grad()
            F.cross_entropy(m(xb.to(dt)), yb).backward()
            o.step()
    assert m32[0].weight.dtype == torch.float32
    torch.testing.assert_close(m32(x.float()).double(), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("reparametrize", [False, True], ids=["dense", "direct"])
def test_cuda_eager_path_matches_cpu(reparametrize):
    """On CUDA the eager path runs; it must take the CPU run's steps (float64, round-off)."""
    model, _ = make("conv")
    gpu = copy.deepcopy(model).cuda()
    kw = {"lr": 0.02, "momentum": 0.9, "weight_decay": 1e-3}
    oc = GSpaceOptimizer(model, torch.optim.SGD, reparametrize=reparametrize, **kw)
    og = GSpaceOptimizer(gpu, torch.optim.SGD, reparametrize=reparametrize, **kw)
    assert not og.native and og.direct == reparametrize
    batches = _batches("conv", n=5)
    _train(model, oc, batches)
    _train(gpu, og, [(xb.cuda(), yb.cuda()) for xb, yb in batches])
    assert gpu[0].weight.device.type == "cuda"
    for p, q in zip(model.parameters(), gpu.parameters()):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
def test_kernels_build_into_a_private_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("NNTELEPORT_CACHE", str(tmp_path))
    path = _native._compile(os.environ.get("CC", "cc"))
    assert path.parent == tmp_path / "native" and path.exists()
    assert (path.parent.stat().st_mode & 0o077) == 0  # nobody else may plant a library there
    mtime = path.stat().st_mtime_ns
    assert _native._compile(os.environ.get("CC", "cc")) == path and path.stat().st_mtime_ns == mtime  # cached
    digest = path.with_name(path.name + ".sha256")
    assert digest.read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()  # recorded at build time
    assert (path.stat().st_mode & 0o022) == 0 and (digest.stat().st_mode & 0o022) == 0
    lib = ctypes.CDLL(str(path))
    assert all(hasattr(lib, f"nt_{k}_{t}") for k in ("factors", "push", "pull", "restore") for t in ("f32", "f64"))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, digest.name]  # no temporary files left


# -- what is loaded is verified: planted, truncated, empty libraries; unsafe cache; layout self-check ------------
needs_cc = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
CC = os.environ.get("CC", "cc")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A private, empty kernel cache and a module that has not loaded anything yet (restored afterwards)."""
    monkeypatch.setenv("NNTELEPORT_CACHE", str(tmp_path))
    monkeypatch.delenv("NNTELEPORT_NATIVE", raising=False)
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setattr(_native, "_status", "not loaded yet")
    return tmp_path / "native"


def _noop_library(tmp_path):
    """A library with every symbol of the real one, kernels that do nothing and a correct layout report."""
    layout = ", ".join(str(v) for v in _native.expected_layout())
    kernels = "".join(
        f"void nt_{k}_{t}(const void *p) {{ (void)p; }}\n"
        for k in ("factors", "push", "pull", "restore")
        for t in ("f32", "f64")
    )
    src = tmp_path / "noop.c"
    src.write_text(
        "#include <stdint.h>\n" + kernels + "int64_t nt_layout(int64_t *out, int64_t n) {\n"
        f"    const int64_t v[] = {{{layout}}}; int64_t k = sizeof v / sizeof v[0];\n"
        "    for (int64_t i = 0; i < n && i < k; ++i) out[i] = v[i]; return k; }\n"
    )
    out = tmp_path / "noop.so"
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(out), str(src)], check=True, capture_output=True)
    return out.read_bytes()


def _one_native_step_matches_eager():
    model, _ = make("unequal-bias")
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    oa = GSpaceOptimizer(a, torch.optim.SGD, lr=0.05, native=True)
    ob = GSpaceOptimizer(b, torch.optim.SGD, lr=0.05, native=False)
    batches = _batches("unequal-bias", n=2)
    _train(a, oa, batches)
    _train(b, ob, batches)
    assert not torch.equal(a[0].weight, model[0].weight)  # the kernels did the step
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-11, atol=1e-13)


@needs_cc
@pytest.mark.parametrize("plant", ["no-op", "no-op, no hash", "truncated", "empty", "group-writable"])
def test_bad_cached_library_is_never_loaded_but_rebuilt(fresh_cache, tmp_path, plant):
    """A library in the cache that is not the one built from this source is detected before it is loaded (the old
    loader ran a planted no-op, crashed on a truncated one with a bus error, silently skipped an empty one): it
    is removed and rebuilt, with a warning, and the rebuilt kernels take the eager path's steps."""
    path = _native._compile(CC)
    good = path.read_bytes()
    digest = path.with_name(path.name + ".sha256")
    if plant.startswith("no-op"):
        path.write_bytes(_noop_library(tmp_path))
        if plant == "no-op, no hash":
            digest.unlink()
    elif plant == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif plant == "empty":
        path.write_bytes(b"")
    else:
        path.chmod(0o720)
    with pytest.warns(RuntimeWarning, match="(rejected|no recorded hash).*rebuilding"):
        lib = _native.load()
    assert lib is not None and _native.status() == "loaded"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest.read_text().strip()
    assert (path.stat().st_mode & 0o022) == 0
    _one_native_step_matches_eager()


@needs_cc
@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_group_or_world_writable_cache_dir_is_refused(fresh_cache, mode):
    fresh_cache.mkdir(parents=True)
    fresh_cache.chmod(mode)
    with pytest.warns(RuntimeWarning, match="writable by group or others.*slower PyTorch path"):
        assert _native.load() is None
    assert "writable by group or others" in _native.status()
    assert list(fresh_cache.iterdir()) == []  # nothing built into it, nothing loaded from it
    model, _ = make("unequal-bias")
    assert not GSpaceOptimizer(model, torch.optim.SGD, lr=0.1).native  # the eager path, after the warning


@needs_cc
def test_file_of_another_user_and_symlinks_are_refused(fresh_cache, monkeypatch):
    path = _native._compile(CC)
    uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    with pytest.raises(_native._Refused, match=f"owned by uid {uid}, not by this user"):
        _native._check_owned(path, directory=False)
    monkeypatch.setattr(os, "getuid", lambda: uid)
    link = path.with_name("link.so")
    link.symlink_to(path)
    with pytest.raises(_native._Refused, match="not a regular file"):
        _native._check_owned(link, directory=False)


@needs_cc
def test_struct_layout_mismatch_is_rebuilt_then_refused(fresh_cache, monkeypatch):
    """The C library reports its ABI version and struct layout; when it disagrees with the ctypes mirror even
    after a rebuild, the kernels are refused with a warning (eager path), never called."""
    monkeypatch.setattr(_native, "ABI_VERSION", _native.ABI_VERSION + 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _native.load() is None
    messages = [str(w.message) for w in caught]
    assert any("layout / ABI mismatch" in m and "rebuilding" in m for m in messages)
    assert any("not used" in m for m in messages)
    assert "rebuilt library failed verification: struct layout / ABI mismatch" in _native.status()
