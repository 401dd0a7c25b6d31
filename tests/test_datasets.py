"""Dataset readers (idx, folder, csv, jsonl, collection), detection, splits and labels."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixdex.data.datasets import (
    Unlabelled,
    evaluation_split,
    map_labels,
    open_dataset,
    safe_class_name,
    stratified_split,
    training_split,
)
from pixdex.errors import PixdexError, UsageError


@pytest.fixture
def registry(pset):
    return pset.registry


def png(path: Path, value: int = 0, size: tuple[int, int] = (6, 5), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def image_folder(root: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        for i in range(count):
            png(root / name / f"{i}.png", i)
    return root


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    """An IDX file as the MNIST site publishes them: magic, big-endian dims, bytes."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def idx_folder(folder: Path, *, gz: bool, n_train: int = 30, n_test: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    y = (np.arange(n_train) % 10).astype(np.uint8)
    write_idx(folder / "train-images-idx3-ubyte", x, gz=gz)
    write_idx(folder / "train-labels-idx1-ubyte", y, gz=gz)
    write_idx(folder / "t10k-images-idx3-ubyte", x[:n_test], gz=gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", y[:n_test], gz=gz)
    return x, y


def kind_of(ds) -> str:
    return type(getattr(ds, "_dataset", ds)).__name__


# ------------------------------------------------------------------------------- idx


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["debian", "raw", "torchvision"])
def test_idx_layouts(tmp_path: Path, registry, gz: bool, layout: str) -> None:
    root = tmp_path / "data"
    where = {
        "debian": root / "fashion-mnist",
        "raw": root / "fashion-mnist" / "raw",
        "torchvision": root / "FashionMNIST" / "raw",
    }[layout]
    x, y = idx_folder(where, gz=gz)
    given = {"debian": root / "fashion-mnist", "raw": root / "fashion-mnist", "torchvision": root}[layout]
    ds = open_dataset(str(given), registry)
    assert kind_of(ds) == "IdxDataset"
    assert ds.splits() == ["train", "test"]
    assert "T-shirt/top" in ds.classes and len(ds.classes) == 10 and ds.classes == sorted(ds.classes)
    images, labels = ds.as_tensors("train")
    assert images.dtype.is_floating_point is False and tuple(images.shape) == (30, 1, 28, 28)
    assert str(labels.dtype) == "torch.int64" and tuple(labels.shape) == (30,)
    assert np.array_equal(images[:, 0].numpy(), x)
    items = ds.items("train")
    assert items[3] == ("idx:train/000003", "Dress")  # label 3 in Fashion-MNIST's order
    assert [ds.classes[int(i)] for i in labels[:4]] == [name for _, name in items[:4]]
    assert np.array_equal(np.asarray(ds.image("idx:test/000002")), x[2])
    assert len(ds.items("all")) == 40 and ds.items("test")[0][0] == "idx:test/000000"
    assert ds.skipped == []


def test_idx_digit_names_and_explicit_kind(tmp_path: Path, registry) -> None:
    idx_folder(tmp_path / "mnist" / "raw", gz=True)
    ds = open_dataset(str(tmp_path / "mnist"), registry)
    assert ds.classes == [str(d) for d in range(10)]
    assert ds.items("train")[3] == ("idx:train/000003", "3")
    forced = open_dataset(f"idx:{tmp_path / 'mnist'}", registry)
    assert forced.classes == ds.classes
    fashion = registry.build("dataset", "idx", {"path": str(tmp_path / "mnist"), "kind": "fashion-mnist"}, spec="")
    assert "Ankle boot" in fashion.classes


def test_idx_only_test_files(tmp_path: Path, registry) -> None:
    x = np.zeros((4, 28, 28), np.uint8)
    write_idx(tmp_path / "d" / "t10k-images-idx3-ubyte", x)
    write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte", np.arange(4))
    ds = open_dataset(str(tmp_path / "d"), registry)
    assert ds.splits() == ["test"]
    assert evaluation_split(ds) == "test"
    with pytest.raises(PixdexError, match="only a test split"):
        training_split(ds)


def test_idx_corrupt_files(tmp_path: Path, registry) -> None:
    folder = tmp_path / "d"
    idx_folder(folder, gz=False)
    ds = open_dataset(str(folder), registry)
    (folder / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 8)  # labels magic
    with pytest.raises(PixdexError, match="corrupt IDX file .*magic number 0x00000801"):
        ds.as_tensors("train")
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((10, 28, 28)))
    data = (folder / "t10k-images-idx3-ubyte").read_bytes()
    (folder / "t10k-images-idx3-ubyte").write_bytes(data[:-100])
    with pytest.raises(PixdexError, match="header declares 10x28x28"):
        open_dataset(str(folder), registry).items("test")
    (folder / "t10k-images-idx3-ubyte").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(PixdexError, match="corrupt IDX file"):
        open_dataset(str(folder), registry).items("test")
    with pytest.raises(PixdexError, match="not an IDX item key"):
        ds.image("train/1")


# ---------------------------------------------------------------------------- folder


def test_image_folder(tmp_path: Path, registry) -> None:
    root = image_folder(tmp_path / "pets", {"dog": 3, "cat": 2, "class10": 1, "class2": 1})
    ds = open_dataset(str(root), registry)
    assert kind_of(ds) == "FolderDataset"
    assert ds.classes == ["cat", "class2", "class10", "dog"]
    assert ds.splits() == ["all"]
    items = ds.items("all")
    assert len(items) == 7 and items[0] == (str(root / "cat" / "0.png"), "cat")
    assert training_split(ds) == "all" and evaluation_split(ds) == "all"


def test_split_layout(tmp_path: Path, registry) -> None:
    root = tmp_path / "ds"
    image_folder(root / "train", {"a": 4, "b": 4})
    image_folder(root / "val", {"a": 1, "b": 1})
    image_folder(root / "test", {"a": 2, "c": 1})
    (root / "README.md").write_text("files beside the split folders are fine")
    ds = open_dataset(str(root), registry)
    assert ds.splits() == ["train", "val", "test"]
    assert ds.classes == ["a", "b", "c"]
    assert training_split(ds) == "train" and evaluation_split(ds) == "test"
    assert evaluation_split(ds, "val") == "val"
    with pytest.raises(PixdexError, match="no split 'dev'"):
        evaluation_split(ds, "dev")
    assert all("/test/" not in p for p, _ in ds.items("train"))
    assert len(ds.items("all")) == 8 + 2 + 3


def test_split_layout_without_classes_is_unlabelled(tmp_path: Path, registry) -> None:
    png(tmp_path / "train" / "1.png")
    png(tmp_path / "train" / "2.png")
    png(tmp_path / "test" / "3.png")
    ds = open_dataset(str(tmp_path), registry)
    assert ds.splits() == ["train", "test"] and ds.classes == [] and ds.skipped == []
    assert ds.items("test") == [(str(tmp_path / "test" / "3.png"), None)]
    png(tmp_path / "train" / "cls" / "4.png")  # once a split has class folders, loose images are reported
    ds = open_dataset(str(tmp_path), registry)
    assert ds.classes == ["cls"] and [s["reason"] for s in ds.skipped] == ["no-class", "no-class"]


def test_empty_and_all_broken_folders_are_errors(tmp_path: Path, registry) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PixdexError, match="holds no image files"):
        open_dataset(str(tmp_path / "empty"), registry)
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        os.symlink(f"gone{i}.png", broken / f"{i}.png")
    with pytest.raises(PixdexError, match="3 skipped, e.g. .*broken-link"):
        open_dataset(str(broken), registry)


# ------------------------------------------------------------------------- detection


def test_detection_order(tmp_path: Path, registry) -> None:
    # IDX files win even in a folder that also looks like class folders
    mixed = image_folder(tmp_path / "mixed", {"a": 1, "b": 1})
    idx_folder(mixed, gz=True)
    assert kind_of(open_dataset(str(mixed), registry)) == "IdxDataset"
    # train/val/test subfolders
    split = image_folder(tmp_path / "split" / "train", {"a": 1, "b": 1}).parent
    assert open_dataset(str(split), registry).splits() == ["train"]
    # every image one level deep in >= 2 folders
    assert kind_of(open_dataset(str(image_folder(tmp_path / "if", {"a": 1, "b": 1})), registry)) == "FolderDataset"
    # one class folder only, loose images at the top, or images nested deeper: a collection
    one = image_folder(tmp_path / "one", {"a": 2})
    loose = image_folder(tmp_path / "loose", {"a": 1, "b": 1})
    png(loose / "top.png")
    deep = tmp_path / "deep"
    png(deep / "a" / "x" / "1.png")
    png(deep / "b" / "2.png")
    for root in (one, loose, deep):
        ds = open_dataset(str(root), registry)
        assert kind_of(ds) == "CollectionDataset" and ds.classes == [] and ds.splits() == ["all"]
        assert all(label is None for _, label in ds.items("all"))
    # list files by suffix; a folder named like one is a folder
    png(tmp_path / "lists" / "img.png")
    (tmp_path / "lists" / "l.csv").write_text("img.png,a\n")
    (tmp_path / "lists" / "l.jsonl").write_text('{"path": "img.png", "label": "a"}\n')
    assert kind_of(open_dataset(str(tmp_path / "lists" / "l.csv"), registry)) == "ListFileDataset"
    assert kind_of(open_dataset(str(tmp_path / "lists" / "l.jsonl"), registry)) == "ListFileDataset"
    png(tmp_path / "dir.csv" / "x.png")
    assert kind_of(open_dataset(str(tmp_path / "dir.csv"), registry)) == "CollectionDataset"
    # a single image file
    single = open_dataset(str(tmp_path / "lists" / "img.png"), registry)
    assert single.items("all") == [(str(tmp_path / "lists" / "img.png"), None)]


def test_labels_override(tmp_path: Path, registry) -> None:
    classes = image_folder(tmp_path / "if", {"a": 2, "b": 1})
    ds = open_dataset(str(classes), registry, labels="none")
    assert kind_of(ds) == "CollectionDataset" and ds.classes == []
    deep = tmp_path / "deep"
    png(deep / "a" / "x" / "1.png")
    png(deep / "b" / "2.png")
    png(deep / "loose.png")
    forced = open_dataset(str(deep), registry, labels="folder")
    assert forced.classes == ["a", "b"]
    assert [label for _, label in forced.items("all")] == ["a", "b"]
    assert [(os.path.basename(s["path"]), s["reason"]) for s in forced.skipped] == [("loose.png", "no-class")]
    flat = tmp_path / "flat"
    png(flat / "1.png")
    with pytest.raises(PixdexError, match="no class subfolders"):
        open_dataset(str(flat), registry, labels="folder")
    # explicit specs: none drops labels, folder only fits folder:
    dropped = open_dataset(f"folder:{classes}", registry, labels="none")
    assert isinstance(dropped, Unlabelled) and dropped.classes == [] and dropped.items("all")[0][1] is None
    with pytest.raises(UsageError):
        open_dataset(f"collection:{classes}", registry, labels="folder")
    with pytest.raises(UsageError, match="--labels"):
        open_dataset(str(classes), registry, labels="maybe")


def test_explicit_specs_and_missing_paths(tmp_path: Path, registry) -> None:
    root = image_folder(tmp_path / "if", {"a": 1, "b": 1})
    assert kind_of(open_dataset(f"collection:{root}", registry)) == "CollectionDataset"
    assert kind_of(open_dataset(f"folder:{root}", registry)) == "FolderDataset"
    with pytest.raises(PixdexError, match=r"^DATA path .*nope does not exist$"):
        open_dataset(str(tmp_path / "nope"), registry)
    with pytest.raises(PixdexError, match="does not exist"):
        open_dataset(f"folder:{tmp_path / 'nope'}", registry)
    with pytest.raises(PixdexError, match="does not exist"):
        open_dataset("nosuchreader:x", registry)  # not a reader name: taken as a path
    os.symlink("gone", tmp_path / "dangling")
    with pytest.raises(PixdexError, match="dangling symbolic link"):
        open_dataset(str(tmp_path / "dangling"), registry)


# ------------------------------------------------------------------------ list files


def test_csv(tmp_path: Path, registry) -> None:
    png(tmp_path / "imgs" / "a.png")
    png(tmp_path / "imgs" / "b.png")
    png(tmp_path / "elsewhere.png")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "with-header.csv").write_text(
        f"label,path\ncat,../imgs/a.png\ndog,../imgs/b.png\n,../imgs/b.png\ncat,{tmp_path / 'elsewhere.png'}\n"
        "dog,../imgs/missing.png\n\n"
    )
    ds = open_dataset(str(tmp_path / "lists" / "with-header.csv"), registry)
    assert ds.classes == ["cat", "dog"]
    labels = [label for _, label in ds.items("all")]
    assert labels == ["cat", "dog", None, "cat"]
    assert all(os.path.isfile(p) for p, _ in ds.items("all"))
    assert [s["reason"] for s in ds.skipped] == ["missing"]
    (tmp_path / "lists" / "plain.csv").write_text("../imgs/a.png\n../imgs/b.png,x\n")
    plain = open_dataset(f"csv:{tmp_path / 'lists' / 'plain.csv'}", registry)
    assert [label for _, label in plain.items("all")] == [None, "x"]


def test_csv_split_column(tmp_path: Path, registry) -> None:
    png(tmp_path / "a.png")
    (tmp_path / "l.csv").write_text("path,class,split\na.png,x,test\na.png,y,train\n")
    ds = open_dataset(str(tmp_path / "l.csv"), registry)
    assert ds.splits() == ["train", "test"] and ds.items("test") == [(str(tmp_path / "a.png"), "x")]
    (tmp_path / "bad.csv").write_text("path,label,split\na.png,x,holdout\n")
    with pytest.raises(PixdexError, match="split must be one of"):
        open_dataset(str(tmp_path / "bad.csv"), registry)


def test_jsonl(tmp_path: Path, registry) -> None:
    png(tmp_path / "sub" / "a.png")
    lines = [
        {"path": "sub/a.png", "label": "k"},
        {"path": "sub/a.png", "label": None},
        {"path": "sub/a.png", "label": 7},
    ]
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    ds = open_dataset(str(tmp_path / "l.jsonl"), registry)
    assert [label for _, label in ds.items("all")] == ["k", None, "7"]
    assert ds.classes == ["7", "k"]
    (tmp_path / "broken.jsonl").write_text('{"path": "sub/a.png"}\nnot json\n')
    with pytest.raises(PixdexError, match=r"broken.jsonl:2: not valid JSON"):
        open_dataset(str(tmp_path / "broken.jsonl"), registry)


def test_list_file_with_non_utf8_name(tmp_path: Path, registry) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    Image.new("L", (2, 2)).save(open(raw, "wb"), "PNG")
    (tmp_path / "l.csv").write_bytes(b"caf\xe9.png,x\n")
    ds = open_dataset(str(tmp_path / "l.csv"), registry)
    assert [os.fsencode(p) for p, _ in ds.items("all")] == [raw]


# ---------------------------------------------------------------------------- splits


def labelled(counts: dict[str, int]) -> list[tuple[str, str]]:
    return [(f"{c}/{i:03d}.png", c) for c, n in counts.items() for i in range(n)]


def test_stratified_split_is_deterministic_and_stratified() -> None:
    items = labelled({"a": 50, "b": 30, "c": 20})
    train, val = stratified_split(items, 0.1, seed=0)
    assert len(val) == 10 and len(train) == 90
    assert Counter(label for _, label in val) == {"a": 5, "b": 3, "c": 2}
    assert set(train) | set(val) == set(items) and not set(train) & set(val)
    assert stratified_split(items, 0.1, seed=0) == (train, val)
    assert stratified_split(items, 0.1, seed=1)[1] != val
    # the choice depends on the items, not on their order; outputs keep the input order
    shuffled = list(reversed(items))
    _, val2 = stratified_split(shuffled, 0.1, seed=0)
    assert set(val2) == set(val) and val2 == [it for it in shuffled if it in set(val)]


def test_stratified_split_small_classes() -> None:
    items = labelled({"big": 18, "pair": 2, "single": 1})
    train, val = stratified_split(items, 0.1, seed=3)
    assert len(val) == 2  # 10% of the 20 items in classes that can spare one
    assert ("single/000.png", "single") in train
    for name in ("big", "pair"):
        assert any(label == name for _, label in train)
    everything_in_val = stratified_split(labelled({"a": 2, "b": 2}), 0.9, seed=0)[1]
    assert Counter(label for _, label in everything_in_val) == {"a": 1, "b": 1}  # each keeps one


def test_unlabelled_split_and_edges() -> None:
    items = [(f"{i}.png", None) for i in range(40)]
    train, val = stratified_split(items, 0.25, seed=0)
    assert len(val) == 10 and len(train) == 30
    assert stratified_split(items, 0.0, seed=0) == (items, [])
    for bad in (-0.1, 1.0):
        with pytest.raises(UsageError):
            stratified_split(items, bad, seed=0)


# ---------------------------------------------------------------------------- labels


def test_map_labels() -> None:
    classes = ["T-shirt/top", "bag", "coat"]
    items = [("1", "coat"), ("2", None), ("3", "T-shirt_top"), ("4", "bag")]
    assert map_labels(items, classes) == [2, -1, 0, 1]
    assert map_labels([("x", "T-shirt/top")], ["T-shirt_top", "bag"]) == [0]
    with pytest.raises(PixdexError, match=r"2 class\(es\) the model does not know: 'hat', 'shoe'.*'bag'"):
        map_labels([("1", "shoe"), ("2", "hat"), ("3", "bag"), ("4", "shoe")], classes)
    assert safe_class_name("T-shirt/top") == "T-shirt_top" and safe_class_name("Ankle boot") == "Ankle boot"


# ------------------------------------------------------------------------ the sample


def test_bundled_sample(registry) -> None:
    from pixdex.sample import sample_path

    root = sample_path()
    assert (root / "LICENSE").read_text().startswith("The MIT License")
    assert "1708.07747" in (root / "README.md").read_text()
    ds = open_dataset(str(root), registry)
    assert ds.splits() == ["train", "test"] and len(ds.classes) == 10
    assert Counter(label for _, label in ds.items("train")) == {c: 100 for c in ds.classes}
    assert Counter(label for _, label in ds.items("test")) == {c: 20 for c in ds.classes}
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 1_500_000
    from pixdex.data.images import open_image

    im = open_image(ds.items("test")[0][0])
    assert im.mode == "L" and im.size == (28, 28)


# ---------------------------------------------------------------------- import costs


def test_readers_import_no_heavy_libraries() -> None:
    # `pixdex --help` imports every plugin and the data modules: they must stay light
    code = (
        "import sys, pixdex.data.datasets, pixdex.data.images, pixdex.sample, pixdex_datasets; "
        "print(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
