"""The ``simple-cnn`` network: stages of conv [+ BN] + ReLU and a 2x2 max pool, then one fc."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


class SimpleCNN(nn.Module):
    """``float[B, C, H, W] -> float[B, embed_dim]``: conv stages, [average pool to at most
    ``max_grid`` x ``max_grid``], flatten, [dropout], fc, ReLU.

    Parameter names (``features.*``, ``fc.*``) are part of the run-folder format: saved
    weights are loaded back by name.
    """

    def __init__(
        self,
        *,
        in_chans: int,
        input_size: tuple[int, int],
        widths: Sequence[int],
        convs_per_stage: int = 2,
        batch_norm: bool = True,
        kernel_size: int = 3,
        dropout: float = 0.0,
        embed_dim: int = 128,
        max_grid: int = 8,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        height, width = input_size
        for stage_width in widths:
            for _ in range(convs_per_stage):
                # with batch norm right after, a conv bias would only be cancelled by its mean
                layers.append(
                    nn.Conv2d(channels, stage_width, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
                )
                if batch_norm:
                    layers.append(nn.BatchNorm2d(stage_width))
                layers.append(nn.ReLU(inplace=True))
                channels = stage_width
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        self.features = nn.Sequential(*layers)
        # average-pool a large feature map to at most max_grid x max_grid, so the fc does not
        # grow with the input (at 224 px the tutorial's flattening fc holds 25.7M weights)
        if max_grid > 0 and (height > max_grid or width > max_grid):
            height, width = min(height, max_grid), min(width, max_grid)
            self.pool: nn.Module = nn.AdaptiveAvgPool2d((height, width))
        else:
            self.pool = nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels * height * width, embed_dim)
        self.embed_dim = embed_dim
        self.in_chans = in_chans
        self.input_size = (input_size[0], input_size[1])
        self.data_config: dict[str, Any] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming (He) initialisation, suited to the ReLU after every conv and the fc."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        # flatten(1) orders features as C, H, W whatever the memory format (channels_last
        # included), so the fc's weights mean the same thing in both layouts
        x = self.dropout(torch.flatten(x, 1))
        return torch.relu(self.fc(x))


def data_config(in_chans: int, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """The preprocessing this backbone expects; the data's statistics fitted to ``in_chans``."""
    return {
        "input_size": [in_chans, size[0], size[1]],
        "mean": _fit(mean, in_chans),
        "std": _fit(std, in_chans),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }


def _fit(values: Sequence[float], in_chans: int) -> list[float]:
    # greyscale statistics replicate to RGB; RGB statistics average to greyscale
    values = [float(v) for v in values]
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1:
        return [sum(values) / len(values)]
    raise ValueError(f"data statistics have {len(values)} channels, the backbone has {in_chans}")
