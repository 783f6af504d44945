"""Tests of nnteleport.lab.experiments.config: defaults <- YAML <- --set, with key/type/choice checks."""

from __future__ import annotations

import importlib
import sys
import types

import pytest

from nnteleport.lab.experiments import EXPERIMENTS
from nnteleport.lab.experiments.config import format_defaults, load_config, merge_config, parse_overrides

DEFAULTS = {
    "epochs": 3,
    "lr": 0.01,
    "lrs": [0.01, 0.001],
    "dataset": "digits",
    "progress_every": None,
    "teleport": True,
    "shape": (1, 8, 8),
    "model": {"name": "mlp", "hidden": [32, 32], "width": 0.5},
}


@pytest.fixture
def fake(monkeypatch):
    mod = types.ModuleType("fake_experiment_for_tests")
    mod.DESCRIPTION = "A fake experiment.\n\nLonger text."
    mod.DEFAULTS = DEFAULTS
    mod.CHOICES = {"dataset": ["digits", "mnist1d"], "model.name": ["mlp", "vgg"]}
    mod.run = lambda config, out, progress=True: {"config": config}
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(EXPERIMENTS, "fake", mod.__name__)
    return mod


def test_defaults_are_a_deep_copy(fake):
    c = load_config("fake")
    assert c == DEFAULTS
    c["model"]["hidden"].append(1)
    assert DEFAULTS["model"]["hidden"] == [32, 32]


def test_parse_overrides_dotted_and_yaml_values():
    got = parse_overrides(["a.b=1", "a.c=[1, 2.5]", "d=true", "e=hello", "f=null", "g=1.0e-3"])
    assert got == {"a": {"b": 1, "c": [1, 2.5]}, "d": True, "e": "hello", "f": None, "g": 1e-3}
    for bad in ["novalue", "=3", "a..b=1"]:
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_overrides([bad])
    with pytest.raises(ValueError, match="YAML"):
        parse_overrides(["a=[1, 2"])


def test_yaml_then_set_later_wins(fake, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 10\nmodel:\n  hidden: [64]\n  name: vgg\nlr: 1\n")
    c = load_config("fake", f, ["epochs=20", "model.width=1", "lrs=[0.1]", "lr=1e-3", "shape=[3, 32, 32]"])
    assert c["epochs"] == 20
    assert c["model"] == {"name": "vgg", "hidden": [64], "width": 1.0}
    assert isinstance(c["model"]["width"], float) and isinstance(c["lr"], float)
    assert c["lr"] == 1e-3  # "1e-3" is a string in YAML 1.1; float defaults accept it
    assert c["lrs"] == [0.1]
    assert c["shape"] == (3, 32, 32)  # tuple default stays a tuple


@pytest.mark.parametrize(
    ("item", "pattern"),
    [
        ("epoch=3", r"unknown key 'epoch'; allowed keys: epochs, lr, lrs, dataset"),
        ("model.depth=3", r"unknown key 'model.depth'; allowed keys: model.name, model.hidden, model.width"),
        ("epochs=2.5", r"epochs=2.5 has type float, expected int"),
        ("epochs=true", r"expected int"),
        ("teleport=1", r"teleport=1 has type int, expected bool"),
        ("lr=fast", r"expected float"),
        ("lrs=0.1", r"expected list"),
        ("lrs=[0.1, x]", r"lrs\[1\]='x'.*expected float"),
        ("model=3", r"expected mapping"),
        ("dataset=3", r"expected str"),
        ("dataset=cifar", r"dataset='cifar'.*choose from: digits, mnist1d"),
        ("model.name=resnet", r"model.name='resnet'.*choose from: mlp, vgg"),
    ],
)
def test_errors_name_key_and_allowed(fake, item, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_config("fake", overrides=[item])


def test_none_default_accepts_anything(fake):
    assert load_config("fake", overrides=["progress_every=5"])["progress_every"] == 5


def test_config_file_errors(fake, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_config("fake", tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config("fake", f)
    f.write_text("epochs: [1\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config("fake", f)
    f.write_text("epochz: 1\n")
    with pytest.raises(ValueError, match=f"{f.name}: unknown key 'epochz'"):
        load_config("fake", f)


def test_unknown_experiment():
    with pytest.raises(ValueError, match="choose one of"):
        load_config("no-such-experiment")


def test_merge_config_mapping_overrides():
    assert merge_config({"a": {"b": 1}}, {"a": {"b": 2}}) == {"a": {"b": 2}}


def test_format_defaults_is_yaml_of_defaults(fake):
    import yaml

    text = format_defaults("fake")
    back = yaml.safe_load(text)
    assert back["model"] == DEFAULTS["model"] and back["shape"] == [1, 8, 8]


def test_real_experiments_defaults_load():
    # every experiment module that exists already: its defaults load and round-trip through --set
    for name, modname in EXPERIMENTS.items():
        if importlib.util.find_spec(modname) is None:
            continue
        c = load_config(name)
        assert c == dict(importlib.import_module(modname).DEFAULTS)
