"""An exponential moving average (EMA) of a model's weights, kept on the model's device.

After every optimiser step each floating-point tensor of the state (parameters and
batch-norm running statistics) moves toward the live one:
``ema = d * ema + (1 - d) * live``, with ``d = min(decay, (1 + n) / (10 + n))`` after ``n``
updates, so the average forgets its random start within the first few hundred steps instead
of the first ``1 / (1 - decay)``. Integer buffers (batch-norm's step counter) are copied.

The average is often a better model than the last weights (a smoother point of the same
trajectory), so training validates both each epoch and keeps the better one as
``model.safetensors``. Under DDP every process holds identical parameters after each
step, so each keeps its own, identical, average: nothing is communicated.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def effective_decay(decay: float, updates: int) -> float:
    """The decay of update number ``updates + 1``: ramps up from 0.1 toward ``decay``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightAverage:
    """EMA of ``model``'s state; ``update(model)`` after each optimiser step.

    ``state`` maps the model's state-dict keys to the averaged tensors (same devices,
    dtypes and memory formats as the model's), ready for ``load_state_dict`` or saving.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._float_keys = [k for k, v in self.state.items() if v.dtype.is_floating_point]
        self._other_keys = [k for k, v in self.state.items() if not v.dtype.is_floating_point]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        live = model.state_dict()
        weight = 1.0 - effective_decay(self.decay, self.updates)
        # one fused kernel over all tensors: an EMA step costs about as much as an optimiser step's last line
        torch._foreach_lerp_([self.state[k] for k in self._float_keys], [live[k] for k in self._float_keys], weight)
        for k in self._other_keys:
            self.state[k].copy_(live[k])
        self.updates += 1

    def load(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        """Restore a saved average (``--resume``): same keys as the model's state."""
        missing = set(self.state) - set(tensors)
        if missing:
            raise KeyError(f"the checkpoint's EMA lacks {sorted(missing)[:3]}")
        for k, v in self.state.items():
            v.copy_(tensors[k])
        self.updates = int(updates)

    @contextlib.contextmanager
    def swapped_into(self, model: torch.nn.Module) -> Iterator[None]:
        """Run the enclosed code (validation) with the averaged weights in ``model``; the
        live weights are put back afterwards, even on an exception."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(live)
