"""Latency and throughput of the served explorer, measured in a real browser.

    .venv/bin/python bench/app_latency.py [--changes 40] [--memory-changes 200]
                                          [--screenshot assets/screenshot.png] [--present]

Starts ``panel serve app.py`` on a free port, drives it in headless Debian
Chromium (playwright) and prints a table:

- slider change -> first new frame: the page sets the beta slider's value (as
  a drag does) and notes ``performance.now()``; a requestAnimationFrame loop
  watches the energy view's data source until it holds rows of the run with
  the new beta (every row carries its run's beta), then waits one more
  animation frame so that the frame with the new data has been painted. Median
  and 95th percentile over ``--changes`` changes, spaced like a person's.
- frames per second drawn: animation frames in which the plots' data changed,
  while a long run plays at 200 steps/s.
- dynamics steps per second delivered: rows arriving in the energy view per
  second, while a long run plays at full speed ("max").
- server CPU share (psutil, the ``panel serve`` process with its worker
  threads; 100 % = one core) in each of those windows, and with the page idle;
  and the browser's CPU time per drawn frame (all its processes), which says
  what frame rate the page could reach with a free core.
- slider change -> first new frame again while another tab runs (and restarts) a long
  relaxation at full speed: one user's heavy run must not freeze another's page.
- server RSS after 10 and after ``--memory-changes`` slider changes (more than 10), and the growth between.

The machine's whole-CPU use by other processes is printed too: on a shared
2-core machine numbers are noisy when it is high.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psutil
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from explorer.app.served import CHROMIUM, CHROMIUM_ARGS, ServedApp  # noqa: E402

JS_HELPERS = """() => {
  const models = () => Array.from(Bokeh.documents[0]._all_models.values());
  window.__bench = {
    model(name) { return models().find(m => m.name === name); },
    slider(title) { return models().find(m => m.constructor.__name__ === 'Slider' && m.title === title); },
    energy() { return ['free', 'nudged+', 'nudged-'].map(p => this.model('explorer.energy.' + p)); },
    rows() { return this.energy().reduce((n, s) => n + s.data.x.length, 0); },
    changeBeta(beta) {
      const src = this.__free || (this.__free = this.model('explorer.energy.free'));
      const slider = this.__beta || (this.__beta = this.slider('Beta'));
      return new Promise(resolve => {
        const t0 = performance.now();
        slider.value = beta;
        const check = () => {
          const rb = src.data.run_beta;
          if (rb && rb.length && Math.abs(rb[rb.length - 1] - beta) < 1e-9) {
            requestAnimationFrame(() => resolve(performance.now() - t0));   // painted
            return;
          }
          if (performance.now() - t0 > 10000) { resolve(-1); return; }
          requestAnimationFrame(check);
        };
        requestAnimationFrame(check);
      });
    },
    // Count animation frames with new data, and rows delivered, for `ms` milliseconds. The sources
    // are looked up once, so the measuring costs the page next to nothing per frame.
    watch(ms) {
      const streamed = models().filter(m => m.name && m.name.startsWith('explorer.') && m.data && m.data.x);
      const energy = this.energy();
      const length = () => { let n = 0; for (const m of streamed) n += m.data.x.length; return n; };
      const rows = () => { let n = 0; for (const m of energy) n += m.data.x.length; return n; };
      return new Promise(resolve => {
        let frames = 0, total = 0, lastLen = length(), lastRows = rows();
        let firstRow = null, lastRow = null;
        const t0 = performance.now();
        const tick = () => {
          const now = performance.now();
          const len = length(), r = rows();
          if (len !== lastLen) frames += 1;
          const d = r >= lastRows ? r - lastRows : r;   // a new run starts from empty
          if (d > 0) { total += d; if (firstRow === null) firstRow = now; lastRow = now; }
          lastLen = len; lastRows = r;
          if (now - t0 < ms) requestAnimationFrame(tick);
          else resolve({frames, rows: total, seconds: (now - t0) / 1000,
                        rowSeconds: firstRow === null ? 0 : (lastRow - firstRow) / 1000});
        };
        requestAnimationFrame(tick);
      });
    },
  };
  return true;
}"""


class Server(ServedApp):
    """The served app, started and waited for, with its process measured by psutil."""

    def __init__(self):
        super().__init__()
        self.wait_ready()
        self.ps = psutil.Process(self.proc.pid)

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def cpu_window(self):
        """Start a CPU window; call the result to get (server %, whole machine %) since then."""
        self.ps.cpu_percent(None)
        psutil.cpu_percent(None)
        return lambda: (self.ps.cpu_percent(None), psutil.cpu_percent(None) * psutil.cpu_count())



def browser_cpu_seconds() -> float:
    """CPU seconds used so far by the Chromium processes this script started."""
    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        try:
            if "chrom" in proc.name():
                t = proc.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


MEMORY_BASE = 10   # RSS is read after this many slider changes, then after --memory-changes
PRESENT = False   # --present: every page at 1280x720 in presentation mode (issue 18's latency figures)


def open_page(browser, url, height=1000):
    if PRESENT:
        url += ("&" if "?" in url else "?") + "present=1"
    viewport = {"width": 1280, "height": 720} if PRESENT and height != 2700 else {"width": 1600, "height": height}
    page = browser.new_page(viewport=viewport)
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url, timeout=120_000)
    in_sight(page)   # the energy view is the one timed
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=120_000)
    page.wait_for_function("""() => { const d = Bokeh.documents[0];
        for (const m of d._all_models.values()) if (m.name === 'explorer.energy.nudged-') return m.data.x.length > 0;
        return false; }""", timeout=120_000)
    page.evaluate(JS_HELPERS)
    return page, errors


def pct(values, q):
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(q / 100 * (len(values) - 1))))
    return values[k]


def in_sight(page):
    """In presentation mode, scroll the timed energy view into sight (the page holds back views out of sight)."""
    if PRESENT:
        page.locator(".view-energy").first.scroll_into_view_if_needed(timeout=120_000)


def latency_rows(latencies, what: str, target: str, p95_note: str | None = None) -> list:
    """Median and p95 rows of the measured latencies (a negative one was missed)."""
    ok = [v for v in latencies if v >= 0] or [float("nan")]
    missed = sum(1 for v in latencies if v < 0)
    return [(f"{what}, median", f"{statistics.median(ok):.0f} ms", target),
            (f"{what}, p95", f"{pct(ok, 95):.0f} ms",
             p95_note if p95_note is not None else f"{missed} of {len(latencies)} missed")]


def measure_slider(browser, server, changes: int, errors: list) -> list:
    """Slider change -> first new frame at the default settings (100 steps/s playback), and idle CPU."""
    page, errs = open_page(browser, server.url)
    errors += errs
    time.sleep(3)  # the first run ends; the page is idle
    cpu = server.cpu_window()
    time.sleep(3)
    idle_cpu, idle_machine = cpu()
    latencies = []
    cpu = server.cpu_window()
    for i in range(changes):
        beta = round(0.20 + 0.01 * (i % 40) + (0.005 if (i // 40) % 2 else 0.0), 3)
        latencies.append(page.evaluate("b => window.__bench.changeBeta(b)", beta))
        page.wait_for_timeout(250)   # a person's pace between slider moves
    change_cpu, change_machine = cpu()
    ok = [v for v in latencies if v >= 0] or [float("nan")]
    missed = sum(v < 0 for v in latencies)
    page.close()
    return [*latency_rows(latencies, "slider change -> first new frame", "< 150 ms", p95_note="< 300 ms"),
            ("slider change -> first new frame, worst", f"{max(ok):.0f} ms", ""),
            ("  (changes measured / missed)", f"{len(latencies) - missed} / {missed}", ""),
            ("server CPU while changing beta", f"{change_cpu:.0f} % of a core", f"machine {change_machine:.0f} %"),
            ("server CPU, page idle", f"{idle_cpu:.0f} % of a core", f"machine {idle_machine:.0f} %")]


def measure_playback(browser, server, errors: list) -> list:
    """Frames per second drawn while a long run plays at 200 steps/s."""
    page, errs = open_page(browser, server.url + "?t_free=1000&t_nudge=500&speed=200")
    errors += errs
    page.evaluate("() => { const s = window.__bench.slider('Beta'); s.value = 0.16; }")
    page.wait_for_timeout(500)
    cpu = server.cpu_window()
    b0 = browser_cpu_seconds()
    res = page.evaluate("() => window.__bench.watch(5000)")
    play_cpu, play_machine = cpu()
    per_frame = 1000 * (browser_cpu_seconds() - b0) / max(res["frames"], 1)
    page.close()
    return [("frames per second drawn (200 steps/s run)", f"{res['frames'] / res['seconds']:.1f}", ">= 20"),
            ("  browser CPU per drawn frame", f"{per_frame:.0f} ms",
             f"= {1000 / per_frame:.0f} frames/s if Chromium had a core to itself"),
            ("  steps per second shown at 200 steps/s", f"{res['rows'] / res['seconds']:.0f}", ""),
            ("server CPU while playing at 200 steps/s", f"{play_cpu:.0f} % of a core", f"machine {play_machine:.0f} %")]


def measure_max_speed(browser, server, errors: list) -> list:
    """Dynamics steps per second delivered while a long run goes at full speed."""
    page, errs = open_page(browser, server.url + "?t_free=1000&t_nudge=500&speed=max")
    errors += errs
    page.wait_for_timeout(1000)
    cpu = server.cpu_window()
    page.evaluate("() => { const s = window.__bench.slider('Beta'); s.value = 0.17; }")
    res = page.evaluate("() => window.__bench.watch(6000)")
    max_cpu, max_machine = cpu()
    secs = res["rowSeconds"] or res["seconds"]
    page.close()
    return [("dynamics steps/s delivered to the page (max)", f"{res['rows'] / secs:.0f}",
             f"{res['rows']} rows in {secs:.1f} s"),
            ("  frames per second drawn meanwhile", f"{res['frames'] / res['seconds']:.1f}", ""),
            ("server CPU while running at max", f"{max_cpu:.0f} % of a core", f"machine {max_machine:.0f} %")]


def measure_beside_heavy_tab(browser, server, changes: int, errors: list) -> list:
    """Latency in one tab while another restarts a long run at full speed at every change."""
    heavy, errs = open_page(browser, server.url + "?t_free=1000&t_nudge=500&speed=max")
    errors += errs
    page, errs = open_page(browser, server.url)
    errors += errs
    time.sleep(3)
    crowded = []
    for i in range(max(1, changes // 2)):
        heavy.evaluate("b => { window.__bench.slider('Beta').value = b; }", round(0.181 + 0.001 * i, 3))
        crowded.append(page.evaluate("b => window.__bench.changeBeta(b)", round(0.21 + 0.01 * i, 3)))
        page.wait_for_timeout(250)
    page.close()
    heavy.close()
    return latency_rows(crowded, "slider change with another tab at max", "")


def measure_during_sweep(browser, server, changes: int, errors: list) -> list:
    """Latency in the Relaxation tab while a 5 x 5 alpha x beta sweep runs in the same page."""
    page, errs = open_page(browser, server.url)
    errors += errs
    page.get_by_text("Sweep", exact=True).first.click()
    values = page.locator("input[placeholder='e.g. 2,4,6']")
    values.nth(0).fill("2,3,4,5,6")
    values.nth(0).press("Enter")
    values.nth(1).fill("0.05,0.1,0.2,0.35,0.5")
    values.nth(1).press("Enter")
    page.get_by_role("button", name="Run sweep").click()
    page.wait_for_timeout(4000)
    if page.get_by_role("button", name="Run it").count():
        page.get_by_role("button", name="Run it").click()
    page.wait_for_timeout(2000)
    page.get_by_text("Relaxation", exact=True).first.click()
    in_sight(page)
    page.wait_for_timeout(2000)
    during = []
    for i in range(max(1, changes // 2)):
        during.append(page.evaluate("b => window.__bench.changeBeta(b)", round(0.22 + 0.01 * i, 3)))
        page.wait_for_timeout(250)
    page.close()
    return latency_rows(during, "slider change while a 5x5 sweep runs in this page", "< 300 ms")


def measure_memory(browser, server, changes: int, errors: list) -> list:
    """Server RSS after MEMORY_BASE and after ``changes`` slider changes."""
    page, errs = open_page(browser, server.url)
    errors += errs
    rss = {}
    for i in range(changes):
        beta = round(0.2 + 0.005 * (i % 100), 3) if i % 2 else 0.15
        page.evaluate("b => { window.__bench.slider('Beta').value = b; }", beta)
        page.wait_for_timeout(60)
        if i + 1 in (MEMORY_BASE, changes):
            page.wait_for_timeout(2000)   # let the last run settle
            rss[i + 1] = server.rss_mb()
    page.close()
    return [(f"server RSS after {MEMORY_BASE} slider changes", f"{rss[MEMORY_BASE]:.0f} MiB", ""),
            (f"server RSS after {changes} slider changes", f"{rss[changes]:.0f} MiB",
             f"growth {rss[changes] - rss[MEMORY_BASE]:+.0f} MiB")]


def save_screenshot(browser, server, path: Path, errors: list) -> None:
    page, errs = open_page(browser, server.url, height=2700)
    errors += errs
    # The default run (about 2.2 s) completes and its last frames are drawn.
    page.wait_for_function("""() => { const b = window.__bench;
        return b.model('explorer.energy.nudged-').data.x.length >= 51; }""", timeout=60_000)
    page.wait_for_timeout(1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    page.close()


def print_table(rows) -> None:
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"\n{'measure'.ljust(width)}  {'value'.ljust(vwidth)}  target / note")
    print("-" * (width + vwidth + 24))
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value.ljust(vwidth)}  {note}")
    print(f"\n{psutil.cpu_count()} CPUs; load average {', '.join(f'{x:.2f}' for x in psutil.getloadavg())}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--changes", type=int, default=40, help="slider changes for the latency figures")
    ap.add_argument("--memory-changes", type=int, default=200,
                    help="slider changes for the memory figure (more than 10: the growth is measured from the "
                         "RSS after the first 10)")
    ap.add_argument("--screenshot", type=Path, help="also save a full-page screenshot here")
    ap.add_argument("--present", action="store_true", help="pages at 1280x720 in presentation mode (?present=1)")
    args = ap.parse_args(argv)
    if args.memory_changes <= MEMORY_BASE:
        ap.error(f"--memory-changes must be more than {MEMORY_BASE} (got {args.memory_changes}): the growth "
                 f"is the RSS after that many slider changes less the RSS after the first {MEMORY_BASE}")
    global PRESENT
    PRESENT = args.present

    server = Server()
    rows, errors = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            rows += measure_slider(browser, server, args.changes, errors)
            rows += measure_playback(browser, server, errors)
            rows += measure_max_speed(browser, server, errors)
            rows += measure_beside_heavy_tab(browser, server, args.changes, errors)
            rows += measure_during_sweep(browser, server, args.changes, errors)
            rows += measure_memory(browser, server, args.memory_changes, errors)
            if args.screenshot:
                save_screenshot(browser, server, args.screenshot, errors)
            browser.close()
        rows.append(("console errors in the page", str(len(errors)), "0"))
    finally:
        server.stop()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
