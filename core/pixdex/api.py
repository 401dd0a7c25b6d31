"""The Python API. The CLI is a thin layer over these functions.

>>> import pixdex.api as px
>>> plugins = px.load_plugins()
>>> px.list_components(plugins, "indexes")
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from pixdex.components import PLURALS, check_kind
from pixdex.config import Config, Layer, resolve_config
from pixdex.plugins import PluginSet, load_plugins

__all__ = ["load_plugins", "plugins_report", "list_components", "configure", "Config", "PluginSet"]


def plugins_report(pset: PluginSet) -> list[dict[str, Any]]:
    """One record per loaded plugin: name, version, source, module, file, components."""
    return [
        {
            "name": info.name,
            "version": info.version,
            "source": info.source,
            "module": info.module,
            "file": info.file,
            "components": {
                PLURALS[c.kind]: sorted(x.name for x in info.components if x.kind == c.kind) for c in info.components
            },
        }
        for info in pset.plugins
    ]


def list_components(pset: PluginSet, kind: str, pattern: str | None = None) -> list[dict[str, Any]]:
    """Components of ``kind`` whose names match ``pattern`` (shell wildcards), naturally sorted.

    ``'timm:resnet*'`` also lists the variants a component offers after its colon.
    """
    kind = check_kind(kind)
    registry = pset.registry
    out = []
    for name in registry.list(kind, pattern):
        component, arg = registry.get(kind, name)
        out.append(
            {
                "name": name,
                "plugin": component.plugin,
                "description": component.description if arg is None else f"{component.name} variant",
                "options": {}
                if arg is not None
                else {k: (None if v is dataclasses.MISSING else v) for k, v in component.option_fields().items()},
            }
        )
    return out


def configure(
    pset: PluginSet,
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    flags: Layer | None = None,
    sets: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve and validate the layered configuration against the loaded plugins."""
    return resolve_config(
        pset.registry,
        pset.registry_file,
        preset=preset,
        config_file=config_file,
        flags=flags,
        sets=sets,
        environ=environ,
    )


def runtime_config(
    pset: PluginSet,
    *,
    flags: Layer | None = None,
    sets: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    what: str = "this command",
) -> dict[str, Any]:
    """The [runtime] section for commands on a saved run (only runtime keys may change)."""
    from pixdex.config import parse_assignments, runtime_overrides_only

    runtime_overrides_only(parse_assignments(list(sets or [])), what)
    runtime_overrides_only(flags or {}, what)
    config = resolve_config(
        pset.registry,
        pset.registry_file,
        flags=flags,
        sets=sets,
        environ=environ,
        sections=("runtime", "data", "retrieval"),
    )
    return {**config["runtime"], "max_pixels": config["data"]["max_pixels"], "k": config["retrieval"]["k"]}
