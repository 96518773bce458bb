"""Replay scrubbing in a real browser (issue 18): one step of the replay player -> every view redrawn.

    .venv/bin/python bench/scrub.py [--steps 20] [--width 1920 --height 1080] [--query '&present=1']

Serves the app, lets the default run finish, then moves the Playback player one step at a time
(as its step buttons do) and times, in the page, from the player's change until the first view's data
changes and the page has painted twice (every view redraws in the same update).
Prints the median and p95 in ms (target: median < 100 ms). Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import playwright.sync_api as pw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from explorer.app.served import CHROMIUM, CHROMIUM_ARGS, ServedApp  # noqa: E402

# Move the player to ``value``; resolve with the ms until the energy data changed and two frames painted.
JS_SCRUB = """async (value) => {
  let player = null;
  for (const m of Bokeh.documents[0].all_models)
    if (m.constructor.__name__ === 'Player') player = m;
  const t0 = performance.now();
  await new Promise((done) => {
    const cb = () => done();
    for (const m of Bokeh.documents[0].all_models)
      if (m.name && m.name.startsWith('explorer.') && m.data) m.change.connect(cb);
    player.value = value;
  });
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - t0;
}"""
JS_READY = """() => { for (const m of Bokeh.documents[0].all_models)
  if (m.constructor.__name__ === 'Player') return !m.disabled && m.end > m.start; return false; }"""
JS_PLAYER = """() => { for (const m of Bokeh.documents[0].all_models)
  if (m.constructor.__name__ === 'Player') return [m.start, m.end, m.value, m.disabled]; return null; }"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--query", default="", help="more of the address, e.g. '&present=1'")
    args = parser.parse_args()
    server = ServedApp()
    server.wait_ready()
    try:
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(server.url + "?speed=max" + args.query, timeout=120_000)
            page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=120_000)
            page.wait_for_function(JS_READY, timeout=180_000)
            start, end, value, _ = page.evaluate(JS_PLAYER)
            times = []
            for k in range(args.steps):
                target = max(start, end - 1 - k)   # step back from the end, one step at a time
                times.append(page.evaluate(JS_SCRUB, target))
            browser.close()
    finally:
        server.stop()
    times.sort()
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    print(f"| scrub one step, every view redrawn ({args.width}x{args.height}{args.query}, {len(times)} steps) | "
          f"median {statistics.median(times):.0f} ms, p95 {p95:.0f} ms | target median < 100 ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
