"""Make the bundled Fashion-MNIST sample that `make demo` trains on.

Picks, with a fixed seed, 100 images per class from the training set and 20 per class
from the test set (t10k), and writes them as optimised greyscale PNGs:

    fashion-mnist/train/<class>/NNNNN.png    NNNNN = the image's index in the IDX file
    fashion-mnist/test/<class>/NNNNN.png

Class folders use pixdex.data.datasets.safe_class_name ("T-shirt/top" -> "T-shirt_top"); pixdex
matches the two spellings when it maps labels. Run it from a checkout with the IDX files
at hand (Debian: ``apt-get install dataset-fashion-mnist``)::

    python -m pixdex.sample.make_sample /usr/share/datasets/fashion-mnist

It reuses the idx reader of the built-in pixdex_datasets plugin, so it needs the checkout
(or the wheel) on the path; it is a maintenance script, not part of pixdex's API.
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

SEED = 20170825  # Fashion-MNIST's release date; any fixed number would do
PER_CLASS = {"train": 100, "test": 20}


def choose(labels: "object", per_class: int, seed: int) -> list[int]:
    """Seeded choice of ``per_class`` indices of each class, returned in index order."""
    import numpy as np

    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == c)
        chosen += rng.choice(members, size=min(per_class, len(members)), replace=False).tolist()
    return sorted(chosen)


def png_bytes(pixels: "object") -> bytes:
    """A small greyscale PNG: optimise on, no metadata chunks."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def make_sample(source: str, out: Path, *, seed: int = SEED) -> int:
    """Write the sample from the IDX files in ``source`` to ``out``; return the file count."""
    from pixdex.data.datasets import safe_class_name
    from pixdex_datasets.idx import IdxOptions, make_idx

    dataset = make_idx(IdxOptions(path=source, kind="fashion-mnist"))
    written = 0
    for offset, (split, per_class) in enumerate(PER_CLASS.items()):
        images, labels = dataset.arrays(split)
        names = dataset._names  # the file's class order: label k is names[k]
        target = out / split
        if target.exists():
            shutil.rmtree(target)  # a re-run replaces the sample, never mixes two
        for index in choose(labels, per_class, seed + offset):
            folder = target / safe_class_name(names[int(labels[index])])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{index:05d}.png").write_bytes(png_bytes(images[index]))
            written += 1
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source", nargs="?", default="/usr/share/datasets/fashion-mnist", help="folder with the Fashion-MNIST IDX files"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "fashion-mnist")
    args = parser.parse_args(argv)
    count = make_sample(args.source, args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*.png"))
    print(f"wrote {count} PNGs ({size / 1024:.0f} KiB) under {args.out}")


if __name__ == "__main__":
    main()
