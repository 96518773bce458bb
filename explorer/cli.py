"""Command line: ``python -m explorer {relax,gradcheck,...}``.

Networks come from a builder name with options or from a checkpoint. Errors a
person can cause print one line naming the problem and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from .checkpoint import CheckpointError, load_checkpoint
from .cli_inspect import add_input_option, inputs
from .dynamics import SCHEDULES, relax
from .ep import bptt_gradient, compare, ep_gradient
from .network import BUILDERS, HopfieldNetwork, SpecError, build_spec
from .diagnosis import diagnose_all
from .record import RecordConfig
from .settings import RunSettings, add_arguments, from_args

COMMANDS = {}


def command(fn):
    COMMANDS[fn.__name__.replace("cmd_", "").replace("_", "-")] = fn
    return fn


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be comma-separated integers like 1,28,28, got {text!r}")
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape must be C,H,W with positive sizes, got {text!r}")
    return shape


def add_network_options(p: argparse.ArgumentParser, depth=5, width=8, shape="1,28,28") -> None:
    g = p.add_argument_group("network (a builder with options, or --checkpoint)")
    g.add_argument("--checkpoint", help="NAME (or NAME.json / NAME.safetensors) to load")
    g.add_argument("--builder", default="resnet", choices=sorted(BUILDERS),
                   help="resnet: residual family; plain: without skips; resnet13: the paper's network")
    g.add_argument("--depth", type=int, default=depth, help="hidden conv layers on the main path")
    g.add_argument("--width", type=int, default=width, help="channels of the first two layers")
    g.add_argument("--input-shape", type=_shape, default=_shape(shape))
    g.add_argument("--classes", type=int, default=10)
    g.add_argument("--cost", choices=("mse", "cross_entropy"), default="mse")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--float64", action="store_true", help="compute in float64")


def add_run_options(p: argparse.ArgumentParser, only: tuple[str, ...], defaults: dict | None = None,
                    help_defaults: dict | None = None) -> None:
    """Options for these RunSettings (--alpha, --beta, --t-free ...), derived from the schema; ``main``
    fills their values into the namespace, checked, before the command runs."""
    add_arguments(p.add_argument_group("run settings"), RunSettings, only=only, defaults=defaults,
                  help_defaults=help_defaults)
    p.set_defaults(_run_settings=(only, defaults or {}))


def fill_run_settings(args) -> None:
    """The run settings of a command (defaults where not given), each checked; ValueError naming one.
    ``args.typed_settings`` names those typed."""
    if not hasattr(args, "_run_settings"):
        return
    only, defaults = args._run_settings
    args.typed_settings = {n for n in only if n in vars(args)}
    vars(args).update(from_args(args, RunSettings, only=only, defaults=defaults))


# --alpha left out keeps the network's own (a checkpoint's, or the builder's 6)
ALPHA_HELP = {"alpha": "the network's own, 6 for a builder"}


def make_network(args) -> tuple[HopfieldNetwork, dict]:
    dtype = torch.float64 if getattr(args, "float64", False) else torch.float32
    if args.checkpoint:
        net, meta = load_checkpoint(args.checkpoint, dtype=dtype)
        if meta["conversions"]:  # said once, on one line, so that a conversion is never silent
            n = len(meta["conversions"])
            print(f"note: {args.checkpoint}: converted {n} tensor{'s' * (n != 1)}: "
                  + "; ".join(meta["conversions"][:3]) + ("; ..." if len(meta["conversions"]) > 3 else ""),
                  file=sys.stderr)
    else:
        options = dict(n_classes=args.classes, cost=args.cost)
        if args.builder == "resnet13":
            options["input_shape"] = args.input_shape
        else:
            options.update(depth=args.depth, width=args.width, input_shape=args.input_shape)
        spec = build_spec(args.builder, **options)
        net, meta = HopfieldNetwork(spec, seed=args.seed, dtype=dtype), {}
    if getattr(args, "alpha", None) is not None:   # --alpha comes with add_run_options
        net.set_alpha(args.alpha)
    return net.to(args.device), meta


def make_inputs(net: HopfieldNetwork, batch: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *net.spec.input_shape, generator=gen, dtype=net.dtype)
    target = torch.randint(0, net.spec.n_classes, (batch,), generator=gen)
    return x.to(net.device), target.to(net.device)


def _table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@command
def cmd_relax(args) -> int:
    """Run the free phase (and nudged phases with --beta) and print or save the record."""
    net, _ = make_network(args)
    torch.set_num_threads(args.threads) if args.threads else None
    x, target = inputs(args, net)
    record = RecordConfig(units=args.units)
    t0 = time.perf_counter()
    # the tolerance ends a phase when asked for (--stop-at-tol, or a --tol typed)
    tol = args.tol if args.stop_at_tol or "tol" in args.typed_settings else None
    common = dict(schedule=args.schedule, tol=tol, target=target, record=record, omega=args.omega)
    free = relax(net, x, steps=args.t_free, **common)
    phases = [free]
    if args.beta:
        for b in (args.beta, -args.beta):
            phases.append(relax(net, x, steps=args.t_nudge, beta=b, state=free.state, free_state=free.state,
                                state_phi=free.phi, **common))
    elapsed = time.perf_counter() - t0
    out = {"network": net.spec.to_dict(), "schedule": args.schedule, "seconds": elapsed,
           "phases": [{**p.to_dict(per_sample=args.per_sample),
                       "diagnosis": [d.to_dict() for d in diagnose_all(p, args.tol)]} for p in phases]}
    if args.save:
        with open(args.save, "w") as fh:
            json.dump(out, fh)
    if args.json:
        json.dump(out, sys.stdout)
        print()
        return 0
    print(f"{net.spec.name}: {net.parameter_count():,} parameters, schedule {args.schedule}, "
          f"batch {x.shape[0]}, {elapsed:.2f} s")
    for p in phases:
        last = p.records[-1]
        print(f"\n[{p.phase}] beta {p.beta:+g}: {p.steps} steps")
        for d in diagnose_all(p, args.tol)[:8]:   # the verdict per sample, in the measure the views plot
            print(f"  sample {d.sample}: {d.message()}")
        print(f"  (the engine's batch rule{', relative to the displacement from s*' if p.beta else ''}: "
              f"{p.verdict.message})")
        print(f"  Phi {float(last.energy_of('phi').mean()):.4f}  C {float(last.energy_of('cost').mean()):.4f}")
        rows = []
        for j, layer in enumerate(last.layers):
            st = last.stats[j].mean(-1).tolist()
            rows.append([layer] + [f"{v:.3g}" for v in st])
        from .record import LAYER_STATS
        print(_table(rows, ["layer", *LAYER_STATS]))
    if args.save:
        print(f"\nrecord saved to {args.save}")
    return 0


@command
def cmd_gradcheck(args) -> int:
    """EP (centered and one-sided) against BPTT, per parameter (weights per edge, biases per layer)."""
    args.float64 = True
    net, _ = make_network(args)
    x, target = make_inputs(net, args.batch, args.seed)
    t0 = time.perf_counter()
    common = dict(beta=args.beta, t_free=args.t_free, t_nudge=args.t_nudge, schedule=args.schedule, tol=args.tol)
    centered = ep_gradient(net, x, target, variant="centered", **common)
    one_sided = ep_gradient(net, x, target, variant="one_sided", **common)
    reference = bptt_gradient(net, x, target, steps=args.bptt_steps, schedule=args.schedule)
    c, o = compare(centered.grads, reference), compare(one_sided.grads, reference)
    verdicts = {p.phase: p.verdict.message for p in centered.phases.phases}
    result = {"network": net.spec.name, "beta": args.beta, "schedule": args.schedule,
              "seconds": time.perf_counter() - t0, "verdicts": verdicts,
              "parameters": {k: {"centered": c[k], "one_sided": o[k]} for k in c},
              "min_cosine_centered": min(v["cosine"] for v in c.values()),
              "min_cosine_one_sided": min(v["cosine"] for v in o.values())}
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(f"{net.spec.name}: EP (beta {args.beta}) vs BPTT over {args.bptt_steps} steps, "
              f"schedule {args.schedule}, batch {args.batch}")
        for phase, msg in verdicts.items():
            print(f"  {phase}: {msg}")
        rows = [[k, f"{c[k]['cosine']:.6f}", f"{c[k]['rel_error']:.2e}", f"{o[k]['cosine']:.6f}",
                 f"{o[k]['rel_error']:.2e}"] for k in c]
        print(_table(rows, ["parameter", "cos centered", "rel err centered", "cos one-sided", "rel err one-sided"]))
        print(f"min cosine: centered {result['min_cosine_centered']:.6f}, "
              f"one-sided {result['min_cosine_one_sided']:.6f}  ({result['seconds']:.1f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m explorer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("relax", help=cmd_relax.__doc__)
    add_network_options(p)
    add_run_options(p, ("alpha", "beta", "t_free", "t_nudge", "schedule", "tol", "stop_at_tol"),
                    defaults={"alpha": None, "beta": None},
                    help_defaults={**ALPHA_HELP, "beta": "off: the free phase only"})
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--omega", type=float, default=1.0,
                   help="over-relaxation in (0, 2): same fixed points, often fewer steps (use with descent_safe)")
    p.add_argument("--units", type=int, default=4)
    p.add_argument("--per-sample", action="store_true", help="keep per-sample values in the JSON record")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.add_argument("--save", help="write the record as JSON to this file")
    add_input_option(p)

    p = sub.add_parser("gradcheck", help=cmd_gradcheck.__doc__)
    add_network_options(p, depth=4, width=4, shape="1,8,8")
    p.set_defaults(classes=5)
    add_run_options(p, ("alpha", "beta", "t_free", "t_nudge", "schedule", "tol"),
                    defaults={"alpha": None, "beta": 1e-3, "t_free": 1000, "t_nudge": 1000, "tol": 1e-10,
                              "schedule": "descent_safe"}, help_defaults=ALPHA_HELP)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--bptt-steps", type=int, default=300)
    p.add_argument("--json", action="store_true")

    for name, fn in _extra_commands():
        fn(sub)
    return parser


def _extra_commands():
    """Commands that live in other modules (training, evaluation, the inspector, scans), if present."""
    out = []
    for name in ("train", "cli_inspect", "cli_scan"):
        try:
            module = __import__(f"{__package__}.{name}", fromlist=["CLI_COMMANDS"])
        except ImportError:
            continue
        out += getattr(module, "CLI_COMMANDS", [])
    return out


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        fill_run_settings(args)
        return args.func(args) if hasattr(args, "func") else COMMANDS[args.command](args)
    except (CheckpointError, SpecError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
