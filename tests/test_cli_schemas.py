"""docs/cli.md promises a JSON Schema for every command with JSON output; check each one
against the command's real output.

The schemas are the fenced ```json blocks that follow a ``<!-- schema: NAME -->`` line in
docs/cli.md. They use a small JSON-Schema subset (type, properties, required, items,
additionalProperties, enum, minimum, maximum), validated by the ~60 lines below, so the
check needs no extra dependency. Every command runs for real, in-process, on a tiny generated
data set: train, evaluate and predict on a 1-epoch run; embed, index build/add/remove/info,
search, predict by neighbours, evaluate-retrieval, cluster and duplicates on an index of it.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import TINY_CNN
from recognition_data import make_folder_dataset

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
MARKER = re.compile(r"^<!-- schema: ([a-z0-9-]+) -->\n```json\n(.*?)\n```", re.MULTILINE | re.DOTALL)
KEYWORDS = {"type", "properties", "required", "items", "additionalProperties", "enum", "minimum", "maximum"}
TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}
TINY = TINY_CNN  # conftest: a tiny simple-cnn on the CPU


# --- the validator ------------------------------------------------------------------------


def _is(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":  # JSON Schema: a number with no fractional part
        return not isinstance(value, bool) and (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        )
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    raise ValueError(f"unknown type {kind!r}")


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Every way ``value`` breaks ``schema`` (the subset in KEYWORDS), as 'path: problem'."""
    errors: list[str] = []
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, k) for k in kinds):
            return [f"{path}: expected {' or '.join(kinds)}, got {json.dumps(value)[:60]}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if _is(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        errors += [f"{path}: missing required '{key}'" for key in schema.get("required", []) if key not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                errors += validate(item, properties[key], f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unexpected property '{key}'")
            elif isinstance(extra, dict):
                errors += validate(item, extra, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    return errors


def subset_problems(schema: Any, path: str = "$") -> list[str]:
    """Keywords or types outside the documented subset (which the validator would ignore)."""
    if not isinstance(schema, dict):
        return [f"{path}: a schema must be an object"]
    problems = [f"{path}: keyword '{k}' is outside the subset" for k in schema if k not in KEYWORDS]
    kinds = schema.get("type", [])
    for kind in kinds if isinstance(kinds, list) else [kinds]:
        if kind not in TYPES:
            problems.append(f"{path}: unknown type {kind!r}")
    for key, sub in schema.get("properties", {}).items():
        problems += subset_problems(sub, f"{path}.properties.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            problems += subset_problems(schema[key], f"{path}.{key}")
    return problems


def documented_schemas() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name, body in MARKER.findall(DOC.read_text(encoding="utf-8")):
        assert name not in found, f"docs/cli.md documents schema '{name}' twice"
        found[name] = json.loads(body)
    return found


SCHEMAS = documented_schemas() if DOC.exists() else {}


# --- running the CLI ----------------------------------------------------------------------


def invoke(*args: str) -> Any:
    """Run `pixdex ARGS` in-process with the built-in plugins only; stdout kept apart."""
    from click.testing import CliRunner

    from pixdex.cli import build_cli
    from pixdex.plugins import load_plugins

    separate = "mix_stderr" in inspect.signature(CliRunner.__init__).parameters
    runner = CliRunner(mix_stderr=False) if separate else CliRunner()
    with pytest.MonkeyPatch.context() as mp:  # session fixtures run before conftest's env cleaning
        for var in [v for v in os.environ if v.startswith("PIXDEX_")]:
            mp.delenv(var)
        result = runner.invoke(build_cli(load_plugins(entry_points=[])), ["-q", *args], catch_exceptions=False)
    assert result.exit_code == 0, f"pixdex {' '.join(args)} exited {result.exit_code}: {result.stderr}"
    return result


def json_out(*args: str) -> Any:
    return json.loads(invoke(*args, "--json").stdout)


def jsonl_out(*args: str) -> list[Any]:
    return [json.loads(line) for line in invoke(*args, "--format", "jsonl").stdout.splitlines()]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 3-class, 16x16 data set (8 train and 4 test images per class) and a 1-epoch run."""
    data = make_folder_dataset(tmp_path_factory.mktemp("schema-data"), per_class=8, test_per_class=4)
    run = tmp_path_factory.mktemp("schema-runs") / "run"
    report = json_out("train", str(data), "-o", str(run), "--epochs", "1", *TINY)
    return {"data": data, "run": run, "train": report}


# One entry per documented schema: what produces the JSON document(s) it describes.
def _plugins(_: Any) -> Any:
    return json_out("plugins")


def _list(_: Any) -> Any:
    return json_out("list", "indexes")


def _config_show(_: Any) -> Any:
    return json_out("config", "show", "--preset", "tutorial")


def _train(ctx: dict[str, Any]) -> Any:
    return ctx["train"]


def _evaluate(ctx: dict[str, Any]) -> Any:
    return json_out("evaluate", str(ctx["run"]), str(ctx["data"]), "--workers", "0", "--device", "cpu")


def _predict(ctx: dict[str, Any]) -> Any:
    data = ctx["data"]
    one = next((data / "test" / "top").iterdir())
    return json_out(
        "predict",
        str(ctx["run"]),
        str(one),
        str(data / "test" / "left"),
        "-k",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
    )


CPU = ["--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="session")
def indexed(trained: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An index of the whole tiny data set (train and test splits, 36 items) built with the run;
    a copy of it that loses one item (`index remove`) and gets it back (`index add`)."""
    root = tmp_path_factory.mktemp("schema-index")
    index = root / "index"
    build = json_out("index", "build", str(trained["run"]), str(trained["data"]), "-o", str(index), *CPU)
    copy = root / "copy"
    shutil.copytree(index, copy)
    gone = str(next((trained["data"] / "train" / "top").iterdir()))
    remove = json_out("index", "remove", str(copy), gone, str(root / "not-indexed.png"))
    add = json_out("index", "add", str(copy), str(trained["data"]), *CPU)
    return {**trained, "index": index, "root": root, "index-build": build, "index-remove": remove, "index-add": add}


def _embed(ctx: dict[str, Any]) -> Any:
    return json_out("embed", str(ctx["run"]), str(ctx["data"]), "-o", str(ctx["root"] / "embeddings"), *CPU)


def _index_info(ctx: dict[str, Any]) -> Any:
    return json_out("index", "info", str(ctx["index"]))


def _search(ctx: dict[str, Any]) -> Any:
    data = ctx["data"]
    return json_out(
        "search",
        str(ctx["index"]),
        str(data / "test" / "left"),
        str(next((data / "test" / "top").iterdir())),
        "-k",
        "3",
        *CPU,
    )


def _evaluate_retrieval(ctx: dict[str, Any]) -> Any:
    return json_out("evaluate-retrieval", str(ctx["index"]), "--leave-one-out", "--use-index", "--device", "cpu")


def _cluster(ctx: dict[str, Any]) -> Any:
    return json_out(
        "cluster", str(ctx["index"]), "--clusters", "3", "-o", str(ctx["root"] / "clusters"), "--device", "cpu"
    )


def _duplicates(ctx: dict[str, Any]) -> Any:
    return json_out("duplicates", str(ctx["index"]), "-o", str(ctx["root"] / "duplicates"), "--threshold", "0.99")


def _export(ctx: dict[str, Any]) -> Any:
    """`pixdex export` of the index (all verification fields), then `--check` of it."""
    out = ctx["root"] / "export"
    exported = json_out("export", str(ctx["index"]), "-o", str(out), *CPU)
    checked = json_out("export", "--check", str(out), *CPU)
    assert validate(checked, SCHEMAS["export"]) == []
    return exported


def _serve(ctx: dict[str, Any], route: str) -> Any:
    """GET ``route`` of `pixdex serve` on the index (TestClient, real app and service)."""
    from conftest import serve_client

    with serve_client(ctx["index"], cache_dir=ctx["root"] / "thumbs") as client:
        return client.get(route).json()


PRODUCERS: dict[str, Callable[[Any], Any]] = {
    "plugins": _plugins,
    "list": _list,
    "config-show": _config_show,
    "train": _train,
    "evaluate": _evaluate,
    "predict": _predict,
    "embed": _embed,
    "index-build": lambda ctx: ctx["index-build"],
    "index-info": _index_info,
    "index-add": lambda ctx: ctx["index-add"],
    "index-remove": lambda ctx: ctx["index-remove"],
    "search": _search,
    "evaluate-retrieval": _evaluate_retrieval,
    "cluster": _cluster,
    "duplicates": _duplicates,
    "export": _export,
    "serve-info": lambda ctx: _serve(ctx, "/api/info"),
    "serve-healthz": lambda ctx: _serve(ctx, "/healthz"),
    "serve-error": lambda ctx: _serve(ctx, "/api/items/999/similar"),
}
NEEDS_RUN = {"train", "evaluate", "predict"}
NEEDS_INDEX = {
    "embed",
    "index-build",
    "index-info",
    "index-add",
    "index-remove",
    "search",
    "evaluate-retrieval",
    "cluster",
    "duplicates",
    "export",
    "serve-info",
    "serve-healthz",
    "serve-error",
}


# --- the tests ----------------------------------------------------------------------------


def test_every_documented_schema_has_a_test():
    assert DOC.exists(), "docs/cli.md is missing"
    assert set(SCHEMAS) == set(PRODUCERS), f"documented: {sorted(SCHEMAS)}; tested: {sorted(PRODUCERS)}"


@pytest.mark.parametrize("name", sorted(PRODUCERS))
def test_schema_uses_only_the_subset(name: str):
    assert name in SCHEMAS, f"docs/cli.md has no <!-- schema: {name} --> block"
    assert subset_problems(SCHEMAS[name]) == []


@pytest.mark.parametrize("name", sorted(PRODUCERS))
def test_real_json_output_matches_its_schema(name: str, request: pytest.FixtureRequest):
    fixture = "indexed" if name in NEEDS_INDEX else "trained" if name in NEEDS_RUN else None
    ctx = request.getfixturevalue(fixture) if fixture else None
    document = PRODUCERS[name](ctx)
    assert validate(document, SCHEMAS[name]) == []


def test_jsonl_lines_match_the_json_items(trained: dict[str, Any]):
    """--format jsonl writes one line per row: the items of the json array (for evaluate,
    the per_class rows)."""
    for name, args in (("plugins", ["plugins"]), ("list", ["list", "datasets"])):
        lines = jsonl_out(*args)
        assert lines and all(validate(line, SCHEMAS[name]["items"]) == [] for line in lines)
    run, data = str(trained["run"]), str(trained["data"])
    lines = jsonl_out("predict", run, str(data) + "/test/bottom", "-k", "3", "--workers", "0", "--device", "cpu")
    assert len(lines) == 4 and all(validate(line, SCHEMAS["predict"]["items"]) == [] for line in lines)
    lines = jsonl_out("evaluate", run, data, "--workers", "0", "--device", "cpu")
    per_class = SCHEMAS["evaluate"]["properties"]["per_class"]["items"]
    assert len(lines) == 3 and all(validate(line, per_class) == [] for line in lines)


def test_retrieval_jsonl_lines_match_the_json_document(indexed: dict[str, Any]):
    """jsonl rows of the retrieval commands: one line per match (search: the query plus a
    match), per cluster, per group; one line, the whole report, for embed, index info and
    evaluate-retrieval."""
    index, data, root = str(indexed["index"]), indexed["data"], indexed["root"]
    match = SCHEMAS["search"]["items"]["properties"]["matches"]["items"]
    lines = jsonl_out("search", index, str(data / "test" / "bottom"), "-k", "2", *CPU)
    assert len(lines) == 8
    assert all(isinstance(line.pop("query"), str) and validate(line, match) == [] for line in lines)
    lines = jsonl_out("cluster", index, "--clusters", "3", "-o", str(root / "clusters"), "--device", "cpu")
    assert len(lines) == 3 and all(
        validate(line, SCHEMAS["cluster"]["properties"]["clusters"]["items"]) == [] for line in lines
    )
    lines = jsonl_out("duplicates", index, "-o", str(root / "duplicates"), "--threshold", "0.99")
    assert all(validate(line, SCHEMAS["duplicates"]["properties"]["groups"]["items"]) == [] for line in lines)
    for name, args in (
        ("index-info", ["index", "info", index]),
        ("evaluate-retrieval", ["evaluate-retrieval", index, "--leave-one-out", "--device", "cpu"]),
    ):
        lines = jsonl_out(*args)
        assert len(lines) == 1 and validate(lines[0], SCHEMAS[name]) == []


def test_predict_by_neighbours_rows_are_predict_rows(indexed: dict[str, Any]):
    """`predict INDEX_DIR` (neighbour vote) prints the same rows as `predict RUN_DIR`."""
    rows = json_out(
        "predict", str(indexed["index"]), str(indexed["data"] / "test" / "top"), "--neighbours", "5", "-k", "2", *CPU
    )
    assert len(rows) == 4 and validate(rows, SCHEMAS["predict"]) == []


def test_index_reports_are_consistent(indexed: dict[str, Any]):
    build, info = indexed["index-build"], _index_info(indexed)
    assert build["count"] == info["count"] == 36 and build["dim"] == info["dim"] == 16
    # `index build` reports the index info record, rebuilt after the commit: its `updated` may
    # be a second later, and its `size_bytes` counts manifest.json too (info: the listed files)
    same = [k for k in info if k not in ("updated", "size_bytes")]
    assert {k: build[k] for k in same} == {k: info[k] for k in same} and set(build) == set(info)
    removed, added = indexed["index-remove"], indexed["index-add"]
    assert removed["removed"] == 1 and removed["count"] == 35 and len(removed["not_found"]) == 1
    assert added["added"] == 1 and added["count"] == 36 and added["next_id"] == 37  # ids are never reused


def test_train_report_is_consistent(trained: dict[str, Any]):
    report = trained["train"]
    assert report["classes"] == ["bottom", "left", "top"]
    assert report["epochs"] == 1 and report["best_epoch"] == 1 and report["best"] == report["last"]
    assert report["train_count"] + report["val_count"] == 24  # the test split is never read


def test_the_validator_rejects_wrong_documents():
    """The check can fail: wrong documents are caught, by the real schemas too."""
    schema = {
        "type": "object",
        "required": ["n", "xs"],
        "additionalProperties": False,
        "properties": {
            "n": {"type": "integer", "minimum": 1},
            "f": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "e": {"enum": ["a", "b"]},
            "xs": {"type": "array", "items": {"type": "string"}},
            "m": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
    }
    assert validate({"n": 2, "xs": ["a"], "f": None, "e": "a", "m": {"k": True}}, schema) == []
    assert validate({"n": 2.0, "xs": []}, schema) == []  # 2.0 is an integer in JSON Schema
    for wrong in (
        {"xs": []},
        {"n": 0, "xs": []},
        {"n": True, "xs": []},
        {"n": 1.5, "xs": []},
        {"n": 1, "xs": [3]},
        {"n": 1, "xs": "a"},
        {"n": 1, "xs": [], "f": 1.5},
        {"n": 1, "xs": [], "f": "0.5"},
        {"n": 1, "xs": [], "e": "c"},
        {"n": 1, "xs": [], "z": 1},
        {"n": 1, "xs": [], "m": {"k": 1}},
        [],
    ):
        assert validate(wrong, schema), f"accepted {wrong}"
    assert subset_problems({"type": "object", "pattern": "x"}) and subset_problems({"type": "float"})

    predict_row = {
        "path": "a.png",
        "label": "top",
        "probability": 0.9,
        "top": [{"label": "top", "probability": 0.9}],
        "tta": "none",
    }
    assert validate([predict_row], SCHEMAS["predict"]) == []
    assert validate([{**predict_row, "probability": 1.5}], SCHEMAS["predict"])
    assert validate([{k: v for k, v in predict_row.items() if k != "label"}], SCHEMAS["predict"])
    assert validate({"top1": 0.5}, SCHEMAS["evaluate"])
    assert validate([{"name": "flat"}], SCHEMAS["list"])
    match = {"rank": 1, "id": 3, "path": "/a.png", "label": None, "score": 0.9}
    assert validate([{"query": "q.png", "matches": [match]}], SCHEMAS["search"]) == []
    assert validate([{"query": "q.png", "matches": [{**match, "rank": 0}]}], SCHEMAS["search"])
    assert validate([{"query": "q.png", "matches": [{**match, "extra": 1}]}], SCHEMAS["search"])
    assert validate({"map": 1.5}, SCHEMAS["evaluate-retrieval"])
    assert validate(
        {"groups": [{"group": 0, "size": 1, "max_score": 1, "min_score": 1, "items": []}]}, SCHEMAS["duplicates"]
    )


def test_serve_responses_use_the_cli_schemas(indexed: dict[str, Any]):
    """The API answers search, "more like this" and recommend in `pixdex search`'s schema and
    predict in `pixdex predict`'s, on an index and on a run folder; so do `search --id` and
    `recommend` on the command line."""
    from conftest import serve_client

    query = next((indexed["data"] / "test" / "top").iterdir())
    files = [("image", (query.name, query.read_bytes(), "image/png"))]
    with serve_client(indexed["index"], cache_dir=indexed["root"] / "thumbs") as client:
        documents = {
            "search": [
                client.post("/api/search", files=files, data={"k": "3"}).json(),
                client.get("/api/items/2/similar", params={"k": 3}).json(),
                client.post("/api/recommend", json={"positive": [1, 2], "negative": [5], "k": 3}).json(),
            ],
            "predict": [client.post("/api/predict", files=files, data={"k": "2"}).json()],
        }
    with serve_client(indexed["run"], cache_dir=indexed["root"] / "thumbs") as client:
        documents["predict"].append(client.post("/api/predict", files=files, data={"k": "2"}).json())
        documents["serve-info"] = [client.get("/api/info").json()]
        documents["serve-error"] = [client.get("/api/items/0/similar").json()]
    documents["search"] += [
        json_out("search", str(indexed["index"]), "--id", "2", "-k", "3"),
        json_out("recommend", str(indexed["index"]), "--like", "1", "--like", "2", "--unlike", "5", "-k", "3"),
    ]
    for name, docs in documents.items():
        for doc in docs:
            assert validate(doc, SCHEMAS[name]) == [], (name, doc)
    assert all(len(doc[0]["matches"]) == 3 for doc in documents["search"])
