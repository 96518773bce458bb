"""``python -m explorer scan`` and ``python -m explorer sweep``: failures over many inputs and settings."""
from __future__ import annotations

import contextlib
import csv
import json
import signal
import sys
import threading

from tqdm import tqdm

from .cli import ALPHA_HELP, add_network_options, add_run_options, make_network
from .scan import ScanSettings, scan, scan_images
from .sweep import PRESETS, Base, GridError, estimate_seconds, grid_cells, parse_grid, sweep

ASK_ABOVE_SECONDS = 60.0


SCAN_SETTINGS = ("alpha", "beta", "t_free", "t_nudge", "schedule", "tol", "stop_at_tol")


def add_scan_settings(p) -> None:
    """The run settings a scan takes, from the schema (a scan stops each phase at tol by default)."""
    add_run_options(p, SCAN_SETTINGS, defaults={"alpha": None, "stop_at_tol": True}, help_defaults=ALPHA_HELP)
    p.add_argument("--no-stability", dest="stability", action="store_false",
                   help="skip the spectral radius at each image's free fixed point (about one free phase's cost)")
    p.add_argument("--images", type=int, default=None,
                   help="how many images (default: the 40 shipped samples; more from the test split)")
    p.add_argument("--data-path", default=None, help="where to look for the data set")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--csv", metavar="FILE", help="write one row per image (scan) or per cell (sweep)")


def _settings(args) -> ScanSettings:
    """The scan's settings, already checked against the schema by ``cli.main``."""
    return ScanSettings(args.beta, args.t_free, args.t_nudge, args.schedule, args.tol, args.stop_at_tol,
                        args.stability)


def _write_csv(path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def cmd_scan(args) -> int:
    """Relax many images with one network and setting, batched: verdicts per image and phase."""
    net, _ = make_network(args)
    settings = _settings(args)
    x, labels, source = scan_images(net, args.images, args.data_path)
    bar = tqdm(total=len(labels), desc="scan", unit="image", disable=args.json, file=sys.stderr)
    result = scan(net, x, labels, settings, progress=lambda done, total: bar.update(done - bar.n))
    bar.close()
    out = {**result.to_dict(), "source": source}
    if args.csv:
        _write_csv(args.csv, [{"index": o.index, "label": o.label, "prediction": o.prediction,
                               "severity": o.severity, "blamed_layer": o.blamed_layer,
                               **{f"{p}_{k}": d[k] for p, d in o.phases.items()
                                  for k in ("kind", "met_at", "final", "slowest_layer", "rate")}}
                              for o in result.outcomes])
    if args.json:
        print(json.dumps(out))
        return 0
    s = result.summary()
    print(f"{source}: accuracy {s['accuracy']:.3f}, {result.seconds:.1f} s")
    for p, f in s["fraction_converged"].items():
        print(f"  {p:8s} converged {f:6.1%}  median steps to tol {s['median_steps'][p]}")
    print(f"  classes {s['classes']}  blamed layers {s['blamed_layers']}")
    return 0


def _base(args, net) -> Base:
    if args.checkpoint:
        return Base.checkpoint(net, args.checkpoint)
    if args.builder == "resnet13":
        raise ValueError("sweep varies untrained 'resnet' or 'plain' builders, or a checkpoint; not resnet13")
    return Base.untrained(args.depth, args.width, args.builder == "resnet", args.input_shape, args.classes,
                          args.seed)


def _confirm(args, seconds: float, cells: int) -> bool:
    note = f"sweep: {cells} cells, about {seconds:.0f} s at full budgets (measured step cost)"
    print(note, file=sys.stderr)
    if args.yes or seconds <= args.ask_above:
        return True
    if not sys.stdin.isatty():
        print(f"error: {note}; add --yes to run it", file=sys.stderr)
        return False
    return input("run it? [y/N] ").strip().lower() in ("y", "yes")


def cmd_sweep(args) -> int:
    """A grid over two or three settings, each cell a batched scan of the same images."""
    net, _ = make_network(args)
    grid = dict(PRESETS[args.preset]) if args.preset else {}
    grid.update(parse_grid(args.grid or []))
    base, settings = _base(args, net), _settings(args)
    cells = grid_cells(grid)
    base.check(grid)
    x, labels, source = scan_images(net, args.images, args.data_path)
    if not _confirm(args, estimate_seconds(base, grid, x, settings), len(cells)):
        return 3
    bar = tqdm(total=len(cells), desc="sweep", unit="cell", disable=args.json, file=sys.stderr)
    with _interruptible() as stop:   # Ctrl-C ends the cell in progress; the finished cells are kept
        result = sweep(base, grid, x, labels, settings, on_cell=lambda c, done, total: bar.update(1),
                       should_stop=stop)
    bar.close()
    if result.cancelled:
        print(f"sweep: cancelled after {len(result.cells)} of {len(cells)} cells; keeping those", file=sys.stderr)
    if args.csv:
        _write_csv(args.csv, result.rows())
    if args.json:
        print(json.dumps({**result.to_dict(), "source": source}))
        return 0
    for row in result.rows():
        print(row)
    return 0


@contextlib.contextmanager
def _interruptible():
    """A ``should_stop`` that turns true on SIGINT instead of raising KeyboardInterrupt."""
    flag = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: flag.set()) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        yield flag.is_set
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def register(sub) -> None:
    p = sub.add_parser("scan", help=cmd_scan.__doc__)
    add_network_options(p)
    add_scan_settings(p)
    p.set_defaults(func=cmd_scan)
    p = sub.add_parser("sweep", help=cmd_sweep.__doc__)
    add_network_options(p)
    add_scan_settings(p)
    p.add_argument("--grid", action="append", metavar="NAME=V1,V2",
                   help="a grid axis (two or three of alpha, beta, depth, residual, schedule, t_free, t_nudge, tol)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="depth-residual: depths 3 to 25, residual and plain")
    p.add_argument("--yes", action="store_true", help="run a long grid without asking")
    p.add_argument("--ask-above", type=float, default=ASK_ABOVE_SECONDS, metavar="SECONDS",
                   help=f"ask before a grid estimated to take longer than this (default {ASK_ABOVE_SECONDS:g})")
    p.set_defaults(func=cmd_sweep)


CLI_COMMANDS = [("scan", register)]
