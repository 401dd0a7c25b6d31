"""Configuration layers, validation with suggestions, and the config show round-trip."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import make_dist
from pixdex import api
from pixdex.errors import ConfigError, UnknownComponentError, UsageError
from pixdex.plugins import load_plugins


def test_every_preset_of_the_registry_resolves(pset):
    # a preset with a misspelt key or a bad value would only fail for the user who picks it
    names = sorted(pset.registry_file.presets)
    assert {"quick", "classic", "strong", "tutorial", "photos"} <= set(names)
    for name in names:
        api.configure(pset, preset=name, environ={})
    strong = api.configure(pset, preset="strong", environ={})
    assert strong["data"]["val_fraction"] == 0.0 and strong["train"]["ema_decay"] > 0
    assert strong["transform"]["flip"] > 0 and strong["transform"]["scale"][0] < 0.9  # what --tta flip-crops needs


def test_defaults_come_from_the_registry(pset):
    config = api.configure(pset, environ={})
    assert config["runtime"] == {
        "device": "auto",
        "precision": "auto",
        "workers": 2,
        "batch_size": "auto",
        "memory_budget_mb": 0,
        "engine": "auto",
    }
    assert config["backbone"]["name"] == "auto" and config["loss"]["label_smoothing"] == 0.1
    assert config["train"]["epochs"] == "auto" and config["train"]["early_stop"] == "auto"
    assert config["transform"]["flip"] == 0.0  # flips can change the class (digits, arrows)


def test_layers_apply_lowest_first(pset, tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[runtime]\nbatch_size = 32\nworkers = 0\n[train]\nepochs = 7\nlr = 0.1\n")
    config = api.configure(
        pset,
        preset="quick",
        config_file=cfg,
        environ={"PIXDEX_WORKERS": "3", "PIXDEX_TRAIN__LR": "0.5", "PIXDEX_DEVICE": "cpu"},
        flags={"runtime": {"device": "cpu"}},
        sets=["train.lr=0.25"],
    )
    assert config["train"]["epochs"] == 7  # config file over preset 'quick' (1)
    assert config["runtime"]["batch_size"] == 32  # config file over preset (64)
    assert config["runtime"]["workers"] == 3  # environment over config file
    assert config["train"]["lr"] == 0.25  # --set over environment
    assert config["runtime"]["device"] == "cpu"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sets": ["trian.epochs=3"]}, "Unknown config section [trian]. Did you mean: train?"),
        ({"sets": ["train.epohs=3"]}, "Unknown key 'epohs' in [train]. Did you mean: epochs?"),
        ({"sets": ["train.epochs=three"]}, "[train] epochs must be an integer or auto, got 'three'"),
        ({"sets": ["index.name=anoy"]}, "Unknown index 'anoy'. Did you mean: annoy?"),
        ({"preset": "quik"}, "Unknown preset 'quik'. Did you mean: quick?"),
        ({"sets": ["train.epochs"]}, "expected SECTION.KEY=VALUE"),
    ],
)
def test_bad_configuration_is_refused_with_a_suggestion(pset, kwargs, message):
    with pytest.raises(UsageError) as info:
        api.configure(pset, environ={}, **kwargs)
    assert message in str(info.value)


def test_flag_and_set_disagreeing_is_an_error(pset):
    with pytest.raises(UsageError, match="runtime.device is given twice"):
        api.configure(pset, environ={}, flags={"runtime": {"device": "cpu"}}, sets=["runtime.device=cuda"])
    # agreeing is fine
    api.configure(pset, environ={}, flags={"runtime": {"device": "cpu"}}, sets=["runtime.device=cpu"])


PROBE = """
from dataclasses import dataclass
from pixdex.hookspecs import hookimpl

@dataclass
class A:
    trees: int = 10

@dataclass
class B:
    depth: int = 2

@hookimpl
def register_indexes(register):
    register("probe-a", lambda o, **c: o, options=A)
    register("probe-b", lambda o, **c: o, options=B)
"""


def test_component_options_are_validated_and_filled(site: Path):
    make_dist(site, "pixdex-test-probe", "pixdex_test_probe", PROBE)
    pset = load_plugins()
    config = api.configure(pset, environ={}, sets=["index.name=probe-a", "index.trees=20"])
    assert config["index"] == {"name": "probe-a", "trees": 20}
    with pytest.raises(
        ConfigError, match="Unknown option 'tres' for index 'probe-a'. Did you mean: trees\\? Valid options: trees"
    ):
        api.configure(pset, environ={}, sets=["index.name=probe-a", "index.tres=20"])


def test_changing_a_component_name_drops_its_old_options(site: Path, tmp_path: Path):
    make_dist(site, "pixdex-test-probe", "pixdex_test_probe", PROBE)
    pset = load_plugins()
    cfg = tmp_path / "c.toml"
    cfg.write_text('[index]\nname = "probe-a"\ntrees = 30\n')
    config = api.configure(pset, environ={}, config_file=cfg, flags={"index": {"name": "probe-b"}})
    assert config["index"] == {"name": "probe-b", "depth": 2}
    assert any("dropped options trees" in n for n in config.notes)


def test_config_file_errors_are_one_line(pset, tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 1\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        api.configure(pset, environ={}, config_file=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        api.configure(pset, environ={}, config_file=tmp_path / "missing.toml")


def test_config_show_round_trips(cli_run, tmp_path: Path):
    first = cli_run("config", "show", "--preset", "quick", "--set", "train.lr=0.125", "--device", "cpu")
    assert first.exit_code == 0, first.stderr
    saved = tmp_path / "c.toml"
    saved.write_text(first.stdout)
    second = cli_run("config", "show", "--config", str(saved))
    assert second.exit_code == 0
    assert second.stdout == first.stdout
    import json

    as_json = json.loads(cli_run("config", "show", "--config", str(saved), "--json").stdout)
    assert as_json["train"]["lr"] == 0.125 and as_json["runtime"]["device"] == "cpu"


def test_config_show_refuses_unknown_key_with_exit_2(cli_run):
    result = cli_run("config", "show", "--set", "runtime.devise=cpu")
    assert result.exit_code == 2
    assert result.stderr == (
        "pixdex: error: Unknown key 'devise' in [runtime]. Did you mean: device? "
        "Valid keys: device, precision, workers, batch_size, memory_budget_mb, engine\n"
    )


def test_unknown_component_error_type(pset):
    with pytest.raises(UnknownComponentError):
        pset.registry.get("index", "nope")


@dataclass
class _Typed:
    ratio: float = 0.5
    name: str = "x"
    flag: bool = False
    sizes: list[int] | None = None


def test_option_types_are_checked():
    from pixdex.components import Component, validate_options

    comp = Component("index", "typed", lambda o: o, "test", options=_Typed)
    assert validate_options(comp, {"ratio": 1}).ratio == 1.0  # ints widen to floats
    assert validate_options(comp, {"sizes": [1, 2]}).sizes == [1, 2]
    for bad in ({"ratio": "big"}, {"flag": 1}, {"sizes": ["a"]}, {"name": 3}):
        with pytest.raises(ConfigError):
            validate_options(comp, bad)
