"""The deployable graph: uint8 images in, embeddings (and logits) out, preprocessing inside.

The graph takes ``uint8[B, C, H, W]`` (channels first, as pixdex's own loader yields and
as ``numpy.asarray(image).transpose(2, 0, 1)`` gives for one image), already resized and
centre-cropped by the rule in ``preprocess.json``; it scales to [0, 1], normalises with the
model's mean and std (the eval transform's own ``.batch``, traced), runs the backbone and
returns:

* ``embedding``: the raw embedding, what index folders store (so vectors from the ONNX
  model and from pixdex can live in one index);
* ``embedding_normalized``: the same, L2-normalised, when the model's metric is cosine;
* ``logits``: when the run has a classifier head.

Resizing stays outside the graph because it is where runtimes differ most (Pillow's
antialiased filters have no exact ONNX equivalent) and it is cheap in any image library.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixdex.errors import PixdexError
from pixdex.pipeline.runs import LoadedRun

INPUT_NAME = "images"
PREPROCESS_FORMAT = "pixdex-preprocess"
# how pixdex's decoder flattens every Pillow mode before the transform sees it
# (pixdex.data.images.to_display_mode), restated so other runtimes can match it
FLATTEN_RULE = (
    "EXIF orientation applied; P, PA, LA, RGBA and images with a transparent colour are "
    "composited onto white; I;16, I and F greyscale are scaled to 8 bits (16-bit by 1/257); "
    "CMYK, YCbCr and LAB are converted to RGB; then converted to the model's mode"
)


def output_names(run: LoadedRun, metric: str) -> list[str]:
    """The graph's outputs, in order, for ``run`` searched with ``metric``."""
    names = ["embedding"]
    if metric == "cosine":
        names.append("embedding_normalized")
    if run.has_classifier:
        names.append("logits")
    return names


class DeployModule(nn.Module):
    """uint8[B, C, H, W] -> the outputs named by :func:`output_names`, in fp32."""

    def __init__(self, run: LoadedRun, metric: str) -> None:
        super().__init__()
        self.pipeline = run.pipeline.float().eval()
        # a private copy: tracing would otherwise leave traced tensors in the transform's
        # per-device constants cache (dropped on copy), poisoning eager use afterwards
        self.transform = copy.deepcopy(run.transform)
        self.normalized = metric == "cosine"
        self.classify = run.has_classifier

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embedding = self.pipeline(self.transform.batch(images))
        outputs = [embedding]
        if self.normalized:
            outputs.append(nn.functional.normalize(embedding, dim=1))
        if self.classify:
            outputs.append(self.pipeline.logits(embedding))
        return tuple(outputs)


def input_shape(run: LoadedRun) -> tuple[int, int, int]:
    """(C, H, W) of the graph's input, from the model's data config."""
    channels, height, width = (int(v) for v in run.manifest["data_config"]["input_size"])
    return channels, height, width


def preprocess_spec(run: LoadedRun, metric: str) -> dict[str, Any]:
    """``preprocess.json``: what an image must go through before the graph sees it."""
    transform = run.transform
    missing = [a for a in ("in_chans", "size", "crop_pct", "interpolation") if not hasattr(transform, a)]
    if missing:
        raise PixdexError(
            f"transform {type(transform).__name__} does not describe its resize rule (no "
            f"{', '.join(missing)}); export supports transforms built on pixdex_transforms.ImageTransform"
        )
    channels, height, width = input_shape(run)
    return {
        "format": PREPROCESS_FORMAT,
        "format_version": 1,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NCHW", "shape": ["batch", channels, height, width]},
        "mode": "L" if channels == 1 else "RGB",
        "flatten": FLATTEN_RULE,
        "resize": {
            "rule": "scale keeping the aspect ratio so the image covers round(size / crop_pct) on both sides, "
            "then crop the centre size (torchvision's rounding)",
            "size": [height, width],
            "crop_pct": float(transform.crop_pct),
            "interpolation": str(transform.interpolation),
            "library": "Pillow Image.resize(..., reducing_gap=3.0)",
        },
        "inside_graph": "x / 255, (x - mean) / std, backbone"
        + (", L2 normalisation" if metric == "cosine" else "")
        + (", classifier" if run.has_classifier else ""),
        "mean": list(getattr(transform, "mean", run.manifest["data_config"]["mean"])),
        "std": list(getattr(transform, "std", run.manifest["data_config"]["std"])),
        "outputs": output_names(run, metric),
        "metric": metric,
        "classes": list(run.classes),
    }


def export_onnx(run: LoadedRun, path: Path, metric: str) -> list[str]:
    """Write ``run`` as an ONNX graph to ``path`` (a dynamic batch axis, fp32); returns the
    output names. The exporter's own progress lines are kept off stdout."""
    onnx_ok = _require_exporter()
    module = DeployModule(run, metric).cpu().eval()
    example = torch.zeros((2, *input_shape(run)), dtype=torch.uint8)
    names = output_names(run, metric)
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's advice is for its developers, not pixdex's users
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=1 << 20)}},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # the exporter's errors are long; keep the first line and say what failed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PixdexError(f"ONNX export of {run.path} failed: {type(exc).__name__}: {first}") from None
    onnx_ok.checker.check_model(str(path))
    return names


def require_export_libraries() -> None:
    """Fail early, in one line, when the ``[export]`` extra is missing."""
    _require_exporter()
    from pixdex.optional import import_optional

    import_optional("onnxruntime", "pixdex export")


def _require_exporter() -> Any:
    from pixdex.optional import import_optional

    import_optional("onnxscript", "pixdex export")  # torch's exporter needs it
    return import_optional("onnx", "pixdex export")
