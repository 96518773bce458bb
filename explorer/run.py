"""A run as data: its settings, the network's identity, the input, every phase's records and verdicts.

A :class:`Run` is what one relaxation (free phase, then the nudged phases)
produced, in the one record format of :mod:`explorer.record`. A
:class:`RunStore` keeps a session's recent runs within a memory budget. A run
is saved as one Parquet file (:func:`save`, :func:`load`), never pickled:
``pandas.read_parquet(path)`` gives one row per phase, step, layer and sample
with every ``LAYER_STATS`` and ``ENERGY_STATS`` column (the energies repeat
on each layer's row), the recorded units and states as list columns; the
settings, network identity, input and verdicts are JSON in the file's schema
metadata (key ``explorer.run``).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .network import OUTPUT
from .diagnosis import diagnose
from .dynamics import DEFAULT_TOL
from .record import ENERGY_STATS, LAYER_STATS, PhaseResult, StepRecord, Verdict

FORMAT = "explorer.run/1"
META_KEY = b"explorer.run"
PHASE_ORDER = ("free", "nudged+", "nudged-")
STORE_ENV = "EXPLORER_RUN_STORE_MB"
DEFAULT_STORE_MB = 64


class RunFileError(ValueError):
    """A file that is not a run this explorer can read; the message says why."""


def verdict_data(verdict: Verdict) -> dict:
    """The verdict as data, every finding with its ``evidence`` (an empty dict where there is none)."""
    out = verdict.to_dict()
    for f, d in zip(verdict.findings, out["findings"]):
        d.setdefault("evidence", dict(getattr(f, "evidence", None) or {}))
    return out


def rose_steps(verdict: dict) -> list[int]:
    """The steps at which the engine found the energy rose (its ``energy_rose`` finding's evidence;
    the first step alone where the finding carries no evidence)."""
    for f in verdict.get("findings", ()):
        if f.get("kind") == "energy_rose":
            steps = (f.get("evidence") or {}).get("steps")
            if steps is None:
                steps = [] if f.get("step") is None else [f["step"]]
            return [int(s) for s in steps]
    return []


@dataclass
class PhaseRun:
    """One phase of a run: its records (on the CPU), how it ended, and y at its end."""
    phase: str
    beta: float
    steps: int
    verdict: dict
    records: list[StepRecord] = field(default_factory=list)
    output: torch.Tensor | None = None        # y at the end of the phase, [batch, n_classes]

    @classmethod
    def from_result(cls, result: PhaseResult) -> "PhaseRun":
        y = result.state.get(OUTPUT)
        return cls(result.phase, float(result.beta), int(result.steps), verdict_data(result.verdict),
                   [r.to("cpu") for r in result.records],
                   None if y is None else y.detach().to("cpu", copy=True))


def _weights_hash(net) -> str:
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


_HASHES: dict[tuple, str] = {}


def network_identity(net, model: str) -> dict:
    """Which network ran: its name in the picker, its description and a SHA-256 of its weights.

    The hash is cached per weight storage and version, so a slider move does not rehash."""
    key = tuple((n, t.data_ptr(), t._version) for n, t in net.state_dict().items())
    digest = _HASHES.get(key)
    if digest is None:
        if len(_HASHES) > 64:
            _HASHES.clear()
        digest = _HASHES[key] = _weights_hash(net)
    return {"model": model, "weights_sha256": digest, "spec": net.spec.to_dict(),
            "layers": list(net.layer_names), "parameters": int(net.parameter_count())}


@dataclass(eq=False)
class Run:
    """One run, as data. ``settings`` holds beta, t_free, t_nudge, schedule, alpha, tol and the rest."""
    id: str
    settings: dict
    network: dict                     # network_identity(): model, weights_sha256, spec, layers
    x: torch.Tensor                   # the input batch
    target: torch.Tensor              # class index per sample
    class_names: tuple[str, ...] = ()
    sample: int | None = None         # the input's index in the page's gallery
    record: dict = field(default_factory=dict)   # the RecordConfig the records were made with
    phases: dict[str, PhaseRun] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    request: object = None            # the app's RunRequest while in memory (never saved)

    def __post_init__(self):
        # As a file gives them back: JSON types (lists, not tuples), so a loaded run compares equal.
        self.settings, self.network, self.record = json.loads(json.dumps([self.settings, self.network,
                                                                           self.record]))

    @staticmethod
    def new_id() -> str:
        """Unique, and in the order runs were made: milliseconds since 1970 in hex, then random."""
        return f"{time.time_ns() // 1_000_000:011x}{uuid.uuid4().hex[:5]}"

    # -- geometry of the time axis (free 0..T_free, nudged + after, nudged - after that) ------
    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.network["layers"])

    @property
    def hidden(self) -> tuple[str, ...]:
        return tuple(n for n in self.layers if n != OUTPUT)

    @property
    def beta(self) -> float:
        return float(self.settings["beta"])

    @property
    def label(self) -> int:
        return int(self.target.reshape(-1)[0])

    @property
    def residual(self) -> bool:
        return any(e.get("kind") == "skip" for e in self.network["spec"].get("edges", ()))

    @property
    def n_classes(self) -> int:
        return int(dict((l["name"], l["shape"]) for l in self.network["spec"]["layers"])[OUTPUT][0])

    def shape_of(self, layer: str) -> tuple[int, ...]:
        return tuple(dict((l["name"], l["shape"]) for l in self.network["spec"]["layers"])[layer])

    def steps_of(self, phase: str) -> int:
        return int(self.settings["t_free"] if phase == "free" else self.settings["t_nudge"])

    def offset(self, phase: str) -> int:
        return {"free": 0, "nudged+": self.steps_of("free"),
                "nudged-": self.steps_of("free") + self.steps_of("nudged+")}[phase]

    @property
    def x_end(self) -> int:
        return self.steps_of("free") + 2 * self.steps_of("nudged+")

    # -- contents ---------------------------------------------------------------------------
    def add_phase(self, result: PhaseResult) -> PhaseRun:
        """Keep a finished phase, its verdict with the diagnosis of sample 0 (explorer.diagnosis)
        at the run's tolerance."""
        p = self.phases[result.phase] = PhaseRun.from_result(result)
        if result.records:
            tol = self.settings.get("tol") or DEFAULT_TOL
            p.verdict["diagnosis"] = diagnose(result, float(tol), sample=0).to_dict()
        return p

    def records(self):
        """Every record, phase after phase."""
        for name in PHASE_ORDER:
            if name in self.phases:
                yield from self.phases[name].records

    def nbytes(self) -> int:
        """Memory held by the run's tensors (what the store counts)."""
        total = self.x.nbytes + self.target.nbytes
        for p in self.phases.values():
            total += 0 if p.output is None else p.output.nbytes
            for r in p.records:
                total += r.stats.nbytes + r.energy.nbytes + (0 if r.units is None else r.units.nbytes)
                total += sum(v.nbytes for v in r.states.values())
        return total

    def summary(self) -> str:
        s = self.settings
        name = self.class_names[self.label] if 0 <= self.label < len(self.class_names) else f"class {self.label}"
        verdict = self.phases["free"].verdict["status"] if "free" in self.phases else "…"
        return (f"{self.network['model']} · #{self.sample} {name} · β {s['beta']:.3g} · α {s['alpha']:.3g} · "
                f"{s['schedule']} · {verdict} · {time.strftime('%H:%M:%S', time.localtime(self.created))}")


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------

def store_budget(max_bytes: int | None = None) -> int:
    if max_bytes is not None:
        return int(max_bytes)
    text = os.environ.get(STORE_ENV, "")
    try:
        mb = float(text) if text else DEFAULT_STORE_MB
    except ValueError as exc:
        raise ValueError(f"{STORE_ENV}={text!r} is not a number of MiB") from exc
    return int(mb * 2 ** 20)


class RunStore:
    """A session's recent runs, newest last, within ``max_bytes`` (default ``EXPLORER_RUN_STORE_MB``
    or 64 MiB). Adding evicts the oldest runs, never a pinned one nor the current one."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = store_budget(max_bytes)
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.pinned: set[str] = set()
        self.current: str | None = None
        self._lock = threading.Lock()
        self.version = 0          # bumped at every change (the page redraws its list on a change)

    def add(self, run: Run, current: bool = True) -> list[str]:
        """Keep ``run`` (the current one unless told); returns the ids evicted."""
        with self._lock:
            self._runs[run.id] = run
            self._runs.move_to_end(run.id)
            self._sizes[run.id] = run.nbytes()
            if current:
                self.current = run.id
            evicted = self._evict()
            self.version += 1
            return evicted

    def _evict(self) -> list[str]:
        evicted = []
        for rid in list(self._runs):
            if self.nbytes <= self.max_bytes:
                break
            if rid in self.pinned or rid == self.current:
                continue
            del self._runs[rid]
            del self._sizes[rid]
            evicted.append(rid)
        return evicted

    def select(self, run_id: str) -> Run:
        with self._lock:
            run = self._runs[run_id]
            self.current = run_id
            self.version += 1
            return run

    def pin(self, run_id: str, pinned: bool = True) -> None:
        with self._lock:
            (self.pinned.add if pinned else self.pinned.discard)(run_id)
            self._evict()
            self.version += 1

    @property
    def nbytes(self) -> int:
        return sum(self._sizes.values())

    def get(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    def runs(self) -> list[Run]:
        with self._lock:
            return list(self._runs.values())

    def __contains__(self, run_id) -> bool:
        return run_id in self._runs

    def __len__(self) -> int:
        return len(self._runs)


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

def _tensor_json(t: torch.Tensor | None):
    if t is None:
        return None
    t = t.detach().to("cpu")
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "data": t.reshape(-1).tolist()}


def _tensor_from_json(d) -> torch.Tensor | None:
    if d is None:
        return None
    dtype = getattr(torch, d["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise RunFileError(f"unknown tensor type {d['dtype']!r}")
    return torch.tensor(d["data"], dtype=dtype).reshape(d["shape"])


def _state_rows(records, layers, batch, state_samples) -> tuple[list[int], list[np.ndarray], dict]:
    """Rows (in phase, step, layer, sample order) that carry a recorded state, with the state."""
    rows, values, shapes = [], [], {}
    n_l = len(layers)
    for i, r in enumerate(records):
        for name, t in r.states.items():
            if name not in layers:
                raise ValueError(f"the record holds the state of {name!r}, which is not among its layers")
            samples = [k for k in state_samples if k < batch]
            if t.shape[0] != len(samples):
                raise ValueError(f"a record holds {t.shape[0]} states of {name!r} for samples {samples}")
            shapes[name] = list(t.shape[1:])
            for j, k in enumerate(samples):
                rows.append((i * n_l + layers.index(name)) * batch + k)
                values.append(t[j].reshape(-1).numpy())
    order = np.argsort(rows, kind="stable")
    return [rows[o] for o in order], [values[o] for o in order], shapes


def _list_column(pa, n_rows: int, rows: list[int], values: list[np.ndarray], dtype) -> "pa.Array":
    """A list column of ``n_rows`` with ``values[k]`` at row ``rows[k]`` and nulls elsewhere."""
    lengths = np.zeros(n_rows, dtype=np.int64)
    lengths[rows] = [len(v) for v in values]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32 if lengths.sum() < 2 ** 31 else np.int64)
    mask = np.ones(n_rows, dtype=bool)
    mask[rows] = False
    flat = np.concatenate(values) if values else np.zeros(0, dtype=dtype)
    array_type = pa.LargeListArray if offsets.dtype == np.int64 else pa.ListArray
    return array_type.from_arrays(pa.array(offsets), pa.array(flat), mask=pa.array(mask))


def to_table(run: Run):
    """The run as a pyarrow Table (rows: phase, step, layer, sample; metadata: the rest)."""
    import pyarrow as pa
    records = list(run.records())
    layers = list(run.layers)
    batch = int(run.x.shape[0])
    for r in records:
        if list(r.layers) != layers:
            raise ValueError(f"a record's layers {r.layers} differ from the run's {layers}")
    n_l, n_rows = len(layers), len(records) * len(layers) * batch
    dtype = records[0].stats.numpy().dtype if records else np.float32
    cols = {"phase": np.repeat([r.phase for r in records], n_l * batch),
            "step": np.repeat(np.array([r.step for r in records], dtype=np.int32), n_l * batch),
            "beta": np.repeat(np.array([r.beta for r in records], dtype=np.float64), n_l * batch),
            "layer": np.tile(np.repeat(layers, batch), len(records)),
            "sample": np.tile(np.arange(batch, dtype=np.int32), len(records) * n_l)}
    stats = (torch.stack([r.stats for r in records]).permute(0, 1, 3, 2).reshape(n_rows, -1).numpy()
             if records else np.zeros((0, len(LAYER_STATS)), dtype))
    for i, name in enumerate(LAYER_STATS):
        cols[name] = stats[:, i]
    energy = (torch.stack([r.energy for r in records]).permute(0, 2, 1).unsqueeze(1)
              .expand(-1, n_l, -1, -1).reshape(n_rows, -1).numpy() if records else np.zeros((0, 3), dtype))
    for i, name in enumerate(ENERGY_STATS):
        cols[name] = energy[:, i]
    arrays = {k: pa.array(v) for k, v in cols.items()}
    with_units = [r.units is not None for r in records]
    if any(with_units) and not all(with_units):
        raise ValueError("some records carry units and others do not")
    if records and all(with_units):
        units = torch.stack([r.units for r in records]).permute(0, 1, 3, 2).reshape(n_rows, -1).numpy()
        arrays["units"] = _list_column(pa, n_rows, list(range(n_rows)), list(units), units.dtype)
    else:
        arrays["units"] = pa.nulls(n_rows, pa.list_(pa.from_numpy_dtype(dtype)))
    rows, values, shapes = _state_rows(records, layers, batch, run.record.get("state_samples", (0,)))
    state_dtype = values[0].dtype if values else dtype
    arrays["state"] = _list_column(pa, n_rows, rows, values, state_dtype)
    meta = {"format": FORMAT, "id": run.id, "settings": run.settings, "network": run.network,
            "x": _tensor_json(run.x), "target": _tensor_json(run.target), "class_names": list(run.class_names),
            "sample": run.sample, "record": run.record, "created": run.created, "state_shapes": shapes,
            "dtypes": {"stats": str(records[0].stats.dtype) if records else None,
                       "energy": str(records[0].energy.dtype) if records else None},
            "phases": [{"phase": p.phase, "beta": p.beta, "steps": p.steps, "verdict": p.verdict,
                        "records": len(p.records), "output": _tensor_json(p.output)}
                       for p in (run.phases[n] for n in PHASE_ORDER if n in run.phases)]}
    table = pa.table(arrays)
    return table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})


def save(run: Run, path=None) -> bytes | Path:
    """Write ``run`` as Parquet to ``path`` (returned), or return the file's bytes when no path is given."""
    import pyarrow.parquet as pq
    table = to_table(run)
    if path is None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()
    pq.write_table(table, str(path))
    return Path(path)


def load(source) -> Run:
    """A run from a file written by :func:`save` (a path, or the file's bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    what = "the file" if isinstance(source, (bytes, bytearray)) else f"{source}"
    try:
        table = pq.read_table(pa.BufferReader(bytes(source)) if isinstance(source, (bytes, bytearray))
                              else str(source))
    except (pa.ArrowException, OSError) as exc:
        # pyarrow prefixes "Could not open Parquet input source '<path>':" (empty for bytes): noise to a person.
        detail = re.sub(r"^Could not open Parquet input source '[^']*':\s*", "", str(exc))
        raise RunFileError(f"{what} is not a run file: it is not a readable Parquet file ({detail}); "
                           "open a file written by 'Save run'") from exc
    meta = (table.schema.metadata or {}).get(META_KEY)
    if meta is None:
        raise RunFileError(f"{what} is a Parquet file but not an explorer run: it has no {META_KEY.decode()!r} "
                           "metadata")
    try:
        return _from_table(table, json.loads(meta))
    except RunFileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise RunFileError(f"{what} is a damaged run file: {type(exc).__name__}: {exc}") from exc


def _from_table(table, meta: dict) -> Run:
    if meta.get("format") != FORMAT:
        raise RunFileError(f"unknown run file format {meta.get('format')!r} (this explorer reads {FORMAT})")
    layers = tuple(meta["network"]["layers"])
    x = _tensor_from_json(meta["x"])
    batch, n_l = int(x.shape[0]), len(layers)
    per_record = n_l * batch
    n_records = sum(p["records"] for p in meta["phases"])
    if table.num_rows != n_records * per_record:
        raise RunFileError(f"the file holds {table.num_rows} rows, its metadata describes "
                           f"{n_records * per_record}")
    col = {name: table.column(name).to_numpy() for name in (*LAYER_STATS, *ENERGY_STATS, "step", "beta")}
    phase_col = table.column("phase").to_pylist()[::per_record]
    stats = torch.from_numpy(np.stack([col[n] for n in LAYER_STATS], -1).reshape(n_records, n_l, batch, -1)
                             .transpose(0, 1, 3, 2).copy())
    energy = torch.from_numpy(np.stack([col[n] for n in ENERGY_STATS], -1).reshape(n_records, n_l, batch, -1)
                              [:, 0].transpose(0, 2, 1).copy())
    units = _read_list(table.column("units"), n_records * per_record)
    states = _read_list(table.column("state"), n_records * per_record)
    shapes = meta["state_shapes"]
    records = []
    for i in range(n_records):
        row0 = i * per_record
        u = None
        if units[row0] is not None:
            u = torch.from_numpy(np.stack(units[row0:row0 + per_record]).reshape(n_l, batch, -1)
                                 .transpose(0, 2, 1).copy())
        rec_states = {}
        for j, name in enumerate(layers):
            got = [states[row0 + j * batch + k] for k in range(batch)]
            got = [g for g in got if g is not None]
            if got:
                rec_states[name] = torch.from_numpy(np.stack(got).reshape(len(got), *shapes[name]).copy())
        records.append(StepRecord(phase_col[i], int(col["step"][row0]), float(col["beta"][row0]), layers,
                                  stats[i], energy[i], u, rec_states))
    phases, start = {}, 0
    for p in meta["phases"]:
        phases[p["phase"]] = PhaseRun(p["phase"], float(p["beta"]), int(p["steps"]), p["verdict"],
                                      records[start:start + p["records"]], _tensor_from_json(p["output"]))
        start += p["records"]
    return Run(id=meta["id"], settings=meta["settings"], network=meta["network"], x=x,
               target=_tensor_from_json(meta["target"]), class_names=tuple(meta["class_names"]),
               sample=meta["sample"], record=meta["record"], phases=phases, created=float(meta["created"]))


def _read_list(column, n_rows: int) -> list:
    """A list column as one numpy array per row (None where null), without per-value Python objects."""
    import pyarrow as pa
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count == n_rows:
        return [None] * n_rows
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy(zero_copy_only=False)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return [values[offsets[i]:offsets[i + 1]] if valid[i] else None for i in range(n_rows)]


__all__ = ["Run", "PhaseRun", "RunStore", "RunFileError", "save", "load", "to_table", "network_identity",
           "verdict_data", "rose_steps", "STORE_ENV"]
