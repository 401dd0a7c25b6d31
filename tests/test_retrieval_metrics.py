"""`pixdex evaluate-retrieval`: every metric against a brute-force numpy ranking, with tiny
chunks forced, ties and exact duplicates included; then the command on two tiny real indexes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import invoke
from pixdex.retrieval.metrics import Side, evaluate
from recognition_data import make_folder_dataset

# --- the reference: the whole score matrix, one sorted ranking per query -----------------------


def brute_force(g, g_lab, g_sha, q, q_lab, q_sha, metric, own=None):
    g, q = g.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":

        def unit(x):
            n = np.linalg.norm(x, axis=1, keepdims=True)
            return np.divide(x, n, out=np.zeros_like(x), where=n > 0)

        g, q = unit(g), unit(q)
    s = -((q[:, None, :] - g[None, :, :]) ** 2).sum(-1) if metric == "l2" else q @ g.T
    ap, p1, mapr, rec, tops = [], [], [], {1: [], 5: [], 10: []}, {}
    without = excluded = 0
    for i in range(len(q)):
        keep = []
        for j in range(len(g)):
            if own is not None and own[i] == j:
                continue
            if q_sha[i] is not None and g_sha[j] == q_sha[i]:
                excluded += 1
                continue
            keep.append(j)
        keep = np.asarray(keep, dtype=np.int64)
        rel = np.array([q_lab[i] is not None and g_lab[j] == q_lab[i] for j in keep], dtype=bool)
        if q_lab[i] is None or not rel.any():
            without += 1
            continue
        # pessimistic ties: by score, best first; an irrelevant item before a relevant one it ties
        order = np.lexsort((rel.astype(int), -s[i, keep]))
        r = rel[order]
        big_r = int(r.sum())
        prec = np.cumsum(r) / np.arange(1, len(r) + 1)
        ap.append(float((prec * r).sum() / big_r))
        mapr.append(float((prec[:big_r] * r[:big_r]).sum() / big_r))
        p1.append(float(r[0]))
        for k in rec:
            rec[k].append(float(r[:k].any()))
        tops[i] = keep[np.argsort(-s[i, keep], kind="stable")][:10]
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return {
        "map": mean(ap),
        "precision_at_1": mean(p1),
        "map_at_r": mean(mapr),
        "recall_at_k": {str(k): mean(v) for k, v in rec.items()},
        "queries": len(ap),
        "queries_without_relevant": without,
        "excluded_same_sha256": excluded,
        "tops": tops,
    }


def assert_same(got, want):
    for key in ("map", "precision_at_1", "map_at_r"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    for k, v in want["recall_at_k"].items():
        assert got["recall_at_k"][k] == pytest.approx(v, abs=1e-9), f"recall@{k}"
    for key in ("queries", "queries_without_relevant", "excluded_same_sha256"):
        assert got[key] == want[key], key
    for value in (got["map"], got["precision_at_1"], got["map_at_r"], *got["recall_at_k"].values()):
        assert 0.0 <= value <= 1.0


def random_side(rng, n, dim, labels, shas, *, ints=False):
    vectors = rng.integers(-2, 3, (n, dim)) if ints else rng.normal(size=(n, dim))
    return Side(
        vectors.astype(np.float32),
        [labels[i] for i in rng.integers(0, len(labels), n)],
        [shas[i] for i in rng.integers(0, len(shas), n)],
    )


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("chunk,block", [(1, 1), (3, 2), (7, 5), (1000, 256)])
def test_queries_against_a_gallery_match_brute_force(metric, chunk, block):
    rng = np.random.default_rng(["cosine", "ip", "l2"].index(metric) * 100 + chunk)
    shas = [f"s{i}" for i in range(25)] + [None] * 5
    gallery = random_side(rng, 37, 6, ["a", "b", "c", None], shas)
    queries = random_side(rng, 13, 6, ["a", "b", "d", None], shas)
    got = evaluate(gallery, queries, metric=metric, chunk_size=chunk, query_block=block)
    want = brute_force(
        gallery.vectors, gallery.labels, gallery.sha256, queries.vectors, queries.labels, queries.sha256, metric
    )
    assert_same(got, want)
    assert got["gallery"] == 37 and got["metric"] == metric


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_leave_one_out_matches_brute_force(metric):
    rng = np.random.default_rng(3)
    side = random_side(rng, 41, 5, ["a", "b", "c", None], [f"s{i}" for i in range(35)] + [None])
    own = np.arange(41)
    got = evaluate(side, side, metric=metric, self_rows=own, chunk_size=4, query_block=3)
    want = brute_force(side.vectors, side.labels, side.sha256, side.vectors, side.labels, side.sha256, metric, own)
    assert_same(got, want)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_ties_are_pessimistic(metric):
    """Small integer vectors tie exactly and often: both sides must rank ties the same way."""
    rng = np.random.default_rng(11)
    gallery = random_side(rng, 60, 3, ["a", "b", "c"], [None], ints=True)
    queries = random_side(rng, 20, 3, ["a", "b", "c"], [None], ints=True)
    got = evaluate(gallery, queries, metric=metric, chunk_size=5, query_block=4)
    assert_same(
        got,
        brute_force(
            gallery.vectors, gallery.labels, gallery.sha256, queries.vectors, queries.labels, queries.sha256, metric
        ),
    )


def test_a_tie_with_an_irrelevant_item_ranks_it_first():
    gallery = Side(
        np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32), ["no", "yes", "yes"], [None, None, None]
    )
    query = Side(np.array([[1.0, 0.0]], dtype=np.float32), ["yes"], [None])
    got = evaluate(gallery, query, metric="cosine")
    # ranking: no (tie, first), yes (rank 2), yes (rank 3): AP = (1/2 + 2/3) / 2, MAP@R = (1/2) / 2
    assert got["precision_at_1"] == 0.0 and got["recall_at_k"]["5"] == 1.0
    assert got["map"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert got["map_at_r"] == pytest.approx(0.25)


def test_same_sha256_items_are_left_out_and_counted():
    vectors = np.eye(4, dtype=np.float32)
    gallery = Side(vectors, ["a", "a", "b", "b"], ["x", "y", "z", None])
    queries = Side(vectors[:2], ["a", "b"], ["x", "z"])
    got = evaluate(gallery, queries, metric="cosine")
    assert got["excluded_same_sha256"] == 2
    # query 0 (a): its own copy is gone, row 1 is the only relevant item; query 1 (b): row 3 left
    assert got["queries"] == 2 and got["queries_without_relevant"] == 0


def test_exact_top_ten_is_the_brute_force_top_ten():
    rng = np.random.default_rng(5)
    gallery = random_side(rng, 50, 8, ["a", "b"], [f"s{i}" for i in range(45)])
    queries = random_side(rng, 9, 8, ["a", "b", None], [f"s{i}" for i in range(45)])
    got = evaluate(gallery, queries, metric="cosine", chunk_size=6, query_block=2, top_k=10)
    want = brute_force(
        gallery.vectors, gallery.labels, gallery.sha256, queries.vectors, queries.labels, queries.sha256, "cosine"
    )
    assert sorted(got["evaluated"].tolist()) == sorted(want["tops"])
    for q, top in zip(got["evaluated"].tolist(), got["exact_top"]):
        assert top.tolist() == want["tops"][q].tolist()


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_property_matches_brute_force(data):
    n = data.draw(st.integers(1, 25), label="gallery")
    nq = data.draw(st.integers(1, 8), label="queries")
    dim = data.draw(st.integers(1, 4), label="dim")
    # integer vectors score exactly under ip and l2, so ties are real ties on both sides (cosine's
    # normalisation rounds differently in numpy and torch; the float tests above cover it)
    metric = data.draw(st.sampled_from(["ip", "l2"]), label="metric")
    ints = st.integers(-2, 2)
    g = np.array(data.draw(st.lists(st.lists(ints, min_size=dim, max_size=dim), min_size=n, max_size=n)), np.float32)
    q = np.array(data.draw(st.lists(st.lists(ints, min_size=dim, max_size=dim), min_size=nq, max_size=nq)), np.float32)
    labels = st.sampled_from(["a", "b", None])
    shas = st.sampled_from(["x", "y", None])
    gl, gs = data.draw(st.lists(labels, min_size=n, max_size=n)), data.draw(st.lists(shas, min_size=n, max_size=n))
    ql, qs = data.draw(st.lists(labels, min_size=nq, max_size=nq)), data.draw(st.lists(shas, min_size=nq, max_size=nq))
    chunk = data.draw(st.integers(1, 30), label="chunk")
    got = evaluate(Side(g, gl, gs), Side(q, ql, qs), metric=metric, chunk_size=chunk, query_block=3)
    want = brute_force(g, gl, gs, q, ql, qs, metric)
    if want["queries"] == 0:
        assert got["queries"] == 0 and got["map"] is None
        assert got["queries_without_relevant"] == nq
        return
    assert_same(got, want)


# --- the command on real index folders ------------------------------------------------------------

TINY = ["--set", "backbone.widths=[4]", "--set", "backbone.embed_dim=8", "--set", "backbone.input_size=16"]
RT = ["--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("evaldata"), per_class=8, test_per_class=4, seed=2)


@pytest.fixture(scope="module")
def indexes(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A gallery index of the train split and a query index of the test split (same model)."""
    root = tmp_path_factory.mktemp("evalidx")
    out = []
    for split in ("train", "test"):
        result = invoke(
            "-q", "index", "build", "simple-cnn", str(data), "--split", split, "-o", str(root / split), *TINY, *RT
        )
        assert result.exit_code == 0, result.output
        out.append(root / split)
    return out[0], out[1]


def stored(index: Path):
    items = [json.loads(line) for line in (index / "items.jsonl").read_text().splitlines()]
    return (np.load(index / "embeddings.npy"), [it["label"] for it in items], [it["sha256"] for it in items])


def run_json(*args: str) -> dict:
    result = invoke("-q", "evaluate-retrieval", *args, "--json", *RT)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_command_leave_one_out_matches_brute_force(indexes):
    gallery, _ = indexes
    report = run_json(str(gallery), "--leave-one-out", "--chunk-size", "5")
    g, labels, shas = stored(gallery)
    want = brute_force(g, labels, shas, g, labels, shas, "cosine", np.arange(len(g)))
    assert_same(report, want)
    assert set(report) == {
        "map",
        "precision_at_1",
        "recall_at_k",
        "map_at_r",
        "queries",
        "queries_without_relevant",
        "excluded_same_sha256",
        "gallery",
        "metric",
    }
    assert set(report["recall_at_k"]) == {"1", "5", "10"} and report["gallery"] == 24 and report["queries"] == 24


def test_command_index_and_image_queries(indexes, data):
    gallery, queries = indexes
    from_index = run_json(str(gallery), str(queries), "--chunk-size", "7")
    g, gl, gs = stored(gallery)
    q, ql, qs = stored(queries)
    assert_same(from_index, brute_force(g, gl, gs, q, ql, qs, "cosine"))
    # DATA with a test split: its test images, embedded with the index's own model
    from_images = run_json(str(gallery), str(data))
    assert from_images["queries"] == 12 and from_images["excluded_same_sha256"] == 0
    for key in ("map", "precision_at_1", "map_at_r"):
        assert from_images[key] == pytest.approx(from_index[key], abs=1e-6)
    # the gallery's own images: each finds its own file by sha256, which is left out
    own = run_json(str(gallery), str(data), "--split", "train", "--use-index")
    loo = run_json(str(gallery), "--leave-one-out")
    assert own["excluded_same_sha256"] == 24
    assert own["map"] == pytest.approx(loo["map"], abs=1e-6)
    assert 0.9 <= own["ann_recall_at_10"] <= 1.0


def test_command_formats_and_usage_errors(indexes):
    gallery, queries = indexes
    table = invoke("-q", "evaluate-retrieval", str(gallery), "--leave-one-out", *RT)
    assert table.exit_code == 0 and table.stdout.splitlines()[0].split() == ["metric", "value"]
    assert any(line.split()[0] == "map_at_r" for line in table.stdout.splitlines()[2:])
    csv = invoke("-q", "evaluate-retrieval", str(gallery), "--leave-one-out", "--format", "csv", *RT)
    assert csv.stdout.splitlines()[0] == "metric,value"
    jsonl = invoke("-q", "evaluate-retrieval", str(gallery), "--leave-one-out", "--format", "jsonl", *RT)
    assert len(jsonl.stdout.splitlines()) == 1 and "map" in json.loads(jsonl.stdout)
    neither = invoke("evaluate-retrieval", str(gallery), *RT)
    assert neither.exit_code == 2 and "--leave-one-out" in neither.stderr
    both = invoke("evaluate-retrieval", str(gallery), str(queries), "--leave-one-out", *RT)
    assert both.exit_code == 2
