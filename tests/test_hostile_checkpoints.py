"""Broken and hostile checkpoints, through the CLI and the upload path alike (issue 15, item 9).

Each case mutates a valid small checkpoint (NAME.json + NAME.safetensors). A refused case must give,
on both paths, the same one-line message naming the bad value, and never a traceback; an accepted
case (float weights of another dtype) must say what it converted.
"""
import json
import re

import pytest
import torch
from safetensors.torch import save as st_save

from explorer import HopfieldNetwork, hopfield_family
from explorer.app.state import SettingError, load_upload
from explorer.checkpoint import save_checkpoint
from explorer.cli import main
from processes import cli, side_by_side

NAME = "hostile"


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """A valid small checkpoint for 1x28x28 images (the upload path's sample shape): (meta, tensors)."""
    folder = tmp_path_factory.mktemp("valid")
    net = HopfieldNetwork(hopfield_family(3, width=2, alpha=2.0), seed=3)
    stem = save_checkpoint(net, folder / NAME, settings={"schedule": "paper"})
    tensors = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    return json.loads(stem.with_suffix(".json").read_text()), tensors


def _safetensors_with_header(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + payload


def _set(path, value):
    """A mutation that sets meta[path...] = value."""
    def mutate(meta, tensors):
        *where, last = path
        target = meta
        for key in where:
            target = target[key]
        target[last] = value
    return mutate


def _replace_tensor(key, fn):
    def mutate(meta, tensors):
        tensors[key] = fn(tensors[key])
    return mutate


def _drop(meta, tensors):
    del tensors["biases.s2"]


def _extra_51(meta, tensors):
    for i in range(51):
        tensors[f"weights.ghost{i}"] = torch.zeros(2)


def _duplicate_layer(meta, tensors):
    meta["network"]["layers"][1]["name"] = "s1"


def _depth_mismatch(meta, tensors):
    meta["network"] = hopfield_family(5, width=2, alpha=2.0).to_dict()


def _cycle(meta, tensors):
    meta["network"]["edges"].append({"src": "s3", "dst": "s1", "kind": "conv", "kernel": 3, "stride": 1,
                                     "padding": 1, "gain": 0.7})


def _huge_int_text(meta, tensors):
    text = json.dumps(meta).replace('"shape": [2, 28, 28]', '"shape": [' + "9" * 5000 + ", 28, 28]", 1)
    return text.encode(), None


def _text_replace(old, new):
    def mutate(meta, tensors):
        text = json.dumps(meta)
        assert old in text
        return text.replace(old, new, 1).encode(), None
    return mutate


def _repeated_key(meta, tensors):
    text = json.dumps(meta)  # the top level already holds "alpha": 2.0
    return text.replace('{"format"', '{"alpha": 3.0, "format"', 1).encode(), None


def _with_header_entry(key, entry):
    """A hand-written safetensors file: the valid tensors, then ``key`` with a made-up header entry."""
    def mutate(meta, tensors):
        header, payload = {}, b""
        for k, v in tensors.items():
            if k != key:
                data = v.numpy().tobytes()
                header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [len(payload), len(payload) + len(data)]}
                payload += data
        header[key] = {**entry, "data_offsets": [len(payload), len(payload) + 8]}
        return None, _safetensors_with_header(header, payload + b"\0" * 8)
    return mutate


def _unknown_dtype(meta, tensors):
    header = {"weights.s0_s1": {"dtype": "C64", "shape": [2, 1, 3, 3], "data_offsets": [0, 144]}}
    return None, _safetensors_with_header(header, b"\0" * 144)


def _truncated(meta, tensors):
    return None, st_save(tensors)[:300]


GARBAGE = bytes(range(256)) * 4

# (id, mutation, what the one-line message must say); a mutation may return (json bytes, tensor bytes),
# either None for "serialise the mutated meta / tensors".
REFUSED = [
    ("truncated-safetensors", _truncated, r"hostile\.safetensors is truncated"),
    ("garbage-safetensors", lambda m, t: (None, GARBAGE), r"truncated or not a safetensors file"),
    ("empty-safetensors", lambda m, t: (None, b""), r"truncated or not a safetensors file \(0 bytes\)"),
    ("garbage-json", lambda m, t: (b"\xff\xfe{garbage", None), r"hostile\.json is not valid JSON"),
    ("non-object-json", lambda m, t: (b"[1, 2, 3]", None), r"hostile\.json is not a hopfield-explorer"),
    ("huge-json-float", _text_replace('"alpha": 2.0, "cost"', '"alpha": 1e999, "cost"'),
     r"alpha must be a positive finite number, got inf"),
    ("huge-json-int", _huge_int_text, r"not valid JSON: a whole number of 5000 digits"),
    ("negative-shape", _set(("network", "layers", 0, "shape"), [-2, 28, 28]),
     r"layer s1: shape must hold positive sizes, got \[-2, 28, 28\]"),
    ("zero-shape", _set(("network", "layers", 2, "shape"), [4, 0, 14]), r"layer s3: shape must hold positive"),
    ("float-shape", _set(("network", "layers", 0, "shape"), [2.5, 28, 28]),
     r"layer s1: shape: each size must be a whole number, got 2\.5"),
    ("text-shape", _set(("network", "input_shape"), ["1", 28, 28]), r"input_shape of s0: each size must be a whole"),
    ("channels-1e9", _set(("network", "layers", 0, "shape"), [10 ** 9, 28, 28]),
     r"needs 3,024 GiB in float32 \(parameters 104 GiB, one sample's states 2,920 GiB\), over the memory "
     r"budget of 2 GiB; set EXPLORER_NETWORK_BUDGET_GIB"),
    ("stride-0", _set(("network", "edges", 1, "stride"), 0), r"edge s1->s2: stride must be at least 1, got 0"),
    ("kernel-0", _set(("network", "edges", 0, "kernel"), 0), r"edge s0->s1: kernel must be at least 1, got 0"),
    ("padding-negative", _set(("network", "edges", 0, "padding"), -1), r"edge s0->s1: padding must be at least 0, got -1"),
    ("padding-over-kernel", _set(("network", "edges", 0, "padding"), 3), r"padding 3 must be below the kernel size 3"),
    ("kernel-over-map", _set(("network", "edges", 0, "kernel"), 99), r"kernel 99 is larger than s0's padded map"),
    ("unknown-edge-kind", _set(("network", "edges", 0, "kind"), "attention"), r"s0->s1: unknown kind 'attention'"),
    ("unknown-layer-in-edge", _set(("network", "edges", 0, "dst"), "s9"), r"s0->s9: unknown layer 's9'"),
    ("edge-shape-mismatch", _set(("network", "edges", 1, "stride"), 1),
     r"edge s1->s2: maps \(2, 28, 28\) to \(2, 28, 28\), but s2 has shape \(2, 14, 14\)"),
    ("cycle", _cycle, r"edge s3->s1: edges run from a lower layer to a higher one"),
    ("unknown-schedule", _set(("schedule",), "fastest"), r"unknown schedule 'fastest'"),
    ("unknown-settings-schedule", _set(("settings", "schedule"), "warp"), r"unknown settings\.schedule 'warp'"),
    ("int-weights", _replace_tensor("weights.s0_s1", lambda w: (w * 100).to(torch.int64)),
     r"tensor weights\.s0_s1 \(s0->s1\) .* holds torch\.int64 values"),
    ("bool-weights", _replace_tensor("biases.y", lambda b: b > 0), r"biases\.y \(y\) .* holds torch\.bool"),
    ("nan-weights", _replace_tensor("weights.s1_s2", lambda w: w.index_fill(0, torch.tensor([0]), float("nan"))),
     r"tensor weights\.s1_s2 in hostile\.safetensors contains NaN"),
    ("float64-overflow", _replace_tensor("weights.s3_y", lambda w: w.double() * 1e300),
     r"weights\.s3_y .* NaN or infinite values \(after conversion from float64\)"),
    ("missing-tensor", _drop, r"lacks tensor biases\.s2 \(s2\)"),
    ("51-extra-tensors", _extra_51, r"does not know: \['weights\.ghost0', .*\(and 46 more\)"),
    ("unknown-aux-namespace", lambda m, t: t.update({"extra.junk.a": torch.zeros(1)}), r"does not know: \['extra\.junk\.a'\]"),
    ("wrong-tensor-shape", _replace_tensor("weights.s0_s1", lambda w: torch.zeros(3, 1, 3, 3)),
     r"weights\.s0_s1 has shape \(3, 1, 3, 3\) .* needs \(2, 1, 3, 3\)"),
    ("alpha-zero", _set(("network", "alpha"), 0), r"alpha must be a positive finite number, got 0\.0"),
    ("alpha-negative", _set(("network", "alpha"), -2.0), r"alpha must be a positive finite number, got -2\.0"),
    ("alpha-nan", _text_replace('"alpha": 2.0, "cost"', '"alpha": NaN, "cost"'), r"alpha must be .* got nan"),
    ("alpha-text", _set(("network", "alpha"), "big"), r"alpha must be a number, got str 'big'"),
    ("top-alpha-nan", _set(("alpha",), float("nan")), r"alpha at the top level must be a positive finite"),
    ("unknown-cost", _set(("network", "cost"), "hinge"), r"cost must be one of .* got 'hinge'"),
    ("duplicate-layer-names", _duplicate_layer, r"layer names repeat: \['s1'\]"),
    ("depth-mismatch", _depth_mismatch, r"lacks tensor weights\.s3_s4 \(s3->s4\) .*\(and 5 more\)"),
    ("huge-header-tensor", _with_header_entry("weights.s0_s1", {"dtype": "F32", "shape": [10 ** 6, 10 ** 6, 3, 3]}), r"tensor 'weights\.s0_s1' claims shape \[1000000, 1000000, 3, 3\] \(36,000,000,000,000 bytes\)"),
    ("huge-aux-tensor", _with_header_entry("extra.rng.cpu", {"dtype": "U8", "shape": [10 ** 12]}),
     r"tensor 'extra\.rng\.cpu' claims shape \[1000000000000\] \(1,000,000,000,000 bytes\) but holds 8 bytes"),
    ("unknown-dtype", _unknown_dtype, r"tensor 'weights\.s0_s1' has dtype 'C64', which this explorer cannot read"),
    ("missing-edges", lambda m, t: m["network"].pop("edges"), r"network description lacks the fields \['edges'\]"),
    ("unknown-network-field", _set(("network", "alpah"), 3.0), r"unknown fields \['alpah'\]"),
    ("layers-not-a-list", _set(("network", "layers"), "s1,s2,s3,y"), r"layers must be a list, got str"),
    ("edge-extra-field", _set(("network", "edges", 0, "dilation"), 2), r"edge 1: unknown fields \['dilation'\]"),
    ("gain-infinite", _set(("network", "edges", 0, "gain"), float("inf")), r"edge s0->s1: gain must be a finite"),
    ("reserved-layer-name", _text_replace('"s3"', '"training"'), r"name .* got 'training'"),
    ("no-output-layer", lambda m, t: m["network"]["layers"].pop(), r"the last layer must be the output 'y'"),
    ("settings-not-object", _set(("settings",), [1, 2]), r"'settings' must be an object, got list"),
    ("future-version", _set(("version",), 99), r"format version 99"),
    ("repeated-json-key", _repeated_key, r"not valid JSON: a key repeats in one object: \['alpha'\]"),
]


def _pair(valid, mutate):
    meta = json.loads(json.dumps(valid[0]))
    tensors = {k: v.clone() for k, v in valid[1].items()}
    out = mutate(meta, tensors)
    json_bytes, tensor_bytes = out if isinstance(out, tuple) else (None, None)
    if json_bytes is None:
        json_bytes = json.dumps(meta).encode()
    if tensor_bytes is None:
        tensor_bytes = st_save({k: v.contiguous() for k, v in tensors.items()})
    return json_bytes, tensor_bytes


def _write(folder, pair):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{NAME}.json").write_bytes(pair[0])
    (folder / f"{NAME}.safetensors").write_bytes(pair[1])
    return folder / NAME


def _cli(stem, capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.setenv("EXPLORER_NATIVE", "0")  # eager steps: no compiler in this test
    rc = main(["relax", "--checkpoint", str(stem), "--t-free", "2", "--device", "cpu"])
    return rc, capsys.readouterr().err


def test_the_corpus_is_large_and_its_names_are_unique():
    ids = [case[0] for case in REFUSED]
    assert len(ids) >= 28 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("case_id,mutate,pattern", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_hostile_checkpoint_is_refused_alike_by_the_cli_and_the_upload(
        case_id, mutate, pattern, valid, tmp_path, capsys, monkeypatch):
    pair = _pair(valid, mutate)
    rc, err = _cli(_write(tmp_path, pair), capsys, monkeypatch)
    assert rc == 2, err
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    message = err[len("error: "):].strip()
    assert re.search(pattern, message), message
    with pytest.raises(SettingError) as info:
        load_upload({f"{NAME}.json": pair[0], f"{NAME}.safetensors": pair[1]})
    assert str(info.value) == f"cannot load checkpoint {NAME}: {message}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_weights_are_converted_and_the_conversion_is_said(dtype, valid, tmp_path, capsys, monkeypatch):
    pair = _pair(valid, _replace_tensor("weights.s1_s2", lambda w: w.to(dtype)))
    rc, err = _cli(_write(tmp_path, pair), capsys, monkeypatch)
    name = str(dtype).replace("torch.", "")
    assert rc == 0, err
    assert err.count("\n") == 1 and f"converted 1 tensor: weights.s1_s2: {name} -> float32" in err
    _, loaded = load_upload({f"{NAME}.json": pair[0], f"{NAME}.safetensors": pair[1]})
    assert loaded.description["conversions"] == [f"weights.s1_s2: {name} -> float32"]
    assert loaded.source == f"uploaded checkpoint {NAME} (1 tensor converted to float32)"
    w = loaded.net.weights["s1_s2"]
    assert w.dtype == torch.float32 and torch.equal(w, valid[1]["weights.s1_s2"].to(dtype).float())


def test_the_valid_pair_loads_on_both_paths_with_nothing_converted(valid, tmp_path, capsys, monkeypatch):
    pair = _pair(valid, lambda m, t: None)
    rc, err = _cli(_write(tmp_path, pair), capsys, monkeypatch)
    assert rc == 0 and err == ""
    _, loaded = load_upload({f"{NAME}.json": pair[0], f"{NAME}.safetensors": pair[1]})
    assert loaded.description["conversions"] == []


FORMER_TRACEBACKS = ("negative-shape", "channels-1e9", "stride-0")


@pytest.fixture(scope="module")
def former_tracebacks(valid, tmp_path_factory) -> dict:
    """Each of the three checkpoints that used to raise a traceback, loaded by ``relax`` in a process of
    its own; the three processes run side by side (each mostly imports torch). Returns the finished
    processes by case id."""
    folder = tmp_path_factory.mktemp("former-tracebacks")
    procs = {}
    for case_id in FORMER_TRACEBACKS:
        _, mutate, _pattern = next(c for c in REFUSED if c[0] == case_id)
        stem = _write(folder / case_id, _pair(valid, mutate))
        procs[case_id] = cli("relax", "--checkpoint", str(stem), "--t-free", "2", env={"EXPLORER_NATIVE": "0"})
    return {case_id: (r.returncode, r.stdout, r.stderr) for case_id, r in side_by_side(procs).items()}


@pytest.mark.parametrize("case_id", FORMER_TRACEBACKS)
def test_the_three_former_tracebacks_exit_2_with_one_line_in_a_real_process(case_id, former_tracebacks):
    pattern = next(c for c in REFUSED if c[0] == case_id)[2]
    returncode, stdout, stderr = former_tracebacks[case_id]
    assert returncode == 2 and stdout == ""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert re.search(pattern, stderr)
