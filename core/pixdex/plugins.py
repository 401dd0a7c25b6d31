"""The plugin manager: built-ins from registry.toml, then entry points, one at a time.

Policy (docs/architecture.md): a built-in that fails is fatal (a missing optional
library names its extra); an external plugin that fails to import, has a hook with no
spec, or raises inside a hook is unregistered and reported in one stderr line, or is
fatal under ``PIXDEX_STRICT_PLUGINS=1``. Each call of :func:`load_plugins` builds a
fresh manager: nothing global is mutated, so tests get isolated plugin sets.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import pluggy

from pixdex import __version__, hookspecs
from pixdex.components import KINDS, PLURALS, Component, Register, Registry
from pixdex.errors import PixdexError, PluginError
from pixdex.registry_file import RegistryFile, load_registry

ENTRY_POINT_GROUP = "pixdex"
STRICT_HINT = "(PIXDEX_STRICT_PLUGINS=1 makes this fatal)"


@dataclass
class PluginInfo:
    """What `pixdex plugins` shows about one loaded plugin."""

    name: str
    version: str
    source: str  # "builtin" or "entry point NAME"
    module: str
    file: str | None
    components: list[Component] = field(default_factory=list)


@dataclass
class PluginSet:
    """A loaded plugin manager with its component registry and load report."""

    manager: pluggy.PluginManager
    registry: Registry
    registry_file: RegistryFile
    plugins: list[PluginInfo]
    skipped: list[str]  # one line per plugin that was skipped, already printed to stderr
    strict: bool
    warn: Callable[[str], None]

    def add_commands(self, cli: Any) -> None:
        """Run every plugin's ``register_commands`` hook against ``cli``, isolated per plugin."""
        for info in self.plugins:
            for impl in self.manager.hook.register_commands.get_hookimpls():
                if impl.plugin_name == info.name:
                    try:
                        impl.function(cli=cli)
                    except Exception as exc:  # plugin code: isolate, report, keep the CLI up
                        _report(
                            self,
                            info.name,
                            f"register_commands raised {type(exc).__name__}: {exc}",
                            builtin=info.source == "builtin",
                        )


def strict_from_env() -> bool:
    return os.environ.get("PIXDEX_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


def load_plugins(
    *,
    registry_file: RegistryFile | None = None,
    strict: bool | None = None,
    load: str | None = None,
    entry_points: list[importlib.metadata.EntryPoint] | None = None,
    warn: Callable[[str], None] | None = None,
) -> PluginSet:
    """Build a fresh plugin manager with the built-ins and the installed entry points.

    ``load`` is a comma-separated list of distribution names to load (default: the
    ``PIXDEX_LOAD_PLUGINS`` environment variable; unset loads all, empty loads none).
    """
    registry_file = registry_file or load_registry()
    strict = strict_from_env() if strict is None else strict
    if load is None:
        load = os.environ.get("PIXDEX_LOAD_PLUGINS")
    warn = warn or (lambda line: print(line, file=sys.stderr))
    pm = pluggy.PluginManager("pixdex")
    pm.add_hookspecs(hookspecs)
    pset = PluginSet(pm, Registry(), registry_file, [], [], strict, warn)

    for module_name in registry_file.builtin:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a broken built-in is fatal, but still one line
            raise PluginError(
                f"built-in plugin '{module_name}' (listed in {registry_file.path}) failed to import: {exc}"
            ) from exc
        info = PluginInfo(module_name, __version__, "builtin", module_name, getattr(module, "__file__", None))
        _register(pset, module, info, builtin=True)

    for ep in _selected_entry_points(entry_points, load):
        dist = ep.dist
        name = dist.name if dist is not None else ep.name
        version = dist.version if dist is not None else "?"
        try:
            module = ep.load()
        except Exception as exc:  # third-party import-time code: isolate it
            _report(pset, name, f"import failed: {type(exc).__name__}: {exc}")
            continue
        if pm.is_registered(module) or name in {p.name for p in pset.plugins}:
            _report(pset, name, f"entry point '{ep.name}' loads a module that is already registered")
            continue
        info = PluginInfo(
            name,
            version,
            f"entry point {ep.name}",
            getattr(module, "__name__", ep.value),
            getattr(module, "__file__", None),
        )
        _register(pset, module, info, builtin=False)

    for line in pset.registry.warnings:
        warn(f"pixdex: warning: {line}")
    return pset


def _selected_entry_points(
    given: list[importlib.metadata.EntryPoint] | None, load: str | None
) -> list[importlib.metadata.EntryPoint]:
    eps = list(given) if given is not None else list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if load is not None:
        wanted = {w.strip().lower().replace("_", "-") for w in load.split(",") if w.strip()}
        eps = [
            ep
            for ep in eps
            if (ep.dist.name if ep.dist else ep.name).lower().replace("_", "-") in wanted
            or ep.name.lower().replace("_", "-") in wanted
        ]
    # the same distribution can be seen twice (an editable install plus a wheel on sys.path)
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in sorted(eps, key=lambda e: e.name):
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            unique.append(ep)
    return unique


def _register(pset: PluginSet, module: ModuleType, info: PluginInfo, *, builtin: bool) -> None:
    """Register one plugin and run its component hooks; on failure undo it and report."""
    pm = pset.manager
    try:
        pm.register(module, name=info.name)
        pm.check_pending()  # earlier plugins already passed, so a failure here is this one's
    except (pluggy.PluginValidationError, ValueError) as exc:
        if pm.is_registered(module):
            pm.unregister(module)
        _report(pset, info.name, _validation_reason(exc), builtin=builtin)
        return
    staged: list[Component] = []
    for kind in KINDS:
        hook = getattr(pm.hook, f"register_{PLURALS[kind]}")
        for impl in hook.get_hookimpls():
            if impl.plugin_name != info.name:
                continue
            register = Register(kind, info.name)
            try:
                impl.function(register=register)
            except Exception as exc:  # plugin code: isolate it
                pm.unregister(module)
                _report(
                    pset, info.name, f"register_{PLURALS[kind]} raised {type(exc).__name__}: {exc}", builtin=builtin
                )
                return
            staged.extend(register.staged)
    for component in staged:
        if pset.registry.add(component):
            info.components.append(component)
    pset.plugins.append(info)


def _validation_reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())  # pluggy's messages span lines; ours is one
    if "unknown hook" in text:
        # pluggy: "unknown hook 'register_indexs' in plugin <module ...>"
        hook = text.split("'")[1] if "'" in text else text
        from pixdex.errors import suggest

        names = [n for n in dir(hookspecs) if n.startswith("register_")]
        return f"unknown hook '{hook}'.{suggest(hook, names)}"
    return text


def _report(pset: PluginSet, name: str, reason: str, *, builtin: bool = False) -> None:
    if builtin:
        raise PluginError(f"built-in plugin '{name}' failed: {reason}")
    if pset.strict:
        raise PluginError(f"plugin '{name}' failed: {reason}")
    line = f"pixdex: plugin '{name}' skipped: {reason} {STRICT_HINT}"
    pset.skipped.append(line)
    pset.warn(line)


__all__ = ["PluginInfo", "PluginSet", "load_plugins", "ENTRY_POINT_GROUP", "PixdexError"]
