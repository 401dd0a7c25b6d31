"""Promise (docs/reliability.md, the server): HTML in file and class names is shown as text
on the `pixdex serve` page and never runs, in a real headless browser."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from browser_support import all_images_loaded, browser, require_browser, serve_in_thread
from conftest import CPU_RUNTIME, invoke
from recognition_data import pattern_image

require_browser()
__all__ = ["browser"]  # the fixture, imported for pytest
HOSTILE = '<img src=x onerror="window.__pwned=1">'


@pytest.fixture(scope="module")
def hostile_index(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index whose class folder and file names are HTML: they must show as text."""
    import numpy as np

    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(4)
    for kind, label in (("top", "top"), ("left", HOSTILE)):
        folder = root / "coll" / label
        folder.mkdir(parents=True)
        for i in range(6):
            pattern_image(kind, rng).save(folder / f"{HOSTILE}{i}.png")
    index = root / "index"
    result = invoke("-q", "index", "build", str(trained), str(root / "coll"), "-o", str(index), *CPU_RUNTIME)
    assert result.exit_code == 0, result.stderr
    return index


def test_hostile_names_stay_inert(browser, hostile_index: Path, tmp_path: Path):
    hostile_file = tmp_path / f"{HOSTILE}.png"
    shutil.copy(next((hostile_index.parent / "coll" / HOSTILE).iterdir()), hostile_file)
    for url in serve_in_thread(hostile_index, tmp_path / "cache"):
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("() => document.getElementById('summary').textContent.includes('12 items')")
        page.set_input_files("#file", str(hostile_file))
        page.wait_for_selector("#results figure")
        all_images_loaded(page)
        labels = page.locator("#results figure .label").all_text_contents()
        assert HOSTILE in labels  # shown as text...
        assert page.evaluate("() => window.__pwned") is None  # ...never run
        assert page.locator("#results img[src='x']").count() == 0
        assert HOSTILE in page.locator("#query-title").text_content()
        page.close()
