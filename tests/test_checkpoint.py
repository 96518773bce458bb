import json

import pytest
import torch
from safetensors.torch import save_file

from explorer import HopfieldNetwork, hopfield_family
from explorer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


@pytest.fixture
def saved(tmp_path):
    net = HopfieldNetwork(hopfield_family(4, width=4, alpha=3.0), seed=7)
    stem = save_checkpoint(net, tmp_path / "model", settings={"schedule": "descent_safe", "beta": 0.15},
                           provenance={"command": "test"})
    return net, stem


def test_checkpoint_round_trips_by_name(saved):
    net, stem = saved
    loaded, meta = load_checkpoint(stem.with_suffix(".json"))
    assert loaded.spec == net.spec and loaded.alpha == 3.0
    for (n, p), (m, q) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert n == m and torch.equal(p, q)
    assert meta["schedule"] == "descent_safe" and meta["provenance"]["command"] == "test"
    assert meta["tensors"]["weights.s2_s4"]["edge"] == "s2->s4 (skip)"
    assert not list(stem.parent.glob("*.tmp"))


def test_truncated_tensor_file_is_named(saved):
    _, stem = saved
    path = stem.with_suffix(".safetensors")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated"):
        load_checkpoint(stem)


def test_shape_mismatch_names_the_tensor(saved, tmp_path):
    net, stem = saved
    tensors = {k: v.contiguous().clone() for k, v in net.state_dict().items()}
    tensors["weights.s1_s2"] = torch.zeros(3, 3, 3, 3)
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    with pytest.raises(CheckpointError, match=r"weights.s1_s2 has shape \(3, 3, 3, 3\).*needs \(4, 4, 3, 3\)"):
        load_checkpoint(stem)


def test_missing_and_nan_tensors_are_named(saved):
    net, stem = saved
    tensors = {k: v.contiguous().clone() for k, v in net.state_dict().items() if k != "biases.s3"}
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    with pytest.raises(CheckpointError, match=r"lacks tensor biases.s3 \(s3\)"):
        load_checkpoint(stem)
    tensors = {k: v.contiguous().clone() for k, v in net.state_dict().items()}
    tensors["weights.s0_s1"][0, 0, 0, 0] = float("nan")
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    with pytest.raises(CheckpointError, match="weights.s0_s1.*NaN"):
        load_checkpoint(stem)
    loaded, _ = load_checkpoint(stem, allow_nonfinite=True)
    assert torch.isnan(loaded.weights["s0_s1"]).any()


def test_description_of_another_architecture_is_refused(saved):
    _, stem = saved
    meta = json.loads(stem.with_suffix(".json").read_text())
    meta["network"] = hopfield_family(6, width=4).to_dict()
    stem.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="lacks tensor|has shape"):
        load_checkpoint(stem)


def test_corrupt_json_and_pickles_are_refused(saved, tmp_path):
    _, stem = saved
    stem.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(stem)
    # a torch.save pickle posing as safetensors is never unpickled
    other = tmp_path / "pickled"
    torch.save({"weights.s0_s1": torch.zeros(1)}, other.with_suffix(".safetensors"))
    other.with_suffix(".json").write_text(saved[1].with_suffix(".safetensors").name)
    with pytest.raises(CheckpointError):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")


def test_auxiliary_tensors_keep_their_dtype_and_other_names_cannot_be_saved(tmp_path):
    net = HopfieldNetwork(hopfield_family(3, width=2), seed=1)
    extra = {"extra.train.position": torch.tensor([1, 2, 3]), "extra.rng.cpu": torch.get_rng_state()}
    stem = save_checkpoint(net, tmp_path / "aux", extra_tensors=extra)
    _, meta = load_checkpoint(stem, dtype=torch.float64)
    assert meta["conversions"] == []  # float32 asked as float64 is the caller's choice, not news
    assert {k: v.dtype for k, v in meta["extra_tensors"].items()} == {
        "extra.train.position": torch.int64, "extra.rng.cpu": torch.uint8}
    with pytest.raises(ValueError, match="extra tensor 'momentum' must be named under one of"):
        save_checkpoint(net, tmp_path / "bad", extra_tensors={"momentum": torch.zeros(1)})


def test_every_shipped_zoo_checkpoint_loads_without_a_complaint():
    from explorer.zoo import list_entries
    entries = list_entries()
    assert len(entries) >= 20
    for entry in entries:
        net, meta = entry.load()
        assert meta["conversions"] == [] and net.spec.input_shape == (1, 28, 28), entry.name
        assert all(k.startswith("extra.") for k in meta["extra_tensors"])


def test_a_tensor_file_over_the_budget_is_refused_before_it_is_read(saved, monkeypatch):
    _, stem = saved
    size = stem.with_suffix(".safetensors").stat().st_size
    monkeypatch.setenv("EXPLORER_NETWORK_BUDGET_GIB", str((size - 1) / 4 / 2 ** 30))
    with pytest.raises(CheckpointError, match=rf"model.safetensors is {size:,} bytes, over .*EXPLORER_NETWORK_BUDGET_GIB"):
        load_checkpoint(stem)
