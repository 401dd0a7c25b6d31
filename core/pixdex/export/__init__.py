"""`pixdex export`: a trained model as a self-contained ONNX graph, verified against PyTorch.

* :mod:`pixdex.export.graph`: the deployable module (uint8 images in; scaling,
  normalisation, backbone, outputs) and its ONNX export; ``preprocess.json``, the resize
  rule that the graph expects its input to have had;
* :mod:`pixdex.export.verify`: ONNX Runtime against PyTorch on real images through the
  same loader (embeddings, classes, an index's neighbours);
* :mod:`pixdex.export.folder`: the committed export folder (manifest with checksums) and
  ``--check``.

Everything here imports onnx / onnxruntime lazily (the ``[export]`` extra).
"""
