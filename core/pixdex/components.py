"""Per-kind component registries with provenance, validated options and wildcard listing.

Plugins never touch a registry directly: each ``register_*`` hook gets a
:class:`Register` bound to the plugin being loaded, so the core records which plugin
provided which component and decides what happens to duplicates (the first wins).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from pixdex.errors import ConfigError, PluginError, UnknownComponentError, suggest

KINDS: tuple[str, ...] = ("backbone", "transform", "loss", "index", "dataset")
# CLI and docs speak in plurals ("pixdex list indexes"); the hooks are named after them too.
PLURALS: dict[str, str] = {
    "backbone": "backbones",
    "transform": "transforms",
    "loss": "losses",
    "index": "indexes",
    "dataset": "datasets",
}
KIND_OF_PLURAL: dict[str, str] = {v: k for k, v in PLURALS.items()}


@dataclass(frozen=True)
class Component:
    """One registered component and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    options: type | None = None
    description: str = ""
    detect: Callable[[str], bool] | None = None
    argument: str | None = None
    variants: Callable[[], Iterable[str]] | None = None

    def option_fields(self) -> dict[str, Any]:
        """Option names and their defaults (``dataclasses.MISSING`` when required)."""
        if self.options is None:
            return {}
        out = {}
        for f in dataclasses.fields(self.options):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
            else:
                out[f.name] = dataclasses.MISSING
        return out


def natural_key(text: str) -> list[Any]:
    """Sort key that orders 'resnet18' before 'resnet101' (timm's natural sort)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def split_spec(spec: str) -> tuple[str, str | None]:
    """'timm:resnet18' -> ('timm', 'resnet18'); 'annoy' -> ('annoy', None)."""
    if ":" in spec:
        name, arg = spec.split(":", 1)
        return name, arg
    return spec, None


class Registry:
    """All components of all kinds, in registration order."""

    def __init__(self) -> None:
        self._by_kind: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self.warnings: list[str] = []

    def add(self, component: Component) -> bool:
        """Add a component; a duplicate name keeps the first and records a warning."""
        existing = self._by_kind[component.kind].get(component.name)
        if existing is not None:
            self.warnings.append(
                f"{component.kind} '{component.name}' from plugin '{component.plugin}' ignored: "
                f"plugin '{existing.plugin}' registered it first"
            )
            return False
        self._by_kind[component.kind][component.name] = component
        return True

    def names(self, kind: str) -> list[str]:
        return list(self._by_kind[check_kind(kind)])

    def components(self, kind: str) -> list[Component]:
        return list(self._by_kind[check_kind(kind)].values())

    def by_plugin(self, plugin: str) -> list[Component]:
        return [c for kind in KINDS for c in self._by_kind[kind].values() if c.plugin == plugin]

    def get(self, kind: str, spec: str) -> tuple[Component, str | None]:
        """Look up ``spec`` ('annoy', 'timm:resnet18'); return the component and its argument."""
        registry = self._by_kind[check_kind(kind)]
        if spec in registry:
            return registry[spec], None
        name, arg = split_spec(spec)
        if arg is not None and name in registry and registry[name].argument:
            return registry[name], arg
        known = self.names(kind)
        hint = suggest(name, known) or (f" Known: {', '.join(sorted(known, key=natural_key))}." if known else "")
        raise UnknownComponentError(f"Unknown {kind} '{spec}'.{hint} (`pixdex list {PLURALS[kind]}` shows them all)")

    def list(self, kind: str, pattern: str | None = None, *, expand: bool = False) -> list[str]:
        """Names of ``kind`` matching a shell-style ``pattern``, naturally sorted.

        A pattern of the form ``NAME:glob`` (or ``expand=True``) also lists the variants a
        component offers after its colon, such as every timm model for ``timm:resnet*``.
        """
        names: list[str] = []
        for comp in self.components(kind):
            names.append(comp.name)
            wants_variants = expand or (pattern is not None and pattern.startswith(comp.name + ":"))
            if comp.variants is not None and wants_variants:
                names.extend(f"{comp.name}:{v}" for v in comp.variants())
        if pattern:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return sorted(set(names), key=natural_key)

    def build_options(self, component: Component, values: Mapping[str, Any], arg: str | None = None) -> Any:
        """Validate ``values`` against the component's options dataclass and instantiate it."""
        values = dict(values)
        if arg is not None:
            values[component.argument] = arg  # type: ignore[index]
        if component.options is None:
            if values:
                raise ConfigError(
                    f"{component.kind} '{component.name}' takes no options, got: {', '.join(sorted(values))}"
                )
            return None
        return validate_options(component, values)

    def build(self, kind: str, name: str, values: Mapping[str, Any] | None = None, /, **context: Any) -> Any:
        """Build a component: validate its options, then call its factory with ``context``."""
        component, arg = self.get(kind, name)
        options = self.build_options(component, values or {}, arg)
        return call_factory(component, options, **context)


def call_factory(component: Component, options: Any, **context: Any) -> Any:
    """Call a factory; an exception from plugin code becomes one line naming the plugin."""
    from pixdex.errors import PixdexError

    try:
        return component.factory(options, **context)
    except PixdexError:
        raise
    except Exception as exc:  # plugin code: report it by name instead of a traceback
        raise PluginError(
            f"{component.kind} '{component.name}' from plugin '{component.plugin}' failed: {type(exc).__name__}: {exc}"
        ) from exc


def validate_options(component: Component, values: Mapping[str, Any]) -> Any:
    """Check keys and types of ``values`` for ``component.options``; return the dataclass."""
    opts_cls = component.options
    assert opts_cls is not None
    hints = typing.get_type_hints(opts_cls, globalns=vars(sys.modules[opts_cls.__module__]))
    fields = {f.name: f for f in dataclasses.fields(opts_cls)}
    where = f"{component.kind} '{component.name}'"
    for key in values:
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise ConfigError(f"Unknown option '{key}' for {where}.{suggest(key, list(fields))} Valid options: {valid}")
    clean: dict[str, Any] = {}
    for key, value in values.items():
        clean[key] = coerce(value, hints.get(key, Any), f"{where} option '{key}'")
    missing = [
        n
        for n, f in fields.items()
        if n not in clean and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigError(f"{where} needs option(s): {', '.join(missing)}")
    return opts_cls(**clean)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Accept ``value`` if it fits the type ``hint``; ints widen to floats. Else ConfigError."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        for alt in args:
            try:
                return coerce(value, alt, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {_type_name(hint)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where} must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where} must have {len(args)} items, got {value!r}")
            return tuple(coerce(v, a, where) for v, a in zip(value, args))
        inner = args[0] if args else Any
        items = [coerce(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where} must be empty, got {value!r}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{where} must be {_type_name(hint)}, got {value!r}")


def _type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if hint in names:
        return names[hint]
    args = typing.get_args(hint)
    if args:
        return " or ".join(_type_name(a) if a is not type(None) else "empty" for a in args)
    return getattr(hint, "__name__", str(hint))


def check_kind(kind: str) -> str:
    kind = KIND_OF_PLURAL.get(kind, kind)
    if kind not in KINDS:
        raise UnknownComponentError(
            f"Unknown kind '{kind}'.{suggest(kind, list(KINDS) + list(PLURALS.values()))} "
            f"Kinds: {', '.join(PLURALS.values())}"
        )
    return kind


@dataclass
class Register:
    """The callable a ``register_*`` hook receives, bound to one plugin and one kind."""

    kind: str
    plugin: str
    staged: list[Component] = field(default_factory=list)

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        options: type | None = None,
        description: str = "",
        detect: Callable[[str], bool] | None = None,
        argument: str | None = None,
        variants: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        """Register ``factory`` as the ``kind`` component ``name`` (see pixdex.hookspecs)."""
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
            raise PluginError(f"invalid {self.kind} name {name!r}: use letters, digits, '-', '_', '.'")
        if not callable(factory):
            raise PluginError(f"{self.kind} '{name}': factory is not callable")
        if options is not None and not dataclasses.is_dataclass(options):
            raise PluginError(f"{self.kind} '{name}': options must be a @dataclass class")
        if argument is not None and (options is None or argument not in {f.name for f in dataclasses.fields(options)}):
            raise PluginError(f"{self.kind} '{name}': argument '{argument}' is not one of its options")
        self.staged.append(
            Component(
                kind=self.kind,
                name=name,
                factory=factory,
                plugin=self.plugin,
                options=options,
                description=description,
                detect=detect,
                argument=argument,
                variants=variants,
            )
        )
