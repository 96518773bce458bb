"""Stability of the free fixed point: the spectral radius of one step's Jacobian.

Near a fixed point s*, the error of the relaxation obeys s_t+1 - s* ~ J (s_t - s*), J the
Jacobian of one iteration of the schedule (:func:`explorer.dynamics.step`) at s*. Its spectral
radius rho decides: rho < 1 converges, at rate rho per step; rho >= 1 cannot. Clipped units
contribute zero (autograd through the clamp). J is not symmetric (Gauss-Seidel groups), so its
dominant eigenvalue can be a complex pair that plain power iteration circles around: we take the
largest Ritz value of a small restarted Arnoldi (Krylov) subspace instead. The batch samples do not
interact, so J is block diagonal and one batched Jacobian-vector product serves every sample.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .dynamics import SCHEDULES, drive, one_hot, relax, schedule_groups, step
from .network import INPUT, OUTPUT, HopfieldNetwork
from .record import PhaseResult, RecordConfig

KRYLOV = 24          # Arnoldi vectors per restart
RESTARTS = 6         # at most this many restarts
MIN_STEPS = 6        # Arnoldi steps before the first convergence test
RTOL = 1e-3          # stop when every sample's Ritz residual is below RTOL * |theta| (rho: far closer)
START_NOISE = 0.1    # the share of seeded noise in the Krylov start (every direction present)
GS_CHUNK = 4        # samples per Gram-Schmidt pass: their Krylov bases stay in cache over its four products
RATE_WINDOW = 10     # observed rate: the geometric mean of the last this many step-size ratios


@dataclass
class Spectrum:
    """The dominant eigenvalue of one step's Jacobian, per sample."""

    spectral_radius: list[float]
    eigenvalue: list[complex]              # the dominant Ritz value (one of a conjugate pair)
    layer_share: list[dict[str, float]]    # the dominant direction's squared norm per layer, summing to 1
    residual: list[float]                  # ||J u - theta u|| for the unit Ritz vector u
    matvecs: int                           # Jacobian-vector products used (each serves the whole batch)


@dataclass
class Stability:
    """The free fixed point's stability under one schedule, per sample, with the evidence."""

    schedule: str
    spectral_radius: list[float]           # per sample
    observed_rate: list[float | None]      # per sample, from the step-size trace (None: too short)
    layer_share: list[dict[str, float]]    # per sample: where the dominant direction lives
    dominant_layer: list[str]              # per sample: the layer with the largest share
    eigenvalue: list[complex]
    residual: list[float]
    matvecs: int
    steps: int                             # free-phase steps run to reach the fixed point
    free_verdict: str
    explanation: str
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        def clean(v):
            return None if v is None or not math.isfinite(v) else v
        return {"schedule": self.schedule, "spectral_radius": [clean(v) for v in self.spectral_radius],
                "observed_rate": [clean(v) for v in self.observed_rate],
                "layer_share": self.layer_share, "dominant_layer": self.dominant_layer,
                "eigenvalue": [[clean(z.real), clean(z.imag)] for z in self.eigenvalue],
                "residual": [clean(v) for v in self.residual], "matvecs": self.matvecs,
                "steps": self.steps, "free_verdict": self.free_verdict, "explanation": self.explanation,
                "seconds": self.seconds}


# ---------------------------------------------------------------------------
# The Krylov estimate, for any batch of linear operators
# ---------------------------------------------------------------------------

def _ritz(H: torch.Tensor, k: int):
    """The largest-modulus Ritz pair of the leading k x k Hessenberg block, and its residual
    ||J u - theta u|| = h_(k+1,k) |y_k| (y of unit norm). In NumPy: for matrices this small its
    eig costs a tenth of torch's."""
    h = H[:, :k + 1, :k].detach().cpu().numpy()
    theta, Y = np.linalg.eig(h[:, :k, :])
    theta, Y = theta.astype(np.complex128), Y.astype(np.complex128)   # real when every Ritz value is
    idx = np.abs(theta).argmax(1)
    rows = np.arange(h.shape[0])
    y = Y[rows, :, idx]
    residual = np.abs(h[:, k, k - 1]) * np.abs(y[:, k - 1])
    return (torch.from_numpy(theta[rows, idx]).to(H.device), torch.from_numpy(y).to(H.device),
            torch.from_numpy(residual).to(H.device))


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """w minus its projection on ``basis`` [b, j, N], classical Gram-Schmidt twice; the coefficients
    are added into ``h_out`` [b, j]. (w^T V, a row against the basis, is 4x faster than V w, which
    copies V.)"""
    for _ in range(2):
        h = torch.bmm(w.unsqueeze(1), basis.transpose(1, 2))   # [b, 1, j]
        w = w - torch.bmm(h, basis).squeeze(1)
        h_out += h.squeeze(1).double()
    return w


def _ritz_vector(V: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """V y for the complex coefficients ``y`` [b, k]: real and imaginary parts as two real products
    (a complex copy of V costs more than both)."""
    basis = V[:, :y.shape[1]]
    re = torch.bmm(y.real.to(V.dtype).unsqueeze(1), basis).squeeze(1)
    im = torch.bmm(y.imag.to(V.dtype).unsqueeze(1), basis).squeeze(1)
    return torch.complex(re.double(), im.double())


# (dtype, device) -> the last Krylov basis buffer, kept for the next estimate: a fresh one of a batch's
# size (88 MB for 40 Fashion-MNIST images) is mapped anew by the allocator, and its first touch (page
# faults) cost 65 ms, a sixth of the estimate; written over, it costs 7 ms. Larger ones are not kept
# (Hopfield-ResNet13's is 30 MB a sample). One per thread: a page's relaxation worker and its scan job
# (and other pages' workers) estimate at the same time; the buffer goes with its thread.
_WORKSPACE = threading.local()
WORKSPACE_BYTES = 256 * 2**20


class EstimateStopped(Exception):
    """Raised inside an estimate whose ``should_stop()`` became true."""


def _basis(like: torch.Tensor, shape: tuple) -> torch.Tensor:
    """An uninitialised tensor of ``shape``, in the kept buffer (grown when too small) up to
    :data:`WORKSPACE_BYTES`, else a fresh one."""
    kept = _WORKSPACE.__dict__.setdefault("buffers", {})
    key, size = (like.dtype, like.device), math.prod(shape)
    buf = kept.get(key)
    if buf is None or buf.numel() < size:
        kept.pop(key, None)   # (the old buffer goes before the new one is mapped)
        buf = like.new_empty(size)
        if size * buf.element_size() <= WORKSPACE_BYTES:
            kept[key] = buf
    return buf[:size].view(shape)


def _runs(rows: list[int], size: int) -> list[tuple[int, int, int]]:
    """The sorted ``rows`` as runs of consecutive indices, at most ``size`` long: (first, end, where the run
    starts in ``rows``). A run's Krylov bases are one slice of V: no copy."""
    out, i = [], 0
    while i < len(rows):
        k = i + 1
        while k < len(rows) and rows[k] == rows[k - 1] + 1 and k - i < size:
            k += 1
        out.append((rows[i], rows[k - 1] + 1, i))
        i = k
    return out


def dominant_eigenvalue(matvec, v0: torch.Tensor, *, krylov: int = KRYLOV, restarts: int = RESTARTS,
                        rtol: float = RTOL, min_steps: int = MIN_STEPS):
    """The largest-modulus eigenvalue of each of a batch of (non-symmetric) operators.

    ``matvec(v, rows)`` maps [b, N] to [b, N], row i by the operator of sample ``rows[i]`` (a long
    tensor of indices into the batch); ``v0`` [B, N] starts it. Arnoldi (classical Gram-Schmidt
    twice), each sample stopping at its first Ritz test whose largest Ritz pair has a residual under
    ``rtol * |theta|`` (it then leaves the batch at once: its iterations are those it gets alone), else
    restarting from the real plane of that Ritz vector (which holds both members of a complex pair).
    A sample whose Krylov space closes (an invariant subspace: exact) gets zero vectors from there
    on, which add only zero eigenvalues. Returns (theta [B] complex, Ritz vector [B, N] complex of
    unit norm, residual [B], matvecs: products per sample, the most any sample used)."""
    # Finished samples keep their rows of V and H (no copy); the live ones are stepped and
    # orthogonalised in runs of consecutive rows (:func:`_runs`).
    batch, n = v0.shape
    m = max(1, min(krylov, n))
    tiny, eps = torch.finfo(v0.dtype).tiny, torch.finfo(v0.dtype).eps
    unit = v0 / torch.linalg.vector_norm(v0, dim=1, keepdim=True).clamp_min(tiny)
    theta_all = torch.zeros(batch, dtype=torch.complex128, device=v0.device)
    u_all = torch.zeros(batch, n, dtype=torch.complex128, device=v0.device)
    res_all = torch.zeros(batch, dtype=torch.float64, device=v0.device)
    V = _basis(v0, (batch, m + 1, n))   # row j + 1 of a live sample is written before it is read
    H = v0.new_zeros(batch, m + 1, m, dtype=torch.float64)
    rows, v, matvecs = torch.arange(batch, device=v0.device), unit, 0
    for restart in range(max(1, restarts)):
        last = restart == max(1, restarts) - 1
        H.index_fill_(0, rows, 0.0)
        V[:, 0].index_copy_(0, rows, v)
        runs = _runs(rows.tolist(), GS_CHUNK)
        for j in range(m):
            w = matvec(V[:, j] if rows.numel() == batch else V[:, j].index_select(0, rows), rows)
            matvecs += 1
            for a, b, i in runs:
                part = w[i:i + b - a]
                scale = torch.linalg.vector_norm(part, dim=1)
                part = _orthogonalize(part, V[a:b, :j + 1], H[a:b, :j + 1, j])
                norm = torch.linalg.vector_norm(part, dim=1)
                alive = norm > 100 * eps * scale
                H[a:b, j + 1, j] = torch.where(alive, norm, torch.zeros_like(norm)).double()
                torch.mul(part, torch.where(alive, 1 / norm.clamp_min(tiny), 0.0)[:, None], out=V[a:b, j + 1])
            if j + 1 < m and (j + 1 < min_steps or (j + 1 - min_steps) % 2):
                continue   # a Ritz test every second step: its eig costs a third of a product
            theta, y, residual = _ritz(H if rows.numel() == batch else H.index_select(0, rows), j + 1)
            done = residual <= rtol * theta.abs().clamp_min(1e-12)
            if j + 1 == m and last:
                done[:] = True
            if bool(done.any()):
                for i in done.nonzero().flatten().tolist():
                    r = int(rows[i])
                    theta_all[r], res_all[r] = theta[i], residual[i]
                    u_all[r] = _ritz_vector(V[r:r + 1, :j + 1], y[i:i + 1])[0]
                keep = (~done).nonzero().flatten()
                if not keep.numel():
                    return theta_all, u_all, res_all, matvecs
                rows, y = rows[keep], y[keep]
                runs = _runs(rows.tolist(), GS_CHUNK)
        # the rows left restart from their Ritz vector's real plane
        u = torch.cat([_ritz_vector(V[r:r + 1, :y.shape[1]], y[i:i + 1]) for i, r in enumerate(rows.tolist())])
        v = (u.real + u.imag).to(v0.dtype)
        norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)
        v = torch.where(norm > 0, v / norm.clamp_min(tiny), unit[rows])
    return theta_all, u_all, res_all, matvecs


# ---------------------------------------------------------------------------
# One step's Jacobian at a state
# ---------------------------------------------------------------------------

class _Flat:
    """States as flat per-sample vectors [B, N] (every layer, y last) and back. Feature maps are
    flattened in channels-last order, the engine's memory layout (NCHW tangents against
    channels-last weights cost a layout conversion in every convolution), so both ways are views."""

    def __init__(self, net: HopfieldNetwork):
        self.names = list(net.layer_names)
        self.shapes = [net.spec.shape_of(n) for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]

    def flatten(self, s: dict) -> torch.Tensor:
        return torch.cat([(s[n].permute(0, 2, 3, 1) if s[n].dim() == 4 else s[n]).reshape(s[n].shape[0], -1)
                          for n in self.names], 1)

    def unflatten(self, flat: torch.Tensor) -> dict:
        out = {}
        for n, t, shape in zip(self.names, flat.split(self.sizes, 1), self.shapes):
            if len(shape) == 3:
                c, h, w = shape
                out[n] = t.reshape(flat.shape[0], h, w, c).permute(0, 3, 1, 2)
            else:
                out[n] = t.reshape(flat.shape[0], *shape)
        return out


def _step_jvp(net: HopfieldNetwork, x: torch.Tensor, groups, beta: float, target_1h, s_star: dict):
    """J v by forward-mode autograd through :func:`explorer.dynamics.step` (any beta and cost).
    ``apply(t, rows)``: the tangents ``t`` of the samples ``rows``."""
    flat = _Flat(net)
    primal = flat.flatten(s_star).contiguous()

    def fn(v: torch.Tensor, rows=None) -> torch.Tensor:
        s = flat.unflatten(v)
        s[INPUT] = x if rows is None else x.index_select(0, rows)
        t1h = target_1h if rows is None or target_1h is None else target_1h.index_select(0, rows)
        return flat.flatten(step(net, s, groups, beta, t1h))

    def apply(t: dict, rows: torch.Tensor) -> dict:
        p = primal.index_select(0, rows)
        tangent = flat.flatten(t).to(x.dtype)
        return flat.unflatten(torch.func.jvp(lambda v: fn(v, rows), (p,), (tangent,))[1])
    return apply, flat.unflatten(fn(primal))


def _step_linear(net: HopfieldNetwork, x: torch.Tensor, groups, beta: float, target_1h, s_star: dict):
    """J v of one step in explicit tensor code, for the free phase or the MSE cost: the step's
    update without biases or input, times the clamp's derivative at each unit's pre-activation
    (1 on [0, alpha], bounds included, as autograd through clamp gives; 0 outside). The
    pre-activations come from one step from ``s_star`` in the step's group order. About a third
    of a forward-mode JVP's cost. Returns (apply, the stepped state)."""
    s = {n: s_star[n] for n in net.layer_names}
    s[INPUT] = x
    masks = {}
    for group in groups:
        pre = {n: drive(net, s, n) for n in group}
        for n, p in pre.items():
            if n == OUTPUT:
                s[n] = p if target_1h is None else (p + beta * target_1h) / (1.0 + beta)
            else:
                masks[n] = ((p >= 0) & (p <= net.alpha)).to(p.dtype)
                s[n] = p.clamp(0.0, net.alpha)
    weights = {e: net.weight(e) for e in net.edges}
    cache = [None, masks]   # the masks of the rows last asked for

    def apply(t: dict, rows: torch.Tensor) -> dict:
        if cache[0] is not rows:
            cache[0], cache[1] = rows, {n: m.index_select(0, rows) for n, m in masks.items()}
        rows_masks = cache[1]
        t = dict(t)
        for group in groups:
            new = {}
            for n in group:
                outs = [e.forward(weights[e], t[e.spec.src]) for e in net.incoming[n] if e.spec.src != INPUT]
                outs += [e.feedback(weights[e], t[e.spec.dst]) for e in net.outgoing[n]]   # x: no tangent
                if not outs:
                    new[n] = torch.zeros_like(t[n])
                    continue
                total = outs[0]
                for o in outs[1:]:
                    total = total.add_(o)   # fresh edge outputs: summed in place
                new[n] = total.mul_(rows_masks[n]) if n != OUTPUT else total.div_(1.0 + beta)
            t.update(new)
        return t
    return apply, {n: s[n] for n in net.layer_names}


def spectrum(net: HopfieldNetwork, x: torch.Tensor, state: dict, *, schedule: str = "paper",
             beta: float = 0.0, target=None, krylov: int = KRYLOV, restarts: int = RESTARTS,
             rtol: float = RTOL, seed: int = 0, method: str = "auto", should_stop=None) -> Spectrum:
    """The dominant eigenvalue of the Jacobian of one step of ``schedule`` at ``state``, per sample.
    ``should_stop()`` true before a Jacobian product ends the estimate with :class:`EstimateStopped`
    (the page's run it was for has been replaced).

    ``method``: "jvp", forward-mode autograd through :func:`explorer.dynamics.step`; "linear", the
    same Jacobian in explicit tensor code (free phase or MSE cost); "auto", linear where it applies.
    The Krylov start is the step's own move from ``state`` (after a long relaxation, the dominant
    direction: the relaxation did the power iteration) plus a little seeded noise."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if method not in ("auto", "jvp", "linear"):
        raise ValueError(f"unknown method {method!r}; choose auto, jvp or linear")
    x = net.check_input(x)
    batch = x.shape[0]
    for n in net.layer_names:
        if n not in state or tuple(state[n].shape) != (batch, *net.spec.shape_of(n)):
            raise ValueError(f"state must hold layer {n} of shape {(batch, *net.spec.shape_of(n))}")
    beta = float(beta)
    target_1h = None
    if beta != 0.0:
        if target is None:
            raise ValueError("the Jacobian of a nudged step (beta != 0) needs a target")
        target_1h = one_hot(net.spec, torch.as_tensor(target, device=x.device).long().reshape(-1), x)
    linear = method == "linear" or (method == "auto" and (beta == 0.0 or net.spec.cost == "mse"))
    if linear and beta != 0.0 and net.spec.cost != "mse":
        raise ValueError("the explicit Jacobian covers the free phase and the MSE cost; use method='jvp'")
    groups = schedule_groups(net.spec, schedule)
    s_star = {n: state[n].to(device=x.device, dtype=x.dtype) for n in net.layer_names}
    flat = _Flat(net)
    with torch.no_grad():
        apply, moved = (_step_linear if linear else _step_jvp)(net, x, groups, beta, target_1h, s_star)

        def matvec(v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            if should_stop is not None and should_stop():
                raise EstimateStopped("the estimate was stopped")
            return flat.flatten(apply(flat.unflatten(v), rows))

        # one noise vector for every sample: a sample's start does not depend on its place in the batch
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(1, sum(flat.sizes), generator=gen, dtype=torch.float64).to(x.device, x.dtype)
        move = flat.flatten(moved) - flat.flatten(s_star)
        move_norm = torch.linalg.vector_norm(move, dim=1, keepdim=True)
        v0 = torch.where(move_norm > 0, move / move_norm.clamp_min(torch.finfo(x.dtype).tiny), 0.0) \
            + START_NOISE * noise / torch.linalg.vector_norm(noise, dim=1, keepdim=True)
        theta, u, residual, matvecs = dominant_eigenvalue(matvec, v0, krylov=krylov, restarts=restarts,
                                                          rtol=rtol)
    weight = (u.real.square() + u.imag.square()).cpu()   # |u|^2 (complex abs takes a hypot per unit: 10x slower)
    shares = []
    for b in range(batch):
        total = float(weight[b].sum()) or 1.0
        shares.append({n: float(p.sum()) / total for n, p in zip(flat.names, weight[b].split(flat.sizes))})
    return Spectrum([float(t.abs()) for t in theta.cpu()], [complex(t) for t in theta.cpu()], shares,
                    residual.cpu().tolist(), matvecs)


# ---------------------------------------------------------------------------
# The observed rate, and the whole report
# ---------------------------------------------------------------------------

def observed_rate(step_sizes: torch.Tensor, last: int = RATE_WINDOW, floor: float | None = None) -> list:
    """The asymptotic convergence rate seen in a step-size trace, per sample.

    ``step_sizes`` is [steps, batch] or [steps, layers, batch] (then the largest layer at each
    step, the verdict's measure). The rate is the geometric mean of successive ratios over the
    last ``last`` steps above ``floor`` (default 64 machine epsilons of the trace's dtype: below
    it the trace is rounding noise, whose ratios are about 1). None where fewer than two steps
    qualify."""
    trace = step_sizes.detach().double().cpu()
    if trace.dim() == 3:
        trace = trace.amax(1)
    if floor is None:
        floor = 64 * torch.finfo(step_sizes.dtype).eps
    rates = []
    for d in trace.t().tolist():
        above = [i for i, v in enumerate(d) if math.isfinite(v) and v > floor]
        if not above:
            rates.append(None)
            continue
        end = start = above[-1]
        while start - 1 >= 0 and end - (start - 1) <= last and math.isfinite(d[start - 1]) \
                and d[start - 1] > floor:
            start -= 1
        rates.append((d[end] / d[start]) ** (1.0 / (end - start)) if end > start else None)
    return rates


def explain(rho: list[float], rate: list, schedule: str, dominant: list[str], shares: list[dict]) -> str:
    """One line: the worst sample's verdict and where its dominant direction lives."""
    if not rho:
        return "no samples"
    b = max(range(len(rho)), key=lambda i: rho[i])
    r = rho[b]
    where = f"; its dominant direction lives in {dominant[b]} ({100 * shares[b][dominant[b]]:.0f} %)"
    seen = f", observed {rate[b]:.4f}" if rate[b] is not None else ""
    if not math.isfinite(r):
        return f"the Jacobian of one {schedule} step is not finite at this state"
    if r >= 1.0:
        return (f"rho = {r:.4f} >= 1 (sample {b}{seen}): the {schedule} schedule cannot converge to this "
                f"fixed point, errors along the dominant direction grow by {r:.3g}x a step{where}")
    decade = math.log(10) / -math.log(r) if r > 0 else 0.0
    return (f"rho = {r:.4f} < 1 (largest over the batch, sample {b}{seen}): the {schedule} schedule converges "
            f"at rate {r:.4f} per step, about {decade:.0f} steps per decade of error{where}")


def stability(net: HopfieldNetwork, x: torch.Tensor, *, schedule: str = "paper", steps: int = 120,
              tol: float | None = None, state: dict | None = None, free: PhaseResult | None = None,
              krylov: int = KRYLOV, restarts: int = RESTARTS, rtol: float = RTOL,
              last: int = RATE_WINDOW, seed: int = 0, should_stop=None) -> Stability:
    """Relax the free phase (or take ``free``, a recorded free phase already run) and report the
    stability of where it ended under ``schedule``: spectral radius, observed rate, layer shares."""
    x = net.check_input(x)
    t0 = time.perf_counter()
    if free is None:
        free = relax(net, x, steps=steps, schedule=schedule, tol=tol, state=state, record=RecordConfig(units=0))
    t1 = time.perf_counter()
    spec_ = spectrum(net, x, free.state, schedule=schedule, krylov=krylov, restarts=restarts, rtol=rtol,
                     seed=seed, should_stop=should_stop)
    t2 = time.perf_counter()
    if len(free.records) > 2:
        rate = observed_rate(torch.stack([r.stat("step_size") for r in free.records[1:]]), last=last)
    else:
        rate = [None] * x.shape[0]
    dominant = [max(s, key=s.get) for s in spec_.layer_share]
    return Stability(schedule, spec_.spectral_radius, rate, spec_.layer_share, dominant, spec_.eigenvalue,
                     spec_.residual, spec_.matvecs, free.steps, free.verdict.message,
                     explain(spec_.spectral_radius, rate, schedule, dominant, spec_.layer_share),
                     {"free_phase": t1 - t0, "spectrum": t2 - t1})
