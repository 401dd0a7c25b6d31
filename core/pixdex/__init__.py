"""pixdex: image recognition and retrieval for PyTorch, built from plugins."""

__version__ = "0.1.0"
