"""Scan and sweep benchmark (issue 17): batched scanning against one image at a time, and grid times.

    .venv/bin/python bench/scan.py             # all rows (several minutes on 2 cores)
    .venv/bin/python bench/scan.py --quick     # the scan rows and a 2 x 2 grid only

Rows: the 40 shipped samples on the page's default model, scanned in one batch and one image at
a time with the same settings (the paper's 120/50 budget, beta 0.15, stop at tol 1e-4): seconds,
speed-up and how many per-image verdicts agree; a 5 x 5 alpha x beta sweep on those 40 images;
the depth x residual preset (untrained, depths 3 to 25 in steps of 2) on them. Run it on an
otherwise idle machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.app.state import ExplorerState  # noqa: E402
from explorer.scan import ScanSettings, scan, scan_batch, scan_images  # noqa: E402
from explorer.sweep import PRESETS, Base, sweep  # noqa: E402


def default_model():
    state = ExplorerState()
    return state.base_network(), state.model


def verdicts(outcomes):
    return [(o.index, p, d["kind"], d["met_at"]) for o in outcomes for p, d in o.phases.items()]


def scan_rows(net, x, labels, settings):
    scan(net, x[:2], labels[:2], settings)        # warm: kernels, timed kernel choices at both batches
    scan_batch(net, x[:1], labels[:1], settings)
    t0 = time.perf_counter()
    batched = scan(net, x, labels, settings, batch_size=len(labels))
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    alone = [scan_batch(net, x[i:i + 1], labels[i:i + 1], settings, first_index=i)[0][0] for i in range(len(labels))]
    t_alone = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(verdicts(batched.outcomes), verdicts(alone)))
    return t_batched, t_alone, same, len(verdicts(alone)), batched


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    net, name = default_model()
    x, labels, source = scan_images(net)
    settings = ScanSettings()
    t_b, t_a, same, total, batched = scan_rows(net, x, labels, settings)
    print(f"model {name}; {source}; settings {settings.to_dict()}; torch threads {torch.get_num_threads()}")
    print("| measurement | value |\n|---|---|")
    print(f"| scan, 40 images in one batch | {t_b:.2f} s (steps run {batched.steps_run}) |")
    print(f"| scan, one image at a time | {t_a:.2f} s |")
    print(f"| speed-up (target >= 5x) | {t_a / t_b:.2f}x |")
    print(f"| identical per-image verdicts | {same} of {total} |")
    grid = {"alpha": [2.0, 4.0], "beta": [0.05, 0.5]} if args.quick else \
        {"alpha": [2.0, 3.0, 4.0, 5.0, 6.0], "beta": [0.05, 0.1, 0.2, 0.35, 0.5]}
    t0 = time.perf_counter()
    result = sweep(Base(net, name), grid, x, labels, settings)
    label = "x".join(str(len(v)) for v in grid.values())
    print(f"| {label} alpha x beta sweep, 40 images | {time.perf_counter() - t0:.1f} s ({len(result.cells)} cells) |")
    if not args.quick:
        base = Base.untrained(depth=3, width=8)
        t0 = time.perf_counter()
        result = sweep(base, PRESETS["depth-residual"], x, labels, settings)
        print(f"| depth x residual preset (untrained, depths 3-25), 40 images | {time.perf_counter() - t0:.1f} s "
              f"({len(result.cells)} cells) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
