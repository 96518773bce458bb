"""Checkpoints: ``NAME.safetensors`` (tensors by stable name) + ``NAME.json``.

The JSON holds the network description, the tensor names per edge and layer,
alpha, the schedule and settings, and provenance. Loading never unpickles; a
file that does not match its description names the tensor and the mismatch.

Loading trusts nothing and allocates nothing before every check has passed
(the CLI and an upload run the same checks): the description field by field
and its sizes against the memory budget (network.py), then the safetensors
header (names, dtypes, extents), then the values. Integer and boolean weights
are refused; other float dtypes are converted and listed in
``description["conversions"]``.
"""
from __future__ import annotations

import collections
import datetime as _dt
import json
import math
import os
import platform
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .dynamics import SCHEDULES
from .edges import EDGE_KINDS
from .network import BUDGET_ENV, HopfieldNetwork, NetworkSpec, SpecError, memory_budget

FORMAT = "hopfield-explorer-checkpoint"
VERSION = 1
MAX_JSON_BYTES = 16 * 2 ** 20
# Auxiliary tensors a checkpoint may carry beside the network's: optimiser state, training position,
# RNG state, batch-norm (baseline.py). Any other tensor name is refused.
AUX_PREFIXES = ("extra.optim.", "extra.train.", "extra.rng.", "extra.bn.")
SECTIONS = ("settings", "tensors", "provenance", "training", "card")
# safetensors dtype names -> torch dtypes (a name outside this table is refused, not guessed)
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
          "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


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
        if not k.startswith(AUX_PREFIXES):  # the loader would refuse it
            raise ValueError(f"extra tensor {k!r} must be named under one of {AUX_PREFIXES}")
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
    try:
        # Sizes first: a hostile file is refused before it is read into memory.
        limit = _tensor_file_limit()
        if jpath.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{jpath.name} is {jpath.stat().st_size:,} bytes; at most "
                                  f"{MAX_JSON_BYTES:,} are read")
        if spath.stat().st_size > limit:
            raise CheckpointError(f"{spath.name} is {spath.stat().st_size:,} bytes, over {limit:,} (four "
                                  f"times the memory budget; set {BUDGET_ENV} to allow more)")
        json_bytes, tensor_bytes = jpath.read_bytes(), spath.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {stem}: {_one_line(exc)}") from exc
    return load_checkpoint_bytes(json_bytes, tensor_bytes, name=stem.name,
                                 device=device, dtype=dtype, allow_nonfinite=allow_nonfinite)


def load_checkpoint_bytes(json_bytes: bytes, tensor_bytes: bytes, name: str = "checkpoint",
                          device=None, dtype=torch.float32, allow_nonfinite: bool = False):
    """Load from the two files' contents (an upload, or the CLI's files). Returns (network, description).

    Every check runs before the network is allocated. ``description["conversions"]`` lists each
    weight tensor stored in another float dtype and converted (e.g. "weights.s0_s1: float64 -> float32");
    ``description["extra_tensors"]`` holds the auxiliary ``extra.*`` tensors (optimiser, position, RNG,
    batch norm).
    """
    meta = read_description(json_bytes, name)
    spec = description_spec(meta, name)
    tensors, conversions = read_tensors(spec, tensor_bytes, name, dtype, allow_nonfinite)
    net = HopfieldNetwork(spec, seed=None, dtype=dtype)
    net.load_state_dict({k: tensors[k] for k in expected_tensors(spec)}, strict=True)
    if device is not None:
        net = net.to(device)
    meta["extra_tensors"] = {k: v for k, v in tensors.items() if k.startswith(AUX_PREFIXES)}
    meta["conversions"] = conversions
    return net, meta


def _one_line(exc) -> str:
    return " ".join(str(exc).split())[:300]


def _tensor_file_limit() -> int:
    try:
        return 4 * memory_budget()
    except SpecError as exc:
        raise CheckpointError(str(exc)) from exc


def _object_without_repeats(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):  # json.loads would keep the last silently
        counts = collections.Counter(k for k, _ in pairs)
        raise ValueError(f"a key repeats in one object: {sorted(k for k, n in counts.items() if n > 1)[:5]}")
    return out


def _short_int(text: str) -> int:
    if len(text) > 30:
        raise ValueError(f"a whole number of {len(text)} digits ({text[:12]}...)")
    return int(text)


def _parse_json(data: bytes, what: str):
    if len(data) > MAX_JSON_BYTES:
        raise CheckpointError(f"{what} is {len(data):,} bytes; at most {MAX_JSON_BYTES:,} are read")
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_object_without_repeats,
                          parse_int=_short_int)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{what} is not valid JSON: {_one_line(exc)}") from exc


def read_description(json_bytes: bytes, name: str) -> dict:
    """The description as a dict, its sections type-checked (the network itself: description_spec)."""
    meta = _parse_json(json_bytes, f"{name}.json")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{name}.json is not a {FORMAT} description (field 'format' missing or wrong)")
    version = meta.get("version", VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
        raise CheckpointError(f"{name}.json has format version {version!r:.40}; this explorer reads "
                              f"version {VERSION}")
    if "network" not in meta:
        raise CheckpointError(f"{name}.json has no 'network' description")
    for key in SECTIONS:
        if key in meta and meta[key] is not None and not isinstance(meta[key], dict):
            raise CheckpointError(f"{name}.json: '{key}' must be an object, got {type(meta[key]).__name__}")
    for where, value in (("schedule", meta.get("schedule")),
                         ("settings.schedule", (meta.get("settings") or {}).get("schedule"))):
        if value is not None and value not in SCHEDULES:
            raise CheckpointError(f"{name}.json: unknown {where} {value!r:.60}; choose one of {SCHEDULES}")
    return meta


def description_spec(meta: dict, name: str) -> NetworkSpec:
    """The network of a description read by :func:`read_description`, checked against the memory budget."""
    try:
        spec = NetworkSpec.from_dict(meta["network"])
    except SpecError as exc:
        raise CheckpointError(f"{name}.json: {exc}") from exc
    alpha = meta.get("alpha", spec.alpha)  # a copy for readers; the network's alpha is the one used
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
        raise CheckpointError(f"{name}.json: alpha at the top level must be a positive finite number, "
                              f"got {alpha!r:.40}")
    return spec


def expected_tensors(spec: NetworkSpec) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (shape, what it is) for a description, without allocating anything."""
    out = {}
    for e in spec.edges:
        edge = EDGE_KINDS[e.kind](e, spec.shape_of(e.src), spec.shape_of(e.dst))
        out[f"weights.{e.key}"] = (tuple(edge.weight_shape), e.name)
    for l in spec.layers:
        out[f"biases.{l.name}"] = ((l.shape[0],), l.name)
    return out


def _read_header(data: bytes, name: str) -> dict[str, dict]:
    """The safetensors header (name -> dtype, shape), read without touching the data."""
    what = f"{name}.safetensors"
    if len(data) < 8:
        raise CheckpointError(f"{what} is truncated or not a safetensors file ({len(data)} bytes)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise CheckpointError(f"{what} is truncated or not a safetensors file (its header claims "
                              f"{size:,} bytes, the file holds {len(data) - 8:,})")
    header = _parse_json(data[8:8 + size], f"the header of {what}")
    if not isinstance(header, dict):
        raise CheckpointError(f"{what} is not a safetensors file (its header is not an object)")
    header.pop("__metadata__", None)
    for key, entry in header.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
                and isinstance(entry.get("shape"), list)):
            raise CheckpointError(f"{what}: the header entry for {key!r:.60} is malformed")
        if entry["dtype"] not in DTYPES:
            raise CheckpointError(f"{what}: tensor {key!r:.60} has dtype {entry['dtype']!r:.20}, "
                                  f"which this explorer cannot read")
        _check_extent(key, entry, len(data) - 8 - size, what)
    return header


def _check_extent(key: str, entry: dict, room: int, what: str) -> None:
    """A header entry's shape must fill exactly its byte range, inside the file."""
    shape, offsets = entry["shape"], entry.get("data_offsets")
    if not (all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape)
            and isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in offsets)
            and 0 <= offsets[0] <= offsets[1] <= room):
        raise CheckpointError(f"{what}: the header entry for {key!r:.60} is malformed or points outside the file")
    claimed = math.prod(shape) * DTYPES[entry["dtype"]].itemsize
    if claimed != offsets[1] - offsets[0]:
        raise CheckpointError(f"{what}: tensor {key!r:.60} claims shape {shape} ({claimed:,} bytes) "
                              f"but holds {offsets[1] - offsets[0]:,} bytes")


def read_tensors(spec: NetworkSpec, data: bytes, name: str, dtype=torch.float32,
                 allow_nonfinite: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of ``data`` checked against ``spec`` (the one check both the CLI and an upload run).

    Missing, unknown, integer or boolean, mis-shaped and non-finite weights are refused by name; other
    float dtypes are converted to ``dtype`` and listed in the returned conversions.
    """
    what = f"{name}.safetensors"
    header = _read_header(data, name)
    expected = expected_tensors(spec)
    missing = [k for k in expected if k not in header]
    if missing:
        raise CheckpointError(f"{what} lacks tensor {missing[0]} ({expected[missing[0]][1]}) that the "
                              f"description needs" + _and_more(missing))
    unknown = sorted(k for k in header if k not in expected and not k.startswith(AUX_PREFIXES))
    if unknown:
        raise CheckpointError(f"{what} holds tensors the description does not know: {unknown[:5]}"
                              + _and_more(unknown, 5))
    for key, (shape, where) in expected.items():
        stored = header[key]["dtype"]
        if not DTYPES[stored].is_floating_point:
            raise CheckpointError(f"tensor {key} ({where}) in {what} holds {DTYPES[stored]} values; "
                                  f"weights and biases must be floating point")
        if tuple(header[key]["shape"]) != shape:
            raise CheckpointError(f"tensor {key} has shape {tuple(header[key]['shape'])} in {what}, but the "
                                  f"network description needs {shape}")
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises several types for a broken file; none is unpickled
        raise CheckpointError(f"{what} is truncated or not a safetensors file: {_one_line(exc)}") from exc
    conversions = []
    for key in expected:
        stored = DTYPES[header[key]["dtype"]]
        if stored != dtype:
            tensors[key] = tensors[key].to(dtype)
            if stored != torch.float32:  # float32 is what checkpoints hold; --float64 asks for the rest
                conversions.append(f"{key}: {_dtype_name(stored)} -> {_dtype_name(dtype)}")
        if not allow_nonfinite and not torch.isfinite(tensors[key]).all():
            after = f" (after conversion from {_dtype_name(stored)})" if stored != dtype else ""
            raise CheckpointError(f"tensor {key} in {what} contains NaN or infinite values{after}")
    return tensors, conversions


def _and_more(items: list, shown: int = 1) -> str:
    return f" (and {len(items) - shown} more)" if len(items) > shown else ""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
