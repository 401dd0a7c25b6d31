"""Build the recipe suite's datasets (bench/recipes.py) from files already on this machine.

    python bench/prepare_recipe_data.py /tmp/recipe-data
    python bench/prepare_recipe_data.py /tmp/recipe-data --only arrows,emoji --force

Writes OUT/NAME/{train,test}/CLASS/*.png for every dataset whose sources are installed and
prints a table of what it built (classes, train/test counts, mode, typical size, source).
Nothing is downloaded: the sources are Debian packages (see bench/README.md for the
``apt-get install`` line) and scikit-learn's two sample photographs. A dataset whose source
is missing is skipped with the package to install. Every choice (subsets, splits, crops) is
seeded, so two runs write the same files.

Datasets:

* ``fmnist-300``, ``fmnist-1000``, ``fmnist-5000``: stratified subsets of Fashion-MNIST's
  training set; test = a stratified 2,000 of the official test set (greyscale 28 x 28).
* ``arrows``: arrow icons of every installed icon theme, class = direction (left, right,
  up, down); orientation is the class, so flips hurt. PNGs at every size, SVGs rendered at
  32 and 48 px with rsvg-convert when it is installed. Split by icon (theme + name), so the
  sizes of one icon never straddle train and test.
* ``icon-contexts``: 48 x 48 PNG icons, class = the theme's context folder (apps, devices,
  places, ...), split by icon name so an icon's versions in several themes stay together.
* ``emoji``: Noto Color Emoji glyphs rendered with Pillow at 96 x 96, class = the Unicode
  emoji group from emoji-test.txt; skin-tone variants are left out (near-duplicates).
* ``photo-crops``: crops from real photographs (scikit-learn's china.jpg and flower.jpg,
  GNOME's two wood photographs), class = the photo; train crops come from the left 70 % of
  each photo and test crops from the right 30 %, so no pixel is in both.
* ``fmnist-full`` needs no preparation: recipes.py reads idx:/usr/share/datasets/fashion-mnist.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
ICON_ROOT = Path("/usr/share/icons")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
FMNIST_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
SEED = 0


@dataclass
class Built:
    """One row of the summary table."""

    name: str
    classes: int
    n_train: int
    n_test: int
    mode: str
    size: str
    source: str


class MissingSource(Exception):
    """A dataset's source is not installed; the message says which package provides it."""


# --- helpers ---------------------------------------------------------------------------------


def stable_hash(text: str) -> int:
    """A hash that does not change between runs (Python's hash() is salted)."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")


def group_split(keys: Iterable[str], test_fraction: float, salt: str) -> set[str]:
    """The keys that go to test: a seeded, deterministic ``test_fraction`` of the distinct keys."""
    distinct = sorted(set(keys))
    rng = random.Random(f"{SEED}-{salt}")
    rng.shuffle(distinct)
    return set(distinct[: round(len(distinct) * test_fraction)])


def on_white(img: Image.Image) -> Image.Image:
    """RGB on a white background: icons and emoji are RGBA, and a transparent background would
    otherwise decode as black for some and white for others."""
    img = img.convert("RGBA")
    canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, img).convert("RGB")


def save(img: Image.Image, out: Path, split: str, label: str, stem: str) -> None:
    folder = out / split / label
    folder.mkdir(parents=True, exist_ok=True)
    img.save(folder / f"{stem}.png", optimize=False)


def summarise(name: str, out: Path, source: str) -> Built:
    """Count what was written (the table reports the files on disk, not the intentions)."""
    counts = {s: sum(1 for _ in (out / s).rglob("*.png")) for s in ("train", "test")}
    classes = sorted(p.name for p in (out / "train").iterdir() if p.is_dir())
    sizes: Counter[tuple[int, int]] = Counter()
    modes: Counter[str] = Counter()
    for path in sorted((out / "train").rglob("*.png"))[::25]:  # a sample is enough for "typical"
        with Image.open(path) as img:
            sizes[img.size] += 1
            modes[img.mode] += 1
    (w, h), _ = sizes.most_common(1)[0]
    size = f"{w}x{h}" + (" (mixed)" if len(sizes) > 1 else "")
    return Built(name, len(classes), counts["train"], counts["test"], modes.most_common(1)[0][0], size, source)


# --- Fashion-MNIST subsets -------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def stratified(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices with (as near as possible) equal counts per class."""
    classes = np.unique(labels)
    per, extra = divmod(n, len(classes))
    picks = [rng.permutation(np.flatnonzero(labels == c))[: per + (i < extra)] for i, c in enumerate(classes)]
    return np.sort(np.concatenate(picks))


def build_fmnist(out: Path, n_train: int) -> str:
    files = {k: FMNIST_DIR / f"{k}.gz" for k in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")}
    files |= {k: FMNIST_DIR / f"{k}.gz" for k in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    if not all(p.exists() for p in files.values()):
        raise MissingSource("apt-get install -y dataset-fashion-mnist")
    rng = np.random.default_rng(SEED)
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", 2000)):
        images = read_idx(files[f"{prefix}-images-idx3-ubyte"])
        labels = read_idx(files[f"{prefix}-labels-idx1-ubyte"])
        for i in stratified(labels, n, rng):
            save(Image.fromarray(images[i], "L"), out, split, FMNIST_CLASSES[labels[i]], f"{prefix}-{i:05d}")
    return "dataset-fashion-mnist"


# --- icon themes -----------------------------------------------------------------------------

# icon name -> direction. "-rtl" variants are skipped: they are the mirror image of the name.
ARROW_NAMES = {
    "left": ["go-previous", "go-first", "arrow-left", "arrow-left-double", "pan-start", "media-seek-backward"],
    "right": ["go-next", "go-last", "arrow-right", "arrow-right-double", "pan-end", "media-seek-forward"],
    "up": ["go-up", "go-top", "arrow-up", "arrow-up-double", "pan-up"],
    "down": ["go-down", "go-bottom", "arrow-down", "arrow-down-double", "pan-down"],
}
ICON_CONTEXTS = ["actions", "apps", "categories", "devices", "emblems", "mimetypes", "places", "status"]
SVG_SIZES = (32, 48)


def theme_of(path: Path) -> str:
    return path.relative_to(ICON_ROOT).parts[0]


def icon_themes() -> list[Path]:
    """Installed themes with at least one image ('default' and friends are only links)."""
    if not ICON_ROOT.is_dir():
        raise MissingSource("apt-get install -y adwaita-icon-theme (and more icon themes, see bench/README.md)")
    return sorted(p for p in ICON_ROOT.iterdir() if p.is_dir() and not p.is_symlink() and p.name != "default")


def arrow_direction(path: Path) -> str | None:
    stem = path.name.split(".")[0]
    if "rtl" in stem:
        return None
    stem = stem.removesuffix("-symbolic")
    for direction, names in ARROW_NAMES.items():
        if stem in names:
            return direction
    return None


def render_svg(path: Path, size: int, tmp: Path) -> Image.Image | None:
    """Rasterise with rsvg-convert (librsvg2-bin); None when it fails on a file."""
    target = tmp / "icon.png"
    done = subprocess.run(
        ["rsvg-convert", "-w", str(size), "-h", str(size), "-o", str(target), str(path)], capture_output=True
    )
    if done.returncode != 0 or not target.exists():
        return None
    with Image.open(target) as img:
        return img.copy()


def load_icon(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as img:
            img.load()
            return on_white(img)
    except OSError:
        return None


def build_arrows(out: Path) -> str:
    themes = icon_themes()
    has_rsvg = shutil.which("rsvg-convert") is not None
    found: list[tuple[Path, str]] = []
    for theme in themes:
        for path in sorted(theme.rglob("*")):
            if path.suffix in (".png", ".svg") and path.is_file() and (direction := arrow_direction(path)):
                if path.suffix == ".png" or has_rsvg:
                    found.append((path, direction))
    if not found:
        raise MissingSource("apt-get install -y adwaita-icon-theme tango-icon-theme (icon themes with arrows)")
    # one icon = theme + name; its sizes share a split so test never sees a resized train image
    key = {p: f"{theme_of(p)}/{p.name.split('.')[0]}" for p, _ in found}
    test = group_split(key.values(), 0.25, "arrows")
    seen: set[bytes] = set()  # themes link and copy one another: keep each distinct image once
    with tempfile.TemporaryDirectory() as tmp:
        for i, (path, direction) in enumerate(found):
            images = [load_icon(path)] if path.suffix == ".png" else []
            if path.suffix == ".svg":
                images = [render_svg(path, s, Path(tmp)) for s in SVG_SIZES]
            for j, img in enumerate(im for im in images if im is not None):
                img = on_white(img)
                digest = hashlib.sha1(img.tobytes() + str(img.size).encode()).digest()
                if digest in seen or min(img.size) < 8:
                    continue
                seen.add(digest)
                split = "test" if key[path] in test else "train"
                save(img, out, split, direction, f"{theme_of(path)}-{i:05d}-{j}")
    themes_used = sorted({theme_of(p) for p, _ in found})
    return f"icon themes ({len(themes_used)}): " + ", ".join(themes_used) + (" + rsvg-convert" if has_rsvg else "")


def build_icon_contexts(out: Path, per_class: int = 320) -> str:
    themes = icon_themes()
    by_context: dict[str, list[Path]] = defaultdict(list)
    for theme in themes:
        # themes lay out 48x48/apps (freedesktop), apps/48 (Faenza) or base/48x48/apps (oxygen)
        for path in sorted(theme.rglob("*.png")):
            parts = path.relative_to(theme).parts[:-1]
            context = next((c for c in parts if c in ICON_CONTEXTS), None)
            if context and ("48x48" in parts or "48" in parts) and path.is_file():
                by_context[context].append(path)
    if not by_context:
        raise MissingSource("apt-get install -y adwaita-icon-theme tango-icon-theme mate-icon-theme (48x48 PNG icons)")
    test = group_split((p.stem for paths in by_context.values() for p in paths), 0.25, "contexts")
    rng = random.Random(SEED)
    seen: set[bytes] = set()
    used: set[str] = set()
    for context, paths in sorted(by_context.items()):
        paths = sorted(set(paths))
        rng.shuffle(paths)
        kept = 0
        for path in paths:
            if kept >= per_class:
                break
            img = load_icon(path)
            if img is None or img.size != (48, 48):
                continue
            digest = hashlib.sha1(img.tobytes()).digest()
            if digest in seen:
                continue
            seen.add(digest)
            used.add(theme_of(path))
            save(img, out, "test" if path.stem in test else "train", context, f"{theme_of(path)}-{path.stem}")
            kept += 1
    return f"48x48 PNGs of {len(used)} icon themes: " + ", ".join(sorted(used))


# --- emoji -----------------------------------------------------------------------------------

SKIN_TONES = {0x1F3FB, 0x1F3FC, 0x1F3FD, 0x1F3FE, 0x1F3FF}


def emoji_groups() -> list[tuple[str, str]]:
    """(emoji, group) for every fully-qualified emoji without a skin-tone modifier."""
    if not EMOJI_TEST.exists():
        raise MissingSource("apt-get install -y unicode-data (ships /usr/share/unicode/emoji/emoji-test.txt)")
    group, rows = "", []
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip().lower().replace(" & ", "-").replace(" ", "-")
        elif "; fully-qualified" in line and group != "component":
            codes = [int(c, 16) for c in line.split(";")[0].split()]
            if not SKIN_TONES & set(codes):
                rows.append(("".join(map(chr, codes)), group))
    return rows


def render_emoji(font: ImageFont.FreeTypeFont, text: str, size: int = 96) -> Image.Image | None:
    """The glyph cropped to its ink and fitted into size x size on white; None if the font has
    no glyph for it (blank) or draws it as several glyphs (an unsupported sequence)."""
    canvas = Image.new("RGBA", (400, 200), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((10, 10), text, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None or box[2] - box[0] > 180:  # wider than one glyph: rendered as a sequence
        return None
    glyph = on_white(canvas.crop(box))
    glyph.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(glyph, ((size - glyph.width) // 2, (size - glyph.height) // 2))
    return out


def build_emoji(out: Path) -> str:
    if not EMOJI_FONT.exists():
        raise MissingSource("apt-get install -y fonts-noto-color-emoji")
    font = ImageFont.truetype(str(EMOJI_FONT), 109)  # a CBDT bitmap font: 109 is its only size
    rows = emoji_groups()
    test = group_split((e for e, _ in rows), 0.25, "emoji")
    for i, (text, group) in enumerate(rows):
        img = render_emoji(font, text)
        if img is not None:
            save(img, out, "test" if text in test else "train", group, f"e{i:04d}")
    return "fonts-noto-color-emoji + unicode-data (emoji-test.txt groups)"


# --- photo crops -----------------------------------------------------------------------------


def photo_sources() -> dict[str, Path]:
    sources: dict[str, Path] = {}
    try:
        import sklearn.datasets  # only for the path of its two sample photographs

        images = Path(sklearn.datasets.__file__).parent / "images"
        sources |= {p.stem: p for p in sorted(images.glob("*.jpg"))}
    except ImportError:
        pass
    for name in ("wood-l", "wood-d"):  # the two photographs among GNOME's wallpapers
        path = Path("/usr/share/backgrounds/gnome") / f"{name}.webp"
        if path.exists():
            sources[name] = path
    if len(sources) < 2:
        raise MissingSource("pip install scikit-learn and/or apt-get install -y gnome-backgrounds (photographs)")
    return sources


def build_photo_crops(out: Path, n_train: int = 300, n_test: int = 100, size: int = 128) -> str:
    sources = photo_sources()
    rng = random.Random(SEED)
    for label, path in sources.items():
        with Image.open(path) as img:
            photo = img.convert("RGB")
        if max(photo.size) > 1600:  # the 4096 px wallpapers: crops of 96-160 px would be flat texture
            photo.thumbnail((1600, 1600), Image.Resampling.LANCZOS)
        w, h = photo.size
        cut = int(w * 0.7)  # train crops lie left of the cut, test crops right of it
        for split, n, (x0, x1) in (("train", n_train, (0, cut)), ("test", n_test, (cut, w))):
            for i in range(n):
                side = rng.randint(96, min(160, x1 - x0, h))
                x, y = rng.randint(x0, x1 - side), rng.randint(0, h - side)
                crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BILINEAR)
                save(crop, out, split, label, f"{split}-{i:04d}")
    return "photos: " + ", ".join(f"{k} ({v.name})" for k, v in sources.items())


# --- main ------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[Path], str]] = {
    "fmnist-300": lambda out: build_fmnist(out, 300),
    "fmnist-1000": lambda out: build_fmnist(out, 1000),
    "fmnist-5000": lambda out: build_fmnist(out, 5000),
    "arrows": build_arrows,
    "icon-contexts": build_icon_contexts,
    "emoji": build_emoji,
    "photo-crops": build_photo_crops,
}


def print_table(rows: list[Built]) -> None:
    header = ("dataset", "classes", "train", "test", "mode", "typical size", "source")
    table = [header] + [(r.name, str(r.classes), str(r.n_train), str(r.n_test), r.mode, r.size, r.source) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write OUT/NAME/{train,test}/CLASS/*.png into")
    parser.add_argument("--only", default="", help="comma-separated dataset names (default: all)")
    parser.add_argument("--force", action="store_true", help="rebuild datasets that already exist")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BUILDERS)
    unknown = set(names) - set(BUILDERS)
    if unknown:
        parser.error(f"unknown datasets: {', '.join(sorted(unknown))} (choose from {', '.join(BUILDERS)})")
    rows, missing = [], []
    for name in names:
        target = args.out / name
        if target.exists() and not args.force:
            print(f"{name}: exists, kept (--force rebuilds)", file=sys.stderr)
            rows.append(summarise(name, target, (target / "SOURCE").read_text().strip()))
            continue
        shutil.rmtree(target, ignore_errors=True)
        print(f"{name}: building ...", file=sys.stderr, flush=True)
        try:
            source = BUILDERS[name](target)
        except MissingSource as exc:
            shutil.rmtree(target, ignore_errors=True)
            missing.append(f"{name}: source missing: {exc}")
            continue
        (target / "SOURCE").write_text(source + "\n")
        rows.append(summarise(name, target, source))
    print_table(rows)
    print("fmnist-full: no preparation (recipes.py reads idx:/usr/share/datasets/fashion-mnist)")
    for line in missing:
        print(line)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
