"""Find and read registry.toml: built-in plugins, default components and presets."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixdex.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass(frozen=True)
class RegistryFile:
    """The parsed registry.toml and where it was found."""

    path: Path
    builtin: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)


def registry_candidates() -> list[Path]:
    """The places registry.toml is looked for, in order (see docs/architecture.md)."""
    here = Path(__file__).resolve().parent
    out = []
    env = os.environ.get("PIXDEX_REGISTRY")
    if env:
        out.append(Path(env))
    out.append(here / "registry.toml")  # inside an installed wheel
    out.append(here.parent.parent / "registry.toml")  # a checkout: core/pixdex/../../
    return out


def find_registry() -> Path:
    env = os.environ.get("PIXDEX_REGISTRY")
    if env and not Path(env).is_file():
        raise ConfigError(f"PIXDEX_REGISTRY points to {env}, which is not a file")
    for path in registry_candidates():
        if path.is_file():
            return path
    raise ConfigError(
        "registry.toml not found (looked in: "
        + ", ".join(str(p) for p in registry_candidates())
        + "); reinstall pixdex or set PIXDEX_REGISTRY"
    )


def read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def load_registry(path: Path | None = None) -> RegistryFile:
    """Read registry.toml (from ``path`` or the first candidate that exists)."""
    path = path or find_registry()
    data = read_toml(path, "registry")
    unknown = set(data) - {"plugins", "defaults", "presets"}
    if unknown:
        raise ConfigError(f"registry {path}: unknown table(s) {', '.join(sorted(unknown))}")
    builtin = data.get("plugins", {}).get("builtin", [])
    if not isinstance(builtin, list) or not all(isinstance(b, str) for b in builtin):
        raise ConfigError(f"registry {path}: [plugins] builtin must be a list of module names")
    return RegistryFile(
        path=path,
        builtin=tuple(builtin),
        defaults=data.get("defaults", {}),
        presets=data.get("presets", {}),
    )
