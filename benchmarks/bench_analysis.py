"""Benchmark: cost of ``nnteleport.analyze`` on third-party classification models (issue 12, "analysis cost").

Target (issue 12): no model of the torchvision or timm zoo takes more than 2 s to analyse on one core.

Run: ``python -m benchmarks.bench_analysis`` (a quick, documented selection: :data:`QUICK`), or
``python -m benchmarks.bench_analysis --zoo all --out /tmp/analysis_times.txt`` for the whole torchvision
classification zoo (``torchvision.models.list_models(module=torchvision.models)``) and the timm sample
:data:`TIMM_MODELS`. ``--models cspdarknet53,tv:resnet18,nt:densenet`` picks models by name (prefix ``tv:``
torchvision, ``timm:`` timm, ``nt:`` ``nnteleport.lab.models.build_model``; without a prefix: torchvision if it has the
name, else timm, else nnteleport); ``--limit N`` keeps the first N.

For each model (random initialisation, never pretrained weights, ``num_classes=10``) it prints

* the input used: ``2 x 3 x 64 x 64`` by default (torchvision exceptions: :data:`TV_INPUT`); a timm model with a
  fixed image size (ViT, Swin, ...) is built with ``img_size=64`` where its constructor takes it; a model that
  still refuses it runs at the first size it accepts among timm's ``min_input_size``, :data:`FALLBACK_SIZES` and
  its ``input_size``;
* the analysis time, the median over ``--reps`` runs, each on a fresh deep copy of the model (the plan cache,
  keyed by the model object, is cold; the copy is not timed). When one run exceeds ``--max-single`` seconds, that
  run alone is reported (marked ``*``);
* ``graphs``: the distinct graphs ``torch.fx`` traced during one analysis (by generated code; more than 1 when train
  and eval mode, or grad and no-grad mode, trace differently, e.g. stochastic depth or dropout paths written as
  ``if self.training``: ``differ`` says so), and ``walks``: the interpretations of those graphs
  (``torch.fx.Interpreter.run`` calls);
* ``cpu``: the process CPU time of the same analyses (median): on a loaded machine, where the wall-clock figure
  also counts the time other processes held the core, this is the figure to compare (the analysis is
  single-threaded with ``--threads 1``);
* ``forward``: one plain forward of the model on that input (eval mode, no gradients), the cost every graph walk
  pays at least once: ``walks x forward`` is the floor of the analysis on that input;
* coverage: free / hidden neurons, and moving / total parameters.

Models that fail to build, to run on any input size, or to be analysed are listed at the end with the error (one
line each). Missing torchvision or timm is not an error: their models are skipped with a note. Run on one core
(``--threads 1``, the default; also set ``OMP_NUM_THREADS=1``): the figure the target is about.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

import nnteleport as nt
from benchmarks._results import Recorder, add_json_option

BATCH = 2
SIZE = 64
FALLBACK_SIZES = (96, 128, 160, 192, 224, 256, 299)  # tried in turn when a model refuses SIZE x SIZE

# torchvision models whose default configuration rejects 64 x 64 (fixed image size, too many poolings), with the
# builder options and input size used instead.
TV_INPUT: dict[str, tuple[int, dict[str, Any]]] = {
    "vit_b_16": (64, {"image_size": 64}),
    "vit_b_32": (64, {"image_size": 64}),
    "vit_l_16": (64, {"image_size": 64}),
    "vit_l_32": (64, {"image_size": 64}),
    "vit_h_14": (56, {"image_size": 56}),
    "inception_v3": (75, {"init_weights": False}),  # its minimum in eval mode (train mode: the aux head, 299)
    "googlenet": (64, {"init_weights": False}),
    "maxvit_t": (224, {}),
}

# The timm sample: the architectures named in issue 12, then, for every timm module (family) not yet present, its
# smallest model (by parameter count, under 100 M parameters; families whose models are all larger are left out).
# Picked with timm 1.0.31 by building every model of timm.list_models() on the meta device.
TIMM_MODELS = [
    # named in issue 12 / the test suite's usual suspects
    "cspdarknet53", "dpn68", "vovnet39a", "regnetz_b16", "convnext_atto", "efficientnet_b0", "resnet50",
    "vit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "deit_tiny_patch16_224", "mobilenetv3_small_100",
    "mobilenetv3_large_100",
    # convolutional families
    "resnet18", "densenet121", "cspresnet50", "cspresnext50", "darknet53", "cs3darknet_s", "dla34", "ghostnet_100",
    "hrnet_w18_small", "rexnet_100", "resnest14d", "res2net50_26w_4s", "sebotnet33ts_256", "seresnext26d_32x4d",
    "efficientnetv2_rw_t", "tf_efficientnet_lite0", "mixnet_s", "mnasnet_100", "lcnet_050", "fbnetv3_b",
    "regnetx_002", "regnety_002", "xception41", "inception_v3", "nf_resnet26", "dm_nfnet_f0",
    # transformers, MLPs and hybrids
    "levit_128s", "pit_ti_224", "mixer_s16_224", "resmlp_12_224", "convmixer_768_32", "poolformer_s12",
    "mobilevit_xxs", "coat_lite_tiny", "twins_svt_small", "pvt_v2_b0", "crossvit_tiny_240", "beit_base_patch16_224",
    "cait_xxs24_224", "tnt_s_patch16_224", "gcvit_xxtiny", "maxvit_tiny_tf_224", "coatnet_nano_rw_224",
    "efficientformer_l1", "edgenext_xx_small", "convit_tiny", "volo_d1_224", "xcit_nano_12_p16_224",
    # more convolutional families and variants
    "selecsls42b", "hardcorenas_a", "tresnet_m", "repvgg_a0", "vgg11_bn", "nasnetalarge", "pnasnet5large",
    "inception_resnet_v2", "inception_v4", "legacy_xception", "skresnet18", "tinynet_e", "spnasnet_100",
    "semnasnet_050", "gernet_s", "resnet26t", "ecaresnet26t", "resnetv2_50", "resnetblur18", "seresnet18",
    "wide_resnet50_2", "resnext26ts", "darknet17", "cs3darknet_focus_s",
    # recent and attention-heavy families
    "sequencer2d_s", "focalnet_tiny_srf", "davit_tiny", "nest_tiny", "vit_small_patch16_224", "vit_base_patch16_224",
    "eva02_tiny_patch14_224", "swinv2_tiny_window8_256", "swinv2_cr_tiny_224", "hiera_tiny_224", "fastvit_t8",
    "efficientvit_b0", "efficientvit_m0", "repvit_m0_9", "mambaout_femto", "caformer_s18", "convformer_s18",
    "inception_next_atto", "rdnet_tiny", "starnet_s1", "shvit_s1", "swiftformer_xs", "tiny_vit_5m_224",
    "visformer_tiny", "hgnetv2_b0", "hgnet_tiny", "ghostnetv2_100", "repghostnet_050", "fasternet_t0",
    "efficientvim_m1", "lowformer_b0", "dla46_c", "dpn48b", "vovnet57a", "ese_vovnet19b_dw", "regnetz_c16",
    "regnetv_040", "nf_regnet_b0", "resnet10t", "mobileone_s0", "eca_halonext26ts", "botnet26t_256",
    "lambda_resnet26t", "haloregnetz_b", "halonet26t", "gmlp_ti16_224", "gmixer_12_224", "pit_xs_224",
    "deit_small_patch16_224", "deit3_small_patch16_224", "vit_relpos_small_patch16_224", "vit_small_r26_s32_224",
    "samvit_base_patch16_224", "vitamin_small_224", "mvitv2_tiny", "efficientformerv2_s0", "levit_conv_128s",
    "coat_lite_mini", "mobilevitv2_050", "nextvit_small", "cspnext_tiny", "csatv2", "iformer_t", "lcnetv2_small",
    "cpubone_b0_bfrobust", "densenetblur121d", "mobilenetv4_conv_small", "mobilenetv5_base", "efficientnet_lite0",
    "efficientnet_b0_gn", "tf_mixnet_s", "mobilenetv1_100", "mobilenetv2_050", "fbnetc_100", "sam2_hiera_tiny",
    "naflexvit_base_patch16_parfac_gap", "qwen3_vit_88m", "legacy_seresnet18",
]  # fmt: skip

# nnteleport's own zoo (always available): name -> (build_model name, in_shape, options)
NT_MODELS: dict[str, tuple[str, tuple[int, ...], dict[str, Any]]] = {
    "resnet18": ("resnet18", (3, 32, 32), {}),
    "densenet": ("densenet", (3, 32, 32), {}),
    "mobilenetv2": ("mobilenetv2", (3, 32, 32), {}),
    "vgg": ("vgg", (3, 32, 32), {}),
    "mlp": ("mlp", (784,), {}),
}

# The default selection (what ``python -m benchmarks`` runs): the slowest models of the full run and a few fast ones.
QUICK = [
    "timm:cspdarknet53", "timm:dpn68", "timm:vovnet39a", "timm:regnetz_b16", "timm:convnext_atto",
    "timm:efficientnet_b0", "timm:resnet50", "timm:vit_tiny_patch16_224", "timm:swin_tiny_patch4_window7_224",
    "tv:efficientnet_b0", "tv:convnext_tiny", "tv:densenet121", "tv:resnet18", "nt:resnet18", "nt:densenet",
]  # fmt: skip


def _optional(module: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return __import__(module)
    except Exception:  # absent, or broken against this torch
        return None


@dataclass
class Spec:
    """One model to benchmark: ``build()`` returns a fresh model, ``inputs`` make the inputs to try in order."""

    zoo: str
    name: str
    build: Callable[[], nn.Module] | None
    inputs: list[Callable[[], Any]] = field(default_factory=list)
    small: Callable[[], nn.Module] | None = None  # the architecture built for 64 x 64 inputs (timm: img_size=64)
    skip: str | None = None

    @property
    def label(self) -> str:
        return f"{self.zoo}:{self.name}"


def _images(size: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(BATCH, 3, size, size)


def torchvision_names(tv: Any) -> list[str]:
    return list(tv.models.list_models(module=tv.models))


def _tv_spec(tv: Any, name: str) -> Spec:
    size, kw = TV_INPUT.get(name, (SIZE, {}))

    def build() -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tv.models.get_model(name, weights=None, num_classes=10, **kw)

    return Spec("tv", name, build, [_images(size)])


def _timm_spec(timm: Any, name: str) -> Spec:
    def build() -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return timm.create_model(name, pretrained=False, num_classes=10)

    def small() -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return timm.create_model(name, pretrained=False, num_classes=10, img_size=SIZE)

    # the model's own size is read after building (pretrained_cfg): see _pick_input
    return Spec("timm", name, build, [_images(SIZE)], small=small)


def _nt_spec(name: str) -> Spec:
    from nnteleport.lab.models import build_model

    model_name, shape, kw = NT_MODELS[name]
    return Spec(
        "nt",
        name,
        lambda: build_model(model_name, in_shape=shape, num_classes=10, **kw),
        [lambda: torch.randn(BATCH, *shape)],
    )


def resolve(names: list[str]) -> list[Spec]:
    """Specs for ``names`` (``tv:``/``timm:``/``nt:`` prefixes, see the module docstring)."""
    tv, timm = _optional("torchvision"), _optional("timm")
    tv_names = set(torchvision_names(tv)) if tv is not None else set()
    out = []
    for full in names:
        zoo, _, name = full.rpartition(":")
        if not zoo:
            zoo = "tv" if name in tv_names else "timm" if timm is not None or name not in NT_MODELS else "nt"
        if zoo == "tv":
            out.append(_tv_spec(tv, name) if tv is not None else Spec("tv", name, None, skip="torchvision absent"))
        elif zoo == "timm":
            out.append(_timm_spec(timm, name) if timm is not None else Spec("timm", name, None, skip="timm absent"))
        elif zoo == "nt":
            out.append(_nt_spec(name) if name in NT_MODELS else Spec("nt", name, None, skip="unknown nt model"))
        else:
            out.append(Spec(zoo, name, None, skip=f"unknown zoo {zoo!r} (use tv:, timm: or nt:)"))
    return out


def zoo_names(zoo: str) -> list[str]:
    if zoo == "quick":
        return list(QUICK)
    names: list[str] = []
    if zoo in ("all", "torchvision"):
        tv = _optional("torchvision")
        names += [f"tv:{n}" for n in torchvision_names(tv)] if tv is not None else ["tv:(all)"]
    if zoo in ("all", "timm"):
        names += [f"timm:{n}" for n in TIMM_MODELS]
    if zoo in ("all", "nt"):
        names += [f"nt:{n}" for n in NT_MODELS]
    return names


def _first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _runs(model: nn.Module, x: torch.Tensor) -> BaseException | None:
    """None when ``model(x)`` runs in eval and in train mode (the analysis runs both), else the exception."""
    was = model.training
    try:
        for train in (False, True):
            model.train(train)
            with torch.no_grad():
                model(x)
        return None
    except Exception as exc:
        return exc
    finally:
        model.train(was)


def _pick_input(spec: Spec, model: nn.Module) -> tuple[nn.Module, torch.Tensor]:
    """The model and the first input it runs on in eval and train mode: 64 x 64 (or :data:`TV_INPUT`); for timm models
    refusing it, the same architecture built for 64 x 64 (``img_size=64``, where the constructor takes it), else
    the model's own ``min_input_size`` / ``input_size``."""
    err: BaseException | None = None
    for make in spec.inputs:
        x = make()
        exc = _runs(model, x)
        if exc is None:
            return model, x
        err = err or exc
    if spec.small is not None:
        try:
            small = spec.small()
        except Exception:
            small = None  # the constructor takes no img_size
        if small is not None:
            x = torch.randn(BATCH, 3, SIZE, SIZE)
            if _runs(small, x) is None:
                return small, x
    cfg = getattr(model, "pretrained_cfg", None) or {}
    shapes = [tuple(cfg["min_input_size"])] if cfg.get("min_input_size") else []
    shapes += [(3, s, s) for s in FALLBACK_SIZES]
    shapes += [tuple(cfg["input_size"])] if cfg.get("input_size") else []
    tried = {tuple(x.shape[1:]) for x in (make() for make in spec.inputs)}
    for shape in shapes:
        if shape in tried:
            continue
        tried.add(shape)
        x = torch.randn(BATCH, *shape)
        exc = _runs(model, x)
        if exc is None:
            return model, x
        err = err or exc
    assert err is not None
    raise RuntimeError(f"runs on no input size tried ({_first_line(err)})")


def _forward_time(model: nn.Module, x: torch.Tensor) -> float:
    """One plain forward in eval mode without gradients (after a warm-up one): the floor of one graph walk."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
            t0 = time.perf_counter()
            model(x)
            return time.perf_counter() - t0
    finally:
        model.train(was)


class _Counter:
    """While active, collects the graphs ``torch.fx`` traces and counts interpretations (graph walks)."""

    def __init__(self) -> None:
        self.graphs: list[fx.Graph] = []
        self.walks = 0

    def __enter__(self) -> _Counter:
        self._trace, self._run = fx.Tracer.trace, fx.Interpreter.run
        counter = self

        def trace(tracer, *a, **k):
            graph = counter._trace(tracer, *a, **k)
            counter.graphs.append(graph)
            return graph

        def run(interp, *a, **k):
            counter.walks += 1
            return counter._run(interp, *a, **k)

        fx.Tracer.trace, fx.Interpreter.run = trace, run
        return self

    def __exit__(self, *exc: Any) -> None:
        fx.Tracer.trace, fx.Interpreter.run = self._trace, self._run

    def distinct_graphs(self) -> int:
        """Distinct traced graphs (by generated code): 2 when train and eval mode trace differently."""
        return len({g.python_code(root_module="self").src for g in self.graphs})


def bench(spec: Spec, reps: int = 3, max_single: float = 10.0) -> dict[str, Any]:
    """Time ``nt.analyze`` on ``spec``'s model; returns a row (``error`` set when it failed)."""
    row: dict[str, Any] = {"model": spec.label}
    if spec.skip is not None:
        row["skipped"] = spec.skip
        return row
    assert spec.build is not None
    torch.manual_seed(0)
    try:
        model = spec.build()
    except Exception as exc:
        row["error"] = f"build: {_first_line(exc)}"
        return row
    try:
        model, x = _pick_input(spec, model)
    except Exception as exc:
        row["error"] = f"forward: {_first_line(exc)}"
        return row
    row["input"] = "x".join(str(s) for s in x.shape)
    row["params"] = sum(p.numel() for p in model.parameters())
    row["forward"] = _forward_time(model, x)
    times: list[float] = []
    cpu: list[float] = []
    plan = None
    try:
        for r in range(reps):
            fresh = copy.deepcopy(model)  # a new object: the plan cache is cold
            gc.collect()
            with _Counter() as counter:  # collecting the graphs costs microseconds; their code is made after
                t0, c0 = time.perf_counter(), time.process_time()
                plan = nt.analyze(fresh, x)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            if r == 0:
                row["traces"], row["walks"], row["graphs"] = (
                    len(counter.graphs),
                    counter.walks,
                    counter.distinct_graphs(),
                )
            del counter
            del fresh
            if times[0] > max_single:
                break
    except Exception as exc:
        row["error"] = f"analyze: {_first_line(exc)}"
        return row
    assert plan is not None
    rep = plan.report
    row.update(
        seconds=statistics.median(times),
        cpu=statistics.median(cpu),
        runs=len(times),
        differ=row["graphs"] > 1,
        free=rep.free_neurons,
        hidden=rep.hidden_neurons,
        moving=rep.parameters_moving,
        total=rep.parameters_total,
        groups=len(plan.groups),
    )
    return row


HEADER = (
    f"{'model':48s} {'input':>12s} {'params':>11s} {'seconds':>8s} {'cpu':>7s} {'forward':>8s} {'graphs':>6s} "
    f"{'walks':>5s} {'differ':>6s} {'free/hidden':>15s} {'cov':>6s} {'moving':>6s}"
)


def format_row(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"{r['model']:48s} skipped: {r['skipped']}"
    if "error" in r:
        return f"{r['model']:48s} FAILED {r['error']}"
    mark = "*" if r["runs"] == 1 else " "
    cov = r["free"] / r["hidden"] if r["hidden"] else 0.0
    mov = r["moving"] / r["total"] if r["total"] else 0.0
    return (
        f"{r['model']:48s} {r['input']:>12s} {r['params']:>11,d} {r['seconds']:>7.3f}{mark} {r['cpu']:>7.3f} "
        f"{r['forward']:>8.3f} {r['graphs']:>6d} {r['walks']:>5d} "
        f"{'yes' if r['differ'] else 'no':>6s} {r['free']:>7d}/{r['hidden']:<7d} {100 * cov:>5.1f}% {100 * mov:>5.1f}%"
    )


def _load() -> str:
    try:
        a, b, c = os.getloadavg()
        return f"load average {a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unavailable"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="quick", choices=["quick", "all", "torchvision", "timm", "nt"])
    ap.add_argument("--models", default=None, help="comma-separated names (overrides --zoo), e.g. tv:resnet18,dpn68")
    ap.add_argument("--limit", type=int, default=None, help="keep the first N models")
    ap.add_argument("--reps", type=int, default=3, help="analyses per model (median); default 3")
    ap.add_argument("--max-single", type=float, default=10.0, help="one run only when the first exceeds this (s)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: the target is one core)")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    add_json_option(ap)
    args = ap.parse_args(argv)
    rec = Recorder("bench_analysis", argv, {k: v for k, v in vars(args).items() if k not in ("json", "out")})
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else zoo_names(args.zoo)
    if args.limit is not None:
        names = names[: args.limit]
    specs = resolve(names)
    tv, timm = _optional("torchvision"), _optional("timm")
    lines = [
        f"torch {torch.__version__}, torchvision {getattr(tv, '__version__', 'absent')}, "
        f"timm {getattr(timm, '__version__', 'absent')}, threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, reps {args.reps}, {_load()}",
        HEADER,
    ]
    for line in lines:
        print(line, flush=True)
    rows = []
    for spec in specs:
        r = bench(spec, reps=args.reps, max_single=args.max_single)
        rows.append(r)
        line = format_row(r)
        lines.append(line)
        print(line, flush=True)
    done = [r for r in rows if "seconds" in r]
    failed = [r for r in rows if "error" in r]
    skipped = [r for r in rows if "skipped" in r]
    summary = [f"\n{_load()} at the end"]
    if done:
        over_cpu = sum(r["cpu"] > 2.0 for r in done)
        over_wall = sum(r["seconds"] > 2.0 for r in done)
        summary.append(
            f"{len(done)} analysed, {len(failed)} failed, {len(skipped)} skipped; over the 2 s target: {over_cpu} in "
            f"CPU time ({over_wall} in wall-clock time); graphs differ between modes: {sum(r['differ'] for r in done)}"
        )
        summary.append("slowest (by CPU time):")
        summary += ["  " + format_row(r) for r in sorted(done, key=lambda r: -r["cpu"])[:15]]
    if failed:
        summary.append("failed to build, run or analyse:")
        summary += [f"  {r['model']}: {r['error']}" for r in failed]
    if skipped:
        summary.append(f"skipped: {', '.join(r['model'] + ' (' + r['skipped'] + ')' for r in skipped)}")
    for line in summary:
        print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines + summary) + "\n")
    rec.config["torchvision"] = getattr(tv, "__version__", None)
    rec.config["timm"] = getattr(timm, "__version__", None)
    rec.write(args.json, {"rows": rows, "target_seconds": 2.0})


if __name__ == "__main__":
    sys.exit(main())
