import math

import pytest
import torch

from explorer import HopfieldNetwork, SpecError, hopfield_family, hopfield_resnet13
from explorer.network import NetworkSpec


# MODEL.md, "The authors' architecture": state shapes and incoming edges.
RESNET13_SHAPES = {
    "s1": (128, 32, 32), "s2": (128, 16, 16), "s3": (256, 16, 16), "s4": (256, 8, 8),
    "s5": (512, 8, 8), "s6": (512, 4, 4), "s7": (512, 4, 4), "s8": (512, 2, 2), "y": (10,),
}
RESNET13_EDGES = {  # (src, dst, kind): (kernel, stride, padding)
    ("s0", "s1", "conv"): (3, 1, 1), ("s1", "s2", "conv"): (3, 2, 1), ("s0", "s2", "skip"): (1, 2, 0),
    ("s2", "s3", "conv"): (3, 1, 1), ("s3", "s4", "conv"): (3, 2, 1), ("s2", "s4", "skip"): (1, 2, 0),
    ("s4", "s5", "conv"): (3, 1, 1), ("s5", "s6", "conv"): (3, 2, 1), ("s4", "s6", "skip"): (1, 2, 0),
    ("s6", "s7", "conv"): (3, 1, 1), ("s7", "s8", "conv"): (3, 2, 1), ("s6", "s8", "skip"): (1, 2, 0),
    ("s8", "y", "dense"): (1, 1, 0),
}


def test_resnet13_shapes_and_edges_match_the_paper():
    spec = hopfield_resnet13()
    assert spec.input_shape == (3, 32, 32)
    assert {l.name: l.shape for l in spec.layers} == RESNET13_SHAPES
    assert {(e.src, e.dst, e.kind): (e.kernel, e.stride, e.padding) for e in spec.edges} == RESNET13_EDGES


def test_resnet13_parameter_count_matches_the_table():
    channels = {"s0": 3, **{k: v[0] for k, v in RESNET13_SHAPES.items()}}
    weights = sum(channels[d] * channels[s] * k * k for (s, d, kind), (k, _, _) in RESNET13_EDGES.items()
                  if kind != "dense") + 512 * 2 * 2 * 10
    biases = sum(channels[n] for n in RESNET13_SHAPES)
    net = HopfieldNetwork(hopfield_resnet13())
    assert net.parameter_count() == weights + biases == 9_742_858


def test_every_conv_shape_round_trips_through_forward_and_feedback():
    net = HopfieldNetwork(hopfield_resnet13(), seed=0)
    for e in net.edges:
        src = torch.zeros(2, *e.src_shape)
        dst = torch.zeros(2, *e.dst_shape)
        assert e.forward(net.weight(e), src).shape == dst.shape
        assert e.feedback(net.weight(e), dst).shape == src.shape


@pytest.mark.parametrize("depth", [3, 4, 9, 13, 25])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_family_builds_every_depth_with_a_skip_every_two_layers(depth, shape):
    spec = hopfield_family(depth, input_shape=shape, width=2)
    assert spec.depth == depth
    skips = [e for e in spec.edges if e.kind == "skip"]
    assert [e.dst for e in skips] == [f"s{k}" for k in range(2, depth + 1, 2)]
    assert all(int(e.src[1:]) == int(e.dst[1:]) - 2 for e in skips)
    plain = hopfield_family(depth, input_shape=shape, width=2, residual=False)
    assert not plain.residual and [l.shape for l in plain.layers] == [l.shape for l in spec.layers]


def test_init_is_uniform_within_gain_over_sqrt_fan_in():
    spec = hopfield_family(4, width=4, gains={"s1_s2": 0.6, "s0_s1": 0.8})
    net = HopfieldNetwork(spec, seed=3)
    for e in net.edges:
        w = net.weight(e).detach()
        bound = e.spec.gain / math.sqrt(e.fan_in)
        assert float(w.abs().max()) <= bound + 1e-7
        assert float(w.abs().max()) > 0.8 * bound  # spread over the whole interval
    assert net.edges[0].spec.gain == 0.8


def test_same_seed_same_weights_different_seed_different():
    spec = hopfield_family(3, width=4)
    a, b, c = HopfieldNetwork(spec, seed=5), HopfieldNetwork(spec, seed=5), HopfieldNetwork(spec, seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.weights["s0_s1"], c.weights["s0_s1"])


@pytest.mark.parametrize("alpha", [0, -1, float("nan"), float("inf")])
def test_bad_alpha_is_refused_with_a_clear_message(alpha):
    with pytest.raises(SpecError, match="alpha"):
        hopfield_family(3, alpha=alpha)


def test_spec_round_trips_through_a_dict_and_rejects_a_broken_edge():
    spec = hopfield_family(5, width=3)
    assert NetworkSpec.from_dict(spec.to_dict()) == spec
    d = spec.to_dict()
    d["edges"][1]["stride"] = 1   # s1->s2 no longer lands on s2's shape
    with pytest.raises(SpecError, match="s1->s2"):
        NetworkSpec.from_dict(d)


def test_wrong_input_shape_names_both_shapes():
    net = HopfieldNetwork(hopfield_family(3, width=2))
    with pytest.raises(ValueError, match=r"\(2, 3, 32, 32\).*\(batch, 1, 28, 28\)"):
        net.check_input(torch.zeros(2, 3, 32, 32))


def test_memory_bytes_counts_the_parameters_and_one_samples_states():
    spec = hopfield_family(3, width=2)
    params, states = spec.memory_bytes()
    assert params == 4 * HopfieldNetwork(spec).parameter_count()
    assert states == 4 * (28 * 28 + sum(math.prod(l.shape) for l in spec.layers))


def test_a_description_over_the_memory_budget_is_refused_before_anything_is_allocated(monkeypatch):
    # 10^9 channels would ask for hundreds of GB of weights: refused from the shapes alone.
    with pytest.raises(SpecError, match=r"parameters about 10\^11 GiB.*budget of 2 GiB; set EXPLORER_NETWORK_BUDGET_GIB"):
        hopfield_family(3, width=10 ** 9)
    spec = hopfield_family(3, width=8)
    params, states = spec.memory_bytes()
    monkeypatch.setenv("EXPLORER_NETWORK_BUDGET_GIB", str((params + states - 1) / 2 ** 30))
    with pytest.raises(SpecError, match="over the memory budget"):
        NetworkSpec.from_dict(spec.to_dict())
    monkeypatch.setenv("EXPLORER_NETWORK_BUDGET_GIB", str((params + states) / 2 ** 30))
    assert NetworkSpec.from_dict(spec.to_dict()) == spec
    monkeypatch.setenv("EXPLORER_NETWORK_BUDGET_GIB", "lots")
    with pytest.raises(SpecError, match="EXPLORER_NETWORK_BUDGET_GIB must be a positive number of GiB, got 'lots'"):
        NetworkSpec.from_dict(spec.to_dict())


@pytest.mark.parametrize("change,message", [
    (lambda d: d["edges"][0].update(stride=0), r"edge s0->s1: stride must be at least 1, got 0"),
    (lambda d: d["edges"][0].update(kernel=True), r"edge s0->s1: kernel must be a whole number, got True"),
    (lambda d: d["edges"].append(dict(d["edges"][0], kind="skip")), r"edges s0->s1 and s0->s1 \(skip\) join the same"),
    (lambda d: d["edges"].append(dict(d["edges"][1], src="s2")), r"edge s2->s2: edges run from a lower layer"),
    (lambda d: d["edges"][-1].update(kind="conv"), r"edge s3->y: a conv edge joins \(C, H, W\) maps"),
    (lambda d: d["layers"][-1].update(shape=[10, 1, 1]), r"layer y: shape must be \(N,\)"),
    (lambda d: d["layers"][0].update(name="s.1"), r"name of letters, digits and _ .* got 's\.1'"),
    (lambda d: d["layers"][0].update(name="s0"), r"no layer may be called 's0'"),
    (lambda d: d.update(name=["x"]), r"the network's name must be a text"),
    (lambda d: d.update(bias_gain=float("nan")), r"bias_gain must be a finite number"),
])
def test_an_impossible_description_is_refused_naming_the_value(change, message):
    d = hopfield_family(3, width=2).to_dict()
    change(d)
    with pytest.raises(SpecError, match=message):
        NetworkSpec.from_dict(d)
