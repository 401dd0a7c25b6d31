"""The `pixdex serve` page in a real headless browser (Debian's chromium, Playwright):
upload an image, see the grid of thumbnails, "more like this", recommendations."""

from __future__ import annotations

from pathlib import Path

from browser_support import all_images_loaded, browser, require_browser, serve_in_thread

require_browser()
__all__ = ["browser"]  # the fixture, imported for pytest


def test_upload_see_the_grid_then_more_like_this_and_recommend(browser, tiny_index: Path, gallery: Path, tmp_path):
    query = sorted((gallery / "top").iterdir())[0]
    for url in serve_in_thread(tiny_index, tmp_path / "cache"):
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(url)
        page.wait_for_function("() => document.getElementById('summary').textContent.includes('30 items')")
        page.set_input_files("#file", str(query))
        page.wait_for_selector("#results figure")
        all_images_loaded(page)
        assert page.locator("#results figure").count() == 12
        first_path = page.locator("#results figure .path").first.text_content()
        assert first_path == str(query.resolve())  # a query in the index finds itself first
        page.locator("#results figure button.more").nth(1).click()
        page.wait_for_function("() => document.getElementById('query-title').textContent.startsWith('More like')")
        all_images_loaded(page)
        assert page.locator("#results figure").count() == 12
        for i in range(2):
            page.locator("#results input.like").nth(i).check()
        assert page.locator("#liked").text_content() == "2"
        page.click("#recommend")
        page.wait_for_function("() => document.getElementById('query-title').textContent.startsWith('Recommended')")
        all_images_loaded(page)
        assert page.locator("#results figure").count() == 12
        assert errors == []
        page.close()
