"""Images and data: safe listing and decoding, dataset specs and splits, batch sources.

Imports nothing heavy: each module imports torch, numpy or Pillow itself.
"""
