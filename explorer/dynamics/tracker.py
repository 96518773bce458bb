"""The verdict's semantics, in one place: what "converged at step k", "not converged", "energy
rose", "saturated"/"silent", "non-finite" and "cancelled" mean, decided from the steps' outputs
(:class:`~explorer.dynamics.stepper.StepOut`) whichever stepper made them."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..network import INPUT, OUTPUT
from ..record import ENERGY_INDEX, STAT_INDEX, Finding, Verdict
from .stats import _flat

SATURATED = 0.99   # a layer with this fraction of units at alpha (or at 0) is saturated (silent)
DEFAULT_TOL = 1e-4
RISE_TOL = 1e-5    # F rose at a step when it grew by more than RISE_TOL * (|F| + 1), summed over the batch


def _rounded(v: float | None) -> float | None:
    """Three significant digits: the steppers' sums agree to about 1e-10, not in the last bits."""
    return None if v is None else float(f"{v:.2e}")


class ConvergenceTracker:
    """Follows one phase step by step and turns what it saw into :class:`Finding` s and a
    :class:`Verdict`. ``tol``: stop once the largest relative step falls under it (None: run
    every step, judged against :data:`DEFAULT_TOL` at the end)."""

    def __init__(self, names, beta: float, tol: float | None, alpha: float):
        self.names, self.hidden = list(names), [n for n in names if n != OUTPUT]
        self.beta, self.tol, self.alpha = beta, tol, alpha
        self.findings: list[Finding] = []
        self.prev_f: float | None = None
        self.rose: list[int] = []
        self.onset: dict[str, tuple[str, int]] = {}   # layer -> (saturated | silent, since step)
        self.last_rel: float | None = None

    # -- what the steps say ---------------------------------------------------------------
    def start(self, f_sum: float) -> None:
        """F (summed over the batch) of the start state."""
        self.prev_f = f_sum

    def energy(self, t: int, f_sum: float) -> None:
        """Step ``t``'s complete F, summed over the batch."""
        if f_sum - self.prev_f > RISE_TOL * (abs(self.prev_f) + 1.0):
            self.rose.append(t)
        self.prev_f = f_sum

    def relative_step(self, max_rel: float) -> bool:
        """The step's largest relative step; False when it is not finite (the run must stop)."""
        self.last_rel = max_rel
        return math.isfinite(max_rel)

    def fractions_from(self) -> float:
        """The largest fraction at 0 or alpha from which a step must hand its fractions over."""
        return 0.0 if self.onset else SATURATED

    def fractions(self, t: int, means, max_fraction: float) -> None:
        """Per layer the batch means (frac_zero, frac_alpha), flat; skipped while no layer is or
        was saturated or silent."""
        if not self.onset and max_fraction < SATURATED:
            return
        for n, fz, fa in zip(self.names, means[0::2], means[1::2]):
            if n not in self.hidden:
                continue
            kind = "saturated" if fa >= SATURATED else ("silent" if fz >= SATURATED else None)
            if kind is None:
                self.onset.pop(n, None)
            elif n not in self.onset or self.onset[n][0] != kind:
                self.onset[n] = (kind, t)

    # -- endings ---------------------------------------------------------------------------
    def non_finite(self, t: int, state: dict) -> None:
        """The state went non-finite at step ``t``: names the first such layer."""
        bad = next((n for n in self.names if not torch.isfinite(state[n]).all()), self.names[-1])
        self.findings.append(Finding("non_finite", f"layer {bad} became non-finite at step {t}", t, bad))

    def non_finite_start(self, what: str | None) -> bool:
        """Before any step: ``what`` names a parameter with NaN or inf values ("input": the input)."""
        if what is None:
            return False
        if what == INPUT:
            self.findings.append(Finding("non_finite", "the input contains NaN or infinite values", 0, INPUT))
        else:
            self.findings.append(Finding("non_finite", f"parameter {what} contains NaN or infinite values", 0, what))
        return True

    def cancelled(self, t: int) -> None:
        self.findings.append(Finding("cancelled", f"cancelled at step {t}", t))

    def converged(self, t: int) -> bool:
        """Whether step ``t`` ends the run: its relative step fell under ``tol``."""
        rel = self.last_rel
        if self.tol is None or rel is None or not rel < self.tol:
            return False
        self.findings.append(Finding("converged", f"converged at step {t} (relative step {rel:.1e})", t,
                                     evidence={"relative_step": _rounded(rel), "tol": self.tol}))
        return True

    def ran_out(self, t: int) -> None:
        """Every step was run (``t``, maybe 0) without meeting ``tol``: judged against the tolerance."""
        limit = self.tol if self.tol is not None else DEFAULT_TOL
        rel, evidence = self.last_rel, {"relative_step": _rounded(self.last_rel), "tol": limit}
        if t == 0:
            self.findings.append(Finding("not_converged", "no steps were run", 0, evidence=evidence))
        elif rel is not None and rel < limit:
            self.findings.append(Finding("converged", f"converged by step {t} (relative step {rel:.1e})", t,
                                         evidence=evidence))
        else:
            self.findings.append(Finding("not_converged", f"not converged after {t} steps "
                                         f"(relative step {rel:.1e} > {limit:.0e})", t, evidence=evidence))

    def conclude(self, t: int, state: dict | None = None) -> None:
        """After the last step ``t``: energy rises, and saturated or silent layers (judged on
        ``state`` when the steps handed no fractions over)."""
        if self.rose:
            energy_name = "Phi" if self.beta == 0 else "F"
            more = f" and {len(self.rose) - 1} later steps" if len(self.rose) > 1 else ""
            self.findings.append(Finding("energy_rose", f"{energy_name} rose at step {self.rose[0]}{more}",
                                         self.rose[0], evidence={"steps": list(self.rose)}))
        if state is not None:
            self._final_saturation(t, state)
        for n, (kind, at) in self.onset.items():
            self.findings.append(Finding(kind, f"layer {n} {kind} at step {at}", at, n))

    def _final_saturation(self, t: int, state: dict) -> None:
        for n in self.hidden:
            if state[n].numel() == 0:
                continue
            # In memory order (a view, not flatten's copy of a channels-last map; the fractions are
            # counts, the same in any order). One pass settles the common cases exactly (every unit
            # at 0, as in the zero start state, or every unit at alpha); the counts only where not.
            flat = _flat(state[n]).reshape(-1)
            low, high = torch.aminmax(flat)
            if float(low) >= self.alpha:
                self.onset[n] = ("saturated", t)
                continue
            if float(high) <= 0:
                self.onset[n] = ("silent", t)
                continue
            if float((flat >= self.alpha).float().mean()) >= SATURATED:
                self.onset[n] = ("saturated", t)
            elif float((flat <= 0).float().mean()) >= SATURATED:
                self.onset[n] = ("silent", t)

    def verdict(self) -> Verdict:
        order = ("non_finite", "cancelled", "converged", "not_converged")
        status = next((k for k in order if any(f.kind == k for f in self.findings)), "not_converged")
        return Verdict(status, self.findings)


def sample_findings(names, beta: float, stats, energy, steps, ended, bad_layer) -> list[list[Finding]]:
    """Per sample, the findings a :class:`ConvergenceTracker` makes of that sample relaxed alone (other
    than its converged / not-converged call), read from its trace at once for the whole batch: ``stats``
    [T+1, L, S, B] and ``energy`` [T+1, 3, B] (NumPy, NaN after a sample's end), ``steps`` its last
    step, ``ended`` how it ended (:class:`~explorer.dynamics.each.EachResult`)."""
    f = energy[:, ENERGY_INDEX["F"]]                                      # [T+1, B]
    with np.errstate(invalid="ignore"):
        rose = (f[1:] - f[:-1]) > RISE_TOL * (np.abs(f[:-1]) + 1.0)     # NaN rows: False
        fz = stats[1:, :, STAT_INDEX["frac_zero"]] >= SATURATED           # [T, L, B]
        fa = stats[1:, :, STAT_INDEX["frac_alpha"]] >= SATURATED
    code = np.where(fa, 1, np.where(fz, 2, 0))                            # saturated, silent, neither
    kinds = {1: "saturated", 2: "silent"}
    hidden = [i for i, n in enumerate(names) if n != OUTPUT]
    energy_name = "Phi" if beta == 0 else "F"
    out = []
    for b, (end, how) in enumerate(zip(steps, ended)):
        if how == "non_finite":
            at = end
            msg = (f"layer {bad_layer[b]} became non-finite at step {at}" if at > 0 else
                   "the input contains NaN or infinite values" if bad_layer[b] == INPUT else
                   f"parameter {bad_layer[b]} contains NaN or infinite values")
            out.append([Finding("non_finite", msg, at, bad_layer[b])])
            continue
        if how == "cancelled":
            out.append([Finding("cancelled", f"cancelled at step {end}", end)])
            continue
        found = []
        up = (np.nonzero(rose[:end, b])[0] + 1).tolist()
        if up:
            more = f" and {len(up) - 1} later steps" if len(up) > 1 else ""
            found.append(Finding("energy_rose", f"{energy_name} rose at step {up[0]}{more}", up[0],
                                 evidence={"steps": up}))
        onsets = []
        for i in hidden if end > 0 else []:
            c = code[:end, i, b]
            k = int(c[-1])
            if k == 0:
                continue
            since = int(np.nonzero(c != k)[0][-1]) + 2 if (c != k).any() else 1      # this kind since
            placed = int(np.nonzero(c == 0)[0][-1]) + 2 if (c == 0).any() else 1    # in the dict since
            onsets.append((placed, i, since, kinds[k]))
        for _, i, since, kind in sorted(onsets):
            found.append(Finding(kind, f"layer {names[i]} {kind} at step {since}", since, names[i]))
        out.append(found)
    return out
