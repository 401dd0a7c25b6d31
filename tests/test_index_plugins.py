"""The built-in index plugins, flat (exact, torch), annoy and hnsw (approximate), built through
the real plugin manager and checked against a float64 numpy brute force.

Everything is small, offline and writes real index files under tmp_path.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixdex.errors import ConfigError, MissingDependencyError, PluginError
from pixdex.registry_file import read_toml

METRICS = ("cosine", "l2", "ip")
PLUGINS = ("flat", "annoy", "hnsw")
# small, quick options per plugin for the shared tests
SMALL = {"flat": {"chunk_size": 64}, "annoy": {"n_trees": 4}, "hnsw": {"connectivity": 8}}
FILES = {"flat": ["flat.npy"], "annoy": ["index.ann", "annoy.json"], "hnsw": ["index.usearch", "hnsw.json"]}


def data(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def true_scores(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """float64 [Q, N] scores by the shared convention: cosine, dot, or -euclidean."""
    x, q = x.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        unit = lambda a: a / np.where((n := np.linalg.norm(a, axis=1, keepdims=True)) > 0, n, 1)  # noqa: E731
        return unit(q) @ unit(x).T
    if metric == "ip":
        return q @ x.T
    return -np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))


def check_exact(ids: np.ndarray, scores: np.ndarray, x: np.ndarray, q: np.ndarray, k: int, metric: str) -> None:
    """Results are the exact top-k, up to the order of (near-)ties, with padding past N."""
    check_consistent(ids, scores, x, q, k, metric)
    kk = min(k, len(x))
    expected = -np.sort(-true_scores(x, q, metric), axis=1)[:, :kk]
    np.testing.assert_allclose(scores[:, :kk], expected, rtol=1e-5, atol=1e-4)


def check_consistent(ids: np.ndarray, scores: np.ndarray, x: np.ndarray, q: np.ndarray, k: int, metric: str) -> None:
    """Shapes, dtypes, padding, distinct ids, best-first order, and each score is its id's true score."""
    kk = min(k, len(x))
    assert ids.shape == scores.shape == (len(q), k)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert (ids[:, kk:] == -1).all() and np.isneginf(scores[:, kk:]).all()
    found = ids[:, :kk]
    assert ((found >= 0) & (found < len(x))).all()
    assert all(len(set(row)) == kk for row in found.tolist())
    assert (np.diff(scores[:, :kk], axis=1) <= 1e-5).all(), "not best first"
    own = np.take_along_axis(true_scores(x, q, metric), found, axis=1)
    np.testing.assert_allclose(scores[:, :kk], own, rtol=1e-5, atol=1e-4)


def recall_at(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids.tolist(), exact.tolist())]))


def exhaustive(n: int, n_trees: int = 5) -> dict[str, Any]:
    """annoy options whose search_k visits every leaf of every tree: exact search."""
    return {"n_trees": n_trees, "search_k": n * n_trees}


# --- exactness per metric ---------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("chunk_size", [7, 65536])
def test_flat_is_exact(pset: Any, metric: str, chunk_size: int) -> None:
    x, q = data(300, 12), data(23, 12, seed=1)
    index = pset.registry.build("index", "flat", {"chunk_size": chunk_size, "query_chunk": 5}, dim=12, metric=metric)
    index.build(x)
    ids, scores = index.search(q, 10)
    check_exact(ids, scores, x, q, 10, metric)


@pytest.mark.parametrize("metric", METRICS)
def test_annoy_exhaustive_is_exact(pset: Any, metric: str) -> None:
    x, q = data(300, 12), data(23, 12, seed=1)
    index = pset.registry.build("index", "annoy", exhaustive(300), dim=12, metric=metric)
    index.build(x)
    ids, scores = index.search(q, 10)
    check_exact(ids, scores, x, q, 10, metric)
    flat = pset.registry.build("index", "flat", {}, dim=12, metric=metric)
    flat.build(x)
    flat_ids, flat_scores = flat.search(q, 10)
    np.testing.assert_array_equal(ids, flat_ids)  # no ties in gaussian data
    np.testing.assert_allclose(scores, flat_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_annoy_tuned_scores_and_recall(pset: Any, metric: str) -> None:
    x, q = data(2000, 16), data(100, 16, seed=1)
    index = pset.registry.build("index", "annoy", {}, dim=16, metric=metric)
    index.build(x)
    params = index.params
    assert params["search_k_tuned"] and params["recall_at_10"] >= 0.95 and params["recall_queries"] == 200
    ids, scores = index.search(q, 10)
    check_consistent(ids, scores, x, q, 10, metric)  # approximate, but scores follow the convention
    exact = np.argsort(-true_scores(x, q, metric), axis=1)[:, :10]
    # tuned on rows of the collection; unseen queries are a little harder
    assert recall_at(ids, exact) >= 0.85


def test_cosine_normalises_and_zero_vectors_score_zero(pset: Any) -> None:
    x = data(50, 8) * np.linspace(0.1, 100, 50, dtype=np.float32)[:, None]
    x[3] = 0
    q = np.vstack([x[:4] * 7.5, np.zeros((1, 8), np.float32)])
    for name, opts in (("flat", {}), ("annoy", exhaustive(50))):
        index = pset.registry.build("index", name, opts, dim=8, metric="cosine")
        index.build(x)
        ids, scores = index.search(q, 50)
        check_exact(ids, scores, x, q, 50, "cosine")
        np.testing.assert_allclose(scores[:3, 0], 1.0, atol=1e-5)  # scale does not matter
        assert set(ids[:3, 0]) == {0, 1, 2}
        # a zero query or row has cosine 0 (annoy: 1 - d^2/2 with d = float32 sqrt(2), so not quite)
        assert np.allclose(scores[3], 0, atol=1e-6) and np.allclose(scores[4], 0, atol=1e-6)
        assert np.isclose(scores[0][ids[0] == 3], 0, atol=1e-6)


def test_flat_l2_self_match_scores_exactly_zero(pset: Any) -> None:
    # large norms make |q|^2 - 2 q.x + |x|^2 cancel badly; flat recomputes the winners exactly
    x = data(100, 64) * 100
    index = pset.registry.build("index", "flat", {"chunk_size": 9}, dim=64, metric="l2")
    index.build(x)
    ids, scores = index.search(x[:20], 3)
    np.testing.assert_array_equal(ids[:, 0], np.arange(20))
    assert (scores[:, 0] == 0).all() and not np.signbit(scores[:, 0]).any()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    d=st.integers(1, 6),
    k=st.integers(1, 70),
    q=st.integers(1, 9),
    chunk=st.integers(1, 20),
    query_chunk=st.integers(1, 5),
    metric=st.sampled_from(METRICS),
    seed=st.integers(0, 2**16),
)
def test_flat_chunk_merge_matches_brute_force(
    n: int, d: int, k: int, q: int, chunk: int, query_chunk: int, metric: str, seed: int
) -> None:
    from pixdex.plugins import load_plugins

    x, queries = data(n, d, seed), data(q, d, seed + 1)
    index = load_plugins(entry_points=[]).registry.build(
        "index", "flat", {"chunk_size": chunk, "query_chunk": query_chunk}, dim=d, metric=metric
    )
    index.build(x)
    ids, scores = index.search(queries, k)
    check_exact(ids, scores, x, queries, k, metric)


@pytest.mark.parametrize("name", PLUGINS)
@pytest.mark.parametrize("metric", METRICS)
def test_k_larger_than_collection_pads(pset: Any, name: str, metric: str) -> None:
    x, q = data(5, 4), data(3, 4, seed=1)
    index = pset.registry.build("index", name, {"chunk_size": 2} if name == "flat" else {}, dim=4, metric=metric)
    index.build(x)
    ids, scores = index.search(q, 8)
    check_exact(ids, scores, x, q, 8, metric)
    assert (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()


# --- persistence ------------------------------------------------------------------------


@pytest.mark.parametrize("name", PLUGINS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(pset: Any, tmp_path: Path, name: str, metric: str, mmap: bool) -> None:
    x, q = data(500, 16), data(40, 16, seed=1)
    q.setflags(write=False)  # as when queries come from a memory-mapped embeddings.npy
    opts = SMALL[name]
    index = pset.registry.build("index", name, opts, dim=16, metric=metric)
    index.build(x)
    before = index.search(q, 12)
    params = index.params
    files = index.save(tmp_path)
    assert files == FILES[name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    np.testing.assert_array_equal(index.search(q, 12)[0], before[0])  # still usable after save

    fresh = pset.registry.build("index", name, opts, dim=16, metric=metric)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning about read-only memory maps
        fresh.load(tmp_path, mmap=mmap)
        after = fresh.search(q, 12)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert fresh.params == params


def test_annoy_load_uses_saved_search_settings(pset: Any, tmp_path: Path) -> None:
    index = pset.registry.build("index", "annoy", {"n_trees": 3}, dim=8, metric="l2")
    index.build(data(400, 8))
    index.save(tmp_path)
    # options given at load time (defaults here) must not override what the build tuned
    fresh = pset.registry.build("index", "annoy", {}, dim=8, metric="l2")
    fresh.load(tmp_path)
    assert fresh.params == index.params and fresh.params["n_trees"] == 3
    meta = json.loads((tmp_path / "annoy.json").read_text())
    assert {meta["dim"], meta["metric"], meta["n_items"]} == {8, "l2", 400}


def test_annoy_load_refuses_other_dim_or_metric(pset: Any, tmp_path: Path) -> None:
    index = pset.registry.build("index", "annoy", {}, dim=8, metric="l2")
    index.build(data(50, 8))
    index.save(tmp_path)
    for dim, metric in ((9, "l2"), (8, "cosine")):
        with pytest.raises(ValueError, match="annoy.json describes"):
            pset.registry.build("index", "annoy", {}, dim=dim, metric=metric).load(tmp_path)


def test_flat_load_refuses_other_dim(pset: Any, tmp_path: Path) -> None:
    index = pset.registry.build("index", "flat", {}, dim=8, metric="l2")
    index.build(data(50, 8))
    index.save(tmp_path)
    with pytest.raises(ValueError, match=r"expected float32 \[n, 9\]"):
        pset.registry.build("index", "flat", {}, dim=9, metric="l2").load(tmp_path)


# --- search_k auto-tuning ---------------------------------------------------------------


def test_annoy_tunes_smallest_search_k_reaching_target(pset: Any) -> None:
    from pixdex_annoy import measure_recall, search_k_candidates
    from pixdex_annoy.tuning import sample_ids

    x = data(3000, 32)
    index = pset.registry.build("index", "annoy", {"n_trees": 10, "target_recall": 0.95}, dim=32, metric="l2")
    index.build(x)
    chosen = index.params["search_k"]
    candidates = search_k_candidates(3000, 10)
    assert candidates[0] == 100 and candidates[-1] == 30000
    position = candidates.index(chosen)
    assert position > 0, "this data should need more than annoy's default search_k"
    sample = sample_ids(3000, 200, seed=0)
    recall = measure_recall(index, x, sample, chosen)
    assert recall == index.params["recall_at_10"] >= 0.95
    assert measure_recall(index, x, sample, candidates[position - 1]) < 0.95
    assert measure_recall(index, x, sample, candidates[-1]) == 1.0  # the last candidate is exhaustive


def test_annoy_given_search_k_is_kept_and_measured(pset: Any) -> None:
    index = pset.registry.build("index", "annoy", {"search_k": 100, "tune_queries": 50}, dim=32, metric="cosine")
    index.build(data(3000, 32))
    params = index.params
    assert params["search_k"] == 100 and not params["search_k_tuned"]
    assert params["recall_queries"] == 50 and 0 < params["recall_at_10"] < 0.95


def test_recall_counts_ties_with_duplicates(pset: Any) -> None:
    # 30 copies of each of 20 points: the exact top-10 is any 10 of the copies, so every
    # correct answer is a hit and auto-tuning does not climb to exhaustive search for ties
    x = np.repeat(data(20, 8), 30, axis=0)
    index = pset.registry.build("index", "annoy", {"n_trees": 5}, dim=8, metric="l2")
    index.build(x)
    assert index.params["recall_at_10"] >= 0.95 and index.params["search_k"] < 600 * 5


# --- options, params, errors ------------------------------------------------------------


@pytest.mark.parametrize("name", PLUGINS)
def test_params_are_json(pset: Any, name: str) -> None:
    index = pset.registry.build("index", name, {}, dim=4, metric="ip")
    json.dumps(index.params)
    index.build(data(30, 4))
    text = json.dumps(index.params)
    assert json.loads(text) == index.params
    expected = {
        "flat": {"chunk_size", "device"},
        "annoy": {"n_trees", "search_k", "recall_at_10", "recall_queries"},
        "hnsw": {"connectivity", "ef", "recall_at_10", "recall_queries"},
    }[name]
    assert expected <= set(index.params)


@pytest.mark.parametrize("name", PLUGINS)
def test_unknown_option_is_refused(pset: Any, name: str) -> None:
    with pytest.raises(ConfigError, match=f"Unknown option 'n_tree' for index '{name}'"):
        pset.registry.build("index", name, {"n_tree": 3}, dim=4, metric="l2")


@pytest.mark.parametrize(
    ("name", "values", "match"),
    [
        ("flat", {"chunk_size": 0}, "chunk_size"),
        ("flat", {"chunk_size": "big"}, "chunk_size"),
        ("annoy", {"n_trees": 0}, "n_trees"),
        ("annoy", {"search_k": -2}, "search_k"),
        ("annoy", {"target_recall": 1.5}, "target_recall"),
        ("annoy", {"build_threads": 0}, "build_threads"),
        ("hnsw", {"connectivity": 1}, "connectivity"),
        ("hnsw", {"ef": 0}, "'ef'"),
        ("hnsw", {"dtype": "f8"}, "dtype"),
        ("hnsw", {"target_recall": 0}, "target_recall"),
    ],
)
def test_bad_option_values_are_refused(pset: Any, name: str, values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        pset.registry.build("index", name, values, dim=4, metric="l2")


@pytest.mark.parametrize("name", PLUGINS)
def test_unknown_metric_and_bad_input(pset: Any, name: str) -> None:
    with pytest.raises(PluginError, match="unknown metric 'hamming'.*cosine, l2, ip"):
        pset.registry.build("index", name, {}, dim=4, metric="hamming")
    index = pset.registry.build("index", name, {}, dim=4, metric="l2")
    with pytest.raises(RuntimeError, match="call build"):
        index.search(data(1, 4), 1)
    with pytest.raises(ValueError, match="0 vectors"):
        index.build(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match=r"shape \[n, 4\]"):
        index.build(data(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        index.build(np.full((2, 4), np.nan, np.float32))
    index.build(data(5, 4))
    with pytest.raises(ValueError, match=r"shape \[n, 4\]"):
        index.search(data(1, 5), 1)
    with pytest.raises(ValueError, match="k must be"):
        index.search(data(1, 4), 0)


def test_missing_annoy_gives_install_hint(pset: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "annoy", None)  # makes `import annoy` raise ImportError
    with pytest.raises(MissingDependencyError, match="the 'annoy' index needs the 'annoy' package.*pip install annoy"):
        pset.registry.build("index", "annoy", {}, dim=4, metric="l2")


def test_missing_usearch_gives_install_hint(pset: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    # usearch is a dependency now: the hint names the pinned range pyproject.toml installs
    pyproject = read_toml(Path(__file__).parents[1] / "pyproject.toml", "pyproject.toml")
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("usearch")]
    with pytest.raises(MissingDependencyError, match=r"the 'hnsw' index needs the 'usearch' package") as err:
        pset.registry.build("index", "hnsw", {}, dim=4, metric="l2")
    assert str(err.value).endswith(f"pip install '{pin}'")


def test_plugin_modules_import_no_heavy_library() -> None:
    # `pixdex --help` loads every plugin: registering must not import torch, annoy, usearch or numpy
    code = (
        "import sys, pixdex_flat, pixdex_annoy, pixdex_hnsw\n"
        "from pixdex.plugins import load_plugins\n"
        "load_plugins(entry_points=[]).registry.get('index', 'hnsw')\n"
        "print(sorted(m for m in ('torch', 'annoy', 'usearch', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# --- threads ----------------------------------------------------------------------------


def test_concurrent_searches_equal_serial(pset: Any, tmp_path: Path) -> None:
    x, q = data(2000, 16), data(400, 16, seed=1)
    indexes = []
    for name, opts in (("annoy", {"n_trees": 5}), ("flat", {"chunk_size": 300}), ("hnsw", {"connectivity": 8})):
        built = pset.registry.build("index", name, opts, dim=16, metric="cosine")
        built.build(x)
        (tmp_path / name).mkdir()
        built.save(tmp_path / name)
        loaded = pset.registry.build("index", name, opts, dim=16, metric="cosine")
        loaded.load(tmp_path / name)
        indexes.append(loaded)
    parts = [q[i::16] for i in range(16)]
    for index in indexes:
        serial = [index.search(part, 10) for part in parts]
        with ThreadPoolExecutor(max_workers=8) as pool:
            parallel = list(pool.map(lambda part: index.search(part, 10), parts))
        for (s_ids, s_scores), (p_ids, p_scores) in zip(serial, parallel):
            np.testing.assert_array_equal(p_ids, s_ids)
            np.testing.assert_array_equal(p_scores, s_scores)


def test_flat_device_is_resolved_by_the_core(pset: Any) -> None:
    from pixdex.errors import DeviceError, UsageError

    index = pset.registry.build("index", "flat", {"device": "auto"}, dim=4, metric="l2")
    assert index.params["device"] in {"cpu", "cuda:0", "mps"}
    with pytest.raises(UsageError, match="Unknown device 'tpu'"):
        pset.registry.build("index", "flat", {"device": "tpu"}, dim=4, metric="l2")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(DeviceError):
            pset.registry.build("index", "flat", {"device": "cuda"}, dim=4, metric="l2")


# --- hnsw: ef auto-tuning -------------------------------------------------------------------


def test_hnsw_tunes_the_smallest_ef_reaching_the_target_on_held_out_rows(pset: Any) -> None:
    from pixdex_hnsw.index import ef_candidates

    x, fresh = data(3000, 32), data(300, 32, seed=7)
    options = {"connectivity": 4, "expansion_add": 16}
    index = pset.registry.build("index", "hnsw", options, dim=32, metric="l2")
    index.build(x)
    params = index.params
    assert params["ef_tuned"] and params["recall_at_10"] >= 0.95 and params["recall_queries"] == 200
    candidates = ef_candidates(3000)
    position = candidates.index(params["ef"])
    assert position > 0, "this sparse graph should need more than ef = k"
    # the same build with the ef just below measures (on the same held-out rows) short of it
    below = pset.registry.build("index", "hnsw", {**options, "ef": candidates[position - 1]}, dim=32, metric="l2")
    below.build(x)
    assert below.params["recall_at_10"] < 0.95
    # and the figure holds for queries from outside the collection, the point of holding rows out
    ids, _ = index.search(fresh, 10)
    truth = np.argsort(((fresh[:, None, :] - x[None]) ** 2).sum(2), axis=1)[:, :10]
    assert recall_at(ids, truth) >= 0.93


def test_hnsw_given_ef_is_kept_and_measured_and_full_depth_is_exact(pset: Any) -> None:
    x, q = data(400, 8), data(20, 8, seed=1)
    index = pset.registry.build("index", "hnsw", {"ef": 400, "tune_queries": 50}, dim=8, metric="cosine")
    index.build(x)
    assert index.params["ef"] == 400 and not index.params["ef_tuned"] and index.params["recall_at_10"] == 1.0
    ids, scores = index.search(q, 10)
    check_exact(ids, scores, x, q, 10, "cosine")
    one = index.search(q[:1], 10)  # usearch answers a single query with another type
    np.testing.assert_array_equal(one[0], ids[:1])
    np.testing.assert_array_equal(one[1], scores[:1])


@pytest.mark.parametrize("metric", METRICS)
def test_hnsw_add_grows_a_loaded_index_like_a_build(pset: Any, tmp_path: Path, metric: str) -> None:
    x, q = data(600, 8), data(20, 8, seed=1)
    first = pset.registry.build("index", "hnsw", {"ef": 600}, dim=8, metric=metric)
    first.build(x[:400])
    first.save(tmp_path)
    grown = pset.registry.build("index", "hnsw", {}, dim=8, metric=metric)
    grown.load(tmp_path, mmap=False)
    grown.add(x[400:], all_vectors=x)
    assert len(grown) == 600 and grown.params["recall_at_10"] == 1.0
    ids, scores = grown.search(q, 10)
    check_exact(ids, scores, x, q, 10, metric)  # ef = N: exact over old and new rows
    with pytest.raises(ValueError, match="all_vectors has 600 rows, expected 600 \\+ 1"):
        grown.add(x[:1], all_vectors=x)


def test_recall_leaves_each_sampled_row_out_of_its_own_answer() -> None:
    from pixdex.plugin_api import measure_recall, sample_ids

    x = data(300, 8)

    class FindsOnlyItself:  # a useless index: the query row, then the farthest rows
        metric = "l2"

        def search_with(self, queries, k, effort):
            own = [int(np.flatnonzero((x == q).all(axis=1))[0]) for q in queries]
            far = np.argsort(-((queries[:, None, :] - x[None]) ** 2).sum(2), axis=1)[:, : k - 1]
            return np.column_stack([own, far]).astype(np.int64), np.zeros((len(queries), k), np.float32)

    # counting the self-match would give 0.1 for free; held-out queries never get it
    assert measure_recall(FindsOnlyItself(), x, sample_ids(300, 50, 0), 1) == 0.0
