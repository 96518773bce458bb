"""Precision of the EP estimate (issue 16, item 3): the float32 centered and one-sided EP gradient
against the same estimate in float64, per tensor, for a zoo checkpoint and the shipped samples.

    .venv/bin/python bench/precision.py                       # fmnist-resnet9w16-ep, beta 0.01, batch 8
    .venv/bin/python bench/precision.py --batch 1 --t-free 120 --t-nudge 50 --beta 0.1

The issue's anchor: on fmnist-resnet9w16-ep at beta 0.01 the float32 centered estimate is about 0.70
cosine (first conv) and 0.63 (first bias) to the float64 one; the nudge moves the state by about
beta, so a small beta loses the estimate to float32's rounding of the state. The page shows the same
comparison (EP vs BPTT tab, "float32 against float64"); this prints it for any batch and budget.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.checkpoint import load_checkpoint  # noqa: E402
from explorer.data import load_samples, normalize  # noqa: E402
from explorer.gradients import precision  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="models_zoo/fmnist-resnet9w16-ep")
    p.add_argument("--batch", type=int, default=8, help="the first N shipped sample images")
    p.add_argument("--beta", type=float, default=0.01)
    p.add_argument("--t-free", type=int, default=40, help="default: the checkpoint's training budget")
    p.add_argument("--t-nudge", type=int, default=15)
    p.add_argument("--schedule", default="paper")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    net, _ = load_checkpoint(a.checkpoint)
    images, labels, _ = load_samples()
    x, y = normalize(images[:a.batch], "fashion_mnist"), labels[:a.batch]
    t0 = time.perf_counter()
    result = precision(net, x, y, beta=a.beta, t_free=a.t_free, t_nudge=a.t_nudge, schedule=a.schedule).to_dict()
    print(f"{Path(a.checkpoint).name}, beta {a.beta}, batch {a.batch}, T_free {a.t_free}, T_nudge {a.t_nudge}, "
          f"schedule {a.schedule} ({time.perf_counter() - t0:.1f} s)")
    print(f"{'tensor':<16}{'centered cosine':>17}{'rel. error':>12}{'one-sided cosine':>18}{'rel. error':>12}")
    for name, v in result["parameters"].items():
        c, o = v["centered"], v["one_sided"]
        print(f"{name:<16}{c['cosine']:>17.4f}{c['rel_error']:>12.3g}{o['cosine']:>18.4f}{o['rel_error']:>12.3g}")
    print("lowest cosine:", {k: round(v, 4) for k, v in result["min_cosine"].items()})
    print("float32 verdicts:", result["verdicts"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
