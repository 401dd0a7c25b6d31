"""docs/reliability.md, "images from the wild": train, embed, index build, index add, predict
and search each finish over the wild corpus, use every good image exactly once, and report
every bad one with its reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import invoke
from wild_images import make_wild_corpus

RT = ["--workers", "2", "--device", "cpu", "--batch-size", "8"]
MODEL = ["--set", "backbone.widths=[4]", "--set", "backbone.embed_dim=8", "--set", "backbone.input_size=16"]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_wild_corpus(tmp_path_factory.mktemp("wild") / "wild")


def expected_bad(corpus: dict) -> dict[str, str]:
    bad = dict(corpus["bad"])
    for path in list(corpus["good"]):
        if not os.access(path, os.R_OK):  # the chmod-000 file: unreadable unless root
            bad[path] = "unreadable"
    return bad


@pytest.fixture(scope="module")
def index(corpus: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wildidx") / "index"
    result = invoke("-q", "index", "build", "simple-cnn", corpus["root"], "-o", str(out), *RT, *MODEL)
    assert result.exit_code == 0, result.output
    return out


def test_index_build_uses_every_good_image_once(index: Path, corpus: dict):
    items = jsonl(index / "items.jsonl")
    paths = [it["path"] for it in items]
    good = {p for p in corpus["good"] if os.access(p, os.R_OK)}
    assert sorted(paths) == sorted(good) and len(paths) == len(set(paths))
    skipped = {s["path"]: s["reason"] for s in jsonl(index / "skipped.jsonl")}
    assert skipped == expected_bad(corpus)


def test_embed_matches_index_build(index: Path, corpus: dict, tmp_path: Path):
    result = invoke("-q", "embed", "simple-cnn", corpus["root"], "-o", str(tmp_path / "emb"), *RT, *MODEL, "--json")
    assert result.exit_code == 0, result.output
    assert [it["path"] for it in jsonl(tmp_path / "emb" / "items.jsonl")] == [
        it["path"] for it in jsonl(index / "items.jsonl")
    ]
    assert {s["path"] for s in jsonl(tmp_path / "emb" / "skipped.jsonl")} == set(expected_bad(corpus))


def test_index_add_of_the_same_corpus_adds_nothing(index: Path, corpus: dict, tmp_path: Path):
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    result = invoke("-q", "index", "add", str(copy), corpus["root"], *RT, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == len(jsonl(index / "items.jsonl"))


def test_search_and_predict_over_the_corpus(index: Path, corpus: dict, tmp_path: Path):
    report = tmp_path / "skips.jsonl"
    result = invoke(
        "-q",
        "search",
        str(index),
        corpus["root"],
        "-k",
        "2",
        "--json",
        *RT,
        "--skipped",
        str(report),
        "--html",
        str(tmp_path / "s.html"),
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert sorted(r["query"] for r in rows) == sorted(p for p in corpus["good"] if os.access(p, os.R_OK))
    assert {s["path"]: s["reason"] for s in jsonl(report)} == expected_bad(corpus)
    page = (tmp_path / "s.html").read_text(encoding="utf-8", errors="surrogateescape")
    assert "<img src=x onerror" not in page
    # the corpus is unlabelled: neighbours cannot vote, and predict says so in one line
    voted = invoke("predict", str(index), corpus["root"], *RT)
    assert voted.exit_code == 1 and "no labelled items" in voted.stderr


def test_train_over_the_corpus(corpus: dict, tmp_path: Path):
    run = tmp_path / "run"
    result = invoke(
        "-q",
        "train",
        corpus["root"],
        "-o",
        str(run),
        "--labels",
        "folder",
        "--epochs",
        "1",
        *RT,
        "--backbone",
        "simple-cnn",
        *MODEL,
        "--val-fraction",
        "0",
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((run / "pixdex.json").read_text())
    skipped = {s["path"]: s["reason"] for s in jsonl(run / "skipped.jsonl")}
    root = corpus["root"]
    in_classes = {p for p in corpus["good"] if os.path.dirname(p) != root}
    bad_in_classes = {p: r for p, r in expected_bad(corpus).items() if os.path.dirname(p) != root}
    for path, reason in bad_in_classes.items():
        if path in skipped:
            assert skipped[path] == reason
    assert manifest["data"]["train_count"] >= len([p for p in in_classes if os.access(p, os.R_OK)])
