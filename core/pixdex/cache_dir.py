"""Where pixdex keeps what it can make again: ONNX exports for ``--engine onnx``, the
embedded Qdrant store. Stdlib only, so plugins and ``pixdex --help`` import it cheaply."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$PIXDEX_CACHE_DIR, else $XDG_CACHE_HOME/pixdex, else ~/.cache/pixdex."""
    if os.environ.get("PIXDEX_CACHE_DIR"):
        return Path(os.environ["PIXDEX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pixdex"
