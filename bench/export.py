"""Export times (issue 18, "Measurements"): the GIF of the energy view over a 220-step run and the
standalone HTML's size, with the other exports for comparison.

    PYTHONPATH=$PWD .venv/bin/python bench/export.py [--repeats 3]

The run is the page's default: ``ExplorerState()``'s model, input and settings (``resolve()``), with
T_free 120 and T_nudge 50 (120 + 2*50 = 220 steps), recorded as the page records it. Times are
medians over repeats; on a shared machine they move with the load.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer import export  # noqa: E402
from explorer.app.state import ExplorerState  # noqa: E402
from explorer.app.worker import new_run  # noqa: E402
from explorer.ep import run_phases  # noqa: E402


def default_run(t_free: int = 120, t_nudge: int = 50):
    state = ExplorerState()
    state.param.update(t_free=t_free, t_nudge=t_nudge)
    req = state.resolve()
    run = new_run(req)
    run_phases(req.net, req.x, req.target, beta=req.beta, t_free=req.t_free, t_nudge=req.t_nudge,
               schedule=req.schedule, variant="centered", tol=None, record=req.record, on_phase=run.add_phase)
    return run


def timed(make, repeats: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        size = len(make())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), size


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    run = default_run()
    n = len(list(run.records()))
    print(f"run: {run.network['model']}, sample {run.sample}, {run.x_end} steps "
          f"({n} records incl. each phase's step 0), layers {', '.join(run.layers)}")
    rows = [("GIF, energy view", lambda: export.gif_bytes(run, "energy")),
            ("GIF, step-size view", lambda: export.gif_bytes(run, "step_size")),
            ("standalone HTML", lambda: export.html_bytes(run)),
            ("CSV records", lambda: export.csv_bytes(run)),
            ("JSON records", lambda: export.json_bytes(run)),
            ("PNG, energy view", lambda: export.figure_bytes(run, "energy", "png")),
            ("SVG, energy view", lambda: export.figure_bytes(run, "energy", "svg"))]
    print(f"\n| export | median time (s), {args.repeats} repeats | size |\n|---|---:|---:|")
    for name, make in rows:
        seconds, size = timed(make, args.repeats)
        print(f"| {name} | {seconds:.3f} | {size / 1024:.0f} KiB |")


if __name__ == "__main__":
    main()
