"""The small real data sample bundled with pixdex (Fashion-MNIST, MIT licence).

``sample_path()`` is the folder ``fashion-mnist/`` with ``train/<class>/`` and
``test/<class>/`` PNGs: 100 training and 20 test images per class. It ships inside the
package (the wheel includes everything under pixdex/), so it works from an install too.
See fashion-mnist/README.md for attribution and how it was made.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["sample_path"]


def sample_path() -> Path:
    """The bundled Fashion-MNIST sample folder (a train/test split layout of class folders)."""
    return Path(__file__).resolve().parent / "fashion-mnist"
