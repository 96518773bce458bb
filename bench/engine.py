"""Engine benchmark: one table of figures measured in one run on this machine.

    .venv/bin/python bench/engine.py            # full run (about 18 minutes on 2 cores)
    .venv/bin/python bench/engine.py --quick    # smaller counts, for a smoke test
    .venv/bin/python bench/engine.py --setup-only   # the set-up cost of a relax call, alone

Measures, for Hopfield-ResNet13 (batch 1, 16) and a small Fashion-MNIST
network (batch 1, 64): the fixed set-up of a relax call (steps=0), ms per relaxation iteration against the same update
computed by autograd of Phi (as earlier EP code does it), the cost of
recording, achieved GFLOP/s against this machine's conv2d throughput measured
in the same run, iterations and time to equilibrium for each schedule against
the paper's fixed 120, and the wall time and accuracy (cosine to a long-run
reference) of one full centered-EP gradient of Hopfield-ResNet13 at batch 16.
Run it on an otherwise idle machine: a second busy process halves every figure.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer import (HopfieldNetwork, RecordConfig, ep_gradient, hopfield_family, hopfield_resnet13,  # noqa: E402
                      native)
from explorer.dynamics import OUTPUT, SCHEDULES, phi, relax, schedule_groups  # noqa: E402


def iteration_flops(net: HopfieldNetwork) -> int:
    """FLOPs of one iteration for one sample (the network's own count)."""
    return net.spec.step_flops()


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    """Median wall time of fn() over repeats, after one warm-up call (GPU work waited for)."""
    fn()
    _sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def conv_ceiling(device, rounds: int = 8) -> float:
    """GFLOP/s of a large, compute-bound conv2d (256->256, 3x3, 16x16, batch 16), best layout,
    best of ``rounds`` rounds: the same estimator as the per-iteration figures it divides."""
    best = 0.0
    w = torch.randn(256, 256, 3, 3, device=device)
    x = torch.randn(16, 256, 16, 16, device=device)
    flops = 2 * 256 * 256 * 9 * 16 * 16 * 16
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf, wf = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
        t = min(timed(lambda: [F.conv2d(xf, wf, padding=1) for _ in range(5)], 1) for _ in range(rounds)) / 5
        best = max(best, flops / t / 1e9)
    return best


def autograd_iteration(net: HopfieldNetwork, s: dict, x: torch.Tensor, groups) -> dict:
    """One iteration the way earlier EP code computes it: dPhi/ds by autograd, then s <- sigma(s - dPhi/ds)."""
    s = dict(s)
    for group in groups:
        with torch.enable_grad():
            leaves = {n: s[n].detach().requires_grad_() for n in net.layer_names}
            grads = torch.autograd.grad(phi(net, leaves, x).sum(), [leaves[n] for n in group])
        for n, g in zip(group, grads):
            pre = s[n] - g
            s[n] = pre if n == OUTPUT else pre.clamp(0, net.alpha)
    return s


def per_iteration(net, batch, iters, repeats, ceiling):
    """ms per iteration, bare and recording, on the default path (the fused CPU kernels where built)
    and on the eager tensor code; the variants run interleaved, ``repeats`` rounds, best round kept
    (on a shared 2-core machine the other processes only ever add time). Each round also measures
    the conv2d ceiling (8 / ``repeats`` rounds of :func:`conv_ceiling`, at least 8 in all, best
    kept), so the fraction divides figures taken over the same minutes: this host's speed drifts
    by 25 % within a run."""
    x = torch.rand(batch, *net.spec.input_shape)
    x = net.check_input(x)
    groups = schedule_groups(net.spec, "paper")
    start = net.zero_state(batch)
    start["s0"] = x

    def auto():
        s = start
        for _ in range(iters):
            s = autograd_iteration(net, s, x, groups)
    variants = {
        "explicit": lambda: relax(net, x, steps=iters),
        "recorded": lambda: relax(net, x, steps=iters, record=RecordConfig()),
        "eager": lambda: relax(net, x, steps=iters, fused=False),
        "eager_recorded": lambda: relax(net, x, steps=iters, record=RecordConfig(), fused=False),
    }
    best = {k: float("inf") for k in variants}
    for fn in variants.values():
        fn()   # warm-up
    local_ceiling = 0.0
    ratios = []   # recorded / explicit within each round: the two ran seconds apart
    for r in range(repeats):
        order = list(variants.items())
        if r % 2:   # alternate the order, so a drift within a round favours neither
            order.reverse()
        this = {}
        for k, fn in order:
            this[k] = timed(fn, 1) / iters
            best[k] = min(best[k], this[k])
        ratios.append(this["recorded"] / this["explicit"])
        local_ceiling = max(local_ceiling, conv_ceiling(x.device, rounds=-(-8 // repeats)))   # >= 8 in all
    faults = {}   # page faults per iteration, one more run of each (0 where freed memory is reused)
    for k in ("explicit", "recorded"):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        variants[k]()
        faults[k] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / iters
    with torch.no_grad():
        auto_t = timed(auto, repeats) / iters
    explicit = best["explicit"]
    gflops = iteration_flops(net) * batch / explicit / 1e9
    return {"explicit_ms": explicit * 1e3, "recorded_ms": best["recorded"] * 1e3, "autograd_ms": auto_t * 1e3,
            "speedup": auto_t / explicit, "gflops": gflops, "fraction": gflops / local_ceiling,
            "local_ceiling": local_ceiling, "fraction_of_first": gflops / ceiling,
            "record_overhead": best["recorded"] / explicit - 1,
            "record_overhead_paired": statistics.median(ratios) - 1,
            "eager_ms": best["eager"] * 1e3, "eager_recorded_ms": best["eager_recorded"] * 1e3,
            "eager_overhead": best["eager_recorded"] / best["eager"] - 1,
            "faults": faults["explicit"], "faults_recorded": faults["recorded"]}


def setup_cost(net, batch, calls: int = 30) -> dict:
    """ms of a relax call that runs no step (``steps=0``): the fixed set-up every call pays (a slider
    change, a sweep cell, a scanned batch), median of ``calls`` after warm-up, bare and recording."""
    x = torch.rand(batch, *net.spec.input_shape, generator=torch.Generator().manual_seed(0)).to(net.device)
    out = {}
    for name, kw in (("bare", {}), ("recorded", {"record": RecordConfig()})):
        relax(net, x, steps=0, **kw)   # warm-up: kernels loaded, packed weights and timed choices made
        relax(net, x, steps=1, **kw)
        times = []
        for _ in range(calls):
            _sync()
            t0 = time.perf_counter()
            relax(net, x, steps=0, **kw)
            _sync()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times) * 1e3
    return out


def print_setup_costs(nets_batches, calls: int) -> None:
    print("\n## Fixed set-up of a relax call (steps=0; median of %d calls after warm-up)" % calls)
    print("| network | batch | set-up ms | set-up ms, recording |")
    print("|---|---|---|---|")
    for net, batch in nets_batches:
        r = setup_cost(net, batch, calls)
        print(f"| {net.spec.name} | {batch} | {r['bare']:.2f} | {r['recorded']:.2f} |", flush=True)


def to_equilibrium(net, batch, cap, ms_per_iter):
    x = net.check_input(torch.rand(batch, *net.spec.input_shape, generator=torch.Generator().manual_seed(0)))
    rows = {}
    for schedule in SCHEDULES:
        t0 = time.perf_counter()
        result = relax(net, x, steps=cap, schedule=schedule, tol=1e-4)
        wall = time.perf_counter() - t0
        rows[schedule] = {"iterations": result.steps, "seconds": wall,
                          "converged": result.verdict.converged,
                          "vs_120": wall / (120 * ms_per_iter / 1e3)}
    return rows


def flat_grads(grads):
    return torch.cat([g.flatten().double() for g in grads.values()])


def cosine(a, b):
    return float(a @ b / (a.norm() * b.norm() + 1e-30))


def full_gradient(net, batch, scale):
    """One centered-EP gradient under several recipes, each against two references:
    the paper's recipe with ten times the iterations, and the fixed point itself
    (descent-safe schedule, over-relaxed, ten times the iterations, converged)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *net.spec.input_shape, generator=gen).to(net.device)
    target = torch.randint(0, net.spec.n_classes, (batch,), generator=gen).to(net.device)
    beta = 0.1

    def run(**kw):
        _sync()
        t0 = time.perf_counter()
        res = ep_gradient(net, x, target, beta=beta, **kw)
        _sync()
        return res, time.perf_counter() - t0
    t_free, t_nudge = int(120 * scale), int(50 * scale)
    refs = {
        "paper recipe x10": run(t_free=10 * t_free, t_nudge=10 * t_nudge, schedule="paper"),
        "fixed point": run(t_free=10 * t_free, t_nudge=10 * t_nudge, schedule="descent_safe", omega=1.6),
    }
    recipes = {
        f"paper settings: paper schedule, {t_free}/{t_nudge}/{t_nudge}":
            dict(t_free=t_free, t_nudge=t_nudge, schedule="paper"),
        f"descent-safe, omega 1.6, {t_free // 2}/{t_nudge // 2}/{t_nudge // 2}":
            dict(t_free=t_free // 2, t_nudge=t_nudge // 2, schedule="descent_safe", omega=1.6),
        f"descent-safe, omega 1.6, {t_free // 3}/{round(t_nudge * 0.3)}/{round(t_nudge * 0.3)}":
            dict(t_free=t_free // 3, t_nudge=round(t_nudge * 0.3), schedule="descent_safe", omega=1.6),
        f"descent-safe, omega 1.6, free until step < 1e-2 (cap {t_free}), nudged {round(t_nudge * 0.3)}":
            dict(t_free=t_free, t_nudge=round(t_nudge * 0.3), schedule="descent_safe", omega=1.6,
                 tol=1e-2, nudge_tol=None),
        f"descent-safe, omega 1.6, every phase until step < 1e-2 (caps {t_free}/{t_nudge})":
            dict(t_free=t_free, t_nudge=t_nudge, schedule="descent_safe", omega=1.6, tol=1e-2),
    }
    ref_vecs = {k: flat_grads(r.grads) for k, (r, _) in refs.items()}
    out = {}
    for name, kw in recipes.items():
        res, t = run(**kw)
        out[name] = {"seconds": t, "iterations": "/".join(str(p.steps) for p in res.phases.phases),
                     "cosines": {k: cosine(flat_grads(res.grads), v) for k, v in ref_vecs.items()}}
    references = {k: {"seconds": t, "iterations": "/".join(str(p.steps) for p in r.phases.phases),
                      "verdicts": [p.verdict.message for p in r.phases.phases]} for k, (r, t) in refs.items()}
    references["agreement"] = cosine(*ref_vecs.values())
    return out, references


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts (smoke test, not for figures)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-gradient", action="store_true")
    parser.add_argument("--setup-only", action="store_true", help="only the set-up cost table (about a minute)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick
    print(f"# engine benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    if not args.setup_only:
        ceiling = conv_ceiling(device)
        print(f"conv2d ceiling (256->256 3x3 16x16 batch 16): {ceiling:.1f} GFLOP/s")
    native.get()
    print(f"relaxation engine: {native.status() if device.type == 'cpu' else 'eager tensor code (GPU)'}\n")

    resnet13 = HopfieldNetwork(hopfield_resnet13(), seed=0).to(device)
    small = HopfieldNetwork(hopfield_family(5, input_shape=(1, 28, 28), width=16, name="fmnist-resnet-5x16"),
                            seed=0).to(device)
    cases = [(resnet13, 1), (resnet13, 16), (small, 1), (small, 64)]
    print_setup_costs(cases, 10 if quick else 30)
    if args.setup_only:
        return

    print("## Per relaxation iteration (paper schedule)")
    print("(best of interleaved rounds; ceiling: the conv2d ceiling measured in the same rounds, and the "
          "fraction against it, then against the one measured first; record overhead: the two best "
          "times' ratio, then the median of each round's ratio; the last three columns: the same "
          "on the eager tensor code)")
    print("| network | batch | GFLOP/iter | explicit ms | autograd ms | explicit speed-up | GFLOP/s "
          "| ceiling GFLOP/s | fraction of conv2d ceiling | fraction of first ceiling "
          "| with records ms | record overhead | record overhead, paired median "
          "| eager ms | eager with records ms | eager record overhead | page faults / iter (explicit, recorded) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    speeds = {}
    for net, batch in cases:
        iters = (3 if batch == 16 else 10) if quick else (10 if batch == 16 else 40)
        if net is small:
            iters *= 5
        r = per_iteration(net, batch, iters, repeats=2 if quick else (4 if batch == 16 else 16), ceiling=ceiling)
        speeds[(net.spec.name, batch)] = r["explicit_ms"]
        print(f"| {net.spec.name} | {batch} | {iteration_flops(net) * batch / 1e9:.3f} | {r['explicit_ms']:.2f} "
              f"| {r['autograd_ms']:.2f} | {r['speedup']:.2f}x | {r['gflops']:.1f} | {r['local_ceiling']:.1f} "
              f"| {r['fraction']:.0%} | {r['fraction_of_first']:.0%} "
              f"| {r['recorded_ms']:.2f} | {r['record_overhead']:+.1%} | {r['record_overhead_paired']:+.1%} "
              f"| {r['eager_ms']:.2f} "
              f"| {r['eager_recorded_ms']:.2f} | {r['eager_overhead']:+.1%} "
              f"| {r['faults']:.0f}, {r['faults_recorded']:.0f} |", flush=True)

    print("\n## To equilibrium (relative step < 1e-4, from zeros, free phase)")
    print("| network | batch | schedule | iterations | converged | seconds | time / (120 fixed iterations) |")
    print("|---|---|---|---|---|---|---|")
    for net, batch in cases:
        cap = 60 if quick else (400 if net is resnet13 else 1000)
        rows = to_equilibrium(net, batch, cap, speeds[(net.spec.name, batch)])
        for schedule, r in rows.items():
            print(f"| {net.spec.name} | {batch} | {schedule} | {r['iterations']} | {r['converged']} "
                  f"| {r['seconds']:.2f} | {r['vs_120']:.2f} |", flush=True)

    if not args.skip_gradient:
        scale = 0.1 if quick else 1.0
        print("\n## One centered-EP gradient, Hopfield-ResNet13, batch 16, beta 0.1 (untrained, seed 0)")
        print("(the paper's code took 46.7 s for the paper settings on this machine)")
        print("| recipe | iterations free/+/- | seconds | vs 46.7 s | cosine to paper recipe x10 "
              "| cosine to fixed point |")
        print("|---|---|---|---|---|---|")
        rows, refs = full_gradient(resnet13, 16 if not quick else 2, scale)
        for name, r in rows.items():
            c = r["cosines"]
            print(f"| {name} | {r['iterations']} | {r['seconds']:.1f} | {r['seconds'] / 46.7:.2f} "
                  f"| {c['paper recipe x10']:.4f} | {c['fixed point']:.4f} |", flush=True)
        agreement = refs.pop("agreement")
        for name, r in refs.items():
            print(f"reference '{name}': {r['iterations']} iterations, {r['seconds']:.1f} s; "
                  f"{'; '.join(r['verdicts'])}")
        print(f"cosine between the two references: {agreement:.4f}")

if __name__ == "__main__":
    main()
