"""Sweep: a grid over two or three settings, each cell a batched scan of the same K images (issue 17).

Settings that change the network (depth, residual) take an untrained builder network, or, for a
checkpoint from a trained family (``fmnist-resnet3/5/7-ep``, ``fmnist-plain...``), the trained
sibling at that depth; settings that change the dynamics (alpha, beta, schedule, T_free,
T_nudge, tol) act on the same weights. Before a grid runs its time is estimated from a measured
step cost; a cancelled grid keeps its finished cells.
"""
from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .dynamics import check_beta, relax
from .network import HopfieldNetwork, SpecError, hopfield_family
from .scan import ScanSettings, scan
from .settings import RunSettings, check_param, from_text

# The settings a grid may vary; their types and bounds are RunSettings' (explorer/settings.py).
GRID_KEYS = ("alpha", "beta", "depth", "residual", "schedule", "t_free", "t_nudge", "tol")
NETWORK_KEYS = ("depth", "residual")
MAX_CELLS = 400
PRESETS = {"depth-residual": {"depth": list(range(3, 26, 2)), "residual": [True, False]}}


class GridError(ValueError):
    """A grid that cannot run; the message names the value and why."""


def _parse_value(key: str, text: str):
    p = RunSettings.param[key]
    try:
        return check_param(p, from_text(p, text))
    except ValueError as exc:
        raise GridError(f"{key} = {text.strip()!r} {exc}") from None


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["alpha=2,4,6", "beta=0.05,0.5"]`` -> {"alpha": [2.0, 4.0, 6.0], "beta": [0.05, 0.5]}."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in GRID_KEYS:
            raise GridError(f"grid axis {item!r} is not NAME=V1,V2,... with NAME one of {', '.join(GRID_KEYS)}")
        if key in grid:
            raise GridError(f"grid axis {key} is given twice")
        parsed = [_parse_value(key, v) for v in values.split(",") if v.strip()]
        if not parsed:
            raise GridError(f"grid axis {key} has no values")
        grid[key] = list(dict.fromkeys(parsed))
    return grid


def grid_cells(grid: dict[str, list]) -> list[dict]:
    if not grid:
        raise GridError("the grid is empty: give at least one axis, e.g. --grid alpha=2,4,6")
    count = math.prod(len(v) for v in grid.values())
    if count > MAX_CELLS:
        raise GridError(f"the grid has {count} cells, more than {MAX_CELLS}: use fewer values")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


@dataclass
class Base:
    """What a sweep varies: an untrained builder network, or a checkpoint (and its trained family)."""
    net: HopfieldNetwork
    name: str
    builder: dict | None = None                    # hopfield_family options for untrained networks
    family: dict[tuple[int, bool], Path] = field(default_factory=dict)   # (depth, residual) -> checkpoint stem
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.builder is None and not self.family:   # a lone network: its own depth only
            self.family = {(self.net.spec.depth, self.net.spec.residual): None}

    @classmethod
    def untrained(cls, depth=5, width=8, residual=True, input_shape=(1, 28, 28), n_classes=10, seed=0):
        options = dict(input_shape=tuple(input_shape), width=width, n_classes=n_classes)
        spec = hopfield_family(depth, residual=residual, **options)
        return cls(HopfieldNetwork(spec, seed=seed), f"untrained {spec.name}", {**options, "seed": seed})

    @classmethod
    def checkpoint(cls, net: HopfieldNetwork, path, folder=None):
        from .zoo import family_members, list_entries
        stem = Path(str(path)).with_suffix("") if str(path).endswith((".json", ".safetensors")) else Path(path)
        family = {key: e.path for key, e in
                  family_members(stem.name, list_entries(folder if folder is not None else stem.parent)).items()}
        family[(net.spec.depth, net.spec.residual)] = stem
        return cls(net, stem.name, None, family)

    def check(self, grid: dict[str, list]) -> None:
        """Every value fits the network (beta and its cost) and every network the grid needs exists
        (a trained family has only some depths)."""
        for beta in grid.get("beta", []):
            try:
                check_beta(self.net.spec, beta)
            except ValueError as exc:
                raise GridError(f"beta = {beta:g} is not allowed here: {exc}") from None
        if self.builder is not None:
            return
        depths = grid.get("depth", [self.net.spec.depth])
        residuals = grid.get("residual", [self.net.spec.residual])
        missing = [(d, r) for d in depths for r in residuals if (d, r) not in self.family]
        if missing:
            have = ", ".join(f"{'resnet' if r else 'plain'}{d}" for d, r in sorted(self.family))
            d, r = missing[0]
            raise GridError(f"{self.name}'s trained family has no {'residual' if r else 'plain'} network of "
                            f"depth {d} (it has {have})")

    def network(self, cell: dict) -> HopfieldNetwork:
        key = (cell.get("depth", self.net.spec.depth), cell.get("residual", self.net.spec.residual))
        if key == (self.net.spec.depth, self.net.spec.residual):
            net = self.net
        elif key not in self._cache:
            self._cache.clear()     # one sibling at a time: the grid is ordered by network
            self._cache[key] = self._build(*key)
            net = self._cache[key]
        else:
            net = self._cache[key]
        if "alpha" in cell:
            net = copy.copy(net)    # shares the weights; its own clipping threshold
            net.spec = net.spec.with_alpha(float(cell["alpha"]))
        return net

    def _build(self, depth: int, residual: bool) -> HopfieldNetwork:
        if self.builder is not None:
            options = dict(self.builder)
            seed = options.pop("seed")
            try:
                spec = hopfield_family(depth, residual=residual, **options)
            except SpecError as exc:
                raise GridError(f"depth = {depth}: {exc}") from exc
            return HopfieldNetwork(spec, seed=seed).to(self.net.device)
        from .checkpoint import load_checkpoint
        return load_checkpoint(self.family[(depth, residual)])[0].to(self.net.device)


def _order(cells: list[dict]) -> list[dict]:
    """Cells of the same network next to each other (each sibling is built or loaded once)."""
    return sorted(cells, key=lambda c: (c.get("depth", 0), not c.get("residual", True)))


def cell_settings(base: ScanSettings, cell: dict) -> ScanSettings:
    return ScanSettings(**{**base.to_dict(), **{k: v for k, v in cell.items() if k in base.to_dict()}})


def step_seconds(net: HopfieldNetwork, x: torch.Tensor, steps: int = 5) -> float:
    """The measured cost of one recorded relaxation step of ``net`` on the batch ``x``."""
    from .record import RecordConfig
    relax(net, x, steps=1, record=RecordConfig(units=0))     # warm: kernels, packed weights
    t0 = time.perf_counter()
    relax(net, x, steps=steps, record=RecordConfig(units=0))
    return (time.perf_counter() - t0) / steps


def estimate_seconds(base: Base, grid: dict[str, list], x: torch.Tensor, settings: ScanSettings) -> float:
    """The grid's time at full budgets (cells that stop at tolerance take less), from one measured
    step per distinct network."""
    total, costs = 0.0, {}
    for cell in _order(grid_cells(grid)):
        key = (cell.get("depth"), cell.get("residual"))
        if key not in costs:
            costs[key] = step_seconds(base.network(cell), x)
        s = cell_settings(settings, cell)
        total += costs[key] * (s.t_free + 2 * s.t_nudge)
    return total


@dataclass
class SweepResult:
    grid: dict[str, list]
    base: str
    images: int
    cells: list[dict] = field(default_factory=list)
    cancelled: bool = False

    def to_dict(self) -> dict:
        return {"base": self.base, "grid": self.grid, "images": self.images, "cancelled": self.cancelled,
                "cells": self.cells}

    def rows(self) -> list[dict]:
        """One flat row per cell (for CSV): the settings, then the numbers."""
        out = []
        for c in self.cells:
            row = dict(c["settings"])
            for key in ("accuracy", "energy_rose", "median_spectral_radius", "seconds"):
                row[key] = c[key]
            for phase, v in c["fraction_converged"].items():
                row[f"converged_{phase}"] = v
            for phase, v in c["median_steps"].items():
                row[f"median_steps_{phase}"] = v
            out.append(row)
        return out


def run_cell(base: Base, cell: dict, x, labels, settings: ScanSettings, should_stop=None) -> dict | None:
    """One cell: the scan's summary with the cell's settings; None when cancelled."""
    net = base.network(cell)
    result = scan(net, x.to(device=net.device, dtype=net.dtype), labels, cell_settings(settings, cell),
                  batch_size=len(labels), should_stop=should_stop)
    if len(result.outcomes) < len(labels):
        return None
    s = result.summary()
    radius = s["spectral_radius"]["median"] if s["spectral_radius"] else None
    return {"settings": {**cell_settings(settings, cell).to_dict(), **cell},
            "fraction_converged": s["fraction_converged"], "median_steps": s["median_steps"],
            "energy_rose": s["energy_rose"], "accuracy": s["accuracy"], "median_spectral_radius": radius,
            "classes": s["classes"], "seconds": result.seconds}


def sweep(base: Base, grid: dict[str, list], x, labels, settings: ScanSettings | None = None, *,
          on_cell=None, should_stop=None) -> SweepResult:
    """Every cell of ``grid`` on the images ``x``; ``on_cell(cell_result, done, total)`` as each ends."""
    settings = settings or ScanSettings()
    cells = _order(grid_cells(grid))
    base.check(grid)
    result = SweepResult(grid, base.name, len(labels))
    for cell in cells:
        if should_stop is not None and should_stop():
            result.cancelled = True
            break
        out = run_cell(base, cell, x, labels, settings, should_stop)
        if out is None:
            result.cancelled = True
            break
        result.cells.append(out)
        if on_cell is not None:
            on_cell(out, len(result.cells), len(cells))
    return result

