"""Hopfield-ResNet explorer: the EP engine (network, dynamics, EP, records).

The engine imports no UI code; the Panel app in ``explorer.app`` consumes
what the engine records.
"""
from .network import (HopfieldNetwork, NetworkSpec, LayerSpec, EdgeSpec, SpecError,
                      hopfield_family, hopfield_resnet13, build_spec)
from .record import RecordConfig, StepRecord, PhaseResult, Verdict, Finding, LAYER_STATS, ENERGY_STATS
from .dynamics import relax, phi, schedule_groups, SCHEDULES
from .ep import ep_gradient, bptt_gradient, run_phases, compare, set_grads

__all__ = [
    "HopfieldNetwork", "NetworkSpec", "LayerSpec", "EdgeSpec", "SpecError", "hopfield_family",
    "hopfield_resnet13", "build_spec", "RecordConfig", "StepRecord", "PhaseResult", "Verdict",
    "Finding", "LAYER_STATS", "ENERGY_STATS", "relax", "phi", "schedule_groups", "SCHEDULES",
    "ep_gradient", "bptt_gradient", "run_phases", "compare", "set_grads",
]
