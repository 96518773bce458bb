"""The stability estimate's cost against a free phase of the same network, at batch 1.

    PYTHONPATH=$PWD .venv/bin/python bench/stability.py [--model NAME] [--images 5] [--repeats 3]

For the zoo model the app opens on (``preferred_zoo_entry``) and Fashion-MNIST test images
(random inputs where the data is absent), per schedule: the free phase of T_free steps (recorded
as the app records it, and bare), then the spectral radius at where it ended (explicit tangent
map, the default, and forward-mode autograd through ``dynamics.step``), with the Jacobian-vector
products used. Target: the estimate costs less than one free phase. Times are medians over
images x repeats; on a shared machine they move with the load, the ratio less so.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer import RecordConfig, native  # noqa: E402
from explorer.dynamics import SCHEDULES, relax  # noqa: E402
from explorer.stability import spectrum  # noqa: E402
from explorer.zoo import list_entries  # noqa: E402


def inputs(net, count: int):
    try:
        from explorer.data import load_fashion_mnist, normalize
        images, _ = load_fashion_mnist("test")
        if tuple(images.shape[1:]) != tuple(net.spec.input_shape):
            raise ValueError("shape")
        return [normalize(images[i:i + 1], "fashion_mnist").to(net.dtype) for i in range(count)], "Fashion-MNIST test"
    except Exception:
        gen = torch.Generator().manual_seed(0)
        return [torch.rand(1, *net.spec.input_shape, generator=gen, dtype=net.dtype) for _ in range(count)], "random"


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None) -> int:
    from explorer.app.state import preferred_zoo_entry   # the app's choice (imports param, not Panel views)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="zoo model (default: the one the app opens on)")
    p.add_argument("--t-free", type=int, default=120, help="the app's default free phase")
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=SCHEDULES)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    entries = {e.name: e for e in list_entries()}
    name = args.model or preferred_zoo_entry(entries)
    net, _ = entries[name].load()
    xs, source = inputs(net, args.images)
    native.get(block=True)
    print(f"{name}: {net.parameter_count():,} parameters, batch 1, T_free {args.t_free}, {len(xs)} {source} "
          f"images, {torch.get_num_threads()} threads, kernels: {native.status()}")
    header = ["schedule", "free rec ms", "free bare ms", "spectrum ms", "matvecs", "jvp ms", "spectrum/free",
              "rho (median)"]
    rows = []
    for schedule in args.schedules:
        cols = {k: [] for k in ("rec", "bare", "lin", "jvp", "mv", "rho")}
        for x in xs:
            relax(net, x, steps=5, schedule=schedule)                                  # warm
            t, free = timed(lambda: relax(net, x, steps=args.t_free, schedule=schedule, record=RecordConfig()),
                            args.repeats)
            cols["rec"].append(t)
            cols["bare"].append(timed(lambda: relax(net, x, steps=args.t_free, schedule=schedule), args.repeats)[0])
            t, sp = timed(lambda: spectrum(net, x, free.state, schedule=schedule), args.repeats)
            cols["lin"].append(t)
            cols["mv"].append(sp.matvecs)
            cols["rho"].append(sp.spectral_radius[0])
            cols["jvp"].append(timed(lambda: spectrum(net, x, free.state, schedule=schedule, method="jvp"), 1)[0])
        med = {k: statistics.median(v) for k, v in cols.items()}
        rows.append([schedule, f"{1e3 * med['rec']:.1f}", f"{1e3 * med['bare']:.1f}", f"{1e3 * med['lin']:.1f}",
                     f"{med['mv']:.0f}", f"{1e3 * med['jvp']:.1f}", f"{med['lin'] / med['rec']:.2f}",
                     f"{med['rho']:.4f}"])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
