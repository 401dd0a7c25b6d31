"""The fixed configuration sections: their keys, types and documented meaning.

Component sections ([backbone], [transform], [loss], [index]) hold ``name`` plus that
component's own options, validated against the options dataclass its plugin registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pixdex.contracts import METRICS

# Pillow's own threshold (it warns above it and refuses above twice it); data.max_pixels
# defaults to it. A 200-megapixel declaration is refused before decoding.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass
class RuntimeSettings:
    """[runtime]: where and how work runs. The only keys a saved run lets you override."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    workers: int = 2  # DataLoader worker processes for decoding
    # images per batch: "auto" sizes training batches from the data and the memory budget
    # (pixdex.recognition.recipe) and uses INFERENCE_BATCH, capped by memory, for inference
    batch_size: int | Literal["auto"] = "auto"
    memory_budget_mb: int = 0  # the most an auto batch may use; 0: a quarter of free memory, <= 2 GB on CPU
    # inference through PyTorch or the model's ONNX export (CPU only; pixdex.export.engine)
    engine: Literal["auto", "torch", "onnx"] = "auto"


@dataclass
class TrainSettings:
    """[train]: the optimisation recipe."""

    epochs: int | Literal["auto"] = "auto"  # auto: from the number of training images (recipe.py)
    early_stop: int | Literal["auto"] = "auto"  # patience in epochs; 0 = off; auto: on with auto epochs
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 0.002
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd only
    warmup_epochs: float = 1.0
    schedule: Literal["cosine", "constant"] = "cosine"  # after the warm-up
    schedule_epochs: int = 0  # length of the cosine schedule; 0 = epochs (set it to stop early and resume exactly)
    seed: int = 0
    head_lr_mult: float = 1.0
    freeze_backbone: bool = False
    unfreeze_after: int = 0  # epochs of frozen backbone before unfreezing (0: never frozen by this)
    checkpoint_every: int = 1  # epochs between last.safetensors checkpoints
    # EMA of the weights (recognition/ema.py); 0 = off. Validated each epoch beside the live
    # weights; model.safetensors keeps whichever is better
    ema_decay: float = 0.0
    mixup_alpha: float = 0.0  # Beta(a, a) mixup of image pairs and their labels; 0 = off (recognition/mixing.py)
    cutmix_alpha: float = 0.0  # Beta(a, a) CutMix; 0 = off
    mix_prob: float = 1.0  # chance that a batch is mixed, when mixup or cutmix is on
    mix_switch_prob: float = 0.5  # with both on: the chance of CutMix rather than mixup


@dataclass
class DataSettings:
    """[data]: how images are listed, decoded and split."""

    labels: Literal["auto", "folder", "none"] = "auto"
    val_fraction: float = 0.1
    max_pixels: int = DEFAULT_MAX_PIXELS  # refused before decoding (decompression bombs)
    strict_images: bool = False  # any skipped image makes the command fail


@dataclass
class RetrievalSettings:
    """[retrieval]: how embeddings are compared and searched."""

    metric: Literal[("auto", *METRICS)] = "auto"  # auto: the model's loss decides (cosine)
    k: int = 10  # neighbours returned by search
    chunk_size: int = 4096  # gallery rows per block in exact evaluation (memory bound; >= 1)


FIXED_SECTIONS: dict[str, type] = {
    "runtime": RuntimeSettings,
    "train": TrainSettings,
    "data": DataSettings,
    "retrieval": RetrievalSettings,
}
COMPONENT_SECTIONS: tuple[str, ...] = ("backbone", "transform", "loss", "index")
RUNTIME_KEYS = tuple(RuntimeSettings.__dataclass_fields__)
