"""Make docs/figures/editor.png the way a newcomer would use the editor (a real server, a real browser).

    python docs/make_screenshot.py [--model demo] [--port 7870]

Starts `layercomposer serve` on a temporary outputs folder, opens the page in Debian's Chromium (Playwright),
adds four held-out sprites from the library (the editor places them), locks two, types a prompt, generates, and saves
a screenshot of the whole editor with the result. Prints what it did and how long the generation took.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--port", type=int, default=7870)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "figures" / "editor.png"))
    parser.add_argument("--prompt", default="four sprites on a beach in daylight")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    outputs = Path(tempfile.mkdtemp(prefix="lc-editor-"))
    server = subprocess.Popen([sys.executable, "-m", "layercomposer", "serve", "--port", str(args.port),
                               "--model", args.model, "--outputs", str(outputs)], env=os.environ.copy())
    url = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "/api/health") as r:
                    if b'"model_ready":true' in r.read():
                        break
            except OSError:
                pass
            time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(url + "/")
            page.wait_for_function("window.layercomposer !== undefined")
            page.wait_for_selector("#library button")
            # Four sprites from the library, two of them locked: each click places one at the size the model
            # knows, on a free spot of the ground (the editor's own placement, nothing moved by hand).
            for i in range(4):
                page.locator("#library button").nth(i).click()
                page.wait_for_function(f"window.layercomposer.state.canvas.layers.length === {i + 1}")
            names = page.evaluate("window.layercomposer.state.canvas.layers.map(l => l.name)")
            for name in names[::2]:
                page.locator(f"button[aria-label='lock {name}']").click()
            page.fill("#prompt", args.prompt)
            page.locator("#random-seed").uncheck()
            page.fill("#seed", "3")
            t0 = time.perf_counter()
            page.locator("#generate").click()
            page.wait_for_function("document.getElementById('result').naturalWidth > 0", timeout=300_000)
            seconds = time.perf_counter() - t0
            page.locator("#layer-list li").first.click()
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
            print(f"locked {names[::2]}, generated in {seconds:.1f} s; wrote {args.out}")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(outputs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
