"""``relax_each``: a batch relaxed as if each sample ran alone, each stopping at the tolerance (issue 17).

:func:`~explorer.dynamics.relax` watches the whole batch: it stops when the batch's largest step
falls under ``tol``, and one sample that diverges ends everyone's phase. Here every sample stops at
its own first step under ``tol`` (or when it goes non-finite), its state frozen at that step, so a
nudged phase started from it starts where the sample's own free phase ended. Finished samples
leave the batch (the stepper is rebuilt for the rest) once enough of them have gathered that
stepping them on costs more than a rebuild. Each sample's trace (the record's statistics and
energies, step by step) is kept; :func:`~explorer.dynamics.tracker.sample_findings` reads the
tracker's findings from it per sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..network import INPUT, OUTPUT, HopfieldNetwork, _layout
from ..record import LAYER_STATS, STAT_INDEX, RecordConfig
from .driver import _first_non_finite_parameter, _Run
from .energy import energies, phi
from .stepper import choose_stepper
from .updates import _input_drives, _weight_map

# A rebuild of the batch (a new stepper for the samples left) costs about as much as this many
# sample-steps (measured here: 2.4 ms against 0.13 ms a sample-step at batch 40). Finished samples
# stay in the batch, stepped for nothing, until the steps so wasted add up to one rebuild.
REBUILD_SAMPLE_STEPS = 16


@dataclass
class EachResult:
    """One phase of :func:`relax_each`: per sample its end state, its steps and how it ended."""

    phase: str
    beta: float
    layers: tuple[str, ...]
    state: dict[str, torch.Tensor]     # each sample's state at its last step [B, ...]
    steps: list[int]                   # per sample: the steps it ran
    ended: list[str]                   # per sample: "tol" | "ran_out" | "non_finite" | "cancelled"
    stats: np.ndarray                  # [T+1, L, len(LAYER_STATS), B] float64; NaN after a sample's end
    energy: np.ndarray                 # [T+1, 3, B] (phi, cost, F); NaN after a sample's end
    bad_layer: list[str | None]        # per sample: the first non-finite layer (when it went so)

    @property
    def phi(self) -> torch.Tensor:
        """Phi of each sample's end state (its last record's), as run_phases hands a nudged phase."""
        last = self.energy[np.asarray(self.steps), 0, np.arange(len(self.steps))]
        return torch.from_numpy(last)

    def trace(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``b``'s statistics [T_b+1, L, S] and energies [T_b+1, 3]."""
        end = self.steps[b] + 1
        return self.stats[:end, :, :, b], self.energy[:end, :, b]


def _rows(d: dict | None, idx: torch.Tensor, names) -> dict | None:
    return None if d is None else {n: _rows_of(d[n], idx) for n in names}


def _rows_of(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of ``t``, a channels-last map kept channels-last (index_select gives NCHW)."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).index_select(0, idx).permute(0, 3, 1, 2)
    return t.index_select(0, idx)


class _Each:
    """The loop of one :func:`relax_each` call: segments of one stepper each, over the samples left."""

    def __init__(self, net, x, steps, tol, beta, target, schedule, free_state, phase, omega, stepper):
        self.net, self.x, self.steps, self.tol, self.beta = net, x, steps, tol, float(beta)
        self.target, self.schedule, self.free_state, self.omega = target, schedule, free_state, omega
        self.want, self.names = stepper, net.layer_names
        batch = x.shape[0]
        self.phase = phase or ("free" if self.beta == 0 else ("nudged+" if self.beta > 0 else "nudged-"))
        self.stats = np.full((steps + 1, len(self.names), len(LAYER_STATS), batch), np.nan)
        self.energy = np.full((steps + 1, 3, batch), np.nan)
        self.end = [0] * batch
        self.ended = ["ran_out"] * batch
        self.bad: list[str | None] = [None] * batch
        self.final = {n: _layout(torch.empty((batch, *net.spec.shape_of(n)), dtype=x.dtype, device=x.device))
                      for n in self.names}   # in the engine's layout (channels-last maps), as relax leaves it
        self.drives = None   # the input's drives, for every sample (computed at the first segment)

    def segment(self, active: torch.Tensor, start: dict | None, t0: int, should_stop):
        """Relax the samples ``active`` from ``start`` (their rows; None: zeros) at step ``t0`` until some
        finish and a rebuild pays. Returns (the samples left, their states) or (empty, None)."""
        sub = lambda t: None if t is None else t.index_select(0, active)
        run = _Run(self.net, self.x.index_select(0, active), steps=self.steps - t0, beta=self.beta,
                   target=sub(self.target), schedule=self.schedule, state=start, tol=None,
                   free_state=_rows(self.free_state, active, self.names), record=RecordConfig(units=0, keep=False),
                   on_step=None, phase=self.phase, state_phi=None, omega=self.omega)
        run.stepper = stepper = choose_stepper(run._problem(self._drives(active)), self.want)
        rows = active.tolist()
        live = torch.ones(len(rows), dtype=torch.bool, device=active.device)
        stats, energy, pending, done, wasted, t, rest = [], [], None, 0, 0, 0, None
        while True:
            if t0 + t == self.steps:                  # every step run: the rest ran out
                rest = "ran_out"
                break
            if should_stop is not None and should_stop():
                rest = "cancelled"
                break
            t += 1
            out = stepper.step(2, t, pending, 2.0)    # fractions_from 2: the batch means are not wanted
            pending = out if stepper.defers_energy else None
            stats.append(out.stats)
            energy.append(out.energy)
            rel = out.stats[:, STAT_INDEX["step_size"]].amax(0).double()   # judged as the diagnosis does
            bad = ~torch.isfinite(rel)
            met = bad | (rel < self.tol) if self.tol is not None else bad
            new = (met & live).nonzero().flatten()
            if new.numel():
                self._freeze(run.current(), active, new, t0 + t, bad)
                live[new] = False
                done += new.numel()
                if not bool(live.any()) or bool(bad.any()):
                    break
            wasted += done
            if wasted >= REBUILD_SAMPLE_STEPS:
                break
        s = run.current()
        if pending is not None:
            stepper.close(pending, s)
        if stats:
            self.stats[t0 + 1:t0 + t + 1, :, :, rows] = torch.stack(stats).double().cpu().numpy()
            self.energy[t0 + 1:t0 + t + 1, :, rows] = torch.stack(energy).double().cpu().numpy()
        left = live.nonzero().flatten()
        if rest is not None:                           # the rest end here, as they are
            self._freeze(s, active, left, t0 + t, None, rest)
            return active[:0], None, t0 + t
        return active[left], _rows(s, left, self.names), t0 + t

    def _drives(self, active: torch.Tensor) -> dict:
        """The input's drives for the samples ``active``: computed once for the batch, rows taken per
        segment (in the layout the stepper reads)."""
        if self.drives is None:
            self.drives = _input_drives(self.net, _weight_map(self.net), self.x, self.final)
        if active.numel() == self.x.shape[0]:
            return self.drives
        return {e: _rows_of(t, active) for e, t in self.drives.items()}

    def _freeze(self, s: dict, active, idx: torch.Tensor, t: int, bad, how: str = "tol") -> None:
        """Samples ``active[idx]`` end at step ``t`` with the state rows ``idx`` of ``s``."""
        for n in self.names:
            self.final[n].index_copy_(0, active[idx], s[n].index_select(0, idx).to(self.final[n].dtype))
        for i in idx.tolist():
            b = int(active[i])
            self.end[b], self.ended[b] = t, how
            if bad is not None and bool(bad[i]):
                self.ended[b] = "non_finite"
                self.bad[b] = next((n for n in self.names if not torch.isfinite(s[n][i]).all()), self.names[-1])

    def first_record(self, state: dict | None, state_phi) -> None:
        """Step 0: the start state's energies (statistics zero), as relax records it."""
        batch = self.x.shape[0]
        if state is None:
            s, phi0 = self.net.zero_state(batch), self.x.new_zeros(batch)
        else:
            s = state
            phi0 = state_phi.to(self.x) if state_phi is not None else phi(self.net, s, self.x)
        e0 = energies(self.net.spec, phi0, s[OUTPUT], self.target, self.beta)
        self.stats[0] = 0.0
        self.energy[0] = e0.double().cpu().numpy()

    def result(self) -> EachResult:
        for b, end in enumerate(self.end):   # rows a sample ran past its end (kept in the batch) are not its
            self.stats[end + 1:, :, :, b] = np.nan
            self.energy[end + 1:, :, b] = np.nan
        return EachResult(self.phase, self.beta, tuple(self.names), self.final, list(self.end), list(self.ended),
                          self.stats, self.energy, list(self.bad))


def relax_each(net: HopfieldNetwork, x: torch.Tensor, *, steps: int, tol: float | None, beta: float = 0.0,
               target=None, schedule: str = "paper", state: dict | None = None, free_state: dict | None = None,
               state_phi: torch.Tensor | None = None, phase: str | None = None, should_stop=None,
               omega: float = 1.0, stepper: str | None = None) -> EachResult:
    """Relax every sample of ``x`` as :func:`relax` relaxes it alone: up to ``steps`` steps, stopping at
    its first step whose largest relative step is under ``tol`` (None: every step), or at a non-finite
    one. The other arguments are :func:`relax`'s. A sample's record is the one it gets alone (up to the
    last bits of float sums, which the kernels may order differently at another batch size)."""
    x = net.check_input(x)
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if target is not None:
        target = torch.as_tensor(target, device=x.device).long().reshape(-1)
    if float(beta) != 0.0 and target is None:
        raise ValueError("a nudged phase (beta != 0) needs a target")
    loop = _Each(net, x, steps, tol, beta, target, schedule, free_state, phase, omega, stepper)
    start = None if state is None else {n: state[n].to(device=x.device, dtype=x.dtype) for n in net.layer_names}
    loop.first_record(start, state_phi)
    for n in net.layer_names:   # what a sample that never steps ends with
        loop.final[n].copy_(start[n] if start is not None else torch.zeros_like(loop.final[n]))
    bad_param = _first_non_finite_parameter(net)
    bad_input = ~torch.isfinite(x.flatten(1)).all(1)
    for b in range(x.shape[0]):   # as relax refuses to step alone: nothing run, non-finite at step 0
        if bad_param is not None or bool(bad_input[b]):
            loop.ended[b], loop.bad[b] = "non_finite", bad_param if bad_param is not None else INPUT
    active = torch.tensor([b for b, how in enumerate(loop.ended) if how != "non_finite"], dtype=torch.long,
                          device=x.device)
    t0 = 0
    if start is not None:
        start = _rows(start, active, net.layer_names)
    with torch.no_grad():
        while active.numel() and steps > 0:
            active, start, t0 = loop.segment(active, start, t0, should_stop)
    return loop.result()
