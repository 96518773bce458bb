"""Regenerate assets/screenshot-train.png: the Train tab after a short run, served and driven in headless Chromium.

    .venv/bin/python scripts/screenshot_train.py [--out assets/screenshot-train.png]

Trains a new 3-layer residual network on the first 1,024 Fashion-MNIST training images for
two epochs (about a minute on 2 cores), then takes the picture. Needs the data set.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from explorer.app.served import CHROMIUM, CHROMIUM_ARGS, ServedApp  # noqa: E402

SET = """(values) => { let n = 0; for (const m of Bokeh.documents[0]._all_models.values())
    if (m.title in values && 'value' in m) { m.value = values[m.title]; n += 1; } return n; }"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "assets" / "screenshot-train.png"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as trained:
        server = ServedApp(env={"EXPLORER_TRAINED_DIR": trained})
        try:
            server.wait_ready()
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                errors = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(server.url, timeout=120_000)
                page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=120_000)
                page.get_by_text("Train", exact=True).first.click()
                page.wait_for_timeout(2000)
                n = page.evaluate(SET, {"Training images": 1024, "Test images": 500, "Batch size": 32,
                                        "Epochs": 2, "Depth": 3, "Width": 8})
                if n < 6:
                    raise SystemExit(f"found {n} of the 6 Train settings to set")
                page.get_by_role("button", name="Start").click()
                deadline = time.time() + 600
                while time.time() < deadline and page.locator(".train-status .badge.train-done").count() == 0:
                    page.wait_for_timeout(500)
                page.mouse.move(5, 995)   # no tooltip in the picture
                page.wait_for_timeout(1500)
                page.screenshot(path=args.out)
                print("status:", page.locator(".train-status").inner_text())
                print("console errors:", errors or "none")
                browser.close()
        finally:
            server.stop()
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
