"""Every hook: documented in docs/plugins.md, and exercised by a test_hook_<name> through pluggy."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from conftest import REPO, make_dist
from pixdex import hookspecs
from pixdex.plugins import load_plugins

HOOKS = sorted(n for n, f in vars(hookspecs).items() if n.startswith("register_") and callable(f))


def test_the_six_hooks_exist():
    assert HOOKS == [
        "register_backbones",
        "register_commands",
        "register_datasets",
        "register_indexes",
        "register_losses",
        "register_transforms",
    ]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook: str):
    docs = (REPO / "docs" / "plugins.md").read_text()
    params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert re.search(rf"^#+ .*`{hook}\({params}\)`", docs, re.M), (
        f"docs/plugins.md lacks a heading for {hook}({params})"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str):
    sources = "\n".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py"))
    assert re.search(rf"^def test_hook_{hook}\b", sources, re.M), f"no test_hook_{hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_docstring_and_types(hook: str):
    func = getattr(hookspecs, hook)
    assert func.__doc__ and len(func.__doc__) > 40
    assert all(p.annotation is not inspect.Parameter.empty for p in inspect.signature(func).parameters.values())


def _plugin_registering(site: Path, hook: str, name: str, extra: str = "") -> None:
    make_dist(
        site,
        f"pixdex-test-{hook}",
        f"pixdex_test_{hook}",
        f"""
from dataclasses import dataclass
from pixdex.hookspecs import hookimpl

@dataclass
class Opts:
    width: int = 8
{extra}
def factory(options, **context):
    return {{"width": options.width, **context}}

@hookimpl
def {hook}(register):
    register("{name}", factory, options=Opts, description="from a test plugin"{", detect=detect" if extra else ""})
""",
    )


def _check_component_hook(site: Path, hook: str, kind: str, context: dict) -> None:
    _plugin_registering(site, hook, "probe")
    pset = load_plugins()
    component, _ = pset.registry.get(kind, "probe")
    assert component.plugin == f"pixdex-test-{hook}"
    assert pset.registry.build(kind, "probe", {"width": 2}, **context) == {"width": 2, **context}


def test_hook_register_backbones(site: Path):
    _check_component_hook(site, "register_backbones", "backbone", {"data": "D"})


def test_hook_register_transforms(site: Path):
    _check_component_hook(site, "register_transforms", "transform", {"train": True, "data_config": {}})


def test_hook_register_losses(site: Path):
    _check_component_hook(site, "register_losses", "loss", {"embed_dim": 4, "num_classes": 3})


def test_hook_register_indexes(site: Path):
    _check_component_hook(site, "register_indexes", "index", {"dim": 4, "metric": "cosine"})


def test_hook_register_datasets(site: Path):
    extra = "\ndef detect(path):\n    return path.endswith('.probe')\n"
    _plugin_registering(site, "register_datasets", "probe", extra)
    pset = load_plugins()
    component, _ = pset.registry.get("dataset", "probe")
    assert component.detect("x.probe") and not component.detect("x.csv")
    assert pset.registry.build("dataset", "probe", spec="x.probe") == {"width": 8, "spec": "x.probe"}


def test_hook_register_commands(site: Path, cli_run):
    make_dist(
        site,
        "pixdex-test-cmd",
        "pixdex_test_cmd",
        """
import click
from pixdex.hookspecs import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command()
    @click.argument("who")
    def hello(who):
        "Say hello."
        click.echo(f"hello {who}")
""",
    )
    result = cli_run("hello", "pixdex", plugins=load_plugins())
    assert result.exit_code == 0 and result.stdout == "hello pixdex\n"


def test_command_hook_that_raises_is_skipped(site: Path, cli_run):
    make_dist(
        site,
        "pixdex-test-cmdbad",
        "pixdex_test_cmdbad",
        """
from pixdex.hookspecs import hookimpl

@hookimpl
def register_commands(cli):
    raise RuntimeError("no commands today")
""",
    )
    lines: list[str] = []
    result = cli_run("plugins", "--json", plugins=load_plugins(warn=lines.append))
    assert result.exit_code == 0
    assert lines == [
        (
            "pixdex: plugin 'pixdex-test-cmdbad' skipped: register_commands raised RuntimeError: "
            "no commands today (PIXDEX_STRICT_PLUGINS=1 makes this fatal)"
        )
    ]
