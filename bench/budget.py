"""How far the paper's fixed budget is from the true gradient (issue 16, item 3): centered EP after
exactly T_free / T_nudge steps against BPTT near the converged free fixed point (10 x T_free steps,
BPTT over the last 2 x T_free), as one cosine over every parameter, for Hopfield-ResNet13 at
initialisation (seed 0) on random inputs.

    .venv/bin/python bench/budget.py                 # batch 1, beta 0.1, 120/50 (about 3 min on one thread)
    .venv/bin/python bench/budget.py --batch 4 --threads 2

The issue's anchor: about 0.87 cosine. The page computes the same per tensor for the run on screen
(EP vs BPTT tab, "budget against converged").
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer import HopfieldNetwork, hopfield_resnet13  # noqa: E402
from explorer.gradients import converged_reference, estimate, run_phases  # noqa: E402


def flat(grads: dict) -> torch.Tensor:
    return torch.cat([grads[k].reshape(-1).double() for k in sorted(grads)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--t-free", type=int, default=120)
    p.add_argument("--t-nudge", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    net = HopfieldNetwork(hopfield_resnet13(), seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(a.batch, *net.spec.input_shape, generator=gen)
    target = torch.randint(0, net.spec.n_classes, (a.batch,), generator=gen)
    t0 = time.perf_counter()
    with torch.no_grad():
        phases = run_phases(net, x, target, beta=a.beta, t_free=a.t_free, t_nudge=a.t_nudge, schedule="paper",
                            tol=None, variant="centered")
    ep = flat(estimate(net, x, target, phases, beta=a.beta, variant="centered").grads)
    reference, long = converged_reference(net, x, target, schedule="paper", steps=10 * a.t_free,
                                          window=2 * a.t_free)
    ref = flat(reference)
    cosine = float(ep @ ref / (ep.norm() * ref.norm()))
    print(f"Hopfield-ResNet13 at initialisation, batch {a.batch}, beta {a.beta}: centered EP at "
          f"{a.t_free}/{a.t_nudge} against the converged reference: cosine {cosine:.4f} "
          f"({time.perf_counter() - t0:.0f} s; reference free phase: {long.verdict.message})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
