"""The native stepper: relaxation steps through the compiled CPU kernels of :mod:`explorer.native`.

Edges run in C++ where their class is one the kernels implement (:func:`kernel_family`); a
network with any other kind of edge is relaxed by the eager stepper instead (its
:meth:`NativeStepper.unavailable` says why).
"""
from __future__ import annotations

import math
import os
import sys
import time
import weakref

import torch

from .. import native
from ..edges import ConvEdge, DenseEdge
from ..network import OUTPUT
from ..record import LAYER_STATS
from .stats import _bias_norms, _channels_last
from .stepper import Problem, Stepper, StepOut, register_stepper

# The edge classes whose forward and feedback the kernels compute, by the family they declare
# (Edge.native). A subclass that overrides either method is not one of them.
_FAMILIES = {"conv": ConvEdge, "dense": DenseEdge}


def kernel_family(e) -> str | None:
    """"conv" or "dense" where the compiled kernels compute edge ``e``'s outputs, else None."""
    family = getattr(e, "native", None)
    base = _FAMILIES.get(family)
    if base is None or type(e).forward is not base.forward or type(e).feedback is not base.feedback:
        return None
    return family


def _patch_matrix(w: torch.Tensor) -> torch.Tensor:
    """[c_out, k*k*c_in]: a conv weight with its inputs in the (ky, kx, c) order of a channels-last
    patch (a view of a channels-last weight)."""
    return w.detach().permute(0, 2, 3, 1).reshape(w.shape[0], -1)


# (id(weight), forward) -> (version key, packed matrix). The small kernels read W^T (forward) or W
# (feedback) packed in column tiles (native.pack_columns); for a 512x4608 weight that copy takes
# milliseconds, several per relax call for Hopfield-ResNet13, so it is kept while the weight lives
# and is unchanged (an in-place update moves its version).
_PACKED: dict[tuple[int, bool], tuple] = {}


def _packed_matrix(kernels, w: torch.Tensor, forward: bool) -> torch.Tensor:
    """:func:`_patch_matrix` transposed (``forward``) or as is, packed for the small kernels, cached
    per weight version."""
    key = (w._version, w.data_ptr(), w.dtype, tuple(w.shape))
    hit = _PACKED.get((id(w), forward))
    if hit is not None and hit[0] == key:
        return hit[1]
    if hit is None:   # (a weak-key dictionary would compare tensors with ==)
        weakref.finalize(w, _PACKED.pop, (id(w), forward), None)
    m = _patch_matrix(w)
    packed = kernels.pack_columns(m.t() if forward else m)
    _PACKED[(id(w), forward)] = (key, packed)
    return packed


# (shapes, batch, direction, dtype, layout, threads) -> whether the small kernel beat torch's convolution
_SMALL_CHOICE: dict[tuple, bool] = {}


def _small_is_faster(kernels, e, w: torch.Tensor, batch: int, forward: bool, repeats: int = 3) -> bool:
    """Times edge ``e``'s output (``forward``, or its feedback) at ``batch`` both ways, on random
    channels-last states: the best of ``repeats`` calls each, after one that warms caches and packs."""
    k, st, pad = e.spec.kernel, e.spec.stride, e.spec.padding
    shape = e.src_shape if forward else e.dst_shape
    gen = torch.Generator().manual_seed(0)   # not the global stream: training's augmentation draws from it
    s = torch.rand(batch, *shape, generator=gen, dtype=w.dtype).contiguous(memory_format=torch.channels_last)
    packed = _packed_matrix(kernels, w, forward)
    if forward:
        small = lambda: kernels.small_conv_forward(s, packed, e.dst_shape[0], k, st, pad, *e.dst_shape[1:])
    else:
        small = lambda: kernels.small_conv_feedback(s, packed, e.src_shape[0], k, st, pad, *e.src_shape[1:])
    conv = (lambda: e.forward(w, s)) if forward else (lambda: e.feedback(w, s))

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)
    with torch.no_grad():
        faster = best(small) < best(conv)
    if not faster:   # no copy kept for this batch's sake (another batch that uses the kernel repacks)
        _PACKED.pop((id(w), forward), None)
    return faster


def _choices():
    """(the cache of timed choices, the timing function), looked up on the package at each use:
    callers and tests replace them there (``explorer.dynamics._SMALL_CHOICE``)."""
    pkg = sys.modules[__package__]
    return pkg._SMALL_CHOICE, pkg._small_is_faster


class NativeStepper(Stepper):
    """A C++ ``Stepper``, built here once per run, does a whole step in one call (the edge outputs,
    per schedule group one pass that updates every hidden layer and sums its raw statistics, then
    the step's record) and holds the states meanwhile (:meth:`sync` copies them out). Same
    arithmetic as the eager stepper (which the tests compare it with); sums are accumulated in
    float64.

    Edges whose two ends move together (skips under the paper schedule, every edge when
    synchronous) need <W s_src, s_dst> at the new states, one more product each. The next
    step computes W s_src anyway and still holds the old s_dst, so it supplies the term;
    a step's energy is therefore complete one step later (``pending``), and the last step's
    from :meth:`close`."""

    name = "native"
    label = "fused kernels"
    defers_energy = True
    ROLE = {"direct": 0, "skip": 1, "feedback": 2}
    BLOCK_STEPS = 64   # records per allocation: a block outlives its last record kept
    # Edge function kinds of the C++ Stepper (relax_kernels.cpp, Stepper::Kind)
    FIXED, CONV, CONV_T, SMALL, SMALL_T, DENSE, DENSE_T = range(7)
    KIND_NAMES = {FIXED: "fixed", CONV: "conv", CONV_T: "conv", SMALL: "small", SMALL_T: "small",
                  DENSE: "dense", DENSE_T: "dense"}

    @classmethod
    def unavailable(cls, problem: Problem) -> str | None:
        """CPU, float32 or float64, no autocast, every edge a kind the kernels compute, and built."""
        x = problem.x
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) \
                or torch.is_autocast_enabled("cpu") or native.get() is None:
            return f"they are unavailable here: {native.status()} (device {x.device}, dtype {x.dtype})"
        other = next((e for e in problem.net.edges if kernel_family(e) is None), None)
        if other is not None:
            return f"they have no kernel for {other.kind} edges ({other.spec.name})"
        return None

    def __init__(self, problem: Problem):
        super().__init__(problem)
        p = problem
        net, s = p.net, p.s
        self.k, self.net, self.weights, self.fixed = native.get(), net, p.weights, p.fixed
        self.names = net.layer_names
        self.index = {n: i for i, n in enumerate(self.names)}
        self.owner, self.jacobi_edges = p.owner, p.jacobi_edges
        self.late_edges = set(p.jacobi_edges)
        self.nudge_ref = p.nudge_ref
        self.empty = s[self.names[0]].new_empty(0)
        self.batch = s[self.names[0]].shape[0]
        with torch.no_grad():  # the bias broadcast over one sample, in each state's memory order
            self.bias_map = {n: self._memory_order(net.bias_view(n).expand(1, *net.spec.shape_of(n)), s[n])
                             for n in self.names}
        self.channels_last = {n: _channels_last(s[n]) for n in self.names}
        self.cpp = self.k.Stepper([s[n] for n in self.names])
        self.fn_ids: dict = {}
        self.choices: dict = {}   # (edge, forward) -> (kernel, "rule" | "timed")
        for g in p.groups:
            y_fns = [self._part_fn(e, forward) for e, forward in self._edges_of(OUTPUT)] if OUTPUT in g else []
            self.cpp.add_group(self._plan(g, False), self._plan(g, True), y_fns)
        y_first = self._edges_of(OUTPUT)[0]
        target = p.target
        self.cpp.set_output(self.index[OUTPUT], net.bias_view(OUTPUT), y_first[1] and y_first[0] in p.fixed,
                            float(p.beta), float(p.omega),
                            0 if target is None else (1 if net.spec.cost == "mse" else 2),
                            p.target_1h if p.target_1h is not None else self.empty, float(net.alpha))
        self._set_record(p)

    def _set_record(self, p: Problem) -> None:
        """What the record of a level-2 step holds: the C++ side writes it in blocks of BLOCK_STEPS."""
        net, s = p.net, p.s
        # Memory offsets of the chosen units within one sample: the kernels keep every state's layout.
        unit_offsets = [] if p.units_idx is None else [
            sum(c.cpu().long() * s[n].stride(d + 1) for d, c in enumerate(idx)) for n, idx in p.units_idx.items()]
        units = len(unit_offsets[0]) if unit_offsets else 0
        order = [n for g in p.groups for n in g]
        self.cpp.set_record(
            [order.index(n) for n in self.names],
            torch.tensor([math.prod(net.spec.shape_of(n)) for n in self.names], dtype=torch.float64),
            torch.tensor([int(n != OUTPUT) for n in self.names], dtype=torch.long), _bias_norms(net).cpu(),
            1.0 / abs(p.beta) if p.beta != 0 else 0.0, unit_offsets, self.nudge_ref is not None,
            len(self.names) * (len(LAYER_STATS) + units) * self.batch + 3 * self.batch, self.BLOCK_STEPS, p.steps)

    def _edges_of(self, n: str) -> list:
        """The edges into the drive of layer ``n``: (edge, True) forward, (edge, False) feedback."""
        return [(e, True) for e in self.net.incoming[n]] + [(e, False) for e in self.net.outgoing[n]]

    @staticmethod
    def _memory_order(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``t`` (one sample) laid out like ``like``, flattened in memory order."""
        if _channels_last(like):
            return t.permute(0, 2, 3, 1).reshape(-1).contiguous()
        return t.reshape(-1).contiguous()

    # The product with few rows against torch's convolution, per edge, direction and batch: below
    # TIMED_FLOPS per call the rule of thumb `_few_positions` decides; above, with at most
    # MAX_SMALL_ROWS output positions, the two are timed once per process and shape (the winner
    # depends on the shapes and the direction: at Hopfield-ResNet13's batch 1, s3->s4's forward
    # runs faster in oneDNN, its feedback twice as fast in the product; above 1024 positions oneDNN
    # always won). The timed choice is kept for the process, so it is the same in every run of it;
    # EXPLORER_TIME_KERNELS=0 leaves every choice to the rule, the same in every process (timed
    # choices may differ between processes, and with them a float32 result's last bits).
    # :meth:`kernels` (and PhaseResult.kernels) says which was used and how it was chosen.
    TIMED_FLOPS = 4_000_000
    MAX_SMALL_ROWS = 1024

    @staticmethod
    def _few_positions(batch: int, pixels: int) -> bool:
        """Where the product with few rows beats torch's convolutions here, on small edges."""
        return batch * pixels <= 64

    def _use_small(self, e, forward: bool) -> tuple[bool, str]:
        """Whether edge ``e`` runs as the few-row product, and whether "rule" or "timed" said so."""
        pixels = math.prod(e.dst_shape[1:])
        if self.batch * pixels > self.MAX_SMALL_ROWS:
            return False, "rule"
        if e.flops() * self.batch < self.TIMED_FLOPS or os.environ.get("EXPLORER_TIME_KERNELS", "1") == "0":
            return self._few_positions(self.batch, pixels), "rule"
        w = self.weights[e]
        key = (e.src_shape, e.dst_shape, e.spec.kernel, e.spec.stride, e.spec.padding, self.batch, forward, w.dtype,
               _channels_last(w), torch.get_num_threads())
        cache, timed = _choices()
        if key not in cache:
            cache[key] = timed(self.k, e, w, self.batch, forward)
        return cache[key], "timed"

    def _part_fn(self, e, forward: bool) -> int:
        """The Stepper's id of the function of the states that gives edge ``e``'s output in the drive
        of its destination (``forward``) or source: the input's fixed drive, the few-row product
        where the edge has few output positions and that kernel is faster (:meth:`_use_small`), else
        the tensor code of :mod:`explorer.edges`, as ATen calls."""
        key = (id(e), forward)
        if key in self.fn_ids:
            return self.fn_ids[key]
        w, src, dst = self.weights[e], e.spec.src, e.spec.dst
        add, by = self.cpp.add_fn, "rule"
        if forward and e in self.fixed:
            fid = add(self.FIXED, -1, self.fixed[e], 0, 1, 0, 0, 0, [])
            kind = self.FIXED
        elif kernel_family(e) == "conv":
            k, st, pad = e.spec.kernel, e.spec.stride, e.spec.padding
            small, by = self._use_small(e, forward)
            if small:
                kind = self.SMALL if forward else self.SMALL_T
                shape = e.dst_shape if forward else e.src_shape
                fid = add(kind, self.index[src if forward else dst], _packed_matrix(self.k, w, forward), k, st, pad,
                          *shape[1:], [shape[0]])
            else:
                kind = self.CONV if forward else self.CONV_T
                fid = add(kind, self.index[src if forward else dst], w, k, st, pad, 0, 0,
                          [] if forward else list(e.output_padding))
        else:   # dense: columns in the source's memory order, so no copy of a channels-last map
            cl = int(len(e.src_shape) == 3 and self.channels_last[src])
            wm = w.detach().view(w.shape[0], *e.src_shape).permute(0, 2, 3, 1).reshape(w.shape[0], -1) \
                .contiguous() if cl else w
            kind = self.DENSE if forward else self.DENSE_T
            fid = add(kind, self.index[src], wm, cl, 1, 0, 0, 0, []) if forward else \
                add(kind, self.index[dst], wm, cl, 1, 0, 0, 0, [self.batch, *e.src_shape])
        self.fn_ids[key] = fid
        self.choices[(e, forward)] = (self.KIND_NAMES[kind], by)
        return fid

    def _plan(self, group, with_output: bool):
        """What one kernel call of this group gets that does not change between steps."""
        layers, fns, p_layer, p_role, p_owned, p_late, p_writable, refs, bmaps = ([] for _ in range(9))
        for n in group:
            if n == OUTPUT and not with_output:
                continue
            j = len(layers)
            edges = self._edges_of(n)
            for e, forward in edges:
                p_layer.append(j)
                p_role.append(self.ROLE["skip" if forward and e.kind == "skip" else
                                        ("direct" if forward else "feedback")])
                p_owned.append(int(self.owner[id(e)] == n))
                p_late.append(int(forward and e in self.late_edges))
                p_writable.append(int(not (forward and e in self.fixed)))
            layers.append(self.index[n])
            fns.append([] if n == OUTPUT else [self._part_fn(e, forward) for e, forward in edges])
            refs.append(self.nudge_ref[n] if self.nudge_ref is not None else self.empty)
            bmaps.append(self.bias_map[n])
        return self.k.StepPlan(layers, fns, p_layer, p_role, p_owned, p_late, p_writable, refs, bmaps)

    def step(self, level: int, t: int, pending: StepOut | None = None, fractions_from: float = 0.0) -> StepOut:
        """One step; at level 2 it also completes ``pending`` (the previous step's record), and gives the
        fractions when the largest is at least ``fractions_from``. The states stay in the Stepper until
        :meth:`sync`."""
        r = self.cpp.step(level, t, pending.energy if pending is not None and level == 2 else self.empty,
                          fractions_from)
        out = StepOut.empty(t)
        if level == 1:
            out.max_rel = r
        elif level == 2:
            out.stats, out.energy, out.units, out.f_sum, out.max_rel, out.max_fraction, out.fractions, late_f = r
            if late_f is not None:
                pending.f_sum = late_f
        return out

    def sync(self, s: dict) -> None:
        """The current states into ``s``."""
        for n, v in zip(self.names, self.cpp.states()):
            s[n] = v

    def close(self, out: StepOut, s: dict) -> None:
        """Complete the energy of the last step (``s`` is its state) with the late terms, computed here."""
        if not self.jacobi_edges or out.energy is None:
            return
        late = sum(e.energy(self.weights[e], s[e.spec.src], s[e.spec.dst]) for e in self.jacobi_edges)
        out.energy[0] -= late
        out.energy[2] -= late
        out.f_sum = float(out.energy[2].sum())

    def kernels(self) -> dict:
        out: dict = {}
        for e in self.net.edges:
            for forward in (True, False):
                if (e, forward) in self.choices:
                    kernel, by = self.choices[(e, forward)]
                    out.setdefault(e.spec.name, {})["forward" if forward else "feedback"] = {"kernel": kernel,
                                                                                            "by": by}
        return out


register_stepper(NativeStepper, first=True)
