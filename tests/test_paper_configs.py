"""The packaged paper configurations (``--config paper``, issue 17): one per experiment, valid, marked, packaged."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from nnteleport.errors import InvalidValueError, MissingFileError
from nnteleport.lab.experiments import EXPERIMENTS, get_experiment
from nnteleport.lab.experiments.config import dataset_names, load_config, paper_config_path, validate_config

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(EXPERIMENTS)


@pytest.mark.parametrize("name", NAMES)
def test_every_experiment_has_a_paper_config_that_validates(name):
    path = paper_config_path(name)
    assert path.name == f"{name}.yaml" and path.is_file()
    cfg = load_config(name, "paper", check_files=False)  # the same path as any YAML file, files not required
    validate_config(name, cfg, check_files=False)
    assert cfg == load_config(name, path, check_files=False)  # "paper" is that file, nothing else
    raw = yaml.safe_load(path.read_text())
    assert raw and set(raw) <= set(get_experiment(name).DEFAULTS)
    for key, value in raw.items():  # what the file sets is what the config holds
        if not isinstance(value, dict):
            assert cfg[key] == (tuple(value) if isinstance(cfg[key], tuple) else value), key


@pytest.mark.parametrize("name", NAMES)
def test_every_key_of_a_paper_config_says_where_its_value_comes_from(name):
    """Each top-level line and each model_kwargs line carries '# paper', '# thesis' or '# our choice'."""
    text = paper_config_path(name).read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    unmarked = [ln for ln in lines if ":" in ln and ln.split(":")[0].strip() != "model_kwargs"
                and not re.search(r"#\s*(paper|thesis|our choice)", ln)]  # fmt: skip
    assert not unmarked, f"{name}.yaml: lines without a source: {unmarked}"


def test_paper_configs_are_full_scale():
    """The paper's models at full width, its datasets, seeds and epochs (the core of Sec. 5.2)."""
    cfg = load_config("training", "paper", check_files=False)
    assert cfg["models"] == ["mlp", "vgg", "resnet18", "densenet"]
    assert cfg["datasets"] == ["cifar10", "cifar100"] and cfg["lrs"] == [0.01, 0.001, 0.0001]
    assert (cfg["seeds"], cfg["epochs"], cfg["lr_decay_epochs"]) == (5, 100, [80])
    kw = cfg["model_kwargs"]
    assert kw["mlp"]["hidden"] == [500] * 5 and kw["vgg"]["width"] == 1.0 and kw["resnet18"]["width"] == 1.0
    assert kw["densenet"]["blocks"] == [6, 12, 24, 16] and kw["densenet"]["growth_rate"] == 32
    for name in NAMES:  # the widths of every packaged conv net are the full ones
        c = load_config(name, "paper", check_files=False)
        for model, opts in c.get("model_kwargs", {}).items():
            if model in (c.get("models") or [c.get("model")]) and "width" in opts:
                assert opts["width"] == 1.0, (name, model)


def test_paper_config_with_missing_data_fails_in_one_line_naming_the_file(tmp_path):
    with pytest.raises(MissingFileError) as e:
        load_config("training", "paper", {"data_root": str(tmp_path)})
    assert "cifar10" in str(e.value) and "\n" not in str(e.value)
    cfg = load_config("training", "paper", {"data_root": str(tmp_path)}, check_files=False)
    assert dataset_names(cfg) == ["cifar10", "cifar100"]


def test_paper_config_goes_through_the_same_checks_as_any_yaml():
    with pytest.raises(InvalidValueError, match="epochs"):
        load_config("training", "paper", ["epochs=0"], check_files=False)
    with pytest.raises(InvalidValueError, match="unknown experiment"):
        paper_config_path("no-such-experiment")


def test_paper_configs_are_package_data():
    """pyproject's package-data globs cover every packaged paper YAML (so a wheel carries them)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["nnteleport"]
    pkg = ROOT / "src" / "nnteleport"
    for name in NAMES:
        rel = paper_config_path(name).resolve().relative_to(pkg.resolve()).as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in data), rel


def test_docs_list_the_paper_choices_of_every_experiment():
    text = (ROOT / "docs" / "experiments.md").read_text()
    section = text.split("## Paper configurations", 1)[1].split("\n## ", 1)[0]
    for name in NAMES:
        assert f"### `{name}`" in section, name


@pytest.mark.parametrize("name", NAMES)
def test_the_documented_set_line_is_the_paper_config(name):
    text = (ROOT / "docs" / "experiments.md").read_text()
    block = text.split("## Paper configurations", 1)[1].split(f"### `{name}`", 1)[1].split("```bash", 1)[1]
    block = block.split("```", 1)[0]
    items = re.findall(r"--set (\S+)", block)
    assert items and load_config(name, None, items, check_files=False) == load_config(name, "paper", check_files=False)
