"""Layered run configuration: registry defaults < preset < config file < environment < flags.

Every layer is a ``{section: {key: value}}`` dict. Layers merge key by key, except that
changing a component's ``name`` in a higher layer drops the options lower layers gave the
old component (with a note), since they would not fit the new one. The merged result is
validated fully: unknown sections and keys are refused with suggestions, component
options against their plugin's dataclass.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pixdex.components import Registry, coerce
from pixdex.errors import ConfigError, UsageError, suggest
from pixdex.registry_file import RegistryFile, read_toml, tomllib
from pixdex.settings import COMPONENT_SECTIONS, FIXED_SECTIONS, RUNTIME_KEYS

Layer = dict[str, dict[str, Any]]
ENV_SHORTCUTS = {
    "PIXDEX_DEVICE": ("runtime", "device"),
    "PIXDEX_PRECISION": ("runtime", "precision"),
    "PIXDEX_WORKERS": ("runtime", "workers"),
    "PIXDEX_BATCH_SIZE": ("runtime", "batch_size"),
    "PIXDEX_ENGINE": ("runtime", "engine"),
}
ALL_SECTIONS = tuple(FIXED_SECTIONS) + COMPONENT_SECTIONS
AUTO_BACKBONE = "auto"  # the default backbone: training picks one from the data


@dataclass
class Config:
    """A validated configuration: ``sections[section][key]``, component options filled in."""

    sections: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    # (section, key) pairs set by a preset, a config file, the environment, a flag or --set:
    # automatic choices (the recipe, the auto backbone) never override these
    explicit: set[tuple[str, str]] = field(default_factory=set)

    def is_explicit(self, section: str, key: str | None = None) -> bool:
        """Whether the user chose ``section.key`` (any key of ``section`` when None)."""
        return any(s == section and (key is None or k == key) for s, k in self.explicit)

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.sections[section]

    def component(self, section: str) -> tuple[str, dict[str, Any]]:
        """(name, options) of a component section."""
        values = dict(self.sections[section])
        return values.pop("name"), values

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s: dict(v) for s, v in self.sections.items()}

    def to_toml(self) -> str:
        return dump_toml(self.sections)


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as TOML (numbers, booleans, lists, quoted strings), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignments(pairs: list[str], what: str = "--set") -> Layer:
    """``['train.epochs=3', 'index.n_trees=20']`` -> a layer."""
    layer: Layer = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise UsageError(f"{what} {pair!r}: expected SECTION.KEY=VALUE, for example train.epochs=3")
        layer.setdefault(section, {})[name] = parse_value(value.strip())
    return layer


def env_layer(environ: Mapping[str, str] | None = None) -> Layer:
    """``PIXDEX_DEVICE`` and friends, plus ``PIXDEX_<SECTION>__<KEY>`` for any key."""
    environ = os.environ if environ is None else environ
    layer: Layer = {}
    for var, (section, key) in ENV_SHORTCUTS.items():
        if environ.get(var, "") != "":
            layer.setdefault(section, {})[key] = parse_value(environ[var])
    for var, value in environ.items():
        if var.startswith("PIXDEX_") and "__" in var and value != "":
            section, _, key = var[len("PIXDEX_") :].lower().partition("__")
            layer.setdefault(section, {})[key] = parse_value(value)
    return layer


def file_layer(path: str | Path) -> Layer:
    data = read_toml(Path(path), "config file")
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: '{section}' must be a [table], got a value")
    return data


def preset_layer(registry_file: RegistryFile, name: str) -> Layer:
    presets = registry_file.presets
    if name not in presets:
        known = ", ".join(sorted(presets)) or "none"
        raise ConfigError(f"Unknown preset '{name}'.{suggest(name, list(presets))} Presets: {known}")
    return presets[name]


def merge_layers(
    layers: list[tuple[str, Layer]], notes: list[str], origin: dict[tuple[str, str], str] | None = None
) -> Layer:
    """Merge named layers lowest first, applying the component-name rule. ``origin``
    receives the layer that gave each (section, key)."""
    merged: Layer = {}
    origin = {} if origin is None else origin
    for layer_name, layer in layers:
        for section, values in layer.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{layer_name}: '{section}' must be a table of keys")
            target = merged.setdefault(section, {})
            new_name = values.get("name")
            if section in COMPONENT_SECTIONS and new_name is not None and new_name != target.get("name"):
                dropped = sorted(k for k in target if k != "name")
                # dropping the registry's own defaults is the point of choosing another component
                if any(origin[(section, k)] != layers[0][0] for k in dropped):
                    old = f"'{target['name']}'" if "name" in target else "the previous component"
                    notes.append(
                        f"{section} changed to '{new_name}' by {layer_name}: "
                        f"dropped options {', '.join(dropped)} given for {old}"
                    )
                target.clear()
            target.update(values)
            origin.update({(section, k): layer_name for k in values})
    return merged


def check_flag_conflicts(flags: Layer, sets: Layer) -> None:
    for section, values in flags.items():
        for key, value in values.items():
            if key in sets.get(section, {}) and sets[section][key] != value:
                raise UsageError(
                    f"{section}.{key} is given twice with different values: a flag says {value!r}, "
                    f"--set says {sets[section][key]!r}; keep one"
                )


def resolve_config(
    registry: Registry,
    registry_file: RegistryFile,
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    flags: Layer | None = None,
    sets: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    sections: tuple[str, ...] = ALL_SECTIONS,
) -> Config:
    """Merge every layer and validate the result (see the module docstring)."""
    flags = flags or {}
    set_layer = parse_assignments(sets or [])
    check_flag_conflicts(flags, set_layer)
    layers: list[tuple[str, Layer]] = [("registry defaults", registry_file.defaults)]
    if preset:
        layers.append((f"preset '{preset}'", preset_layer(registry_file, preset)))
    if config_file:
        layers.append((f"config file {config_file}", file_layer(config_file)))
    layers.append(("environment", env_layer(environ)))
    layers.append(("flags", flags))
    layers.append(("--set", set_layer))
    notes: list[str] = []
    origin: dict[tuple[str, str], str] = {}
    merged = merge_layers(layers, notes, origin)
    explicit = {key for key, layer_name in origin.items() if layer_name != layers[0][0]}
    return Config(validate(merged, registry, sections), notes, explicit)


def validate(merged: Layer, registry: Registry, sections: tuple[str, ...] = ALL_SECTIONS) -> dict[str, dict[str, Any]]:
    """Check every section and key; fill defaults. Raises ConfigError naming the bad key."""
    for section in merged:
        if section not in ALL_SECTIONS:
            raise ConfigError(
                f"Unknown config section [{section}].{suggest(section, list(ALL_SECTIONS))} "
                f"Sections: {', '.join(ALL_SECTIONS)}"
            )
    out: dict[str, dict[str, Any]] = {}
    for section in sections:
        values = merged.get(section, {})
        if section in FIXED_SECTIONS:
            out[section] = validate_fixed(section, values)
        else:
            resolved = validate_component(section, values, registry)
            if resolved is not None:
                out[section] = resolved
    return out


def validate_fixed(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    cls = FIXED_SECTIONS[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    import typing

    hints = typing.get_type_hints(cls)
    out = {name: f.default for name, f in fields.items()}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"Unknown key '{key}' in [{section}].{suggest(key, list(fields))} Valid keys: {', '.join(fields)}"
            )
        out[key] = coerce(value, hints[key], f"[{section}] {key}")
    if section == "runtime":
        from pixdex.device import check_device_spec, check_precision

        out["device"] = check_device_spec(out["device"])
        out["precision"] = check_precision(out["precision"])
        if out["workers"] < 0 or (out["batch_size"] != "auto" and out["batch_size"] < 1):
            raise ConfigError('[runtime] workers must be >= 0 and batch_size >= 1 (or "auto")')
        if out["memory_budget_mb"] < 0:
            raise ConfigError("[runtime] memory_budget_mb must be >= 0 (0: automatic)")
        if out["engine"] == "onnx" and out["device"] not in ("auto", "cpu"):
            raise ConfigError(
                f"[runtime] engine 'onnx' runs on the CPU only (ONNX Runtime's CPU provider), not on "
                f"{out['device']}: use --device cpu, or --engine torch on the accelerator"
            )
    if section == "retrieval" and out["chunk_size"] < 1:
        raise ConfigError("[retrieval] chunk_size must be >= 1")
    if section == "train" and ((out["epochs"] != "auto" and out["epochs"] < 1) or out["lr"] <= 0):
        raise ConfigError('[train] epochs must be >= 1 (or "auto") and lr > 0')
    if section == "train" and out["early_stop"] != "auto" and out["early_stop"] < 0:
        raise ConfigError('[train] early_stop must be >= 0 (0: off) or "auto"')
    return out


def validate_component(section: str, values: Mapping[str, Any], registry: Registry) -> dict[str, Any] | None:
    values = dict(values)
    name = values.pop("name", None)
    if name is None:
        if values:
            raise ConfigError(f"[{section}] sets options ({', '.join(sorted(values))}) but no name")
        return None  # no default for this kind yet
    if not isinstance(name, str):
        raise ConfigError(f"[{section}] name must be a string, got {name!r}")
    if section == "backbone" and name == AUTO_BACKBONE:
        if values:
            raise ConfigError(
                f"backbone 'auto' chooses the backbone from the data and takes no options "
                f"(got {', '.join(sorted(values))}); name one to set its options, e.g. --backbone simple-cnn"
            )
        return {"name": AUTO_BACKBONE}  # resolved by training, from the data (recognition/recipe.py)
    component, arg = registry.get(section, name)
    options = registry.build_options(component, values, arg)
    out: dict[str, Any] = {"name": name}
    if options is not None:
        out.update(dataclasses.asdict(options))
    return out


# keys a command on a saved run or index may still set: where and how it runs, and the
# image-size guard of its input (neither changes the model)
RUN_FREE_KEYS: frozenset[tuple[str, str]] = frozenset({("data", "max_pixels")})


def runtime_overrides_only(layer: Layer, what: str) -> None:
    """For commands on a saved run: only [runtime] keys (and data.max_pixels) may change (the model is fixed)."""
    for section, values in layer.items():
        values = {k: v for k, v in values.items() if (section, k) not in RUN_FREE_KEYS}
        if section != "runtime" and values:
            keys = ", ".join(f"{section}.{k}" for k in values)
            raise UsageError(
                f"{what} uses the saved run's configuration; only runtime keys "
                f"({', '.join(RUNTIME_KEYS)}) and data.max_pixels can be overridden, not {keys}"
            )


# --- a small TOML writer: config show must round-trip, and tomllib only reads ---------------


def dump_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    lines: list[str] = []
    for section, values in sections.items():
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                continue  # TOML has no null; leaving it out gives back the default (None)
            lines.append(f"{_toml_key(key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise ConfigError(f"cannot write {value!r} to TOML")
