"""``relax``: a short driver over a :class:`~explorer.dynamics.stepper.Stepper` (which computes
the steps) and a :class:`~explorer.dynamics.tracker.ConvergenceTracker` (which says what they
mean). It validates once, asks the stepper for steps, hands each step's output to the tracker,
emits the records and stops when told."""
from __future__ import annotations

import functools
import math
import weakref
from typing import Callable

import torch

from ..network import INPUT, OUTPUT, HopfieldNetwork, _layout
from ..record import LAYER_STATS, PhaseResult, RecordConfig, StepRecord
from .energy import check_beta, check_target, energies, one_hot, phi
from .schedule import energy_owner, schedule_groups
from .stepper import Problem, Stepper, StepOut, choose_stepper
from .tracker import ConvergenceTracker
from .updates import _input_drives, _weight_map


def relax(net: HopfieldNetwork, x: torch.Tensor, *, steps: int, beta: float = 0.0,
          target=None, schedule: str = "paper", state: dict | None = None,
          tol: float | None = None, free_state: dict | None = None,
          record: RecordConfig | None = None, on_step: Callable[[StepRecord], None] | None = None,
          phase: str | None = None, should_stop: Callable[[], bool] | None = None,
          state_phi: torch.Tensor | None = None, omega: float = 1.0,
          fused: bool | None = None, stepper: str | None = None) -> PhaseResult:
    """Relax the network on input ``x`` for up to ``steps`` iterations.

    beta = 0 is the free phase; beta != 0 a nudged phase towards ``target``
    (start from ``state``, usually the free fixed point, and pass it as
    ``free_state`` to record ||s_beta - s*||). Stops early when the relative step
    size max_k ||s_t - s_(t-1)|| / ||s_t|| falls under ``tol``; in a nudged phase
    given ``free_state`` the scale is the displacement ||s_t - s*|| instead, since
    the nudge moves the state by little and that small move is the signal. Records what
    ``record`` asks for and hands each :class:`StepRecord` to ``on_step``.
    Returns a :class:`PhaseResult` whose verdict says how the run ended.
    ``state_phi`` (Phi of ``state``, e.g. the free phase's last record) saves
    recomputing it for the step-0 record. ``omega`` in (0, 2) over-relaxes each
    update (projected SOR): same fixed points, often fewer iterations.
    ``fused``: on the CPU, do each group's update and statistics in the compiled kernels of
    :mod:`explorer.native` (None: when they are built and compute every edge of the network;
    False: the eager tensor code). ``stepper`` names one of :data:`STEPPERS` instead.
    """
    run = _Run(net, x, steps=steps, beta=beta, target=target, schedule=schedule, state=state, tol=tol,
               free_state=free_state, record=record, on_step=on_step, phase=phase, state_phi=state_phi,
               omega=omega)
    want = stepper if stepper is not None else {True: "native", False: "eager", None: None}[fused]
    with torch.no_grad():
        return run.run(want, should_stop)


# network -> the parameters' versions when they were last found finite. Reading every weight
# (37 MB for Hopfield-ResNet13) was most of a relax call's set-up at batch 1; in-place updates
# (optimiser steps, load_state_dict, writes under no_grad) move a tensor's version, and new
# tensors its address.
_FINITE_AT: "weakref.WeakKeyDictionary[HopfieldNetwork, tuple]" = weakref.WeakKeyDictionary()


def _first_non_finite_parameter(net: HopfieldNetwork) -> str | None:
    # One sum per tensor: NaN and inf propagate, so a finite sum means finite values
    # (barring overflow of the sum, which the element check below then settles). The two
    # dictionaries directly: named_parameters() walks the module tree, 20 us more a call.
    named = [(f"weights.{k}", p) for k, p in net.weights.items()] + \
            [(f"biases.{k}", p) for k, p in net.biases.items()]
    versions = tuple((p._version, p.data_ptr(), p.dtype) for _, p in named)
    if _FINITE_AT.get(net) == versions:
        return None
    sums = torch.stack([p.detach().sum() for _, p in named])
    if bool(torch.isfinite(sums).all()):
        _FINITE_AT[net] = versions
        return None
    return next((n for n, p in named if not torch.isfinite(p).all()), None)


def _zero_state(net: HopfieldNetwork, batch: int) -> dict[str, torch.Tensor]:
    """``net.zero_state(batch)``, each map allocated once, in the layout ``_layout`` gives it
    (zeros in NCHW, then a channels-last copy, cost twice the memory traffic)."""
    out = {}
    for n in net.layer_names:
        shape = (batch, *net.spec.shape_of(n))
        t = torch.empty(shape, device=net.device, dtype=net.dtype)
        if t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last):
            t = torch.empty(shape, device=net.device, dtype=net.dtype, memory_format=torch.channels_last)
        out[n] = t.zero_()
    return out


def _unit_indices(net: HopfieldNetwork, count: int) -> dict[str, torch.Tensor]:
    """A few fixed units per layer, the same in every run of this network."""
    device = net.device
    return {n: tuple(c.to(device) for c in coords)
            for n, coords in zip(net.layer_names, _unit_coordinates(tuple(tuple(net.spec.shape_of(n)) for n in
                                                                            net.layer_names), count))}


@functools.lru_cache(maxsize=32)
def _unit_coordinates(shapes: tuple[tuple[int, ...], ...], count: int) -> tuple:
    """Per layer shape, ``count`` units as coordinate tensors (CPU), drawn once per set of shapes:
    a relax call asks for them at every start (a millisecond per call when drawn each time)."""
    gen = torch.Generator().manual_seed(1234)
    out = []
    for shape in shapes:
        size = math.prod(shape)
        flat = torch.randperm(size, generator=gen)[:count].sort().values
        if flat.numel() < count:  # tiny layers: repeat so every layer has `count` rows
            flat = flat.repeat(math.ceil(count / flat.numel()))[:count]
        coords = []   # row-major unravel (torch.unravel_index imports sympy on first use: seconds)
        for dim in reversed(shape):
            coords.append(flat % dim)
            flat = flat // dim
        out.append(tuple(reversed(coords)))
    return tuple(out)


class _Recorder:
    """Turns step outputs into :class:`StepRecord` s: keeps them (``record.keep``) and hands them
    to ``on_step``. ``current`` gives the stepper's current state (synced)."""

    def __init__(self, run: "_Run", record: RecordConfig, on_step, current: Callable[[], dict]):
        self.run, self.record, self.on_step, self.current = run, record, on_step, current
        x = run.x
        self.state_idx = torch.as_tensor([i for i in record.state_samples if i < run.batch], dtype=torch.long,
                                         device=x.device)
        self.records: list[StepRecord] = []

    def capture(self, t: int) -> dict:
        """The state tensors the record asks for at step t (taken from the current state)."""
        r = self.record
        if r.state_layers and (t % max(1, r.state_every) == 0 or t == self.run.steps):
            s = self.current()
            return {n: s[n].detach().index_select(0, self.state_idx).to("cpu", copy=True)
                    for n in r.state_layers if n in s}
        return {}

    def emit(self, t: int, stats, energy, units=None, states=None) -> None:
        run = self.run
        states = self.capture(t) if states is None else states
        if units is None and run.units_idx is not None:   # (the native stepper hands its units in)
            s = self.current()
            units = torch.stack([s[n][(slice(None), *run.units_idx[n])].t() for n in run.names])
        if stats is None:
            stats = run.x.new_zeros(len(run.names), len(LAYER_STATS), run.batch)
        rec = StepRecord(run.phase, t, run.beta, tuple(run.names), stats, energy, units, states)
        if self.record.keep:
            self.records.append(rec)
        if self.on_step is not None:
            self.on_step(rec)


class _Run:
    """One call of :func:`relax`: its checked arguments, then the loop (:meth:`run`)."""

    def __init__(self, net, x, *, steps, beta, target, schedule, state, tol, free_state, record, on_step, phase,
                 state_phi, omega):
        spec = net.spec
        self.net, self.x = net, net.check_input(x)
        self.batch = batch = self.x.shape[0]
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        self.steps, self.beta, self.omega, self.tol = steps, float(beta), float(omega), tol
        check_beta(spec, self.beta)
        if not 0.0 < self.omega < 2.0:
            raise ValueError(f"over-relaxation omega must lie in (0, 2), got {self.omega}")
        if self.beta != 0.0 and target is None:
            raise ValueError("a nudged phase (beta != 0) needs a target")
        self.target = check_target(spec, target, batch, self.x.device) if target is not None else None
        self.target_1h = one_hot(spec, self.target, self.x) if self.target is not None else None
        self.groups = schedule_groups(spec, schedule)
        self.phase = phase or ("free" if self.beta == 0 else ("nudged+" if self.beta > 0 else "nudged-"))
        self.record = record if (record is not None and record.any) else None
        self.scalars = self.record is not None and self.record.scalars
        self.on_step = on_step
        self.names = net.layer_names
        s = _zero_state(net, batch) if state is None else {n: state[n] for n in self.names}
        for n in self.names:
            want = (batch, *spec.shape_of(n))
            if tuple(s[n].shape) != want:
                raise ValueError(f"start state {n} has shape {tuple(s[n].shape)}, expected {want}")
            s[n] = _layout(s[n].to(device=self.x.device, dtype=self.x.dtype))
        s[INPUT] = self.x
        self.s, self.started_from_zero = s, state is None
        self.free_state = free_state
        self.last_phi = state_phi if state is not None else None   # Phi [batch], or a record's energy rows [3, batch]
        self.tracker = ConvergenceTracker(self.names, self.beta, tol, net.alpha)
        self.stepper: Stepper | None = None
        self.units_idx = None

    def _problem(self, fixed: dict | None = None) -> Problem:
        """``fixed``: the input's drives (:func:`_input_drives`) when the caller has them already."""
        net, x = self.net, self.x
        owner = energy_owner(net, self.groups)
        weights = _weight_map(net)
        units = self.record.units if self.scalars else 0
        self.units_idx = _unit_indices(net, units) if units else None
        return Problem(net, x, self.s, self.groups, self.beta, self.omega, self.target, self.target_1h,
                       self.free_state if (self.free_state is not None and self.beta != 0) else None, self.steps,
                       self.units_idx, self.scalars, weights,
                       fixed if fixed is not None else _input_drives(net, weights, x, self.s), owner,
                       [e for e in net.edges if owner[id(e)] is None])

    def current(self) -> dict:
        """The stepper's current state, in ``self.s``."""
        if self.stepper is not None:
            self.stepper.sync(self.s)
        return self.s

    def finish(self, t: int) -> PhaseResult:
        s = self.current()
        p = self.last_phi
        if p is not None and p.dim() == 2:   # indexed once here, not at every recorded step (about 1 us)
            p = p[0]
        st = self.stepper
        return PhaseResult(self.phase, self.beta, {n: s[n] for n in self.names}, t, self.tracker.verdict(),
                           self.recorder.records if self.record is not None else [], p,
                           st.name if st is not None else "", st.kernels() if st is not None else {})

    def run(self, want: str | None, should_stop) -> PhaseResult:
        self.recorder = _Recorder(self, self.record, self.on_step, self.current) if self.record is not None else None
        bad = _first_non_finite_parameter(self.net)
        if self.tracker.non_finite_start(bad if bad is not None else
                                         (INPUT if not torch.isfinite(self.x).all() else None)):
            return self.finish(0)
        self.stepper = choose_stepper(self._problem(), want)
        if self.record is not None:
            self._start_record()
        self.pending: StepOut | None = None   # a deferred step's record, waiting for its energy
        t = 0
        for t in range(1, self.steps + 1):
            if should_stop is not None and should_stop():
                self._flush()
                self.tracker.cancelled(t - 1)
                return self.finish(t - 1)
            out = self._step(t)
            if out is None:   # non-finite
                return self.finish(t)
            if self.tracker.converged(t):
                break
        else:
            self.tracker.ran_out(t)
        self._flush()
        self.tracker.conclude(t, None if self.scalars else self.current())
        return self.finish(t)

    def _start_record(self) -> None:
        """The step-0 record: the start state's energy."""
        x, spec = self.x, self.net.spec
        if not self.scalars:
            e0 = x.new_zeros(3, self.batch)
        else:
            if self.started_from_zero:   # Phi of the zero state is 0: every term is linear or quadratic in s
                phi0 = x.new_zeros(self.batch)
            else:
                phi0 = self.last_phi = self.last_phi if self.last_phi is not None else phi(self.net, self.s, x)
            e0 = energies(spec, phi0, self.s[OUTPUT], self.target, self.beta)
        self.recorder.emit(0, None, e0)
        self.tracker.start(float(e0[2].sum()))

    def _step(self, t: int) -> StepOut | None:
        """Step ``t``, told to the tracker and recorded; None when the state went non-finite."""
        need_delta = self.scalars or self.tol is not None or t == self.steps
        level = 2 if self.scalars else (1 if need_delta else 0)
        out = self.stepper.step(level, t, self.pending, self.tracker.fractions_from())
        if self.pending is not None:
            self._settle(self.pending)   # its energy is complete now
            self.pending = None
        if need_delta and not self.tracker.relative_step(out.max_rel):
            self._non_finite(out, t)
            return None
        if self.record is None:
            return out
        if not self.scalars:
            self.recorder.emit(t, None, self.x.new_zeros(3, self.batch))
            return out
        self.tracker.fractions(t, out.fractions, out.max_fraction)
        if self.record.state_layers:
            out.states = self.recorder.capture(t)
        if self.stepper.defers_energy:
            self.pending = out
        else:
            self._settle(out)
        return out

    def _settle(self, out: StepOut) -> None:
        """A step whose record is complete: emitted, and its energy told to the tracker."""
        self.recorder.emit(out.t, out.stats, out.energy, out.units, out.states)
        self.last_phi = out.energy
        self.tracker.energy(out.t, out.f_sum)

    def _flush(self) -> None:
        """The deferred last step's record, completed by the stepper."""
        if self.pending is not None:
            self.stepper.close(self.pending, self.current())
            self._settle(self.pending)
            self.pending = None

    def _non_finite(self, out: StepOut, t: int) -> None:
        """Step ``t`` went non-finite: its record (its energy completed: no next step brings the
        late terms) and the result's Phi, that record's."""
        self.tracker.non_finite(t, self.current())
        if self.record is not None:
            if self.scalars:
                self.stepper.close(out, self.s)
            energy = out.energy if self.scalars else self.x.new_full((3, self.batch), float("nan"))
            self.recorder.emit(t, out.stats, energy, out.units)
        if self.scalars:
            self.last_phi = out.energy[0]
