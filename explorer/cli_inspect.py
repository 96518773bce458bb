"""Command line for the convergence inspector: ``python -m explorer stability`` and ``--input``.

Hooked into :mod:`explorer.cli` through ``_extra_commands`` (like training); the ``--input``
option of ``relax`` and ``stability`` reads a safetensors file holding ``x`` [batch, C, H, W]
(and optionally integer labels ``target`` [batch]); it is never unpickled.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .dynamics import SCHEDULES
from .network import HopfieldNetwork
from .stability import KRYLOV, stability
from .zoo import ZOO_DIR


def add_input_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", metavar="FILE.safetensors",
                   help="inputs from a safetensors file holding x [batch, C, H, W] (and optionally integer "
                        "labels 'target' [batch]); overrides --batch")


def load_input(path, net: HopfieldNetwork) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x (and the labels, if the file has them) from a safetensors file, checked against ``net``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"input file {path} does not exist")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"input file {path} is not a readable safetensors file: {exc}") from exc
    if "x" not in tensors:
        raise ValueError(f"input file {path} holds no tensor 'x' (it has {sorted(tensors) or 'none'}); "
                         f"save the inputs as x [batch, C, H, W]")
    x = tensors["x"]
    want = tuple(net.spec.input_shape)
    if x.dim() != 4 or tuple(x.shape[1:]) != want or x.shape[0] < 1:
        raise ValueError(f"input file {path}: x has shape {tuple(x.shape)}, but {net.spec.name} expects "
                         f"[batch, {', '.join(map(str, want))}]")
    if not x.is_floating_point():
        raise ValueError(f"input file {path}: x has dtype {x.dtype}; a floating-point tensor is needed")
    if not torch.isfinite(x).all():
        raise ValueError(f"input file {path}: x contains NaN or infinite values")
    target = tensors.get("target")
    if target is not None:
        if target.is_floating_point() or target.is_complex() or target.reshape(-1).numel() != x.shape[0]:
            raise ValueError(f"input file {path}: 'target' must hold {x.shape[0]} integer labels, got "
                             f"{target.dtype} of shape {tuple(target.shape)}")
        target = target.reshape(-1).long()
        if target.min() < 0 or target.max() >= net.spec.n_classes:
            raise ValueError(f"input file {path}: labels must lie in [0, {net.spec.n_classes - 1}]")
        target = target.to(net.device)
    return x.to(device=net.device, dtype=net.dtype), target


def inputs(args, net: HopfieldNetwork) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's inputs and labels: ``--input`` if given, else random ones (``--batch``, ``--seed``)."""
    from .cli import make_inputs
    if not getattr(args, "input", None):
        return make_inputs(net, args.batch, args.seed)
    x, target = load_input(args.input, net)
    if target is None:   # labels only matter to nudged phases; drawn as make_inputs would
        gen = torch.Generator().manual_seed(args.seed)
        target = torch.randint(0, net.spec.n_classes, (x.shape[0],), generator=gen).to(net.device)
    return x, target


def resolve_checkpoint(name: str | None) -> str | None:
    """A path as given, else a zoo model's name (``fmnist-resnet3w16-ep``)."""
    if not name:
        return name
    p = Path(name)
    stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    if not stem.with_suffix(".json").exists() and (ZOO_DIR / stem.name).with_suffix(".json").is_file() \
            and len(p.parts) == 1:
        return str(ZOO_DIR / stem.name)
    return name


def cmd_stability(args) -> int:
    """The spectral radius of one step's Jacobian at the free fixed point, per sample."""
    from .cli import _table, make_network
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    net, meta = make_network(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    schedule = args.schedule or (meta or {}).get("schedule") or "paper"
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    x, _ = inputs(args, net)
    result = stability(net, x, schedule=schedule, steps=args.steps, tol=args.tol, krylov=args.krylov)
    out = {"network": net.spec.name, **result.to_dict()}
    if args.json:
        json.dump(out, sys.stdout)
        print()
        return 0
    print(f"{net.spec.name}, schedule {schedule}, batch {x.shape[0]}: free phase {result.steps} steps "
          f"({result.free_verdict})")
    rows = [[b, f"{rho:.5f}", "-" if rate is None else f"{rate:.5f}", f"{z.real:+.4f}{z.imag:+.4f}i",
             f"{dom} ({100 * share[dom]:.0f} %)"]
            for b, (rho, rate, z, dom, share) in enumerate(zip(result.spectral_radius, result.observed_rate,
                                                               result.eigenvalue, result.dominant_layer,
                                                               result.layer_share))]
    print(_table(rows, ["sample", "spectral radius", "observed rate", "eigenvalue", "dominant layer"]))
    print(result.explanation)
    return 0


def register_stability(sub) -> None:
    from .cli import add_network_options
    p = sub.add_parser("stability", help=cmd_stability.__doc__,
                       description="Relax the free phase, then estimate the spectral radius of the Jacobian "
                                   "of one step of the schedule there (Arnoldi on Jacobian-vector products), "
                                   "beside the convergence rate observed in the step sizes.")
    add_network_options(p)
    add_input_option(p)
    p.add_argument("--batch", type=int, default=1, help="random inputs of this batch (without --input)")
    p.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="default: the checkpoint's schedule, else paper")
    p.add_argument("--steps", type=int, default=120, help="free-phase steps to the fixed point")
    p.add_argument("--tol", type=float, default=None, help="stop the free phase at this relative step")
    p.add_argument("--krylov", type=int, default=KRYLOV, help="Arnoldi vectors per restart")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_stability)


CLI_COMMANDS = [("stability", register_stability)]
