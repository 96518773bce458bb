"""Relaxation dynamics: explicit closed-form layer updates, no autograd in the loop.

- :mod:`.updates`: the block updates and the drive (MODEL.md, "Dynamics"), and ``step``, the
  out-of-place reference iteration;
- :mod:`.energy`: Phi, the cost, and the checks of beta and the target;
- :mod:`.schedule`: which layers one iteration updates together;
- :mod:`.each`: ``relax_each``, a batch relaxed as if each sample ran alone (each stops at tol);
- :mod:`.driver`: ``relax``, a short driver over
- :mod:`.stepper`: the Stepper interface and its registry, with :mod:`.eager` (tensor code, any
  device) and :mod:`.native` (the compiled CPU kernels) behind it, and
- :mod:`.tracker`: the ConvergenceTracker, which alone decides what the verdict says.
"""
from __future__ import annotations

from ..network import INPUT, OUTPUT
from .driver import relax
from .each import EachResult, relax_each
from .eager import FRACTION_ROWS, EagerStepper
from .energy import check_beta, check_target, cost, energies, one_hot, phi
from .native import (_PACKED, _SMALL_CHOICE, NativeStepper, _packed_matrix, _patch_matrix, _small_is_faster,
                     kernel_family)
from .schedule import SCHEDULES, energy_owner, schedule_groups
from .stats import RAW, _channels_last, _dot, _flat, _norm
from .stepper import STEPPERS, Problem, Stepper, StepOut, choose_stepper, register_stepper
from .tracker import DEFAULT_TOL, RISE_TOL, SATURATED, ConvergenceTracker
from .updates import _edge_outputs, _input_drives, _pre_activation, _update, _weight_map, drive, step

_FusedStep = NativeStepper   # the earlier names
_StepOut = StepOut
_energy_owner = energy_owner

__all__ = ["relax", "relax_each", "EachResult", "step", "drive", "phi", "cost", "energies", "one_hot", "check_beta", "check_target",
           "schedule_groups", "energy_owner", "SCHEDULES", "DEFAULT_TOL", "SATURATED", "RISE_TOL",
           "Stepper", "StepOut", "Problem", "STEPPERS", "register_stepper", "choose_stepper", "EagerStepper",
           "NativeStepper", "kernel_family", "ConvergenceTracker", "INPUT", "OUTPUT"]
