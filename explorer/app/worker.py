"""The compute worker: one thread per page, the newest request wins.

The worker relaxes the network and appends small numpy frames to a bounded
queue; it never touches Bokeh or Panel objects. The page drains the queue in
one periodic callback (``main.py``) and streams the frames into its plots.

Requests do not queue up: :meth:`RunWorker.submit` replaces any pending
request and makes the running one stale, and a stale run ends at its next
step (no further phases, verdicts or stability estimate).

Each run is recorded whole (``RecordConfig(keep=True)``) into an
:class:`explorer.run.Run`; its start is announced together with its first
frame (one update paints the new run); a phase's end is announced as soon as it ends,
with its verdict as data, and a run that was not cancelled goes into the
page's :class:`explorer.run.RunStore`.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from ..diagnosis import with_spectral_radius
from ..ep import run_phases
from ..stability import EstimateStopped, stability
from ..network import OUTPUT
from ..record import ENERGY_STATS, LAYER_STATS, PhaseResult, StepRecord
from ..run import Run, RunStore, network_identity
from .state import RunRequest

log = logging.getLogger("explorer.app")

PHASES = ("free", "nudged+", "nudged-")
QUEUE_LIMIT = 4096  # frames waiting for the page; the worker waits beyond this


@dataclass
class Frame:
    """One relaxation step of sample 0, as numpy (converted on the worker thread)."""
    run_id: int
    phase: str
    step: int
    beta: float                       # the record's beta: 0 (free), +beta, -beta
    stats: np.ndarray                 # [n_layers, len(LAYER_STATS)]
    energy: np.ndarray                # [len(ENERGY_STATS)]
    units: np.ndarray | None          # [n_layers, units]
    states: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> [C, H, W]

    @classmethod
    def from_record(cls, run_id: int, rec: StepRecord) -> "Frame":
        # One device-to-host copy for the small per-step numbers (on a GPU each copy is a sync).
        parts = [rec.stats[..., 0], rec.energy[..., 0]] + ([] if rec.units is None else [rec.units[..., 0]])
        flat = torch.cat([p.detach().reshape(-1) for p in parts]).to("cpu", torch.float64).numpy()
        n_stats, n_energy = rec.stats[..., 0].numel(), rec.energy.shape[0]
        stats = flat[:n_stats].reshape(rec.stats.shape[:2])
        energy = flat[n_stats:n_stats + n_energy]
        units = None if rec.units is None else flat[n_stats + n_energy:].reshape(rec.units.shape[:2])
        return cls(run_id, rec.phase, rec.step, float(rec.beta), stats, energy, units,
                   {k: v[0].detach().to("cpu", torch.float32).numpy() for k, v in rec.states.items()})


@dataclass
class RunStarted:
    run_id: int
    request: RunRequest
    run: Run                          # filled phase by phase on the worker thread


@dataclass
class PhaseEnded:
    """A phase ended (sent at once, before the next phase starts)."""
    run_id: int
    phase: str
    steps: int
    verdict: dict                     # Verdict as data (explorer.run.verdict_data): status, findings, evidence
    output: np.ndarray                # y of sample 0 at the end of the phase

    @property
    def status(self) -> str:
        return self.verdict["status"]

    @property
    def message(self) -> str:
        return self.verdict["message"]


@dataclass
class RunEnded:
    run_id: int
    cancelled: bool
    seconds: float
    steps: int
    run: Run | None = None            # the finished run (in the store unless cancelled)


@dataclass
class RunFailed:
    run_id: int
    message: str


_live_workers: "weakref.WeakSet" = weakref.WeakSet()


def stop_at_exit(worker) -> None:
    """Stop ``worker`` (its ``stop_now()``) when the process exits: a daemon thread still inside a
    torch op when the interpreter tears down ends the process with ``terminate called ...``
    (seen when ``panel serve`` gets SIGTERM with a page relaxing)."""
    _live_workers.add(worker)


@atexit.register
def stop_all_workers(timeout: float = 2.0) -> None:
    for worker in list(_live_workers):
        try:
            worker.stop_now(timeout)
        except Exception:   # exiting anyway: never let one worker keep the others running
            log.exception("stopping a worker at exit failed")


class RunWorker:
    """A background thread that relaxes the newest request, paced by play/pause/speed."""

    def __init__(self, name: str = "explorer-worker", threads: int = 1, store: RunStore | None = None):
        self.store = store if store is not None else RunStore()
        self._cond = threading.Condition()
        self._events: deque = deque()
        self._pending: RunRequest | None = None
        self._generation = 0         # id of the newest request; older runs are stale
        self._running: int | None = None
        self._closed = False
        self._playing = True
        self._step_tokens = 0
        self._speed: float | None = None   # steps per second; None: as fast as possible
        self._clock = (time.monotonic(), 0)  # pacing origin: (time, steps emitted since)
        self.submitted_at = -float("inf")
        self._thread: threading.Thread | None = None
        self._name = name
        self._threads = threads
        self.steps_done = 0           # all steps relaxed by this worker (for the status line)
        self.started: list[int] = []  # run ids in the order they started (bounded below)
        self.finished: deque = deque(maxlen=50)  # RunEnded of recent runs, stale ones included
        stop_at_exit(self)

    # -- control (any thread) --------------------------------------------------------
    def submit(self, request: RunRequest) -> int:
        """Start ``request`` as soon as possible; returns its run id."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the worker has been stopped")
            self._generation += 1
            request.run_id = self._generation
            self._pending = request
            self.submitted_at = time.monotonic()
            self._step_tokens = 0
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            return request.run_id

    def set_playing(self, playing: bool) -> None:
        with self._cond:
            self._playing = bool(playing)
            self._restart_clock()
            self._cond.notify_all()

    def step_once(self) -> None:
        with self._cond:
            self._step_tokens += 1
            self._cond.notify_all()

    def set_speed(self, steps_per_second: float | None) -> None:
        with self._cond:
            self._speed = steps_per_second
            self._restart_clock()
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (a closed page); safe to call twice."""
        with self._cond:
            self._closed = True
            self._generation += 1
            self._pending = None
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    stop_now = stop   # what stop_all_workers calls at exit

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._pending is not None or self._running is not None

    def started_within(self, seconds: float) -> bool:
        """A run was asked for less than ``seconds`` ago and has not ended."""
        return time.monotonic() - self.submitted_at < seconds and self.busy

    @property
    def pending_events(self) -> bool:
        """Something waits to be drained (read without the lock: a hint for the page's timer)."""
        return bool(self._events)

    @property
    def latest_run(self) -> int:
        return self._generation

    def drain(self, limit: int | None = None) -> list:
        """Take what the worker recorded since the last call (the page's thread)."""
        with self._cond:
            n = len(self._events) if limit is None else min(limit, len(self._events))
            out = [self._events.popleft() for _ in range(n)]
            self._cond.notify_all()  # room in the queue again
        return out

    # -- the thread ----------------------------------------------------------------------
    def _restart_clock(self) -> None:
        self._clock = (time.monotonic(), 0)

    def _stale(self, run_id: int) -> bool:
        return self._closed or run_id != self._generation

    def _loop(self) -> None:
        if self._threads:
            # On a small CPU one intra-op thread per page is faster than two (measured: 589 vs 274
            # steps/s on 2 cores) and leaves a core for the web server.
            torch.set_num_threads(self._threads)
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    self._running = None
                    self._cond.notify_all()
                    return
                request, self._pending = self._pending, None
                self._running = request.run_id
                self._restart_clock()
            try:
                self._run(request)
            except Exception as exc:  # the page must keep serving: report, never die
                log.exception("run %s failed", request.run_id)
                self._put(RunFailed(request.run_id, f"{type(exc).__name__}: {exc}"))
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _put(self, event, run_id: int | None = None) -> bool:
        """Append an event (or a list of events, at once: a drain takes all or none of them);
        waits while the queue is full. False if the run went stale."""
        events = event if isinstance(event, list) else [event]
        with self._cond:
            while len(self._events) >= QUEUE_LIMIT and not (run_id is not None and self._stale(run_id)):
                self._cond.wait(0.1)
            if run_id is not None and self._stale(run_id):
                return False
            self._events.extend(events)
            return True

    def _pace(self, run_id: int) -> None:
        """Wait for this step's turn: playing at ``speed``, or one Step token when paused."""
        with self._cond:
            while not self._stale(run_id):
                if self._playing:
                    if self._speed is None:
                        break
                    origin, emitted = self._clock
                    wait = origin + (emitted + 1) / self._speed - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                elif self._step_tokens > 0:
                    self._step_tokens -= 1
                    self._restart_clock()
                    break
                else:
                    self._cond.wait(1.0)
            origin, emitted = self._clock
            self._clock = (origin, emitted + 1)

    def _run(self, req: RunRequest) -> None:
        """Free phase from zero, then the nudged phases from s*: ``explorer.ep.run_phases``."""
        run_id = req.run_id
        self.started = [*self.started[-49:], run_id]
        run = new_run(req)
        started = [RunStarted(run_id, req, run)]   # announced with its first frame (below)
        t0 = time.monotonic()
        steps = 0

        def on_step(rec: StepRecord) -> None:
            nonlocal steps
            if self._stale(run_id):
                raise _Cancelled   # a newer request waits: end now, not after the remaining phases
            if rec.step > 0:
                self._pace(run_id)
                self.steps_done += 1
                steps += 1
            # The run's start and its first frame in one put, so one update carries both: the page
            # paints the new run once, not an empty start and then its first frame.
            self._put(started + [Frame.from_record(run_id, rec)], run_id)
            started.clear()

        def on_phase(result: PhaseResult) -> None:
            if self._stale(run_id):
                raise _Cancelled   # not kept: no verdict, no stability estimate, no nudged phases
            phase = run.add_phase(result)
            if result.phase == "free" and result.records and not self._stale(run_id):
                estimate = fixed_point_stability(req, result, should_stop=lambda: self._stale(run_id))
                if estimate is not None:
                    phase.verdict["stability"] = estimate
                    if "diagnosis" in phase.verdict:   # the kept record says what the page says
                        phase.verdict["diagnosis"] = with_spectral_radius(phase.verdict["diagnosis"],
                                                                          estimate.get("spectral_radius"))
            y = result.state[OUTPUT].detach()[0].to("cpu", torch.float64).numpy()
            self._put(started + [PhaseEnded(run_id, result.phase, result.steps, phase.verdict, y)], run_id)
            started.clear()

        # tol and stop_at_tol come with the settings schema; a request without them runs every step.
        tol = req.tol if getattr(req, "stop_at_tol", False) else None
        try:
            phases = run_phases(req.net, req.x, req.target, beta=req.beta, t_free=req.t_free,
                                t_nudge=req.t_nudge, schedule=req.schedule, variant="centered", tol=tol,
                                record=req.record, on_step=on_step, on_phase=on_phase,
                                should_stop=lambda: self._stale(run_id))
        except _Cancelled:
            self.finished.append(RunEnded(run_id, True, time.monotonic() - t0, steps))
            return
        except Exception:
            self._put(started, run_id)   # a run that fails before its first step is still announced
            raise
        steps = sum(result.steps for result in phases.phases)
        cancelled = self._stale(run_id) or any(r.verdict.status == "cancelled" for r in phases.phases)
        if not cancelled:
            self.store.add(run)
        ended = RunEnded(run_id, cancelled, time.monotonic() - t0, steps, run)
        self.finished.append(ended)
        self._put(started + [ended], run_id)


class _Cancelled(Exception):
    """Raised from the engine's callbacks to end a run that a newer request made stale."""


def fixed_point_stability(req: RunRequest, free: PhaseResult, should_stop=None) -> dict | None:
    """The spectral radius of one step's Jacobian at the free phase's end, for the image on screen
    (explorer.stability; about one free phase's work), as data for the verdict; None when
    ``should_stop()`` ended it (a slider moved: the next run starts at once, not after the estimate)."""
    try:
        st = stability(req.net, req.x, schedule=req.schedule, free=free, should_stop=should_stop)
    except EstimateStopped:
        return None
    except Exception as exc:   # an estimate that fails must not cost the run
        log.exception("stability estimate failed")
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"spectral_radius": float(st.spectral_radius[0]), "observed_rate": st.observed_rate[0],
            "dominant_layer": st.dominant_layer[0], "layer_share": st.layer_share[0],
            "explanation": st.explanation, "seconds": sum(st.seconds.values())}


def new_run(req: RunRequest) -> Run:
    """The :class:`Run` a request makes, before its phases: settings, network identity, input."""
    settings = {"beta": req.beta, "t_free": req.t_free, "t_nudge": req.t_nudge, "schedule": req.schedule,
                "alpha": req.alpha, "variant": "centered", "map_layer": req.map_layer,
                "tol": getattr(req, "tol", None), "stop_at_tol": bool(getattr(req, "stop_at_tol", False))}
    record = dataclasses.asdict(req.record)
    return Run(Run.new_id(), settings, network_identity(req.net, req.model_name),
               req.x.detach().to("cpu", copy=True), req.target.detach().to("cpu", copy=True),
               tuple(req.class_names), req.sample, record, request=req)


__all__ = ["RunWorker", "new_run", "Frame", "RunStarted", "PhaseEnded", "RunEnded", "RunFailed", "PHASES",
           "LAYER_STATS", "ENERGY_STATS"]
