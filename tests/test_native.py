"""The fused CPU kernels (explorer.native) against the eager tensor code they replace on the CPU."""
import dataclasses
import itertools
import math
import platform

import pytest
import torch

from explorer import HopfieldNetwork, RecordConfig, hopfield_family, native, relax
from explorer import dynamics
from explorer.dynamics import _FusedStep, schedule_groups, step
from explorer.edges import EDGE_KINDS, ConvEdge
from explorer.record import STAT_INDEX
from processes import python, side_by_side


def test_the_kernels_build_here():
    # CI machines have g++ and Python's headers: a failed build must fail here, not fall back silently.
    assert native.get(block=True) is not None, native.status()
    assert native.status() == "fused CPU kernels"


def _net(residual, cost, dtype, depth=5, seed=3):
    spec = hopfield_family(depth, input_shape=(1, 12, 12), width=3, n_classes=6, residual=residual, cost=cost,
                           alpha=2.0)
    return HopfieldNetwork(spec, seed=seed, dtype=dtype)


def _close(a, b, dtype):
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


CASES = list(itertools.product(["paper", "descent_safe", "synchronous"], [True, False], ["mse", "cross_entropy"],
                               [1, 4], [1.0, 1.6]))


@pytest.mark.parametrize("schedule,residual,cost,batch,omega", CASES)
def test_fused_step_records_what_the_eager_step_records(schedule, residual, cost, batch, omega):
    dtype = torch.float64
    net = _net(residual, cost, dtype)
    gen = torch.Generator().manual_seed(batch)
    x = torch.rand(batch, 1, 12, 12, generator=gen, dtype=dtype)
    target = torch.randint(0, 6, (batch,), generator=gen)
    rec = RecordConfig(units=3, state_layers=("s2",))
    runs = {}
    for fused in (False, True):
        free = relax(net, x, steps=12, schedule=schedule, record=rec, omega=omega, fused=fused)
        nudged = relax(net, x, steps=6, beta=0.3, target=target, state=free.state, free_state=free.state,
                       state_phi=free.phi, schedule=schedule, record=rec, omega=omega, fused=fused)
        runs[fused] = (free, nudged)
    for eager, fused in zip(runs[False], runs[True]):
        assert eager.verdict.to_dict() == fused.verdict.to_dict()
        assert len(eager.records) == len(fused.records) == eager.steps + 1
        for n in net.layer_names:
            _close(eager.state[n], fused.state[n], dtype)
        for a, b in zip(eager.records, fused.records):
            # a layer driven to exactly zero has step_size delta / 1e-12: compare where the state is not zero
            live = a.stat("activity").abs() > 1e-9
            _close(a.stats[:, STAT_INDEX["step_size"]][live], b.stats[:, STAT_INDEX["step_size"]][live], dtype)
            other = [i for name, i in STAT_INDEX.items() if name != "step_size"]
            _close(a.stats[:, other], b.stats[:, other], dtype)
            _close(a.energy, b.energy, dtype)
            _close(a.units, b.units, dtype)
            assert a.states.keys() == b.states.keys()
            for k in a.states:
                _close(a.states[k], b.states[k], dtype)


@pytest.mark.parametrize("threads", [2, 3])
def test_fused_step_splits_large_groups_across_threads_and_records_what_eager_records(threads):
    # Large enough for the threaded path (a group of 65536 units or more), with layers of unequal
    # size and one over a work item (16384 units per sample), so the per-thread cuts fall inside
    # layers, samples and items' runs.
    dtype = torch.float64
    spec = hopfield_family(4, input_shape=(1, 28, 28), width=24, n_classes=5, alpha=2.0)
    net = HopfieldNetwork(spec, seed=5, dtype=dtype)
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(5, 1, 28, 28, generator=gen, dtype=dtype)
    target = torch.randint(0, 5, (5,), generator=gen)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = {}
        for fused in (False, True):
            free = relax(net, x, steps=4, record=RecordConfig(units=2), fused=fused)
            nudged = relax(net, x, steps=3, beta=0.4, target=target, state=free.state, free_state=free.state,
                           state_phi=free.phi, record=RecordConfig(units=2), fused=fused)
            runs[fused] = (free, nudged)
    finally:
        torch.set_num_threads(old)
    # the first group (s1, s3, y) passes the threaded path's threshold, and s1 is over one work item
    sizes = {n: math.prod(spec.shape_of(n)) for n in net.layer_names}
    assert 5 * (sizes["s1"] + sizes["s3"] + sizes["y"]) >= 65536 and sizes["s1"] > 16384
    for eager, fused in zip(runs[False], runs[True]):
        for n in net.layer_names:
            _close(eager.state[n], fused.state[n], dtype)
        for a, b in zip(eager.records, fused.records):
            _close(a.stats, b.stats, dtype)
            _close(a.energy, b.energy, dtype)


def test_records_kept_in_shared_blocks_match_eager_over_several_blocks_and_stay_as_emitted():
    # The fused path writes each record into a row of a block of _FusedStep.BLOCK_STEPS steps:
    # a run over three blocks must give every step its own numbers, and none may change later.
    dtype = torch.float64
    net = _net(True, "cross_entropy", dtype)
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(2, 1, 12, 12, generator=gen, dtype=dtype)
    target = torch.randint(0, 6, (2,), generator=gen)
    steps = 2 * _FusedStep.BLOCK_STEPS + 9
    seen = []
    rec = RecordConfig(units=2)
    eager = relax(net, x, steps=steps, beta=0.2, target=target, record=rec, fused=False)
    fused = relax(net, x, steps=steps, beta=0.2, target=target, record=rec, fused=True,
                  on_step=lambda r: seen.append((r.stats.clone(), r.units.clone())))
    assert len(fused.records) == steps + 1 == len(seen)
    for a, b, (stats, units) in zip(eager.records, fused.records, seen):
        _close(a.stats, b.stats, dtype)
        _close(a.energy, b.energy, dtype)
        _close(a.units, b.units, dtype)
        assert torch.equal(b.stats, stats) and torch.equal(b.units, units)   # as handed to on_step
    # the trajectory moves, so equal numbers in two steps' records would mean shared rows
    assert not torch.equal(fused.records[5].units, fused.records[5 + _FusedStep.BLOCK_STEPS].units)


def test_fused_float32_and_channels_last_states_agree_with_eager():
    net = _net(True, "mse", torch.float32, depth=6)
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    eager = relax(net, x, steps=15, record=RecordConfig(), fused=False)
    fused = relax(net, x, steps=15, record=RecordConfig(), fused=True)
    assert fused.state["s1"].is_contiguous(memory_format=torch.channels_last)   # layout kept across steps
    for n in net.layer_names:
        torch.testing.assert_close(eager.state[n], fused.state[n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eager.series("phi"), fused.series("phi"), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eager.series("residual_share"), fused.series("residual_share"), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("schedule", ["paper", "descent_safe", "synchronous"])
def test_recording_does_not_change_the_fused_dynamics(schedule):
    # The record's one-pass kernel (every layer here: two to four edge outputs, owned energy terms
    # from none to all) against the bare and the tolerance-checking ones, free and nudged.
    net = _net(True, "mse", torch.float32, depth=6)
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([1, 4])
    runs = []
    for kwargs in ({}, {"tol": 1e-12}, {"record": RecordConfig()}):
        free = relax(net, x, steps=10, schedule=schedule, fused=True, **kwargs)
        nudged = relax(net, x, steps=5, beta=0.5, target=target, state=free.state, free_state=free.state,
                       schedule=schedule, fused=True, **kwargs)
        runs.append((free, nudged))
    for phase in (0, 1):
        bare, tol, full = (r[phase] for r in runs)
        for n in net.layer_names:   # bit for bit: the update is the same sum at every recording level
            assert torch.equal(bare.state[n], full.state[n]) and torch.equal(bare.state[n], tol.state[n]), n


def test_non_finite_values_give_the_same_verdict_fused_and_eager():
    net = _net(True, "mse", torch.float32)
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    start = net.zero_state(2)
    start["s3"] = start["s3"].clone()
    start["s3"][0, 0, 0, 0] = float("nan")
    out = [relax(net, x, steps=5, state=start, record=RecordConfig(), fused=f) for f in (False, True)]
    assert out[0].verdict.status == out[1].verdict.status == "non_finite"
    assert out[0].verdict.message == out[1].verdict.message
    # The last record's energy is complete on the fused path too (its late terms come from no next
    # step), and the result's Phi is that record's on both paths.
    assert out[0].steps == out[1].steps == len(out[1].records) - 1
    torch.testing.assert_close(out[0].records[-1].energy, out[1].records[-1].energy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0].phi, out[1].phi, rtol=1e-5, atol=1e-5)


def test_fused_is_refused_where_it_cannot_run(monkeypatch):
    net = _net(True, "mse", torch.float32)
    x = torch.rand(1, 1, 12, 12)
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_tried", True)
    monkeypatch.setattr(native, "_error", "RuntimeError: no compiler")
    with pytest.raises(ValueError, match="fused kernels requested, but they are unavailable"):
        relax(net, x, steps=2, fused=True)
    result = relax(net, x, steps=3, record=RecordConfig())   # auto: the eager code, same record
    assert len(result.records) == 4 and native.status().startswith("eager tensor code")


def test_the_output_layer_reports_no_fractions_at_zero_or_alpha_on_either_path():
    # y is unboxed: "at 0" and "at alpha" do not apply to it, even when its values pass alpha.
    net = _net(True, "mse", torch.float64)
    with torch.no_grad():
        net.biases["y"].fill_(5.0)     # above alpha = 2
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for fused in (False, True):
        result = relax(net, x, steps=5, record=RecordConfig(), fused=fused)
        assert float(result.state["y"].min()) > net.alpha
        for name in ("frac_zero", "frac_alpha"):
            assert float(result.series(name, "y").abs().max()) == 0.0, (fused, name)


SMALL_CONVS = [  # (c_in, c_out, size, stride, kernel, batch): few output positions, as on the last maps
    (64, 48, 8, 2, 3, 1), (48, 48, 4, 1, 3, 1), (48, 40, 4, 2, 3, 1), (48, 40, 4, 2, 1, 1),
    (3, 5, 5, 2, 3, 2), (4, 6, 3, 1, 3, 3), (7, 3, 6, 2, 1, 2), (5, 9, 2, 1, 3, 4),
    (40, 130, 4, 1, 3, 2), (8, 300, 2, 1, 1, 3)]   # partial column tiles, several row chunks and blocks of Q


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c_in,c_out,size,stride,kernel,batch", SMALL_CONVS)
def test_small_convolutions_match_torch_both_ways(dtype, c_in, c_out, size, stride, kernel, batch):
    k = native.get(block=True)
    cl = torch.channels_last
    gen = torch.Generator().manual_seed(c_in * size + batch)
    pad = kernel // 2
    w = torch.randn(c_out, c_in, kernel, kernel, generator=gen, dtype=dtype).contiguous(memory_format=cl)
    x = torch.rand(batch, c_in, size, size, generator=gen, dtype=dtype).contiguous(memory_format=cl)
    ref = torch.nn.functional.conv2d(x, w, stride=stride, padding=pad)
    ho, wo = ref.shape[-2:]
    wmat = w.permute(0, 2, 3, 1).reshape(c_out, -1)   # [c_out, (ky, kx, c)]
    got = k.small_conv_forward(x, k.pack_columns(wmat.t()), c_out, kernel, stride, pad, ho, wo)
    y = torch.rand(ref.shape, generator=gen, dtype=dtype).contiguous(memory_format=cl)
    out_pad = size - ((ho - 1) * stride - 2 * pad + kernel)
    ref_back = torch.nn.functional.conv_transpose2d(y, w, stride=stride, padding=pad, output_padding=out_pad)
    got_back = k.small_conv_feedback(y, k.pack_columns(wmat), c_in, kernel, stride, pad, size, size)
    tol = 1e-11 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(got_back, ref_back, rtol=tol, atol=tol)
    assert got.is_contiguous(memory_format=cl) and got_back.is_contiguous(memory_format=cl)
    with pytest.raises(RuntimeError, match="channels-last"):   # NCHW memory is refused, not misread
        k.small_conv_forward(x.contiguous(), k.pack_columns(wmat.t()), c_out, kernel, stride, pad, ho, wo)
    with pytest.raises(RuntimeError, match="packed matrix"):   # an unpacked or mismatched matrix is refused
        k.small_conv_forward(x, wmat.t().contiguous(), c_out, kernel, stride, pad, ho, wo)


def _spy_on_stepper(monkeypatch) -> list:
    """The kinds of edge functions every Stepper built from here on is given, in order."""
    kinds = []
    real = native.get(block=True)

    class Recorded:
        def __init__(self, states):
            self.stepper = real.Stepper(states)

        def add_fn(self, kind, *args):
            kinds.append(kind)
            return self.stepper.add_fn(kind, *args)

        def __getattr__(self, name):
            return getattr(self.stepper, name)

    class Spy:
        Stepper = Recorded

        def __getattr__(self, name):
            return getattr(real, name)
    monkeypatch.setattr(native, "get", lambda *a, **kw: Spy())
    return kinds


def _fused_agrees_with_eager(net, x, steps=6):
    fused = relax(net, x, steps=steps, record=RecordConfig(), fused=True)
    eager = relax(net, x, steps=steps, record=RecordConfig(), fused=False)
    for n in net.layer_names:
        _close(fused.state[n], eager.state[n], net.dtype)
    _close(fused.series("phi"), eager.series("phi"), net.dtype)


def test_relax_runs_the_last_small_maps_as_few_row_products_at_batch_1(monkeypatch):
    # Hopfield-ResNet13's last maps at batch 1, in miniature (every edge under the timed size): the
    # fused run must use the few-row kernels up to 64 output positions (8x8 and smaller) and torch's
    # convolutions on the 16x16 maps, and agree with the eager run. The Stepper evaluates the edges
    # in C++: count the kinds of edge functions it is given.
    kinds = _spy_on_stepper(monkeypatch)
    net = HopfieldNetwork(hopfield_family(6, input_shape=(3, 32, 32), width=8, n_classes=5, alpha=2.0),
                          seed=0, dtype=torch.float64)
    assert all(e.flops() < _FusedStep.TIMED_FLOPS for e in net.edges)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _fused_agrees_with_eager(net, x)
    assert kinds.count(_FusedStep.SMALL) > 0 and kinds.count(_FusedStep.SMALL_T) > 0   # 8x8 and smaller
    assert kinds.count(_FusedStep.CONV) > 0 and kinds.count(_FusedStep.CONV_T) > 0     # the 16x16 maps


@pytest.mark.parametrize("small_wins", [True, False])
def test_larger_edges_take_the_kernel_timed_faster_once_per_shape(monkeypatch, small_wins):
    # Above TIMED_FLOPS per call (and at most MAX_SMALL_ROWS positions) the few-row kernel and
    # torch's convolution are timed once per edge shape, direction and batch; the run uses the
    # winner, whichever it is, and agrees with the eager run.
    kinds = _spy_on_stepper(monkeypatch)
    monkeypatch.setattr(dynamics, "_SMALL_CHOICE", {})
    timed, really_timed = [], dynamics._small_is_faster

    def verdict(kernels, e, w, batch, forward):
        state = torch.get_rng_state()
        assert isinstance(really_timed(kernels, e, w, batch, forward, repeats=1), bool)
        assert torch.equal(torch.get_rng_state(), state)   # training's random stream is left alone
        timed.append((e.src_shape, e.dst_shape, e.spec.kernel, e.spec.stride, batch, forward))
        return small_wins
    monkeypatch.setattr(dynamics, "_small_is_faster", verdict)
    net = HopfieldNetwork(hopfield_family(4, input_shape=(3, 16, 16), width=64, n_classes=5, alpha=2.0),
                          seed=0, dtype=torch.float64)
    big = [e for e in net.edges if e.kind != "dense" and e.spec.src != "s0" and e.flops() >= _FusedStep.TIMED_FLOPS
           and math.prod(e.dst_shape[1:]) <= _FusedStep.MAX_SMALL_ROWS]
    assert big, "the network must have an edge the choice is timed for"
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _fused_agrees_with_eager(net, x)
    shapes = {(e.src_shape, e.dst_shape, e.spec.kernel, e.spec.stride, 1, f) for e in big for f in (True, False)}
    assert sorted(timed) == sorted(shapes)   # once per shape and direction
    by_rule = sum(2 for e in net.edges if e.kind != "dense" and e.spec.src != "s0" and e not in big
                  and _FusedStep._few_positions(1, math.prod(e.dst_shape[1:])))
    chosen = kinds.count(_FusedStep.SMALL) + kinds.count(_FusedStep.SMALL_T)
    assert chosen == by_rule + (2 * len(big) if small_wins else 0)
    relax(net, x, steps=2)   # the same shapes: no new timing
    assert len(timed) == len(shapes)
    monkeypatch.setenv("EXPLORER_TIME_KERNELS", "0")   # the rule everywhere: nothing timed
    relax(net, x.repeat(2, 1, 1, 1), steps=2)
    assert len(timed) == len(shapes)


def test_the_kept_packed_weights_follow_in_place_updates():
    # The small kernels keep packed copies of W and W^T per weight between runs; an optimiser step
    # or a loaded state dict changes the weight in place, and the next run must use the new values.
    net = HopfieldNetwork(hopfield_family(6, input_shape=(3, 16, 16), width=8, n_classes=5, alpha=2.0),
                          seed=0, dtype=torch.float64)
    other = HopfieldNetwork(net.spec, seed=7, dtype=torch.float64)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    relax(net, x, steps=3, fused=True)
    for change in (lambda: [p.mul_(0.5) for p in net.parameters()],
                   lambda: net.load_state_dict(other.state_dict())):
        with torch.no_grad():
            change()
        fused = relax(net, x, steps=6, fused=True)
        eager = relax(net, x, steps=6, fused=False)
        for n in net.layer_names:
            _close(fused.state[n], eager.state[n], torch.float64)


def test_the_edge_function_kinds_agree_between_python_and_the_stepper():
    # _FusedStep names the Stepper's edge-function kinds by number; a reordered enum would silently
    # send every edge to the wrong function.
    kinds = native.get(block=True).STEPPER_KINDS
    assert [getattr(_FusedStep, name) for name in kinds] == list(range(len(kinds)))


_FAULTS_PROBE = """
import resource, sys, torch
from explorer import HopfieldNetwork, hopfield_family, native, relax
native.get(block=True)
net = HopfieldNetwork(hopfield_family(5, input_shape=(1, 28, 28), width=16), seed=0)
x = torch.rand(32, 1, 28, 28)
relax(net, x, steps=60)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
relax(net, x, steps=60)
print(native.keep_freed_memory(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 60)
"""


@pytest.fixture(scope="module")
def fault_probes() -> dict:
    """The same probe in two fresh processes, tuned ("1") and not ("0"), run side by side (each
    counts its own page faults; most of each process's time is importing torch)."""
    # Fresh processes: the tuning is process-wide, and done once.
    done = side_by_side({tuning: python("-c", _FAULTS_PROBE, env={"EXPLORER_MALLOC_TUNING": tuning})
                         for tuning in ("1", "0")})
    out = {}
    for tuning, r in done.items():
        assert r.returncode == 0, r.stderr
        applied, faults = r.stdout.split()[-2:]
        out[tuning] = (applied == "True", float(faults))
    return out


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc and Linux's page-fault count")
def test_steps_reuse_freed_memory_instead_of_faulting_it_in_again(fault_probes):
    # Untuned, glibc gave the freed edge outputs back to the kernel every step: 200 to 350 page
    # faults a step here, none tuned. Compared with the untuned process rather than with a fixed
    # bound, so that faults from outside the steps (another busy process, the kernel reclaiming
    # idle pages) cannot fail it: the settings applied, and they removed most of the faults.
    (applied, tuned), (_, untuned) = fault_probes["1"], fault_probes["0"]
    assert applied, "mallopt refused the settings"
    assert tuned < 0.5 * untuned, f"{tuned:.0f} page faults a step tuned, {untuned:.0f} untuned"


def test_the_malloc_tuning_can_be_turned_off(fault_probes):
    applied, _ = fault_probes["0"]
    assert not applied


class HalfConvEdge(ConvEdge):
    """A new kind of edge, defined here and not in the builders: half a convolution. Its own
    forward and feedback, so no compiled kernel computes it."""

    kind = "half_conv"

    def forward(self, w, s_src):
        return 0.5 * super().forward(w, s_src)

    def feedback(self, w, s_dst):
        return 0.5 * super().feedback(w, s_dst)


def test_an_edge_kind_without_a_kernel_relaxes_on_the_eager_path(monkeypatch):
    monkeypatch.setitem(EDGE_KINDS, "half_conv", HalfConvEdge)
    base = hopfield_family(4, input_shape=(1, 8, 8), width=4, n_classes=5, alpha=2.0)
    spec = dataclasses.replace(base, edges=tuple(dataclasses.replace(e, kind="half_conv") if e.key == "s2_s3" else e
                                                 for e in base.edges))
    net = HopfieldNetwork(spec, seed=0, dtype=torch.float64)
    assert isinstance(net.edges[[e.spec.key for e in net.edges].index("s2_s3")], HalfConvEdge)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = relax(net, x, steps=40, schedule="descent_safe", record=RecordConfig())   # the default CPU path
    assert result.stepper == "eager" and result.kernels == {}
    ref = {**net.zero_state(3), "s0": x}
    for _ in range(40):   # the out-of-place reference iteration, through the edge's own forward and feedback
        ref = step(net, ref, schedule_groups(spec, "descent_safe"))
    for n in net.layer_names:
        _close(result.state[n], ref[n], torch.float64)
    phis = result.series("phi").sum(-1)
    assert float((phis[1:] - phis[:-1]).max()) <= 1e-9 * float(phis.abs().max())   # a descent
    plain = relax(HopfieldNetwork(base, seed=0, dtype=torch.float64), x, steps=40, schedule="descent_safe")
    assert plain.stepper == "native" and not torch.equal(plain.state["s3"], result.state["s3"])
    with pytest.raises(ValueError, match="no kernel for half_conv edges"):
        relax(net, x, steps=2, fused=True)


def test_the_result_says_which_kernel_computed_each_edge_and_how_it_was_chosen(monkeypatch):
    # Above TIMED_FLOPS the choice is timed (here: a stand-in that always picks the few-row product),
    # below it the rule decides; EXPLORER_TIME_KERNELS=0 leaves every choice to the rule.
    monkeypatch.setattr(dynamics, "_SMALL_CHOICE", {})
    monkeypatch.setattr(dynamics, "_small_is_faster", lambda kernels, e, w, batch, forward: True)
    net = HopfieldNetwork(hopfield_family(4, input_shape=(3, 16, 16), width=64, n_classes=5, alpha=2.0),
                          seed=0, dtype=torch.float64)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    timed = relax(net, x, steps=2, fused=True).kernels
    monkeypatch.setenv("EXPLORER_TIME_KERNELS", "0")
    ruled = relax(net, x, steps=2, fused=True).kernels
    assert set(timed) == set(ruled) == {e.spec.name for e in net.edges}
    assert timed["s0->s1"] == {"forward": {"kernel": "fixed", "by": "rule"}}   # the clamped input's drive
    assert timed["s4->y"]["feedback"] == {"kernel": "dense", "by": "rule"}
    for e in net.edges:
        if e.kind == "dense" or e.spec.src == "s0":
            continue
        pixels = math.prod(e.dst_shape[1:])
        big = e.flops() >= _FusedStep.TIMED_FLOPS and pixels <= _FusedStep.MAX_SMALL_ROWS
        rule = "small" if _FusedStep._few_positions(1, pixels) else "conv"
        for direction in ("forward", "feedback"):
            assert timed[e.spec.name][direction] == ({"kernel": "small", "by": "timed"} if big
                                                     else {"kernel": rule, "by": "rule"})
            assert ruled[e.spec.name][direction] == {"kernel": rule, "by": "rule"}
    assert any(d["by"] == "timed" for k in timed.values() for d in k.values())
    assert relax(net, x, steps=2, fused=False).kernels == {}
