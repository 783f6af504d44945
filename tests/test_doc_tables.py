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
    assert "python -m nnteleport experiment" in body  # the command beside the table


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
