"""Screenshot of the `pixdex serve` page for docs/serve.md (`make screenshot`).

    python docs/tools/serve_screenshot.py demo-output/index docs/images/serve-page.png

Starts `pixdex serve INDEX` on a free loopback port, opens the page in Debian's headless
chromium through Playwright (never `playwright install`), uploads a held-out image of the
bundled sample, waits for every thumbnail, and saves a PNG of the page.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--query", type=Path, default=None, help="default: a held-out sneaker of the sample")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from pixdex.sample import sample_path

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        raise SystemExit("no chromium: apt-get install -y chromium")
    query = args.query or Path(sample_path()) / "test" / "Sneaker" / "00705.png"
    with tempfile.TemporaryDirectory() as cache:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pixdex", "-q", "serve", str(args.index), "--port", "0", "--cache-dir", cache],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            url = proc.stdout.readline().strip()
            if not url.startswith("http://"):
                raise SystemExit(f"pixdex serve did not start ({url!r})")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1180, "height": 820})
                page.goto(url)
                page.wait_for_function("() => document.getElementById('summary').textContent.includes('items')")
                page.set_input_files("#file", str(query))
                page.wait_for_function(
                    "() => { const imgs = [...document.querySelectorAll('#results img')];"
                    " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }"
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=False)
                browser.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
