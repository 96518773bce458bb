"""Schedules: which layers one iteration updates together, and in which order."""
from __future__ import annotations

from ..network import INPUT, OUTPUT, HopfieldNetwork, NetworkSpec

SCHEDULES = ("paper", "descent_safe", "synchronous")


def schedule_groups(spec: NetworkSpec, schedule: str) -> list[tuple[str, ...]]:
    """Groups of layers updated together, in order, within one iteration.

    - ``paper``: odd layers (and y, unless y is coupled to an odd layer), then
      even layers. The even layers are joined by skips, so its second half is a
      Jacobi step between coupled layers.
    - ``descent_safe``: a greedy colouring of the coupling graph, odd layers
      first; no group holds two coupled layers, so every group update is an
      exact block minimisation and Phi cannot rise.
    - ``synchronous``: every layer at once.
    """
    names = [l.name for l in spec.layers]
    hidden = [n for n in names if n != OUTPUT]
    odd = [n for i, n in enumerate(hidden) if (i + 1) % 2 == 1]
    even = [n for i, n in enumerate(hidden) if (i + 1) % 2 == 0]
    if schedule == "paper":
        y_with_odd = not any(spec.coupled(OUTPUT, n) for n in odd)
        groups = [odd + ([OUTPUT] if y_with_odd else []), even + ([] if y_with_odd else [OUTPUT])]
        return [tuple(g) for g in groups if g]
    if schedule == "descent_safe":
        groups: list[list[str]] = []
        for n in odd + [OUTPUT] + even:
            for g in groups:
                if not any(spec.coupled(n, m) for m in g):
                    g.append(n)
                    break
            else:
                groups.append([n])
        return [tuple(g) for g in groups]
    if schedule == "synchronous":
        return [tuple(names)]
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")


def energy_owner(net: HopfieldNetwork, groups) -> dict[int, str | None]:
    """For each edge (by id), the endpoint updated later in the step: at its update the
    other end is already final, so <edge output, new state> is that edge's
    energy term at the end of the step. None: both ends move together (Jacobi)."""
    order = {n: i for i, g in enumerate(groups) for n in g}
    order[INPUT] = -1
    owner = {}
    for e in net.edges:
        a, b = order[e.spec.src], order[e.spec.dst]
        owner[id(e)] = None if a == b else (e.spec.src if a > b else e.spec.dst)
    return owner
