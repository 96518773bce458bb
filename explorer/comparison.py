"""Two runs side by side (issue 16): what differs in their settings and in how they ended.

Reads only the runs' data (settings, network identity, per-phase verdicts with their diagnosis and
the free phase's stability), so a pinned run, a stored one and a run opened from a file compare alike.
"""
from __future__ import annotations

from .record import ENERGY_INDEX

SETTING_ROWS = ("beta", "alpha", "schedule", "t_free", "t_nudge", "tol")
PHASES = ("free", "nudged+", "nudged-")


def architecture(run) -> dict:
    """Model, depth and residual edges of a run's network, from its identity."""
    spec = run.network.get("spec") or {}
    layers = [l.get("name") for l in spec.get("layers", []) if isinstance(l, dict)]
    edges = [e for e in spec.get("edges", []) if isinstance(e, dict)]
    return {"model": run.network.get("model"), "depth": sum(1 for n in layers if n not in ("x", "y")),
            "residual": any(e.get("kind") == "skip" for e in edges)}


def outcome(run) -> dict:
    """How a run ended, per phase and overall, for sample 0."""
    out = {}
    for name in PHASES:
        p = run.phases.get(name)
        d = (p.verdict.get("diagnosis") if p is not None else None) or {}
        out[f"{name}: verdict"] = d.get("kind", p.verdict.get("status") if p is not None else None)
        out[f"{name}: steps to tolerance"] = d.get("met_at")
    free = run.phases.get("free")
    if free is not None and free.records:
        out["final Phi"] = float(free.records[-1].energy[ENERGY_INDEX["phi"], 0])
    if free is not None and free.output is not None:
        k = int(free.output[0].argmax())
        out["prediction"] = run.class_names[k] if k < len(run.class_names) else f"class {k}"
    st = (free.verdict.get("stability") if free is not None else None) or {}
    out["spectral radius"] = st.get("spectral_radius")
    return out


def differences(a, b) -> list[tuple[str, object, object, bool]]:
    """Rows (what, A's value, B's value, whether they differ): the settings, then the outcomes."""
    rows = []
    arch_a, arch_b = architecture(a), architecture(b)
    for key in ("model", "depth", "residual"):
        rows.append((key, arch_a[key], arch_b[key], arch_a[key] != arch_b[key]))
    for key in SETTING_ROWS:
        va, vb = a.settings.get(key), b.settings.get(key)
        rows.append((key, va, vb, va != vb))
    oa, ob = outcome(a), outcome(b)
    for key in oa:
        va, vb = oa.get(key), ob.get(key)
        same = va == vb if not isinstance(va, float) or not isinstance(vb, float) \
            else abs(va - vb) <= 1e-6 * (abs(va) + abs(vb) + 1e-12)
        rows.append((key, va, vb, not same))
    return rows
