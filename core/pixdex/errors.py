"""Errors a user can act on. The CLI prints them as one line, with no traceback."""

from __future__ import annotations


class PixdexError(Exception):
    """A user-facing error: the message says what is wrong and what to do. Exit code 1."""

    exit_code = 1


class UsageError(PixdexError):
    """The command line or configuration was malformed. Exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """An unknown section, key or value in the layered configuration."""


class UnknownComponentError(UsageError):
    """A component name that no loaded plugin registered."""


class PluginError(PixdexError):
    """A plugin failed to load or to build a component."""


class MissingDependencyError(PixdexError):
    """An optional library is not installed; the message names the pip extra."""


class ArtifactError(PixdexError):
    """A run or index folder is missing, incomplete, locked or does not match its manifest."""


class DeviceError(PixdexError):
    """The requested device or precision is not available on this machine."""


def suggest(word: str, candidates: "list[str] | tuple[str, ...]") -> str:
    """Return ' Did you mean: x?' for the closest candidates, or '' (kedro-style hints)."""
    import difflib

    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    return f" Did you mean: {', '.join(close)}?" if close else ""
