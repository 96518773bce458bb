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
