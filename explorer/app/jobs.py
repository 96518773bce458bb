"""Long jobs of one page (scans, sweeps): one background thread, one job at a time.

A job is a function ``job(put, should_stop)``; it runs on the worker thread and hands plain
Python events to the page with ``put``. The page drains them in a periodic callback of its own
session (:func:`page_callback`), so nothing here touches Bokeh models, and the server's event loop
never runs a relaxation. Cancel makes ``should_stop()`` true; a job then ends at its next step.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque

import torch

from .worker import stop_at_exit

log = logging.getLogger("explorer.app")
DEFER_LIMIT = 3.0     # seconds a job waits, at most, for a relaxation the user just started on its page
BACKGROUND_NICENESS = 10   # added to a background thread's niceness (Linux: a thread is a task of its own)


def run_in_background() -> bool:
    """Lower the calling thread's CPU priority, so that a scan, sweep or training run uses what the
    live relaxation, the web server and the browser leave over instead of competing with them (a
    job cannot yield inside one of its steps: a sweep cell's stability estimate held a core for
    seconds while a slider moved). Returns whether the priority was lowered."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICENESS))
        return True
    except (AttributeError, OSError):   # not Linux / not allowed: the job just competes as before
        return False


class JobWorker:
    """A page's background thread for scans and sweeps."""

    def __init__(self, name: str = "explorer-jobs", threads: int | None = 1, defer_to=None,
                 defer_limit: float = DEFER_LIMIT):
        self._cond = threading.Condition()
        # ``defer_to()`` true: the page's own relaxation wants the CPU (a slider just moved); the job
        # waits between its steps, at most ``defer_limit`` seconds each time, so the live views stay quick.
        self.defer_to, self.defer_limit = defer_to, defer_limit
        self._events: deque = deque()
        self._job = None
        self._owner = None
        self._running = False
        self._cancelled = False
        self._closed = False
        self._threads = threads
        self._name = name
        self._thread: threading.Thread | None = None
        stop_at_exit(self)

    def submit(self, job, owner=None) -> None:
        """Run ``job(put, should_stop)``; refused while another job runs (the page says so).
        Its events go to ``drain(owner)`` (the Scan and Sweep tabs share the worker)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the page's job worker has been stopped")
            if self._running or self._job is not None:
                raise RuntimeError("a scan or sweep is already running on this page")
            self._job, self._owner, self._cancelled = job, owner, False
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = self._cancelled = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    stop_now = stop

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._running or self._job is not None

    def pending(self, owner=None) -> bool:
        return any(o == owner for o, _ in list(self._events))

    @property
    def closed(self) -> bool:
        return self._closed

    def should_stop(self) -> bool:
        if threading.current_thread() is self._thread:
            self._defer()
        return self._cancelled or self._closed

    def _defer(self) -> None:
        """Wait while ``defer_to()`` says the page's live relaxation comes first (bounded)."""
        defer = self.defer_to
        if defer is None:
            return
        deadline = time.monotonic() + self.defer_limit
        with self._cond:
            while not (self._cancelled or self._closed) and time.monotonic() < deadline and defer():
                self._cond.wait(0.01)

    def drain(self, owner=None) -> list:
        """Take the events of ``owner``'s jobs (the others stay for their owner)."""
        with self._cond:
            out = [e for o, e in self._events if o == owner]
            kept = [(o, e) for o, e in self._events if o != owner]
            self._events.clear()
            self._events.extend(kept)
        return out

    def _put(self, event, owner=None) -> None:
        with self._cond:
            self._events.append((owner, event))

    def _loop(self) -> None:
        if self._threads:
            torch.set_num_threads(self._threads)   # as the relaxation worker: a core stays for the server
        run_in_background()
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job, owner, self._running = self._job, self._owner, True
            try:
                with torch.no_grad():
                    job(lambda event: self._put(event, owner), self.should_stop)
            except Exception as exc:   # the page must keep serving: report, never die
                log.exception("a scan or sweep failed")
                self._put({"kind": "failed", "message": f"{type(exc).__name__}: {exc}"}, owner)
            finally:
                with self._cond:
                    self._job, self._running = None, False
                    self._cond.notify_all()


class JobControls:
    """What the Scan and Sweep tabs share: a job started on the page's worker with the tab's progress
    bar, status line and buttons; cancel; a message. The tab has ``worker``, ``status``, ``progress``,
    ``start_button``, ``cancel_button``, ``message``, ``_callback`` and ``drain``."""

    def launch(self, job, owner: str, status: str, total: int) -> None:
        self.worker.submit(job, owner=owner)
        self.status.object = status
        self.start_button.disabled, self.cancel_button.disabled = True, False
        self.progress.param.update(value=0, max=max(total, 1), visible=True)
        if self._callback is None:
            self._callback = page_callback(self.drain)

    def cancel(self) -> None:
        self.worker.cancel()

    def show_message(self, text: str, level: str = "danger") -> None:
        self.message.param.update(object=text, alert_type=level, visible=True)


def drain_until_idle(worker: JobWorker, owner, drain, what: str, timeout: float, until=None) -> None:
    """Drain ``owner``'s events until its job has ended (or ``until()`` holds): tests and scripts."""
    import time
    deadline = time.monotonic() + timeout
    while (worker.busy or worker.pending(owner)) and not (until is not None and until()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {what} did not end in time")
        drain()
        time.sleep(0.02)
    drain()


def page_callback(drain, period_ms: int = 150):
    """Start ``drain`` as a periodic callback of the current session; None outside a served page
    (tests call ``drain`` themselves)."""
    import panel as pn
    doc = pn.state.curdoc
    if doc is None or getattr(doc, "session_context", None) is None:
        return None
    return pn.state.add_periodic_callback(drain, period=period_ms)


def on_session_end(stop) -> None:
    """Call ``stop()`` when the current session ends (no-op outside a served page)."""
    import panel as pn
    doc = pn.state.curdoc
    if doc is not None and getattr(doc, "session_context", None) is not None:
        pn.state.on_session_destroyed(lambda _ctx: stop())   # stop(timeout) joins briefly
