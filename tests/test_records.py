"""retrieval/records.py: the per-item bookkeeping kept as arrays (facts, sha256 look-ups)
and records made as they are written. Real files hashed; the dicts they stand in for are
compared with what file_facts gives."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from pixdex.retrieval.embed import Collection, file_facts
from pixdex.retrieval.records import FactTable, NewItems, Numbered, Selected, ShaSet, fact_table


def test_the_fact_table_gives_the_facts_file_facts_gives(tmp_path: Path):
    paths = []
    for i in range(7):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(bytes([i]) * (100 + i))
        paths.append(str(path))
    paths.append(str(tmp_path / "missing.png"))  # no file: no facts, and no error either
    table = fact_table(paths, threads=3)
    assert len(table) == 8
    assert [table[i] for i in range(8)] == [file_facts(p) for p in paths]
    assert table.sha256(2) == hashlib.sha256(bytes([2]) * 102).hexdigest() and table.sha256(7) is None


def test_the_table_is_far_smaller_than_the_dicts(tmp_path: Path):
    table = FactTable(10_000)
    for i in range(10_000):
        table.set(i, {"size": i, "mtime": 1.5, "sha256": f"{i:064x}"})
    arrays = table.size.nbytes + table.mtime.nbytes + table.sha.nbytes
    one = {"size": 10_000, "mtime": 1.5, "sha256": f"{10_000:064x}"}
    dict_bytes = sys.getsizeof(one) + sum(sys.getsizeof(v) for v in one.values())
    assert arrays / 10_000 == 48 and dict_bytes > 5 * 48


def test_sha_membership_by_binary_search():
    present = [f"{i * 7:064x}" for i in range(500)] + [None, ""]
    shas = ShaSet(present)
    assert len(shas) == 500
    assert all(f"{i * 7:064x}" in shas for i in range(500))
    assert not any(f"{i * 7 + 1:064x}" in shas for i in range(500))
    assert None not in shas and "" not in shas


def test_records_are_made_on_iteration_and_renumbered(tmp_path: Path):
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    coll = Collection([(str(image), "cat"), ("idx:train/000001", "dog")], None, spec="idx:/data/fm")
    facts = [file_facts(str(image)), {"size": None, "mtime": None, "sha256": "ab" * 32}]
    new = NewItems(coll, np.array([1, 0]), facts, first_id=40)
    records = list(new)
    assert len(new) == 2 and [r["id"] for r in records] == [40, 41]
    assert records[0] == {"id": 40, "path": "idx:train/000001", "label": "dog", "size": None, "mtime": None,
                          "sha256": "ab" * 32, "dataset": "idx:/data/fm"}  # fmt: skip
    assert records[1]["path"] == str(image.resolve()) and "dataset" not in records[1]
    old = [{"id": 3, "row": 0, "path": "p3"}, {"id": 9, "row": 1, "path": "p9"}]
    rows = list(Numbered(Selected(old, np.array([1])), new))
    assert [(r["id"], r["row"]) for r in rows] == [(9, 0), (40, 1), (41, 2)]
    assert list(rows[0]) == ["id", "row", "path"]  # id first, as items.jsonl has always been written
    assert len(Numbered(old, new)) == 4
