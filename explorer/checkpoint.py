"""Checkpoints: ``NAME.safetensors`` (tensors by stable name) + ``NAME.json``.

The JSON holds the network description, the tensor names per edge and layer,
alpha, the schedule and settings, and provenance. Loading never unpickles; a
file that does not match its description names the tensor and the mismatch.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .network import HopfieldNetwork, NetworkSpec, SpecError

FORMAT = "hopfield-explorer-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file, tensor and why."""


def stem_of(path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".json", ".safetensors") else p


def tensor_table(net: HopfieldNetwork) -> dict[str, dict]:
    table = {}
    for e in net.edges:
        w = net.weight(e)
        table[f"weights.{e.spec.key}"] = {"shape": list(w.shape), "edge": e.spec.name, "kind": e.kind}
    for n in net.layer_names:
        table[f"biases.{n}"] = {"shape": list(net.biases[n].shape), "layer": n}
    return table


def describe(net: HopfieldNetwork, settings: dict | None = None, provenance: dict | None = None) -> dict:
    prov = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": platform.python_version()}
    prov.update(provenance or {})
    settings = dict(settings or {})
    return {"format": FORMAT, "version": VERSION, "network": net.spec.to_dict(),
            "alpha": net.spec.alpha, "schedule": settings.get("schedule", "paper"),
            "settings": settings, "tensors": tensor_table(net), "provenance": prov}


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; checkpoints are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(net: HopfieldNetwork, path, settings: dict | None = None,
                    provenance: dict | None = None, extra_tensors: dict | None = None,
                    description: dict | None = None) -> Path:
    """Write NAME.safetensors then NAME.json, each atomically. Returns the stem.

    ``description``: more top-level fields of the JSON (a trainer's position and card)."""
    stem = stem_of(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[k] = v.detach().to("cpu").contiguous()
    meta = describe(net, settings, provenance)
    meta.update(description or {})
    _atomic_write(stem.with_suffix(".safetensors"), st_save(tensors, metadata={"format": FORMAT}))
    _atomic_write(stem.with_suffix(".json"), json.dumps(meta, indent=2).encode())
    return stem


def load_checkpoint(path, device=None, dtype=torch.float32, allow_nonfinite: bool = False):
    """Load ``NAME`` (or NAME.json / NAME.safetensors). Returns (network, description)."""
    stem = stem_of(path)
    jpath, spath = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    for p in (jpath, spath):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {p} does not exist (a checkpoint is "
                                  f"{stem.name}.json plus {stem.name}.safetensors)")
    return load_checkpoint_bytes(jpath.read_bytes(), spath.read_bytes(), name=stem.name,
                                 device=device, dtype=dtype, allow_nonfinite=allow_nonfinite)


def load_checkpoint_bytes(json_bytes: bytes, tensor_bytes: bytes, name: str = "checkpoint",
                          device=None, dtype=torch.float32, allow_nonfinite: bool = False):
    """Load from the two files' contents (e.g. an upload). Returns (network, description)."""
    try:
        meta = json.loads(json_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{name}.json is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{name}.json is not a {FORMAT} description (field 'format' missing or wrong)")
    if "network" not in meta:
        raise CheckpointError(f"{name}.json has no 'network' description")
    try:
        spec = NetworkSpec.from_dict(meta["network"])
    except SpecError as exc:
        raise CheckpointError(f"{name}.json: {exc}") from exc
    try:
        tensors = st_load(tensor_bytes)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(f"{name}.safetensors is truncated or not a safetensors file: {exc}") from exc
    net = HopfieldNetwork(spec, seed=None, dtype=dtype)
    expected = net.state_dict()
    described = meta.get("tensors", {})
    for key, value in expected.items():
        if key not in tensors:
            where = described.get(key, {}).get("edge") or described.get(key, {}).get("layer") or key
            raise CheckpointError(f"{name}.safetensors lacks tensor {key} ({where}) that the description needs")
        got = tuple(tensors[key].shape)
        if got != tuple(value.shape):
            raise CheckpointError(f"tensor {key} has shape {got} in {name}.safetensors, but the "
                                  f"network description needs {tuple(value.shape)}")
        if not allow_nonfinite and not torch.isfinite(tensors[key]).all():
            raise CheckpointError(f"tensor {key} in {name}.safetensors contains NaN or infinite values")
    extra = sorted(k for k in tensors if k not in expected and not k.startswith("extra."))
    if extra:
        raise CheckpointError(f"{name}.safetensors holds tensors the description does not know: {extra[:5]}")
    net.load_state_dict({k: tensors[k] for k in expected}, strict=True)
    if device is not None:
        net = net.to(device)
    meta["extra_tensors"] = {k: v for k, v in tensors.items() if k.startswith("extra.")}
    return net, meta
