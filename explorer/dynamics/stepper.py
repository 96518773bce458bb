"""The Stepper interface: what the driver (:func:`explorer.dynamics.relax`) asks of a back end.

A stepper is built from one :class:`Problem` (network, input, schedule, beta, target, free
state) and then asked for steps. ``step(level, t)`` runs one iteration: level 0 updates only,
1 also gives the largest relative step, 2 the whole record of the step. What the step's
numbers mean (converged, energy rose, saturated) is decided by the
:class:`~explorer.dynamics.tracker.ConvergenceTracker`, never here. Steppers register in
:data:`STEPPERS`, in order of preference; :func:`choose_stepper` takes the first that can run a
problem, so a new back end (a CUDA-graph stepper) is one class and one :func:`register_stepper`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..network import HopfieldNetwork


class StepOut:
    """One step's results: record parts (level 2) and the largest relative step (level >= 1).
    ``fractions`` is a flat list, two numbers per layer: the batch means (frac_zero, frac_alpha),
    and ``max_fraction`` the largest of them."""
    __slots__ = ("t", "stats", "energy", "units", "max_rel", "f_sum", "fractions", "max_fraction", "states")

    @classmethod
    def empty(cls, t: int) -> "StepOut":
        out = cls()
        out.t, out.f_sum, out.max_rel, out.max_fraction = t, 0.0, None, 0.0
        out.stats = out.energy = out.units = out.fractions = None
        out.states = {}
        return out


@dataclass
class Problem:
    """One phase to relax: what every stepper is built from. ``s`` holds the start state (and
    s0 = x); the eager stepper updates it in place, others copy into it on ``sync``."""
    net: HopfieldNetwork
    x: torch.Tensor
    s: dict
    groups: list
    beta: float
    omega: float
    target: torch.Tensor | None
    target_1h: torch.Tensor | None
    nudge_ref: dict | None          # the free fixed point in a nudged phase, else None
    steps: int
    units_idx: dict | None          # the recorded units per layer, or None
    scalars: bool                   # whether level-2 steps (the record's statistics) will be asked for
    weights: dict                   # edge -> weight tensor
    fixed: dict                     # edge -> its output from the clamped input (never written)
    owner: dict                     # id(edge) -> the endpoint whose update completes its energy term
    jacobi_edges: list              # edges whose two ends move together


class Stepper:
    """The interface; see the module's doc string."""

    name = "?"
    label = "?"                 # how an error message names it ("fused kernels")
    defers_energy = False       # a level-2 step's energy completes with the next step or :meth:`close`

    @classmethod
    def unavailable(cls, problem: Problem) -> str | None:
        """Why this stepper cannot run ``problem`` (a clause for an error message), or None."""
        return None

    def __init__(self, problem: Problem):
        self.problem = problem

    def step(self, level: int, t: int, pending: StepOut | None = None, fractions_from: float = 0.0) -> StepOut:
        """Step ``t``. ``pending``: the previous step's output when :attr:`defers_energy` (completed
        here); ``fractions_from``: give the fractions when the largest reaches it (else may skip)."""
        raise NotImplementedError

    def sync(self, s: dict) -> None:
        """The current states into ``s``."""

    def close(self, out: StepOut, s: dict) -> None:
        """Complete the last step's record (``s`` holds its state, synced)."""

    def kernels(self) -> dict:
        """Per edge and direction, which code computes its output: {edge: {"forward": {"kernel":
        ..., "by": "rule" | "timed"}, "feedback": ...}}."""
        return {}


STEPPERS: dict[str, type[Stepper]] = {}


def register_stepper(cls: type[Stepper], first: bool = False) -> type[Stepper]:
    """Make ``cls`` choosable by its name; ``first``: preferred to those registered before."""
    before = [(k, v) for k, v in STEPPERS.items() if k != cls.name]
    STEPPERS.clear()   # in place: importers hold this dict
    STEPPERS.update([(cls.name, cls)] + before if first else before + [(cls.name, cls)])
    return cls


def choose_stepper(problem: Problem, want: str | None = None) -> Stepper:
    """The stepper named ``want`` (ValueError if it cannot run ``problem``), or the first
    registered that can."""
    if want is not None:
        if want not in STEPPERS:
            raise ValueError(f"unknown stepper {want!r}; choose one of {list(STEPPERS)}")
        cls = STEPPERS[want]
        reason = cls.unavailable(problem)
        if reason is not None:
            raise ValueError(f"{cls.label} requested, but {reason}")
        return cls(problem)
    for cls in STEPPERS.values():
        if cls.unavailable(problem) is None:
            return cls(problem)
    raise ValueError("no stepper can run this relaxation")
