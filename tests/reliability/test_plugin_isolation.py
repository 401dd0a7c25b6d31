"""The plugin manager's loading policy, with real distributions discovered by importlib.metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_dist
from pixdex.errors import PluginError
from pixdex.plugins import load_plugins

BUILTINS = [
    "pixdex_datasets",
    "pixdex_transforms",
    "pixdex_simple_cnn",
    "pixdex_timm",
    "pixdex_losses",
    "pixdex_flat",
    "pixdex_annoy",
    "pixdex_hnsw",
    "pixdex_qdrant",
]

GOOD = """
from dataclasses import dataclass
from pixdex.hookspecs import hookimpl

@dataclass
class Opts:
    size: int = 3

@hookimpl
def register_indexes(register):
    register("toy-index", lambda options, *, dim, metric: ("toy", options.size, dim, metric),
             options=Opts, description="a toy")
"""
RAISES_ON_IMPORT = "raise RuntimeError('boom at import')\n"
MISSPELT = """
from pixdex.hookspecs import hookimpl

@hookimpl
def register_indexs(register):
    pass
"""
DUPLICATE = """
from pixdex.hookspecs import hookimpl

@hookimpl
def register_indexes(register):
    register("flat", lambda options, *, dim, metric: None, description="an impostor")
"""
HOOK_RAISES = """
from pixdex.hookspecs import hookimpl

@hookimpl
def register_backbones(register):
    raise ValueError('broken hook')
"""
FACTORY_RAISES = """
from pixdex.hookspecs import hookimpl

def factory(options, *, dim, metric):
    raise RuntimeError('factory exploded')

@hookimpl
def register_indexes(register):
    register("exploding", factory)
"""


def test_builtins_come_from_registry_in_order(pset):
    assert [p.name for p in pset.plugins] == BUILTINS
    assert all(p.source == "builtin" for p in pset.plugins)


def test_external_plugin_is_discovered_through_its_entry_point(site: Path):
    make_dist(site, "pixdex-test-good", "pixdex_test_good", GOOD)
    pset = load_plugins()
    info = next(p for p in pset.plugins if p.name == "pixdex-test-good")
    assert info.version == "0.1" and info.source == "entry point pixdex-test-good"
    assert info.file and Path(info.file).parent == site
    assert pset.registry.build("index", "toy-index", {"size": 5}, dim=4, metric="l2") == ("toy", 5, 4, "l2")


@pytest.mark.parametrize(
    "source, reason",
    [
        (RAISES_ON_IMPORT, "import failed: RuntimeError: boom at import"),
        (MISSPELT, "unknown hook 'register_indexs'. Did you mean: register_indexes?"),
        (HOOK_RAISES, "register_backbones raised ValueError: broken hook"),
    ],
)
def test_broken_plugin_is_skipped_with_one_line(site: Path, source: str, reason: str):
    make_dist(site, "pixdex-test-bad", "pixdex_test_bad", source)
    make_dist(site, "pixdex-test-good", "pixdex_test_good", GOOD)
    lines: list[str] = []
    pset = load_plugins(warn=lines.append)
    assert lines == [f"pixdex: plugin 'pixdex-test-bad' skipped: {reason} (PIXDEX_STRICT_PLUGINS=1 makes this fatal)"]
    names = [p.name for p in pset.plugins]
    assert "pixdex-test-bad" not in names and "pixdex-test-good" in names
    assert "toy-index" in pset.registry.names("index")  # the rest keeps working


@pytest.mark.parametrize("source", [RAISES_ON_IMPORT, MISSPELT, HOOK_RAISES])
def test_strict_mode_makes_a_broken_plugin_fatal(site: Path, source: str, monkeypatch):
    make_dist(site, "pixdex-test-bad", "pixdex_test_bad", source)
    monkeypatch.setenv("PIXDEX_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="plugin 'pixdex-test-bad' failed"):
        load_plugins()


def test_duplicate_name_first_wins_with_a_warning_naming_both(site: Path):
    make_dist(site, "pixdex-test-dup", "pixdex_test_dup", DUPLICATE)
    lines: list[str] = []
    pset = load_plugins(warn=lines.append)
    component, _ = pset.registry.get("index", "flat")
    assert component.plugin == "pixdex_flat"
    assert lines == [
        "pixdex: warning: index 'flat' from plugin 'pixdex-test-dup' ignored: plugin 'pixdex_flat' registered it first"
    ]


def test_factory_that_raises_is_reported_by_name(site: Path):
    make_dist(site, "pixdex-test-boom", "pixdex_test_boom", FACTORY_RAISES)
    pset = load_plugins()
    with pytest.raises(
        PluginError, match="index 'exploding' from plugin 'pixdex-test-boom' failed: RuntimeError: factory exploded"
    ):
        pset.registry.build("index", "exploding", dim=2, metric="l2")


def test_load_plugins_env_selects_distributions(site: Path, monkeypatch):
    make_dist(site, "pixdex-test-good", "pixdex_test_good", GOOD)
    make_dist(site, "pixdex-test-bad", "pixdex_test_bad", RAISES_ON_IMPORT)
    monkeypatch.setenv("PIXDEX_LOAD_PLUGINS", "pixdex-test-good")
    lines: list[str] = []
    pset = load_plugins(warn=lines.append)
    assert lines == []  # the broken one was never imported
    assert [p.name for p in pset.plugins][-1] == "pixdex-test-good"
    monkeypatch.setenv("PIXDEX_LOAD_PLUGINS", "")
    assert [p.name for p in load_plugins().plugins] == BUILTINS


def test_each_load_is_a_fresh_manager(site: Path):
    first = load_plugins(entry_points=[])
    make_dist(site, "pixdex-test-good", "pixdex_test_good", GOOD)
    second = load_plugins()
    assert "toy-index" not in first.registry.names("index")
    assert "toy-index" in second.registry.names("index")
    assert first.manager is not second.manager


def test_broken_builtin_is_fatal(tmp_path: Path):
    from pixdex.registry_file import load_registry

    reg = tmp_path / "registry.toml"
    reg.write_text('[plugins]\nbuiltin = ["pixdex_flat", "pixdex_no_such_module"]\n')
    with pytest.raises(PluginError, match="built-in plugin 'pixdex_no_such_module'"):
        load_plugins(registry_file=load_registry(reg), entry_points=[])
