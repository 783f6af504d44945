"""The tables of measured numbers in docs/ are generated from results files by scripts/make_doc_tables.py: a
documented table whose structure (header, row labels) differs from the script's output fails here."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_doc_tables", ROOT / "scripts" / "make_doc_tables.py")
mdt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mdt)

BLOCKS = [(p, *b) for p in mdt.docs() for b in mdt.blocks(p.read_text())]


def test_gspace_doc_has_generated_tables():
    names = {name for p, name, _, _ in BLOCKS if p.name == "gspace.md"}
    assert {"gspace-lr-grid", "gspace-lr-grid-incl-init", "fixed-value-grid"} <= names


@pytest.mark.parametrize(("path", "name", "file", "body"), BLOCKS, ids=[f"{p.name}:{n}:{f}" for p, n, f, _ in BLOCKS])
def test_documented_table_matches_generator_structure(path, name, file, body):
    assert (ROOT / file).is_file(), f"{path.name}: results file {file} is not in the repository"
    generated = mdt.generate(name, file)
    want = mdt.table_structure(generated)
    assert want, "the generator made no table"
    assert mdt.table_structure(body) == want, (
        f"{path.name}: table {name!r} differs in structure from `python scripts/make_doc_tables.py` "
        "(run it with --write)"
    )
    # the command beside the table
    assert ("python -m benchmarks." if name.startswith("bench-") else "python -m nnteleport experiment") in body


def test_gspace_experiment_tables_are_all_generated():
    """No hand-written table in docs/gspace.md's Experiments section (everything there is in a block)."""
    text = (ROOT / "docs" / "gspace.md").read_text()
    section = text[text.index("## Experiments") :]
    outside = mdt.BLOCK.sub("", section)
    assert not re.search(r"^\|.*\|\n\|---", outside, re.M), "a table outside a generated block"


def _synthetic_lr_grid(tmp_path: Path) -> str:
    inf = math.inf
    cell = lambda m, mi, nd: {"mean_best_val_loss": m, "mean_best_val_loss_incl_init": mi, "n_diverged": nd,  # noqa: E731
                              "n_runs": 3}  # fmt: skip
    res = {
        "config": {"seeds": 3, "epochs": 10, "dataset": "digits", "hidden": [64], "batch_size": 64, "lrs": [0.1, 0.01]},
        "grid": {
            "sgd": {"0.1": {**cell(0.4, 0.4, 0), "std_best_val_loss": 0.05}, "0.01": cell(2.29, 2.29, 0)},
            "gsgd-thesis": {"0.1": cell(inf, 2.1, 1), "0.01": cell(0.2, 0.2, 0)},
        },
    }
    (tmp_path / "docs" / "data").mkdir(parents=True)
    (tmp_path / "docs" / "data" / "g.json").write_text(json.dumps(res))
    return "docs/data/g.json"


def test_generator_counts_diverged_seeds_and_both_definitions(tmp_path):
    file = _synthetic_lr_grid(tmp_path)
    ours = mdt.generate("gspace-lr-grid", file, tmp_path)
    thesis = mdt.generate("gspace-lr-grid-incl-init", file, tmp_path)
    assert "| G-SGD (thesis init: diagonal skeleton, every mask entry +1) | inf (1/3 div.) | **0.200** |" in ours
    assert "| G-SGD (thesis init: diagonal skeleton, every mask entry +1) | 2.100 (1/3 div.) | **0.200** |" in thesis
    assert "epochs' validation losses (ours)" in ours and "loss before training (thesis)" in thesis
    assert "| SGD | **0.400 ± 0.05** | 2.290 |" in ours  # the spread over seeds is shown
    assert "| SGD | **0.400** | 2.290 |" in thesis  # (the thesis' definition has its own spread key)
    assert "--set 'lrs=[0.1,0.01]'" in ours  # the command says how the file was made


def test_structure_check_fails_on_a_changed_table(tmp_path):
    file = _synthetic_lr_grid(tmp_path)
    body = mdt.generate("gspace-lr-grid", file, tmp_path)
    ref = mdt.table_structure(body)
    dropped = "\n".join(line for line in body.splitlines() if not line.startswith("| SGD")) + "\n"
    renamed = body.replace("| method | 1e-1 | 1e-2 |", "| method | 1e-1 | 1e-3 |")
    assert mdt.table_structure(dropped) != ref
    assert mdt.table_structure(renamed) != ref
    renumbered = body.replace("0.4 |", "0.5 |")  # numbers may be regenerated: same structure
    assert mdt.table_structure(renumbered) == ref


def test_rewrite_replaces_block_and_keeps_the_rest(tmp_path):
    file = _synthetic_lr_grid(tmp_path)
    doc = f"before\n<!-- table: gspace-lr-grid {file} -->\nstale\n| a |\n|---|\n| b |\n<!-- /table -->\nafter\n"
    new = mdt.rewrite(doc, tmp_path)
    assert new.startswith("before\n") and new.endswith("after\n") and "stale" not in new
    assert mdt.rewrite(new, tmp_path) == new


#: Every documented table of measured numbers that is generated: document -> its generated blocks.
DOCUMENTED = {
    "gspace.md": {"bench-gspace", "bench-fixing", "gspace-lr-grid", "gspace-lr-grid-incl-init", "fixed-value-grid"},
    "distance.md": {"distance-training", "bench-distance", "bench-canonicalize"},
    "engine.md": {"bench-teleport"},
    "experiments.md": {
        "lr-confound",
        "numbers:training",
        "numbers:pseudo-teleport",
        "numbers:mid-training",
        "numbers:gradient-scale",
        "numbers:interpolation",
        "numbers:level-curves",
        "numbers:micro-teleport",
        "teleport-schedule",
        "bench-vmap",
    },
}


@pytest.mark.parametrize("doc", sorted(DOCUMENTED))
def test_documented_tables_are_generated_blocks(doc):
    names = {name for p, name, _, _ in BLOCKS if p.name == doc}
    assert DOCUMENTED[doc] <= names


@pytest.mark.parametrize(("doc", "start", "end"), [
    ("distance.md", None, None), ("gspace.md", "## Benchmarks", None),
    ("experiments.md", "## Many seeds in one process", "## Device"),
    ("experiments.md", "## Measured", "## Paper configurations"),  # (then: the configurations' key/value tables)
])  # fmt: skip
def test_no_hand_written_measured_tables(doc, start, end):
    """The measured sections hold no table outside a generated block (docs/distance.md: none anywhere)."""
    text = (ROOT / "docs" / doc).read_text()
    section = text[text.index(start) :] if start else text
    section = section[: section.index(end)] if end else section
    assert not re.search(r"^\|.*\|\n\|---", mdt.BLOCK.sub("", section), re.M), f"{doc}: a table outside a block"


BENCH_FILES = sorted({f for _, name, f, _ in BLOCKS if name.startswith("bench-")})


@pytest.mark.parametrize("file", BENCH_FILES)
def test_benchmark_results_say_how_where_and_when(file):
    """A benchmark's results file records the command that wrote it (to this very file), one thread (unless
    the command asks for more with ``--threads N``, and then exactly N), the machine (CPU, cores, load) and the
    date."""
    doc = json.loads((ROOT / file).read_text())
    assert doc["command"].startswith(f"python -m benchmarks.{doc['benchmark']} ") and f"--json {file}" in doc["command"]
    m = doc["machine"]
    asked = re.search(r"--threads (\d+)", doc["command"])
    assert m["cpu"] and m["cpu_count"] and m["torch"] and m["torch_threads"] == (int(asked[1]) if asked else 1)
    assert m["load_average_start"] is not None and m["load_average_end"] is not None
    assert re.fullmatch(r"20\d\d-\d\d-\d\dT.*", doc["date"])


def test_distance_training_table_is_the_default_run_with_three_seeds():
    from nnteleport.lab.experiments.distance_training import DEFAULTS

    ((file,),) = {(f,) for _, name, f, _ in BLOCKS if name == "distance-training"}
    res = json.loads((ROOT / file).read_text())
    differ = {k for k in DEFAULTS if k not in ("workers", "device") and res["config"].get(k) != DEFAULTS[k]}
    assert not differ, f"{file} is not a run at DEFAULTS: {sorted(differ)}"
    assert len(DEFAULTS["seeds"]) >= 3 and all(r["seeds"] >= 3 for r in res["summary"])


def test_distance_training_generator_counts_diverged_runs(tmp_path):
    from nnteleport.lab.experiments.distance_training import DEFAULTS

    row = {"model": "resnet18", "variant": "distance", "seeds": 3, "diverged": 1, "final_val_acc": 0.9,
           "final_val_acc_std": 0.01, "ensemble_acc": 0.95, "ensemble_acc_std": 0.02, "mean_member_acc": 0.9,
           "disagreement": 0.1, "disagreement_std": 0.01, "error_correlation": 0.4, "error_correlation_std": 0.05,
           "final_dist_first_ckpt": 9.9, "final_inv_dist_first_ckpt": None, "overhead_ratio": 1.25}  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps({"config": dict(DEFAULTS), "summary": [row]}))
    body = mdt.generate("distance-training", "d.json", tmp_path)
    assert "| ResNet-18 | distance (1/3 div.) | 0.900 ± 0.010 | 0.950 ± 0.020 | 0.900 | 0.100 ± 0.010 | " in body
    assert "| 9.9 / – | 1.25 |" in body and "experiment distance-training --out" in body


def test_lr_confound_table_shows_a_grid_edge_warning(tmp_path):
    res = json.loads((ROOT / "docs" / "data" / "lr-confound.json").read_text())
    for fam in res["families"].values():
        fam["best_tuned"]["edge"] = "upper"
    res["warnings"] = ["sgd: the best-tuned lr 0.32 (x32) is at the upper edge of the grid"]
    (tmp_path / "l.json").write_text(json.dumps(res))
    body = mdt.generate("lr-confound", "l.json", tmp_path)
    assert ", upper grid edge)" in body and "**Warning: sgd: the best-tuned lr 0.32 (x32) is at the upper" in body


def test_numbers_block_is_the_experiments_report_section():
    """``numbers:EXPERIMENT``: one row per number of the experiment's report section, and its verdict."""
    from nnteleport.lab.experiments import lr_confound

    file = "docs/data/lr-confound.json"
    sec, _ = lr_confound.report_section(json.loads((ROOT / file).read_text()), ROOT / "docs" / "data")
    body = mdt.generate("numbers:lr-confound", file)
    (structure,) = mdt.table_structure(body)
    assert structure[:3] == ("quantity", "value", "::")
    assert list(structure[3:]) == [
        k.replace("|", "\\|") for k, _ in sec.numbers
    ]  # "|" in a label is escaped, not a column
    assert sec.verdict.replace("|", "\\|") in body and "experiment lr-confound --out" in body
    with pytest.raises(Exception, match="nosuch"):
        mdt.generate("numbers:nosuch", file)


def test_measured_section_copies_no_statistics_outside_blocks():
    """docs/experiments.md's "Measured" section: the numbers are in the generated blocks, not in the prose (a
    copied statistic: a value with 3 or more decimals, a ``±`` or a ``×`` speed-up)."""
    text = (ROOT / "docs" / "experiments.md").read_text()
    a = text.index("## Measured")
    section = text[a : text.index("\n## ", a + 1)]
    prose = mdt.BLOCK.sub("", section)
    copied = re.findall(r"\d\.\d{3,}|±|×\d", prose)
    assert not copied, f"statistics copied into the prose of the Measured section: {copied}"
