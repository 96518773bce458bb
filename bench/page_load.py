"""How long the served page takes to appear, in a real browser (headless Debian Chromium).

    .venv/bin/python bench/page_load.py [--pages 3] [--query "?present=1"] [--width 1600 --height 1000]

Starts the served app as the tests do (``panel serve app.py --setup explorer/app/warm.py``) and opens
the page ``--pages`` times, one after the other, printing per page the seconds from the request to:
the HTML (the server has built the page's document), the load event, the page's Bokeh document,
the first views drawn, and the first run's three verdicts shown. The first page shows what the
first visitor of a freshly started server waits for. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.app.served import CHROMIUM, CHROMIUM_ARGS, ServedApp  # noqa: E402

VERDICTS = ".verdict .badge.converged, .verdict .badge.not_converged, .verdict .badge.non_finite"


def open_once(browser, url: str, width: int, height: int) -> dict:
    page = browser.new_page(viewport={"width": width, "height": height})
    t0 = time.monotonic()
    marks = {}
    page.goto(url, wait_until="commit", timeout=180_000)
    marks["html"] = time.monotonic() - t0
    page.wait_for_load_state("load", timeout=180_000)
    marks["load"] = time.monotonic() - t0
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=180_000)
    marks["document"] = time.monotonic() - t0
    page.wait_for_function("() => Bokeh.index && Object.keys(Bokeh.index).length > 0", timeout=180_000)
    marks["views drawn"] = time.monotonic() - t0
    deadline = time.monotonic() + 180
    while page.locator(VERDICTS).count() < 3:   # (playwright's locators see into the panes' shadow roots)
        if time.monotonic() > deadline:
            raise TimeoutError("the first run's three verdicts did not appear within 180 s")
        time.sleep(0.05)
    marks["3 verdicts"] = time.monotonic() - t0
    page.close()
    return marks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=3)
    ap.add_argument("--query", default="")
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1000)
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    server = ServedApp()
    try:
        server.wait_ready(timeout=180)
        print(f"server ready (imports done by --setup) in {time.monotonic() - t0:.1f} s")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            rows = [open_once(browser, server.url + a.query, a.width, a.height) for _ in range(a.pages)]
            browser.close()
    finally:
        server.stop()
    keys = list(rows[0])
    print(f"\n| page | {' | '.join(keys)} |\n|---|{'---|' * len(keys)}")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | " + " | ".join(f"{r[k]:.2f} s" for k in keys) + " |")
    if len(rows) > 1:
        print("| median of the later pages | " + " | ".join(
            f"{statistics.median(r[k] for r in rows[1:]):.2f} s" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
