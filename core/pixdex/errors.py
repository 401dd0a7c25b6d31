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

    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in set(candidates)), reverse=True)
    # keep only the clear front-runners: 'register_indexs' suggests register_indexes alone
    close = [c for score, c in scored if score >= 0.6 and score >= scored[0][0] - 0.1][:3]
    return f" Did you mean: {', '.join(close)}?" if close else ""
