"""Scan and sweep benchmark (issue 17): batched scanning against one image at a time, and grid times.

    .venv/bin/python bench/scan.py             # all rows (several minutes on 2 cores)
    .venv/bin/python bench/scan.py --quick     # the scan rows and a 2 x 2 grid only
    .venv/bin/python bench/scan.py --scan-only --threads 1   # the scan rows, one thread (a loaded host)
    .venv/bin/python bench/scan.py --scan-only --threads 1 --parts   # and where each way's time goes

Rows: the 40 shipped samples on the page's default model, scanned in one batch and one image at
a time with the same settings (the paper's 120/50 budget, beta 0.15, stop at tol 1e-4), both in
this process and interleaved: wall and CPU seconds, the speed-up of each, and how many per-image
verdicts agree (class, step tol was met, steps run, findings), with the predictions, blamed layers
and spectral radii compared (on a loaded host, --threads 1 and the CPU time are the steadier read); a 5 x 5 alpha x beta sweep on those 40 images;
the depth x residual preset (untrained, depths 3 to 25 in steps of 2) on them. Run it on an
otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
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
    """Per image and phase the verdict: class, first step under tol, steps run, the engine's findings."""
    return [(o.index, p, d["kind"], d["met_at"], d["steps"], tuple(n["kind"] for n in d["notes"]))
            for o in outcomes for p, d in o.phases.items()]


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def scan_rows(net, x, labels, settings, rounds: int):
    """Both ways in this process, interleaved (the other one first every second round: a load that
    comes and goes hits both), after one untimed pass of each (kernels, timed kernel choices at every
    batch size the compaction visits). Returns the best wall and CPU seconds of each, the verdicts
    compared, and the last batched result."""
    batched_fn = lambda: scan(net, x, labels, settings, batch_size=len(labels))
    alone_fn = lambda: [scan_batch(net, x[i:i + 1], labels[i:i + 1], settings, first_index=i)[0][0]
                        for i in range(len(labels))]
    batched_fn(), alone_fn()
    times = {"batched": [], "alone": []}
    for r in range(rounds):
        order = [("batched", batched_fn), ("alone", alone_fn)]
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            out, wall, cpu = timed(fn)
            times[name].append((wall, cpu))
            if name == "batched":
                batched = out
            else:
                alone = out
    same = sum(a == b for a, b in zip(verdicts(batched.outcomes), verdicts(alone)))
    prediction = sum(a.prediction == b.prediction for a, b in zip(batched.outcomes, alone))
    blamed = sum(a.blamed_layer == b.blamed_layer for a, b in zip(batched.outcomes, alone))
    rho = max((abs(a.spectral_radius - b.spectral_radius) / b.spectral_radius
               for a, b in zip(batched.outcomes, alone) if b.spectral_radius), default=0.0)
    return times, (same, len(verdicts(alone)), prediction, blamed, rho), batched


def parts(net, x, labels, settings, rounds: int = 3) -> dict:
    """CPU seconds of each part of a scan, in one batch and one image at a time (the best of ``rounds``):
    each phase's dynamics (:func:`explorer.dynamics.each.relax_each`), the diagnosis, the stability
    estimate and the per-image summaries, as :func:`explorer.scan.scan_batch` runs them."""
    from explorer.diagnosis import diagnose_each
    from explorer.dynamics.each import relax_each
    from explorer.scan import _summary
    from explorer.stability import spectrum

    def one(xb, lb, t):
        c = time.process_time()

        def tick(k):
            nonlocal c
            now = time.process_time()
            t[k] = t.get(k, 0.0) + now - c
            c = now
        common = dict(tol=settings.tol, schedule=settings.schedule, target=lb)
        free = relax_each(net, xb, steps=settings.t_free, phase="free", **common)
        tick("free phase")
        nudge = dict(steps=settings.t_nudge, state=free.state, free_state=free.state, state_phi=free.phi, **common)
        phases = [free, relax_each(net, xb, beta=settings.beta, phase="nudged+", **nudge)]
        tick("nudged+ phase")
        phases.append(relax_each(net, xb, beta=-settings.beta, phase="nudged-", **nudge))
        tick("nudged- phase")
        per_phase = {p.phase: diagnose_each(p, settings.tol) for p in phases}
        tick("diagnosis")
        spectrum(net, xb, free.state, schedule=settings.schedule)
        tick("stability")
        [{p: _summary(ds[b]) for p, ds in per_phase.items()} for b in range(xb.shape[0])]
        tick("summaries")
    best = {}
    for _ in range(rounds):
        for way in ("batched", "alone"):
            t: dict = {}
            if way == "batched":
                one(x, labels, t)
            else:
                for i in range(len(labels)):
                    one(x[i:i + 1], labels[i:i + 1], t)
            for k, v in t.items():
                best.setdefault(way, {})[k] = min(v, best.get(way, {}).get(k, float("inf")))
    return best


def step_floor(net, x, batches=(1, 8, 40), steps: int = 40) -> dict:
    """CPU ms per image-step of the fused step (a level-2 step, as relax_each asks) at each batch size:
    the floor of the dynamics, a scan's image-steps times this."""
    from explorer.dynamics.driver import _Run
    from explorer.dynamics.stepper import choose_stepper
    from explorer.record import RecordConfig
    floor = {}
    for b in batches:
        run = _Run(net, x[:b], steps=steps + 5, beta=0.0, target=None, schedule="paper", state=None, tol=None,
                   free_state=None, record=RecordConfig(units=0, keep=False), on_step=None, phase="free",
                   state_phi=None, omega=1.0)
        with torch.no_grad():
            stepper, pending = choose_stepper(run._problem()), None
            for t in range(1, steps + 6):
                if t == 6:
                    c = time.process_time()
                step = stepper.step(2, t, pending, 2.0)
                pending = step if stepper.defers_energy else None
            floor[b] = 1e3 * (time.process_time() - c) / steps / b
    return floor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of each way (interleaved)")
    parser.add_argument("--scan-only", action="store_true", help="the scan rows only, no grid")
    parser.add_argument("--parts", action="store_true", help="also each part's CPU seconds, both ways, and "
                        "the fused step's cost per image-step at batch 1, 8 and 40 (the floor)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    net, name = default_model()
    x, labels, source = scan_images(net)
    settings = ScanSettings()
    times, (same, total, prediction, blamed, rho), batched = scan_rows(net, x, labels, settings, args.rounds)
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in times.items()}
    print(f"model {name}; {source}; settings {settings.to_dict()}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| measurement | value |\n|---|---|")
    for k, label in (("batched", f"{len(labels)} images in one batch"), ("alone", "one image at a time")):
        runs = ", ".join(f"{w:.2f}" for w, _ in times[k])
        print(f"| scan, {label}: wall s (best; every round) / CPU s (best) | {best[k][0]:.2f} ({runs}) / "
              f"{best[k][1]:.2f} |")
    print(f"| batched: steps the batch ran per phase | {batched.steps_run} |")
    print(f"| speed-up, wall (target >= 5x) / CPU time | {best['alone'][0] / best['batched'][0]:.2f}x / "
          f"{best['alone'][1] / best['batched'][1]:.2f}x |")
    print(f"| identical per-image verdicts (class, step tol was met, steps run, findings) | {same} of {total} |")
    print(f"| identical predictions / blamed layers | {prediction} / {blamed} of {len(labels)} |")
    print(f"| largest relative difference of a spectral radius (float sums in another order) | {rho:.1e} |")
    if args.parts:
        best = parts(net, x, labels, settings, args.rounds)
        for k in best["batched"]:
            print(f"| CPU s of the {k}: batched / one at a time (best of {args.rounds}) | "
                  f"{best['batched'][k]:.3f} / {best['alone'][k]:.3f} |")
        floor = step_floor(net, x)
        print("| fused step, CPU ms per image-step at batch " + ", ".join(map(str, floor)) + " | "
              + " / ".join(f"{v:.3f}" for v in floor.values()) + " |")
    if args.scan_only:
        return 0
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
