"""Scan: one network and one setting over many inputs, batched (issue 17).

All images relax together in one batch (:func:`explorer.dynamics.each.relax_each`), with every
step recorded per sample; with ``stop_at_tol`` each image stops at its own first step under the
tolerance and leaves the batch, so its nudged phases start from its own free fixed point. Each
image's verdict comes from its own trace and findings (:func:`explorer.diagnosis.diagnose_each`):
the verdict that image gets when relaxed alone.
A scan keeps per-image summaries, not the full records: a user opens one image as a full run.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .diagnosis import Diagnosis, diagnose_each
from .dynamics.each import EachResult, relax_each
from .network import OUTPUT, HopfieldNetwork

SEVERITY = {"converged": 0.0, "no_steps": 0.0, "cancelled": 0.5, "stalled": 1.0, "not_converged": 2.0,
            "oscillating": 3.0, "diverged": 4.0, "non_finite": 5.0}
HISTOGRAM_BINS = 12


@dataclass
class ScanSettings:
    beta: float = 0.15
    t_free: int = 120
    t_nudge: int = 50
    schedule: str = "paper"
    tol: float = 1e-4
    stop_at_tol: bool = True
    stability: bool = True     # the spectral radius at each image's free fixed point (explorer.stability)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImageOutcome:
    """One image of a scan: its label, prediction and per-phase verdict."""
    index: int
    label: int
    prediction: int
    phases: dict[str, dict]             # phase -> Diagnosis.to_dict() (without the measure text)
    spectral_radius: float | None = None

    @property
    def correct(self) -> bool:
        return self.prediction == self.label

    @property
    def worst(self) -> dict:
        return max(self.phases.values(), key=lambda d: SEVERITY.get(d["kind"], 2.0))

    @property
    def severity(self) -> float:
        """For ordering a gallery of failures: the worst phase's class, then how far it is from tol."""
        w = self.worst
        final = w.get("final") or 0.0
        excess = math.log10(max(final, 1e-30) / w["tol"]) if math.isfinite(final) and final > 0 else 0.0
        return SEVERITY.get(w["kind"], 2.0) + 0.01 * max(0.0, min(excess, 99.0))

    @property
    def blamed_layer(self) -> str | None:
        """The layer the worst phase points at: a runaway layer, a silent one, else the slowest."""
        w = self.worst
        if w["kind"] == "converged":
            return None
        silent = [n["layer"] for n in w.get("notes", []) if n.get("kind") in ("silent", "saturated")]
        return w.get("runaway_layer") or (silent[0] if silent else None) or w.get("slowest_layer")

    def to_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "prediction": self.prediction,
                "correct": self.correct, "severity": self.severity, "blamed_layer": self.blamed_layer,
                "spectral_radius": self.spectral_radius, "phases": self.phases}


@dataclass
class ScanResult:
    settings: dict
    outcomes: list[ImageOutcome] = field(default_factory=list)
    steps_run: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict:
        """The numbers a scan is read for: per phase the fraction converged and the steps to tolerance,
        counts of failure classes and blamed layers, accuracy, the spectral radii."""
        n = len(self.outcomes)
        phases = list(self.outcomes[0].phases) if n else []
        out = {"images": n, "accuracy": (sum(o.correct for o in self.outcomes) / n) if n else None,
               "fraction_converged": {}, "median_steps": {}, "steps_histogram": {}, "energy_rose": 0.0}
        for p in phases:
            ds = [o.phases[p] for o in self.outcomes]
            met = [d["met_at"] for d in ds if d["kind"] == "converged" and d["met_at"] is not None]
            out["fraction_converged"][p] = sum(d["kind"] == "converged" for d in ds) / n
            out["median_steps"][p] = float(np.median(met)) if met else None
            out["steps_histogram"][p] = _histogram(met, max(d["steps"] for d in ds))
        rose = [any(any(x.get("kind") == "energy_rose" for x in d.get("notes", [])) for d in o.phases.values())
                for o in self.outcomes]
        out["energy_rose"] = (sum(rose) / n) if n else None
        out["classes"] = dict(Counter(o.worst["kind"] for o in self.outcomes))
        out["blamed_layers"] = dict(Counter(o.blamed_layer for o in self.outcomes if o.blamed_layer))
        radii = [o.spectral_radius for o in self.outcomes if o.spectral_radius is not None]
        out["spectral_radius"] = {"median": float(np.median(radii)), "values": radii} if radii else None
        return out

    def failures(self) -> list[ImageOutcome]:
        """Images whose worst phase did not converge, most severe first."""
        return sorted((o for o in self.outcomes if o.worst["kind"] != "converged"), key=lambda o: -o.severity)

    def to_dict(self) -> dict:
        return {"settings": self.settings, "summary": self.summary(), "steps_run": self.steps_run,
                "seconds": self.seconds, "images": [o.to_dict() for o in self.outcomes]}


def _histogram(values, top: int) -> dict:
    edges = np.linspace(0, max(top, 1), HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=edges)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def run_each(net: HopfieldNetwork, x: torch.Tensor, labels: torch.Tensor, settings: ScanSettings,
             should_stop=None) -> list[EachResult]:
    """The three EP phases of every image as :func:`explorer.ep.run_phases` runs it alone: each image
    stops at its own first step under tol (``stop_at_tol``), and its nudged phases start from its own
    free fixed point."""
    tol = settings.tol if settings.stop_at_tol else None
    common = dict(tol=tol, schedule=settings.schedule, target=labels, should_stop=should_stop)
    free = relax_each(net, x, steps=settings.t_free, phase="free", **common)
    nudge = dict(steps=settings.t_nudge, state=free.state, free_state=free.state, state_phi=free.phi, **common)
    plus = relax_each(net, x, beta=settings.beta, phase="nudged+", **nudge)
    minus = relax_each(net, x, beta=-settings.beta, phase="nudged-", **nudge)
    return [free, plus, minus]


def scan_batch(net: HopfieldNetwork, x: torch.Tensor, labels: torch.Tensor, settings: ScanSettings,
               should_stop=None, first_index: int = 0) -> tuple[list[ImageOutcome], dict[str, int]]:
    """Relax one batch of images through the three EP phases; a verdict per image and phase, the one
    that image gets alone. Returns the outcomes and, per phase, the steps the batch ran (its slowest
    image's)."""
    phases = run_each(net, x, labels, settings, should_stop)
    per_phase = {p.phase: diagnose_each(p, settings.tol) for p in phases}
    free = phases[0]
    prediction = free.state[OUTPUT].argmax(1).tolist()
    radius = [None] * x.shape[0]
    if settings.stability and not (should_stop is not None and should_stop()):
        from .stability import spectrum
        radius = spectrum(net, x, free.state, schedule=settings.schedule).spectral_radius
    outcomes = []
    for b in range(x.shape[0]):
        if radius[b] is not None and math.isfinite(radius[b]):
            per_phase["free"][b].spectral_radius = float(radius[b])   # ρ at the free phase's end
        verdicts = {p: _summary(ds[b]) for p, ds in per_phase.items()}
        outcomes.append(ImageOutcome(first_index + b, int(labels[b]), int(prediction[b]), verdicts,
                                     None if radius[b] is None else float(radius[b])))
    return outcomes, {p.phase: max(p.steps, default=0) for p in phases}


def _summary(d: Diagnosis) -> dict:
    out = d.to_dict()
    out.pop("measure", None)
    # a cancel is the user's doing, not the image's (and a cancelled batch is not kept as a result)
    out["notes"] = [n for n in out["notes"] if n.get("kind") != "cancelled"]
    return out


def scan(net: HopfieldNetwork, x: torch.Tensor, labels: torch.Tensor, settings: ScanSettings | None = None, *,
         batch_size: int = 64, should_stop=None, progress=None) -> ScanResult:
    """Scan all images (``x`` [N, C, H, W], ``labels`` [N]) in batches of ``batch_size``.
    ``progress(done, total)`` is called after each batch; ``should_stop()`` cancels between steps
    (the finished batches are kept)."""
    import time
    settings = settings or ScanSettings()
    result = ScanResult(settings.to_dict())
    t0 = time.perf_counter()
    x, labels = net.check_input(x), labels.to(net.device)
    for start in range(0, x.shape[0], batch_size):
        if should_stop is not None and should_stop():
            break
        outcomes, steps = scan_batch(net, x[start:start + batch_size], labels[start:start + batch_size],
                                     settings, should_stop, first_index=start)
        if should_stop is not None and should_stop():
            break   # a batch cut short by the user is not a result
        result.outcomes += outcomes
        for p, s in steps.items():
            result.steps_run[p] = result.steps_run.get(p, 0) + s
        if progress is not None:
            progress(len(result.outcomes), x.shape[0])
    result.seconds = time.perf_counter() - t0
    return result


def scan_images(net: HopfieldNetwork, count: int | None = None, data_path=None):
    """The images a scan uses by default: the 40 shipped samples for a 1x28x28 model (the
    Fashion-MNIST test split when more are asked for and it is found); the CIFAR test split
    for a 3x32x32 model. Returns (x float [N, C, H, W], labels [N], where they came from)."""
    from . import data
    shape = tuple(net.spec.input_shape)
    if shape == (1, 28, 28) and (count is None or count <= 40):
        images, labels, _ = data.load_samples()
        source, name = "the 40 shipped Fashion-MNIST samples", "fashion_mnist"
    elif shape == (1, 28, 28):
        images, labels = data.load_fashion_mnist("test", data_path)
        source, name = "the Fashion-MNIST test split", "fashion_mnist"
    elif shape == (3, 32, 32):
        name = "cifar10" if net.spec.n_classes == 10 else "cifar100"
        images, labels = data.get_dataset_by_name(name, "test", data_path)
        source = f"the {name.upper()} test split"
    else:
        raise ValueError(f"no image set for input shape {shape}: a scan needs 1x28x28 (Fashion-MNIST) "
                         "or 3x32x32 (CIFAR) input")
    if count is not None:
        if count < 1:
            raise ValueError(f"--images must be at least 1, got {count}")
        images, labels = images[:count], labels[:count]
    x = data.normalize(images, name).to(device=net.device, dtype=net.dtype)
    return x, labels.to(torch.long), f"{len(labels)} of {source}"
