"""Test accuracy of a network, and how its free phases ended.

An EP network is evaluated as it is used: relax the free phase from zeros
(``t_free`` steps, stopping early under ``tol``) and take argmax y*. Each
batch's free phase ends with a verdict (converged, not_converged, ...);
:func:`evaluate` counts them. A BP baseline is evaluated with its
feed-forward pass (:mod:`explorer.baseline`), so it has no verdicts.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from . import data as data_mod
from .baseline import FeedForward
from .checkpoint import load_checkpoint
from .dynamics import SCHEDULES, cost, relax
from .network import OUTPUT, HopfieldNetwork


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(net: HopfieldNetwork, batches, *, trainer: str = "ep", t_free: int = 120,
             schedule: str = "paper", tol: float | None = None, model: FeedForward | None = None,
             amp: bool = False, should_stop=None) -> dict:
    """Accuracy, mean cost and (EP) free-phase verdict counts over ``batches`` of (x, target).

    Returns plain numbers: {"correct", "n", "loss_sum", "verdicts": {status: batches},
    "phase_steps": total free-phase steps}; :func:`summarise` adds accuracy and loss.
    """
    device = net.device
    correct, n, loss_sum, steps = 0, 0, 0.0, 0
    verdicts: Counter = Counter()
    if model is not None:
        model.eval()
    for x, target in batches:
        if should_stop is not None and should_stop():
            break
        x = x.to(device=device, dtype=net.dtype)
        target = target.to(device)
        with autocast(device, amp):
            if trainer == "bp":
                y = (model or FeedForward(net))(x)
            else:
                free = relax(net, x, steps=t_free, schedule=schedule, tol=tol)
                y = free.state[OUTPUT]
                verdicts[free.verdict.status] += 1
                steps += free.steps
        y = y.float()
        correct += int((y.argmax(1) == target).sum())
        loss_sum += float(cost(net.spec, y, target).sum())
        n += int(target.numel())
    return {"correct": correct, "n": n, "loss_sum": loss_sum, "verdicts": dict(verdicts),
            "phase_steps": steps}


def summarise(counts: dict) -> dict:
    n = max(counts["n"], 1)
    out = dict(counts)
    out["accuracy"] = counts["correct"] / n
    out["loss"] = counts["loss_sum"] / n
    batches = sum(counts["verdicts"].values())
    out["mean_free_steps"] = counts["phase_steps"] / batches if batches else None
    return out


def model_for_checkpoint(net: HopfieldNetwork, meta: dict) -> tuple[str, FeedForward | None]:
    """("ep", None) or ("bp", FeedForward with batch-norm state) from a checkpoint's settings."""
    settings = meta.get("settings", {})
    trainer = settings.get("trainer", "ep")
    if trainer != "bp":
        return "ep", None
    model = FeedForward(net, batch_norm=bool(settings.get("batch_norm", False)))
    model.load_bn_tensors(meta.get("extra_tensors", {}))
    return "bp", model


def test_batches(dataset: str, *, data_path=None, batch_size: int = 256, limit: int | None = None,
                 normalize: bool = True, rank: int = 0, world: int = 1):
    """Test-split batches (this rank's share: every world-th image), CPU tensors."""
    images, labels = load_split(dataset, "test", data_path)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    images, labels = images[rank::world], labels[rank::world]
    for i in range(0, len(labels), batch_size):
        x = images[i:i + batch_size]
        x = data_mod.normalize(x, dataset) if normalize else x.to(torch.float32) / 255.0
        yield x, labels[i:i + batch_size]


def load_split(dataset: str, split: str, data_path=None):
    """(uint8 images, labels), with data errors turned into one-line ValueErrors."""
    try:
        if data_path is not None:
            check_data_path(dataset, data_path)
        return data_mod.get_dataset_by_name(dataset, split, data_path)
    except data_mod.DataError as exc:
        raise ValueError(one_line(exc)) from exc


def check_data_path(dataset: str, data_path) -> None:
    """A given data folder must itself hold the data (the loaders would fall back to other places)."""
    root = Path(data_path).expanduser()
    if not root.is_dir():
        raise ValueError(f"data folder {root} does not exist; point --data-path at the folder holding "
                         f"{dataset}, or leave it out to use the installed copy")
    name = data_mod.canonical_name(dataset)
    found = data_mod.find_fashion_mnist(root) if name == "fashion_mnist" else data_mod.find_cifar(name, root)
    found, root = found.resolve(), root.resolve()
    if found != root and root not in found.parents:
        raise ValueError(f"data folder {root} holds no {name} files (a copy exists at {found}; "
                         f"leave out --data-path to use it, or point it at a folder with the files)")


def one_line(exc: BaseException) -> str:
    text = str(exc).replace("\n  - ", "; ").replace("\n", " ")
    return " ".join(text.split())


def check_dataset_fits(net: HopfieldNetwork, dataset: str, where: str) -> None:
    """Class count and image shape of ``dataset`` against the network; one line with the fix."""
    try:
        classes, shape = data_mod.n_classes(dataset), tuple(data_mod.input_shape(dataset))
    except (KeyError, data_mod.DataError) as exc:
        raise ValueError(f"unknown data set {dataset!r}; choose one of {data_mod.DATASETS}") from exc
    if net.spec.n_classes != classes:
        raise ValueError(f"{where} has {net.spec.n_classes} output units but {dataset} has {classes} "
                         f"classes; use a data set with {net.spec.n_classes} classes or build the "
                         f"network with --classes {classes}")
    if tuple(net.spec.input_shape) != shape:
        raise ValueError(f"{where} takes {tuple(net.spec.input_shape)} inputs but {dataset} images are "
                         f"{shape}; use a matching data set or network")


def dataset_for_checkpoint(meta: dict, given: str | None) -> str:
    if given:
        return data_mod.canonical_name(given)
    name = meta.get("settings", {}).get("dataset")
    if name:
        return name
    shape = tuple(meta.get("network", {}).get("input_shape", ()))
    return "cifar10" if shape == (3, 32, 32) else "fashion_mnist"


def cmd_evaluate(args) -> int:
    torch.set_num_threads(args.threads) if args.threads else None
    net, meta = load_checkpoint(args.checkpoint)
    net = net.to(args.device)
    dataset = dataset_for_checkpoint(meta, args.dataset)
    check_dataset_fits(net, dataset, f"checkpoint {args.checkpoint}")
    settings = meta.get("settings", {})
    trainer, model = model_for_checkpoint(net, meta)
    if model is not None:
        model.to(args.device)
    t_free = args.t_free if args.t_free is not None else int(settings.get("eval_t_free") or settings.get("t_free", 120))
    schedule = args.schedule or settings.get("schedule", "paper")
    saved_tol = settings.get("eval_tol") if settings.get("eval_tol") is not None else settings.get("tol")
    tol = args.tol if args.tol is not None else saved_tol
    tol = None if tol is not None and tol <= 0 else tol
    t0 = time.perf_counter()
    batches = test_batches(dataset, data_path=args.data_path, batch_size=args.batch, limit=args.limit,
                           normalize=settings.get("normalize", True))
    result = summarise(evaluate(net, batches, trainer=trainer, t_free=t_free, schedule=schedule, tol=tol,
                                model=model))
    result.update({"checkpoint": str(args.checkpoint), "network": net.spec.name, "dataset": dataset,
                   "trainer": trainer, "t_free": t_free if trainer == "ep" else None,
                   "schedule": schedule if trainer == "ep" else None, "tol": tol if trainer == "ep" else None,
                   "seconds": time.perf_counter() - t0,
                   "card_test_accuracy": meta.get("card", {}).get("test_accuracy")})
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    how = "feed-forward pass" if trainer == "bp" else f"free phase, {t_free} steps, schedule {schedule}, tol {tol}"
    print(f"{net.spec.name} ({trainer}) on {dataset} test, {result['n']} images ({how}): "
          f"accuracy {100 * result['accuracy']:.2f} %, mean cost {result['loss']:.4f}, "
          f"{result['seconds']:.1f} s")
    if trainer == "ep":
        counts = ", ".join(f"{k} {v}" for k, v in sorted(result["verdicts"].items()))
        print(f"free-phase verdicts over {sum(result['verdicts'].values())} batches: {counts}; "
              f"mean {result['mean_free_steps']:.1f} steps")
    return 0


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="test accuracy and free-phase verdicts of a checkpoint",
                       description="Test accuracy of a checkpoint, with the verdicts of its free "
                                   "phases (EP) counted over batches.")
    p.add_argument("checkpoint", help="NAME (or NAME.json / NAME.safetensors)")
    p.add_argument("--dataset", default=None, help="default: the one the checkpoint was trained on")
    p.add_argument("--data-path", default=None, help="folder holding the data set")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--t-free", type=int, default=None, help="default: the checkpoint's setting")
    p.add_argument("--tol", type=float, default=None, help="default: the checkpoint's; 0 runs all steps")
    p.add_argument("--schedule", choices=SCHEDULES, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
