"""The explorer page: settings -> worker -> one periodic callback -> views.

Data flow (the measured design for a 2-core machine):

- a setting changes (a widget, on the page's thread): :meth:`ExplorerApp.restart`
  resolves the settings into a :class:`RunRequest` and submits it; the
  worker makes the running relaxation stale, so ``should_stop`` cancels it
  at its next step, and nothing queues up;
- the worker thread relaxes and appends numpy frames to a bounded queue; it
  never touches Bokeh models;
- one periodic callback per page (every ``TICK_MS``; it takes the document
  lock only when there is something to do) drains the queue,
  coalesces the frames into one batch and streams it into the views'
  ``ColumnDataSource`` objects, as one patch message (``pn.io.hold``);
- nothing is sent before the page says it is ready (changes made while a
  page is still connecting can be lost; the page opens on the document
  rendered for it, which holds the first frames, see :meth:`prefill`);
- flow control: the page confirms each update as soon as it has applied it,
  and the server keeps at most ``IN_FLIGHT`` updates unconfirmed. The page's
  one thread applies a message only after the paint in progress, so at most
  one update waits behind a paint; a slow or busy browser then gets fewer,
  larger updates instead of a queue of messages that would delay everything
  behind them, a new run after a slider move included. (Confirming after the
  paint instead made every frame wait for the server's reply: 18.4 frames/s
  against 20.0, bench/RESULTS-app.md.)
- every websocket of the page sends without Nagle's delay (``_send_without_delay``): with
  tornado's default each update waited about 33 ms for the browser's TCP acknowledgement;
  and each poll sends an update that a race in Panel's write queue left behind
  (``_flush_stranded_writes``), which otherwise waited for the next one.

Each browser tab is its own session with its own state and worker; the
worker stops when the session is destroyed or, sooner, when the page has had
no connection for ``ORPHAN_SECONDS``.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import panel as pn
import torch
from bokeh.models import ColumnDataSource, CustomJS
from panel.io import document as panel_document
from panel.io.state import set_curdoc
from tornado.ioloop import PeriodicCallback
from panel.theme.fast import Fast

from .. import native
from .gallery import Gallery
from .scan_tab import ScanTab
from .sweep_tab import SweepTab
from .state import RUN_SETTINGS, SLIDER_RANGES, UNTRAINED, ExplorerState, SettingError, pick_device
from .views import VIEW_CLASSES
from .views.base import Batch, Run
from .views.train import TrainView
from .worker import Frame, PhaseEnded, RunEnded, RunFailed, RunStarted, RunWorker

log = logging.getLogger("explorer.app")

TICK_MS = 10            # how often the page looks for news (a few attribute reads when idle) ...
SEND_EVERY = 0.033      # ... and sends at most 30 updates per second
IN_FLIGHT = 1           # updates sent but not yet applied by the page, at most
ORPHAN_SECONDS = 2.0    # a page without a connection this long has been closed
ACK_TIMEOUT = 1.0       # send anyway when the browser has not confirmed an update for this long
READY_TIMEOUT = 5.0     # connected this long without saying it is ready: send anyway
LOST_AFTER = 3.0        # an update the page has not confirmed this long was lost: resend the data
# What the drain changes: plot data, texts (titles, verdicts, status), axis ranges, enabled states.
RESEND_PROPERTIES = ("data", "text", "start", "end", "bounds", "factors", "disabled", "visible")
# The page's confirmation of update ``seq``, as soon as the message carrying it is applied (its data
# changes come first in the message; Bokeh paints them in the next animation frame). The server's
# next update is then on its way while the page paints this one.
ACK_JS = """
const seq = cb_obj.data.seq[0];
ack.data = {seq: [seq], ready: [1]};
"""
CSS_FILE = Path(__file__).resolve().parents[2] / "assets" / "app.css"
DISPLAY_SETTINGS = ("units_layer", "map_channel", "map_phase")


# Panel's Fast design without its web font (Open Sans from Google), so the page loads nothing from
# outside the server: it works with no internet and logs no failed requests. Panel finds a design's
# bundled files by its class name, so the subclass keeps the name "Fast".
OfflineFast = type("Fast", (Fast,), {"_resources": {**Fast._resources, "font": {}},
                                     "__module__": __name__})


# Runs once in each page. Plots scrolled out of sight skip their layout and repaints, and repaint
# with the latest data when they come back into view: the browser only draws what can be seen.
# (PlotView.pause() is not enough: Bokeh's own unpause() calls cancel it.) The page also reports
# which views are in sight, so the server sends data only to those.
PAGE_JS = """
if (!window.__explorer_page) {
  window.__explorer_page = true;
  // Bokeh looks up a CSS variable (getComputedStyle, a style recalculation when anything changed)
  // for every visual of every axis, grid and title at every repaint: measured in Chromium, the
  // largest cost of a frame once legends were static. The page sets no such variables, so the
  // look-up always falls back to the model's value: answer "" at once.
  // Likewise a plot reads its font size from the computed style at every repaint (it never changes
  // here), and a legend re-positions itself and measures its box (a forced layout) at every
  // repaint although neither it nor its frame moved. Each patch is listed in __explorer_patched
  // (the browser test checks them all, so a Bokeh upgrade that moves these internals is noticed).
  window.__explorer_patched = [];
  const patch = (name, fn) => {
    try { if (fn()) window.__explorer_patched.push(name); }
    catch (e) { console.warn("explorer: Bokeh internals moved, " + name + " left as it is", e); }
  };
  patch("css_lookup", () => {
    const proto = Bokeh.require("core/visuals/visual").VisualProperties.prototype;
    if (typeof proto._get_css_value !== "function") return false;
    proto._get_css_value = function () { return ""; };
    return true;
  });
  patch("font_size", () => {
    const proto = Bokeh.require("models/plots/plot_canvas").PlotView.prototype;
    const own = Object.getOwnPropertyDescriptor(proto, "base_font_size");
    if (own == null || own.get == null) return false;
    Object.defineProperty(proto, "base_font_size", {configurable: true, get() {
      if (this.__explorer_font_size == null) this.__explorer_font_size = own.get.call(this);
      return this.__explorer_font_size;
    }});
    return true;
  });
  patch("legend_position", () => {
    const proto = Bokeh.require("models/annotations/legend").LegendView.prototype;
    const own = proto.update_position;
    if (typeof own !== "function") return false;
    proto.update_position = function () {
      const f = this.plot_view.frame.bbox, l = this.layout != null ? this.layout.bbox : null;
      const key = [this.is_visible, f.x, f.y, f.width, f.height,
                   l != null ? [l.x, l.y, l.width, l.height].join() : ""].join();
      if (key === this.__explorer_key && this._bbox != null && this._bbox.width > 0) return;
      own.call(this);
      this.__explorer_key = key;
    };
    return true;
  });
  const seen = new WeakSet();
  const plots = [];
  // The view a plot belongs to, from its data sources' names ("explorer.<view>.<what>").
  const view_of = (v) => {
    for (const r of v.model.renderers) {
      const n = r.data_source != null ? r.data_source.name : null;
      if (n != null && n.startsWith("explorer.")) return n.split(".")[1];
    }
    return null;
  };
  // Tell the server which views are in sight: it sends data only to those and catches the
  // others up when they come into view.
  let reported = null;
  const report = () => {
    const keys = new Set();
    for (const v of plots) {
      const k = view_of(v);
      if (k != null && !v.__explorer_hidden && v.el.isConnected) keys.add(k);
    }
    const list = [...keys].sort();
    if (list.join(",") !== reported) { reported = list.join(","); visible.data = {keys: list}; }
  };
  const io = new IntersectionObserver((entries) => {
    for (const e of entries) {
      const v = e.target.__explorer_view;
      if (v == null) continue;
      v.__explorer_hidden = !e.isIntersecting;
      if (e.isIntersecting && v.__explorer_dirty) { v.__explorer_dirty = false; v.request_repaint(); }
    }
    report();
  }, {rootMargin: "0px"});
  const scan = () => {
    const found = Bokeh.index.query((v) => v.model != null && v.el != null &&
                                           ["Figure", "Plot"].includes(v.model.constructor.__name__));
    for (const v of found) {
      if (seen.has(v)) continue;
      seen.add(v);
      plots.push(v);
      // Skip layout and paint while out of sight; remember to repaint when seen again.
      for (const name of ["repaint", "paint"]) {
        const own = v[name].bind(v);
        v[name] = (...args) => {
          if (v.__explorer_hidden) { v.__explorer_dirty = true; return; }
          return own(...args);
        };
      }
      v.el.__explorer_view = v;
      io.observe(v.el);
    }
  };
  // A slider moved with the arrow keys updates only value_throttled; copy it into value so the
  // move reaches the server like a drag (the settings follow "value").
  const sliders = new WeakSet();
  const scan_sliders = () => {
    for (const doc of Bokeh.documents) {
      for (const m of doc._all_models.values()) {
        if (m.constructor.__name__ !== "Slider" || sliders.has(m)) continue;
        sliders.add(m);
        m.properties.value_throttled.change.connect(() => {
          if (m.value_throttled != null && m.value !== m.value_throttled) m.value = m.value_throttled;
        });
      }
    }
  };
  scan();
  scan_sliders();
  setInterval(() => { scan(); scan_sliders(); }, 1000);
  // The page is ready: from now on the server may send changes (any sent while the page was still
  // connecting could be lost), and what came with the document is confirmed.
  ack.data = {seq: [tick.data.seq[0]], ready: [1]};
}
"""


def app_css() -> str:
    try:
        return CSS_FILE.read_text()
    except OSError:
        return ""


def _websockets(session) -> frozenset:
    """The tornado websocket handlers of a Bokeh server session's connections."""
    sockets = (getattr(conn, "_socket", None) for conn in getattr(session, "_subscribed_connections", ()))
    return frozenset(socket for socket in sockets if socket is not None)


def _send_without_delay(sockets) -> None:
    """Turn off Nagle's algorithm on these websockets.

    Tornado leaves it on, so the small frames of one update (Bokeh writes a message as a dozen
    frames) wait for the browser's delayed TCP acknowledgement: measured here, a socket write
    reached the page 33 ms later (3 ms the other way, Chromium sets no-delay), every update.
    """
    for socket in sockets:
        if getattr(socket, "ws_connection", None) is not None and not socket.ws_connection.is_closing():
            with contextlib.suppress(OSError):   # closed meanwhile: nothing to send on it anyway
                socket.set_nodelay(True)


def _flush_stranded_writes(doc) -> bool:
    """Send a Panel update message that a race left queued; True if there was one.

    Panel 1.9 queues a message when the socket is busy and starts a task that sends the queue
    unless the write block is gone. A task that finds nothing left to send removes the block,
    so a message queued while it was sending waits until the next one (seen here: after a
    slider move, the new run's second update reached the page only with the next update,
    1 s later after ACK_TIMEOUT). Put the block back and send the queue. Uses Panel's private
    queue: where a Panel version lacks any of it, this does nothing.
    """
    pending = getattr(panel_document, "_WRITE_MSGS", None)
    block = getattr(panel_document, "_WRITE_BLOCK", None)
    start = getattr(panel_document, "_dispatch_write_task", None)
    dispatch = getattr(panel_document, "_dispatch_msgs", None)
    if None in (pending, block, start, dispatch) or doc not in pending or doc in block:
        return False
    block[doc] = True
    start(doc, dispatch, doc)
    return True


class ExplorerApp(pn.viewable.Viewer):
    """One page of the explorer: its state, its worker, its views."""

    def __init__(self, state: ExplorerState | None = None, *, autostart: bool = True,
                 threads: int | None = 1, settings: dict[str, str] | None = None, **params):
        super().__init__(**params)
        self.state = state if state is not None else ExplorerState()
        self.device = pick_device()
        self.worker = self._new_worker(threads)
        self._threads = threads
        self.views = {cls.key: cls(self.state) for cls in VIEW_CLASSES}
        self.gallery = Gallery(self.state)
        self.messages: list[tuple[str, str]] = []   # (level, text) of every notification
        self.css = app_css()
        # Training has its own worker; its events reach the page through the same periodic drain.
        self.train = TrainView(self.state, notify=self.notify, on_saved=self._on_trained_saved,
                               threads=threads, css=self.css, clear_alert=self.clear_alert)
        # Scans and sweeps share one background worker per page, with their own periodic drain.
        self.scan = ScanTab(self.state, notify=self.notify, threads=threads)
        self.sweep = SweepTab(self.state, worker=self.scan.worker, notify=self.notify, threads=threads)
        self.alert = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width",
                                   margin=(5, 10))
        self.status = pn.pane.HTML("", css_classes=["status-line"], stylesheets=[self.css],
                                   sizing_mode="stretch_width", height=30, margin=(0, 10))
        # Flow control: "tick" carries the number of each update sent, "ack" the last one painted.
        self.tick_source = ColumnDataSource(data={"seq": [0]}, name="explorer.tick")
        self.ack_source = ColumnDataSource(data={"seq": [0], "ready": [0]}, name="explorer.ack")
        self.tick_source.js_on_change("data", CustomJS(args={"ack": self.ack_source}, code=ACK_JS))
        # Which views the page shows ("*": not reported yet, so all).
        self.visible_source = ColumnDataSource(data={"keys": ["*"]}, name="explorer.visible")
        self._visible_applied: list | None = None
        self._revealed = False
        # Referencing them from a callback puts them into the page's document (the document_ready
        # callback's arguments do not: the page's visibility reports never reached the server).
        self.views["energy"].fig.js_on_change("tags", CustomJS(
            args={"tick": self.tick_source, "ack": self.ack_source, "visible": self.visible_source}, code=""))
        self._sent = 0
        self._sent_at = 0.0
        self._resent = 0
        self._backlog: list = []
        self._drained_events = 0
        self._tick_scheduled = False
        self.upload = pn.widgets.FileInput(multiple=True, accept=".json,.safetensors",
                                           sizing_mode="stretch_width")
        self.upload.param.watch(self._on_upload, "value")
        self.run: Run | None = None
        self.frames_drawn = 0
        self._good = self.state.run_settings()
        self._applying = False
        self._display_dirty = False
        self._doc = None
        self._callback = None
        self._connected_once = False
        self._connected_at = 0.0
        self._first_frame_due = False    # the shown run has started and none of its frames went out
        self._no_delay_for = frozenset()   # websockets with Nagle turned off (_send_without_delay)
        self._orphan_since: float | None = None
        self._layout = None
        self.state.param.watch(self._on_run_setting, list(RUN_SETTINGS))
        self.state.param.watch(self._on_playback, ["playing", "speed"])
        self.state.param.watch(self._on_step, ["step"])
        self.state.param.watch(self._on_reset, ["reset"])
        self.state.param.watch(self._on_display, list(DISPLAY_SETTINGS))
        if self.state.startup_error:
            self.notify(self.state.startup_error)
        if settings:
            self.apply_settings(settings)
        if autostart:
            self.restart()

    # ------------------------------------------------------------------------------------
    # Runs
    # ------------------------------------------------------------------------------------
    def _new_worker(self, threads) -> RunWorker:
        worker = RunWorker(threads=threads or 0)
        worker.set_speed(self.state.steps_per_second)
        worker.set_playing(self.state.playing)
        return worker

    def restart(self) -> int | None:
        """Start a relaxation with the current settings; returns its run id (None if invalid)."""
        try:
            request = self.state.resolve()
        except SettingError as exc:
            self.notify(str(exc))
            return None
        self._good = self.state.run_settings()
        self.clear_alert()
        return self.worker.submit(request)

    @contextlib.contextmanager
    def _applying_settings(self):
        """Settings changed by the app itself (model defaults, reverts) do not re-trigger."""
        self._applying, old = True, self._applying
        try:
            yield
        finally:
            self._applying = old

    def _on_run_setting(self, *events) -> None:
        if self._applying:
            return
        names = {e.name for e in events}
        state = self.state
        try:
            with self._applying_settings():
                if "residual" in names and "model" not in names and state.model in UNTRAINED:
                    state.model = "untrained resnet" if state.residual else "untrained plain"
                if "model" in names:
                    state.param.update(**state.model_defaults(state.model))
                if names & {"model", "depth", "residual", "map_layer"}:
                    state.sync_layers()
            request = state.resolve()
        except SettingError as exc:
            kept = ", ".join(f"{n} = {self._good[n]}" for n in sorted(names) if n in self._good)
            self.notify(f"{exc}" + (f" (kept {kept})" if kept else ""))
            with self._applying_settings():
                state.param.update(**self._good)
                state.sync_layers()
            return
        self._good = state.run_settings()
        self.clear_alert()
        self.worker.submit(request)

    def apply_settings(self, given: dict[str, str]) -> None:
        """Settings given as text (the page's URL query); what cannot apply is reported."""
        typed, problems = self.state.settings_from_text(given)
        for text in problems:
            self.notify(text, level="warning")
        if "model" in typed:   # a model first: it brings its own depth, alpha, schedule
            self.state.model = typed.pop("model")
        if typed:
            self.state.param.update(**typed)

    def _on_playback(self, *events) -> None:
        for e in events:
            if e.name == "speed":
                self.worker.set_speed(self.state.steps_per_second)
            elif e.name == "playing":
                self.worker.set_playing(e.new)
                if e.new and not self.worker.busy:
                    self.restart()   # play after the end replays the run

    def _on_step(self, *_events) -> None:
        if self.state.playing:
            self.state.playing = False
        if not self.worker.busy:
            self.restart()           # paused at the end: start again, showing the start state
        else:
            self.worker.step_once()

    def _on_reset(self, *_events) -> None:
        self.restart()

    def _on_display(self, *_events) -> None:
        self._display_dirty = True   # applied by the next drain (only it touches Bokeh models)

    def _on_upload(self, event) -> None:
        values = event.new
        names = self.upload.filename
        if not values:
            return
        if isinstance(values, (bytes, bytearray)):
            values, names = [values], [names]
        if not names or len(names) != len(values):
            self.notify("the upload arrived without file names; choose NAME.json and NAME.safetensors again")
            return
        try:
            choice = self.state.add_upload(dict(zip(names, values)))
        except SettingError as exc:
            self.notify(str(exc))
            return
        self.notify(f"loaded {choice[len('upload: '):]}", level="success")
        self.state.model = choice

    def _on_trained_saved(self, choice: str) -> None:
        """The Train view saved ``choice``; if the picker shows it, relax the new weights."""
        if self.state.model == choice:
            self.restart()

    # ------------------------------------------------------------------------------------
    # Messages
    # ------------------------------------------------------------------------------------
    def notify(self, text: str, level: str = "error") -> None:
        """Tell the person: a toast (when served) and the alert pane; kept in ``messages``."""
        self.messages.append((level, text))
        (log.info if level in ("info", "success") else log.warning)("%s: %s", level, text)
        if level in ("error", "warning"):
            self.alert.alert_type = "danger" if level == "error" else "warning"
            self.alert.object = text
            self.alert.visible = True
        notifications = pn.state.notifications
        if notifications is not None:
            with contextlib.suppress(Exception):
                getattr(notifications, level)(text, duration=8000 if level == "error" else 3000)

    def clear_alert(self) -> None:
        if self.alert.visible:
            self.alert.visible = False

    # ------------------------------------------------------------------------------------
    # The drain: the only code that touches Bokeh models
    # ------------------------------------------------------------------------------------
    def _visibility_changed(self) -> bool:
        return list(self.visible_source.data["keys"]) != self._visible_applied

    def _apply_visibility(self) -> None:
        keys = list(self.visible_source.data["keys"])
        self._visible_applied = keys
        shown = None if "*" in keys else set(keys)
        for view in self.views.values():
            hidden = shown is not None and view.key not in shown and view.key != "verdict"
            if view.hidden and not hidden:
                view.hidden = False
                view.reveal()          # caught up as it comes into view
                self._revealed = True
            view.hidden = hidden

    def drain(self) -> int:
        """Move what the worker recorded into the views; returns frames drawn."""
        self._apply_visibility()
        events, self._backlog = self._backlog + self.worker.drain(), []
        self._drained_events = len(events)
        latest = self.worker.latest_run
        pending: list[Frame] = []
        drawn = 0

        def flush():
            nonlocal drawn
            if pending and self.run is not None:
                batch = Batch(self.run, list(pending))
                for view in self.views.values():
                    view.offer(batch)
                drawn += len(pending)
            pending.clear()

        for ev in events:
            if ev.run_id != latest:
                continue   # a stale run's leftovers
            if isinstance(ev, Frame):
                if self.run is not None and ev.run_id == self.run.run_id:
                    pending.append(ev)
                continue
            flush()
            if isinstance(ev, RunStarted):
                self.run = Run(ev.request)
                self._first_frame_due = True
                for view in self.views.values():
                    view.begin(self.run)
                self.gallery.show(ev.request.sample)
                self._update_status()
            elif isinstance(ev, (PhaseEnded, RunEnded)) and self.run is not None:
                for view in self.views.values():
                    view.end(ev)
            elif isinstance(ev, RunFailed):
                self.notify(f"the relaxation failed: {ev.message}")
        flush()
        if drawn:
            self._first_frame_due = False
        if self._display_dirty:
            self._display_dirty = False
            for view in self.views.values():
                view.refresh_display()
        self.frames_drawn += drawn
        return drawn

    def _update_status(self) -> None:
        run = self.run
        net = run.request.net
        if self.device.type == "cuda":
            where = f"GPU: {torch.cuda.get_device_name(self.device)}"
        else:
            where = f"CPU, {self._threads or torch.get_num_threads()} torch thread(s) per page, no GPU"
        text = (f"<div class='status'><b>{net.spec.name}</b> · depth {net.spec.depth} · "
                f"{'residual' if net.spec.residual else 'plain'} · "
                f"{net.parameter_count():,} parameters · {where}</div>")
        if self.status.object != text:   # only a new model changes it
            self.status.object = text

    def counts(self) -> dict[str, int]:
        return {k: v.data_count() for k, v in self.views.items()}

    def prefill(self, timeout: float = 0.3) -> None:
        """Give the first run a moment so the page opens with data already in its plots."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.frames_drawn < 10 and self.worker.busy:
            self.drain()
            time.sleep(0.02)
        self.drain()

    # For tests and scripts: run the worker to the end and drain everything.
    def run_until_idle(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.worker.busy:
            if time.monotonic() > deadline:
                raise TimeoutError("the relaxation did not finish in time")
            self.drain()
            time.sleep(0.01)
        self.drain()
        for view in self.views.values():
            view.flush()

    # ------------------------------------------------------------------------------------
    # Session lifecycle
    # ------------------------------------------------------------------------------------
    def attach_session(self) -> None:
        """Start the periodic drain and stop the worker with the session (when served)."""
        self._doc = pn.state.curdoc
        if self._doc is not None:
            self._doc.js_on_event("document_ready", CustomJS(
                args={"visible": self.visible_source, "tick": self.tick_source, "ack": self.ack_source},
                code=PAGE_JS))
        # A plain timer on the server's event loop: it only looks (no document lock, a few attribute
        # reads) and schedules a locked tick when there is something to send or to check.
        self._callback = PeriodicCallback(self._poll, TICK_MS)
        self._callback.start()
        pn.state.on_session_destroyed(self._on_session_destroyed)

    def _poll(self) -> None:
        if self._doc is None:
            return
        _flush_stranded_writes(self._doc)
        if self._tick_scheduled:
            return
        if self._orphaned():
            return
        if not self.ack_source.data["ready"][0] and not (
                self._connected_at and time.monotonic() - self._connected_at > READY_TIMEOUT):
            # The page is still loading: the document it will show is the one rendered for it, and
            # changes sent before it is ready can be lost. Collect, touch nothing.
            if self.worker.pending_events:
                self._backlog.extend(self.worker.drain())
            return
        if not (self.worker.busy or self.worker.pending_events or self._backlog or self._display_dirty
                or self.train.has_news() or self._unconfirmed() or self._visibility_changed()):
            return
        self._tick_scheduled = True
        self._doc.add_next_tick_callback(self._locked_tick)

    def _unconfirmed(self) -> bool:
        """The last update has waited too long for the page's confirmation (once per update)."""
        return (self._sent > self.ack_source.data["seq"][0] and self._resent != self._sent
                and time.monotonic() - self._sent_at > LOST_AFTER)

    def _locked_tick(self) -> None:
        """Runs as a Bokeh next-tick callback, with the document locked."""
        self._tick_scheduled = False
        with set_curdoc(self._doc):
            self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        # A new run goes out at once (the latency a person feels after moving a control), and so
        # does its first frame when the start went out without one (the worker announces a run
        # before its first step); the frames of a running one at most every SEND_EVERY.
        new_run = self.worker.latest_run != (self.run.run_id if self.run is not None else None)
        first_frame = self._first_frame_due and bool(self.worker.pending_events or self._backlog)
        if now - self._sent_at < SEND_EVERY and not ((new_run and self.worker.pending_events) or first_frame):
            return
        acked = self.ack_source.data["seq"][0]
        if self._sent > acked and now - self._sent_at > LOST_AFTER and self._resent != self._sent:
            self._resend(now)
            return
        if self._sent - acked >= IN_FLIGHT and now - self._sent_at < ACK_TIMEOUT:
            # The browser has not applied the last update yet: keep what arrives for the next one
            # (and let the worker's queue empty, so it never waits on the page) -- unless a new run
            # has started, which goes out at once.
            self._backlog.extend(self.worker.drain())
            latest = self.worker.latest_run
            if not (first_frame or any(isinstance(e, RunStarted) and e.run_id == latest for e in self._backlog)):
                return
        # One patch message per tick: Bokeh serialises each message against the whole document,
        # so a dozen separate stream/patch messages per tick cost a dozen times as much.
        with pn.io.hold(self._doc):
            dirty = self._display_dirty
            self.drain()
            trained = self.train.drain() if self.train.has_news() else 0
            revealed, self._revealed = self._revealed, False
            if self._drained_events or dirty or trained or revealed:
                self._sent += 1
                self._sent_at = now
                self.tick_source.data = {"seq": [self._sent]}

    def _resend(self, now: float) -> None:
        """Send what the drain changes again, whole (an update was lost in transit, see LOST_AFTER).

        Seen when one page's update goes out while another page's session is being created:
        the page never receives it and, with its run finished, nothing else would follow.
        """
        own = {self.tick_source.id, self.ack_source.id, self.visible_source.id}
        with pn.io.hold(self._doc):
            for model in list(self._doc.models):
                if model.id in own:
                    continue
                for attr in RESEND_PROPERTIES:
                    if attr in model.properties() and (attr != "data" or isinstance(model, ColumnDataSource)):
                        value = getattr(model, attr)
                        model.trigger(attr, value, value)
            self._sent += 1
            self._resent = self._sent
            self._sent_at = now
            self.tick_source.data = {"seq": [self._sent]}
        log.info("resent the page's state: update %d was not confirmed", self._sent - 1)

    def _orphaned(self) -> bool:
        """True while the page has lost its connection; stops the worker after ORPHAN_SECONDS."""
        ctx = getattr(self._doc, "session_context", None)
        session = getattr(ctx, "session", None)
        if session is None:
            return False
        if session.connection_count > 0:
            self._connected_once = True
            self._connected_at = self._connected_at or time.monotonic()
            self._orphan_since = None
            sockets = _websockets(session)
            if sockets != self._no_delay_for:
                _send_without_delay(sockets - self._no_delay_for)
                self._no_delay_for = sockets
            if self.worker.closed:          # the page came back (reconnected): start afresh
                self.worker = self._new_worker(self._threads)
                self.restart()
            return False
        if not self._connected_once:
            return False                    # still loading
        now = time.monotonic()
        if self._orphan_since is None:
            self._orphan_since = now
        elif now - self._orphan_since > ORPHAN_SECONDS and not self.worker.closed:
            self.shutdown("page closed", wait=0.0)   # on the event loop: signal, do not wait
        return True

    def _on_session_destroyed(self, session_context) -> None:
        if self._callback is not None:
            self._callback.stop()
        self.shutdown("session destroyed")

    def shutdown(self, reason: str = "", wait: float = 2.0) -> None:
        sid = getattr(getattr(self._doc, "session_context", None), "id", "?")
        if not self.worker.closed:
            self.worker.stop(timeout=wait)
            log.info("session %s: worker stopped (%s)", sid, reason)
            print(f"explorer: session {sid}: worker stopped ({reason})", flush=True)
        if self.train.shutdown(reason, wait=wait):
            log.info("session %s: training worker stopped (%s)", sid, reason)
            print(f"explorer: session {sid}: training worker stopped ({reason})", flush=True)

    # ------------------------------------------------------------------------------------
    # Layout
    # ------------------------------------------------------------------------------------
    def controls(self) -> list:
        s = self.state
        def section(title, *items):
            return pn.Column(pn.pane.HTML(f"<div class='section'>{title}</div>", stylesheets=[self.css],
                                          margin=(8, 10, 0, 10)), *items, sizing_mode="stretch_width")
        model = pn.Param(s, parameters=["model", "depth", "residual"], show_name=False,
                         sizing_mode="stretch_width")
        upload_help = pn.pane.HTML("<div class='hint'>Upload a checkpoint: select <b>NAME.json</b> and "
                                   "<b>NAME.safetensors</b> together.</div>", stylesheets=[self.css],
                                   margin=(0, 10))
        dynamics = pn.Param(s, parameters=["alpha", "beta", "t_free", "t_nudge", "schedule"], show_name=False,
                            widgets={n: {"type": pn.widgets.FloatSlider, "format": fmt,
                                         "start": SLIDER_RANGES[n][0], "end": SLIDER_RANGES[n][1]}
                                     for n, fmt in (("alpha", "0.0"), ("beta", "0.00"))},
                            sizing_mode="stretch_width")
        playback_buttons = pn.Param(s, parameters=["playing", "step", "reset"], show_name=False,
                                    default_layout=pn.Row, sizing_mode="stretch_width",
                                    widgets={"playing": {"type": pn.widgets.Toggle, "color": "primary",
                                                         "name": "▶ Play / ❚❚ Pause"},
                                             "step": {"type": pn.widgets.Button, "name": "Step"},
                                             "reset": {"type": pn.widgets.Button, "name": "Reset"}})
        speed = pn.Param(s, parameters=["speed"], show_name=False, sizing_mode="stretch_width",
                         widgets={"speed": pn.widgets.DiscreteSlider})
        inputs = pn.Param(s, parameters=["sample"], show_name=False, sizing_mode="stretch_width")
        display = pn.Param(s, parameters=["units_layer", "map_layer", "map_channel", "map_phase"],
                           show_name=False, sizing_mode="stretch_width")
        sections = [section("Model", model, upload_help, self.upload),
                    section("Dynamics", dynamics),
                    section("Input", self.gallery.pane, inputs),
                    section("Playback", playback_buttons, speed),
                    section("Display", display)]
        for widget in (w for sec in sections for w in sec.select(pn.widgets.Widget)):
            # Panel holds every change from the page for 50 ms (Syncable._debounce) to merge
            # bursts; the worker already lets the newest setting win, so those 50 ms were a
            # third of the latency a person feels after moving a slider.
            widget._debounce = 0
        return sections

    def relaxation_tab(self):
        v = self.views
        row = dict(sizing_mode="stretch_width")
        return pn.Column(
            pn.Row(v["output"].panel(), v["verdict"].panel(sizing_mode=None, width=560), **row),
            v["energy"].panel(),
            v["residual"].panel(),
            v["trajectories"].panel(),
            v["nudge"].panel(),
            sizing_mode="stretch_width")

    def tabs(self) -> pn.Tabs:
        """The main area: the live relaxation, and training with EP."""
        tabs = pn.Tabs(("Relaxation", self.relaxation_tab()), ("Train", self.train), ("Scan", self.scan),
                       ("Sweep", self.sweep), dynamic=True, sizing_mode="stretch_width")
        self.scan.page_tabs = self.sweep.page_tabs = tabs   # a click there opens the Relaxation tab
        return tabs

    def __panel__(self):
        if self._layout is None:
            self._layout = pn.Row(pn.Column(*self.controls(), width=340),
                                  pn.Column(self.status, self.alert, self.tabs(), sizing_mode="stretch_width"),
                                  sizing_mode="stretch_width")
        return self._layout

    def template(self) -> pn.template.FastListTemplate:
        self._tabs = self.tabs()
        tmpl = pn.template.FastListTemplate(
            title="Hopfield-ResNet explorer · equilibrium propagation, live",
            sidebar=self.controls(), main=[pn.Column(self.status, self.alert, self._tabs,
                                                     sizing_mode="stretch_width")],
            sidebar_width=350, accent="#0072B2", main_layout=None, theme_toggle=False, design=OfflineFast,
            # The header's busy spinner would flip twice per tick (the periodic drain counts as
            # "busy"), costing the browser a restyle every 40 ms.
            busy_indicator=None,
            # No web font: the default (Open Sans from Google) fails without internet.
            font="'Helvetica Neue', Helvetica, Arial, sans-serif", font_url="",
            raw_css=[self.css])
        return tmpl


def create_app(**kwargs) -> ExplorerApp:
    # A page never waits for the fused kernels' first build (about 30 s on 2 cores): runs use
    # the eager tensor code until the background build is done, then the kernels.
    native.build_in_background()
    return ExplorerApp(**kwargs)
