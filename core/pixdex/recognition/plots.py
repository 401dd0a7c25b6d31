"""PNG figures (training curves, confusion matrices) with matplotlib, when it is installed."""

from __future__ import annotations

import io
from typing import Any, Callable, Sequence

from pixdex.errors import MissingDependencyError
from pixdex.optional import import_optional


def _pyplot(notify: Callable[[str], None], what: str) -> Any:
    try:
        matplotlib = import_optional("matplotlib", what)
    except MissingDependencyError:
        notify(f"pixdex: note: {what} not written: matplotlib is not installed (pip install 'pixdex[plots]')")
        return None
    matplotlib.use("Agg")  # no display: render straight to PNG bytes
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any, plt: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_history(history: list[dict[str, Any]], *, notify: Callable[[str], None]) -> bytes | None:
    """Loss and accuracy per epoch, training and validation side by side."""
    plt = _pyplot(notify, "curves.png")
    if plt is None or not history:
        return None
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):
            ax_loss.plot(epochs, values, marker="o", label=label)
    for key, label in (("train_accuracy", "train"), ("val_accuracy", "validation")):
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):
            ax_acc.plot(epochs, values, marker="o", label=label)
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.set(title="accuracy", xlabel="epoch", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a metric-learning loss has no accuracy curve
            ax.legend()
    return _png(fig, plt)


def plot_confusion(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], *, notify: Callable[[str], None]
) -> bytes | None:
    """A row-normalised confusion matrix (rows: true class, columns: predicted)."""
    plt = _pyplot(notify, "confusion.png")
    if plt is None:
        return None
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="confusion (row-normalised)")
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if m[i, j]:
                    ax.text(
                        j,
                        i,
                        int(m[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    return _png(fig, plt)
