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
- every websocket of the page sends without Nagle's delay (``transport.send_without_delay``): with
  tornado's default each update waited about 33 ms for the browser's TCP acknowledgement;
  and each poll sends an update that a race in Panel's write queue left behind
  (``transport.flush_stranded_writes``), which otherwise waited for the next one.

Each browser tab is its own session with its own state, worker and run
store (:class:`explorer.run.RunStore`): every finished run is kept there
(within its memory budget), listed under "Runs", and can be drawn again,
saved as a file and opened from one; a stored run is replayed through the
same views and the same drain as a streaming one (``views.base.feed``).
The worker stops when the session is destroyed or, sooner, when the page has
had no connection for ``ORPHAN_SECONDS``.
"""
from __future__ import annotations

import contextlib
import difflib
import html
import io
import logging
import time
from pathlib import Path

import panel as pn
import param
import torch
from bokeh.models import ColumnDataSource, CustomJS
from tornado.ioloop import PeriodicCallback

from .. import native
from ..export import TIMED_VIEWS as TIMED_EXPORT_VIEWS
from ..export import VIEWS as EXPORT_VIEWS
from ..run import Run, RunFileError, RunStore
from ..run import load as load_run
from ..run import save as save_run
from . import transport
from .gallery import Gallery
from .gradients_tab import GradientsTab
from .scan_tab import ScanTab
from .sweep_tab import SweepTab
from .helptext import with_help_icons
from .state import (MODEL_SETTINGS, RUN_SETTINGS, SLIDER_RANGES, UNTRAINED, ExplorerState, SettingError,
                    pick_device)
from .views import VIEW_CLASSES
from .views.base import REPLAY_ID, feed, replay_events, replay_frames, replay_position, style
from .views.train import TrainView
from .worker import Frame, PhaseEnded, RunEnded, RunFailed, RunStarted, RunWorker

log = logging.getLogger("explorer.app")

TICK_MS = 10            # how often the page looks for news (a few attribute reads when idle) ...
SEND_EVERY = 0.033      # ... and sends at most 30 updates per second
IN_FLIGHT = 1           # updates sent but not yet applied by the page, at most
REPEAT_SECONDS = 3.0    # the same message again within this long is not shown again
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
# What a link carries besides the model (issue 18): the run's settings and its playback speed.
LINK_SETTINGS = ("sample", "depth", "residual", "alpha", "beta", "t_free", "t_nudge", "schedule", "tol",
                 "stop_at_tol", "speed")
DISPLAY_SETTINGS = ("units_layer", "map_channel", "map_phase")

# The relaxation tab's views in reading order (their titles carry these numbers).
VIEW_ORDER = ("output", "verdict", "energy", "residual", "trajectories", "nudge")
NARROW_WIDTH = 1300   # below it the sidebar starts collapsed: the views need the width
# The sidebar sections each tab uses (the others are hidden there: they would do nothing); a tab
# not listed shows every section. Scan, Sweep and EP vs BPTT relax the Relaxation tab's model with
# its dynamics; the Train tab fine-tunes its model and probes with its input image.
SECTION_TABS = {"Train": ("Model", "Input", "Share"), "Scan": ("Model", "Dynamics", "Share"),
                "Sweep": ("Model", "Dynamics", "Share"), "EP vs BPTT": ("Model", "Dynamics", "Input", "Share")}
# The verdict card's (width, least text height) in px, on a desk and in presentation mode (larger text);
# a longer verdict makes the card taller rather than hiding its end.
VERDICT_SIZE = {False: (310, 380), True: (340, 480)}
CONFIRM_AFTER = 0.15   # seconds without a change from the page before its controls are confirmed


class SidebarFit(pn.custom.JSComponent):
    """Collapses the template's sidebar on narrow pages (on load, and on crossing the width) and
    in presentation mode; a sidebar opened by hand stays open until the next crossing."""
    present = param.Boolean(default=False)
    narrow_width = param.Integer(default=NARROW_WIDTH)
    _esm = """const PRESENT_TEXT = '1.25';

export function render({ model }) {
  const nav = (open) => { if (typeof window.closeNav === 'function') (open ? window.openNav : window.closeNav)(); };
  let narrow = null;
  const fit = () => {
    const now = window.innerWidth < model.narrow_width;
    if (now === narrow) return;
    narrow = now;
    nav(!(narrow || model.present));
  };
  // The views' text (assets/app.css) read from the back of a room in presentation mode.
  const text = () => document.documentElement.style.setProperty('--explorer-text', model.present ? PRESENT_TEXT : '1');
  fit();
  text();
  window.addEventListener('resize', fit);
  model.on('present', () => { nav(!(model.present || narrow)); text(); });
  model.on('remove', () => window.removeEventListener('resize', fit));
  const el = document.createElement('span');
  el.className = 'sidebar-fit';
  return el;
}
"""


FULLSCREEN_JS = """
const card = cards[pick.value];
const view = card == null ? null : Bokeh.index.find_one(card);
if (view != null && view.el.requestFullscreen) {
  // A card's own background is transparent: full screen it showed dark text on the black backdrop.
  // Take the page's (light or dark theme) background from the nearest ancestor that has one.
  let bg = null;
  for (let n = view.el; n != null && bg == null; n = n.parentElement || n.getRootNode().host) {
    const c = getComputedStyle(n).backgroundColor;
    if (c && c !== "transparent" && !/^rgba\(.*,\s*0\)$/.test(c)) bg = c;
  }
  view.el.style.backgroundColor = bg || "white";
  view.el.style.overflow = "auto";
  // Panel's Fast template handles every fullscreenchange as its own, reaching for a button our cards
  // lack ("Cannot set properties of undefined"): keep the card's events from reaching it.
  if (!view.el._explorer_fullscreen) {
    view.el.addEventListener("fullscreenchange", (e) => e.stopPropagation());
    view.el._explorer_fullscreen = true;
  }
  view.el.requestFullscreen();
}
"""

# Panel's Fast design without its web font: the page loads nothing from outside the server.
OfflineFast = transport.offline_design()


def app_css() -> str:
    try:
        return CSS_FILE.read_text()
    except OSError:
        return ""


class ExplorerApp(pn.viewable.Viewer):
    """One page of the explorer: its state, its worker, its views."""

    def __init__(self, state: ExplorerState | None = None, *, autostart: bool = True,
                 threads: int | None = 1, settings: dict[str, str] | None = None, **params):
        super().__init__(**params)
        self.state = state if state is not None else ExplorerState()
        self.device = pick_device()
        self.store = RunStore()
        self.worker = self._new_worker(threads)
        self._threads = threads
        self.views = {cls.key: cls(self.state) for cls in VIEW_CLASSES}
        self.gallery = Gallery(self.state)
        self.messages: list[tuple[str, str]] = []   # (level, text) of every notification
        self._notified: dict[str, float] = {}   # when each keyed message was last given
        self.css = app_css()
        # Training has its own worker; its events reach the page through the same periodic drain.
        self.train = TrainView(self.state, notify=self.notify, on_saved=self._on_trained_saved,
                               threads=threads, css=self.css, clear_alert=self.clear_alert)
        # Scans and sweeps share one background worker per page, with their own periodic drain.
        self.scan = ScanTab(self.state, notify=self.notify, threads=threads)
        self.sweep = SweepTab(self.state, worker=self.scan.worker, notify=self.notify, threads=threads)
        self.gradients = GradientsTab(self.state, worker=self.scan.worker, notify=self.notify)
        # A sweep running in this page steps aside while a run the user just asked for relaxes.
        self.scan.worker.defer_to = lambda: self.worker.started_within(self.scan.worker.defer_limit)
        self.alert = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width",
                                   margin=(5, 10))
        self.status = pn.pane.HTML("", css_classes=["status-line"], stylesheets=[self.css],
                                   sizing_mode="stretch_width", height=30, margin=(0, 10))
        self._init_flow_control()
        self.upload = pn.widgets.FileInput(multiple=True, accept=".json,.safetensors",
                                           sizing_mode="stretch_width")
        self.upload.param.watch(self._on_upload, "value")
        self._init_run_controls()
        self.frames_drawn = 0
        self._good = self.state.run_settings()
        self._applying = False
        self._display_dirty = False
        self._doc = None
        self._callback = None
        self._connected_once = False
        self._connected_at = 0.0
        self._first_frame_due = False    # the shown run has started and none of its frames went out
        self._no_delay_for = frozenset()   # websockets with Nagle turned off (transport.send_without_delay)
        self._orphan_since: float | None = None
        self._layout = None
        self.state.param.watch(self._on_run_setting, list(RUN_SETTINGS))
        self.state.param.watch(self._on_playback, ["playing", "speed"])
        self.state.param.watch(self._on_step, ["step"])
        self.state.param.watch(self._on_reset, ["reset"])
        self.state.param.watch(self._on_display, list(DISPLAY_SETTINGS))
        self.state.param.watch(self._write_address, ["model", *LINK_SETTINGS])
        self._tabs, self._tab_titles, self._wanted_tab = None, [], None
        self._sections: dict[str, pn.Column] = {}
        self._setting_widgets: dict[str, list] = {}   # run setting -> its sidebar widgets
        self._help_icons: dict[str, pn.widgets.TooltipIcon] = {}   # widget label -> its "?" icon
        self._confirm: set[str] = set()               # settings the page changed, to confirm ...
        self._confirm_at = 0.0                        # ... once it has not changed them for a moment
        self.model_note = pn.pane.HTML(self._model_note_html(self.state.model_info()), stylesheets=[self.css],
                                       margin=(0, 10), sizing_mode="stretch_width")
        self.tab_note = pn.pane.HTML("", stylesheets=[self.css], margin=(0, 10), visible=False,
                                     sizing_mode="stretch_width")
        if self.state.startup_error:
            self.notify(self.state.startup_error)
        link_problems = self.apply_settings(settings) if settings else []
        if autostart:
            self.restart()
        self._show_link_problems(link_problems)

    def _init_flow_control(self) -> None:
        """The page's side of the transport: which update it painted, which views it shows."""
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
        self._ready_seen = False   # the page has said it is ready (see _unconfirmed)
        self._backlog: list = []
        self._drained_events = 0
        self._tick_scheduled = False

    def _init_run_controls(self) -> None:
        """The shown run, the Runs list, Save / Open and the exports."""
        self.run: Run | None = None           # the run the views show (streaming or stored)
        self._shown_number = 0                # its worker run number (REPLAY_ID: drawn from the store)
        self._ignore_upto = 0                 # the worker's runs up to this one are not drawn (a stored one is)
        self._replay: Run | None = None       # a stored run to draw at the next drain ...
        self._replay_upto: int | None = None  # ... up to this frame (the replay player's position)
        self._replay_run: Run | None = None   # the finished run the player scrubs
        self._listed = (-1, None)             # (store version, shown run id) the Runs list shows
        self.runs_select = pn.widgets.Select(label="Runs", options={}, sizing_mode="stretch_width")
        self.runs_select.param.watch(self._on_select_run, "value")
        self.save_run = pn.widgets.FileDownload(callback=self._run_file, filename="run.parquet",
                                                label="Save run", disabled=True, sizing_mode="stretch_width")
        self.open_run = pn.widgets.FileInput(accept=".parquet", sizing_mode="stretch_width")
        self.open_run.param.watch(self._on_open_run, "value")
        # Exports of the shown finished run (explorer.export), each built when its button is clicked.
        self.export_view = pn.widgets.Select(label="Export view", options=list(EXPORT_VIEWS), value="energy",
                                             sizing_mode="stretch_width")
        self.export_view.param.watch(self._sync_exports, "value")
        self.exports = {kind: pn.widgets.FileDownload(callback=lambda kind=kind: self._export_file(kind),
                                                      filename=f"run.{kind}", label=kind.upper(), disabled=True,
                                                      description="Exports need a finished run", margin=(2, 3),
                                                      width=62)
                        for kind in ("csv", "json", "gif", "html", "png", "svg")}

    # ------------------------------------------------------------------------------------
    # Runs
    # ------------------------------------------------------------------------------------
    def _new_worker(self, threads) -> RunWorker:
        worker = RunWorker(threads=threads or 0, store=self.store)
        self._shown_number = self._ignore_upto = 0   # a new worker numbers its runs from 1 again
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
        self._confirm |= names
        self._confirm_at = time.monotonic()
        before = {n: getattr(state, n) for n in MODEL_SETTINGS}
        try:
            with self._applying_settings():
                if "residual" in names and "model" not in names and state.model in UNTRAINED:
                    state.model = "untrained resnet" if state.residual else "untrained plain"
                if names & {"depth", "residual"} and "model" not in names and state.family():
                    sibling = state.sibling()   # a trained family: open the member at this depth
                    if sibling != state.model:
                        state.model = sibling
                        names.add("model")
                        self.notify(f"opened {sibling}, the trained sibling at depth {state.depth}", "info",
                                    key="sibling")
                if "model" in names:
                    state.param.update(**state.model_defaults(state.model))
                if names & {"model", "depth", "residual", "map_layer"}:
                    state.sync_layers()
            request = state.resolve()
        except SettingError as exc:
            kept = ", ".join(f"{n} = {self._good[n]}" for n in sorted(names) if n in self._good)
            self.notify(f"{exc}" + (f" (kept {kept})" if kept else ""), key=",".join(sorted(names)))
            with self._applying_settings():
                state.param.update(**self._good)
                state.sync_layers()
            return
        self._good = state.run_settings()
        self.clear_alert()
        if "model" in names:
            self._architecture_controls()
            # A sibling opened by depth or residual may be one of many in a drag: one toast a drag.
            self._say_model_change(before, key="sibling-change" if names & {"depth", "residual"} else None)
        self.worker.submit(request)

    @staticmethod
    def _model_note_html(text: str) -> str:
        return f"<div class='hint model-note'>{html.escape(text)}</div>"

    def _say_model_change(self, before: dict, key: str | None = None) -> None:
        """A model change resets some settings and keeps others: say which, and what its accuracy means."""
        change, info = self.state.model_change_text(before), self.state.model_info(named=False)
        self.model_note.object = self._model_note_html(f"{change}. {info}")
        self.notify(change, "info", key=key)

    def confirm_controls(self, force: bool = False) -> int:
        """Send the sliders the page moved their settings' values once the page has stopped moving
        them (``CONFIRM_AFTER``); returns how many were sent.

        While a slider is dragged, the page sends value after value; a value the app wrote back
        meanwhile (a refused depth put back, a sibling's defaults) reaches the page after it sent
        later ones, and the page shows it while the run has the later value (seen: the depth
        slider at 3 with the run at depth 10). The settled value, sent last, puts them in step.
        """
        if not self._confirm or (not force and time.monotonic() - self._confirm_at < CONFIRM_AFTER):
            return 0
        names, self._confirm = self._confirm, set()
        sent = 0
        for name in sorted(names):
            for widget in self._setting_widgets.get(name, ()):
                if not isinstance(widget, (pn.widgets.IntSlider, pn.widgets.FloatSlider)):
                    continue   # a click, not a drag: nothing in flight to cross
                value = widget._process_param_change({"value": widget.value}).get("value", widget.value)
                for model, _ in list(widget._models.values()):   # Panel keeps each page's model there
                    if model.value != value:
                        model.value = value
                    else:
                        model.trigger("value", value, value)   # sent again: the page may show another
                    sent += 1
        return sent

    def apply_settings(self, given: dict[str, str]) -> list[str]:
        """Settings given as text (the page's URL query); what cannot apply is reported, by name,
        and the others still apply; returns those reports. A zoo model may be named by its
        checkpoint name alone."""
        given = dict(given)
        first = len(self.messages)
        self._wanted_tab = given.pop("tab", None)
        given.pop("theme", None)   # the template reads its theme from the address itself
        self._present_wanted = given.pop("present", "").lower() in ("1", "true", "yes", "on")
        if "model" in given:
            given["model"] = self._model_choice(given["model"])
            if given["model"] not in self.state.param.model.objects:
                self.notify(self._unknown_model_text(given.pop("model")), level="warning")
        typed, problems = self.state.settings_from_text(given)
        for text in problems:
            self.notify(text, level="warning")
        if "model" in typed:   # a model first: it brings its own depth, alpha, schedule
            self.state.model = typed.pop("model")
        # One at a time: a value the loaded model refuses (beta 1.5 with the mse cost) is named and
        # kept alone; applied together, its refusal would keep every other value of the link too.
        for name, value in typed.items():
            self.state.param.update(**{name: value})
        return [t for level, t in self.messages[first:] if level in ("error", "warning")]

    def _show_link_problems(self, problems: list[str]) -> None:
        """The link's refused values stay on the page: the run it starts cleared the alert."""
        if problems:
            self.alert.param.update(alert_type="warning", object=" · ".join(problems), visible=True)

    def _model_choice(self, text: str) -> str:
        """The model choice a link names: a zoo checkpoint's name (``fmnist-resnet5-ep``) or a choice as listed."""
        for choice, entry in {**self.state.zoo, **self.state.trained}.items():
            if text == entry.name:
                return choice
        return text

    def _unknown_model_text(self, text: str) -> str:
        """A link's model that is not on this page, named with the nearest names (the whole list,
        with accuracies, was a wall of 45 choices)."""
        entries = {**self.state.zoo, **self.state.trained}
        names = sorted({e.name for e in entries.values()} | set(UNTRAINED))
        near = difflib.get_close_matches(text, names, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        current = entries.get(self.state.model)
        return (f"model = {text} is not a model of this page; {hint}(the Model list names all {len(names)}); "
                f"kept {current.name if current is not None else self.state.model}")

    def link_query(self) -> dict[str, str]:
        """The run on screen as a URL query, each setting under its own name (``?beta=0.3&sample=30``)."""
        s = self.state
        entry = s.zoo.get(s.model) or s.trained.get(s.model)
        query = {"model": entry.name if entry is not None else s.model}
        for name in LINK_SETTINGS:
            value = getattr(s, name)
            query[name] = ("true" if value else "false") if isinstance(value, bool) else f"{value}"
        if self._tabs is not None and self._tab_titles:
            query["tab"] = self._tab_titles[self._tabs.active].lower()
        return query

    def _write_address(self, *_events) -> None:
        """Keep the page's address in step with its settings (served pages only)."""
        location = pn.state.location
        if location is not None and not self._applying:
            location.update_query(**self.link_query())

    def pin_button(self) -> pn.widgets.Toggle:
        """Pin the run on screen as A (it stays drawn, muted, in the views, and the next run is compared with it)."""
        toggle = pn.widgets.Toggle(name="Pin this run as A", value=False, sizing_mode="stretch_width")
        toggle.param.watch(lambda e: self.pin_current(e.new), "value")
        return toggle

    def pin_current(self, pinned: bool = True) -> None:
        """Pin (or unpin) the run on screen as A: every view keeps it drawn (View.pin), from the next drain."""
        compare = self.views["compare"]
        run = self.run if pinned else None
        for view in (v for v in self.views.values() if v is not compare):
            if compare.pinned is not None:
                view.pin(compare.pinned.id, False)
            if run is not None:
                view.pin(run)
        if compare.pinned is not None:
            self.store.pin(compare.pinned.id, False)
        if run is not None:
            self.store.pin(run.id)
        compare.pin(run)
        self._display_dirty = True   # the views draw (or drop) A at the next drain

    def copy_link(self) -> pn.widgets.Button:
        """A button that copies the page's address, which holds every run setting, to the clipboard."""
        button = pn.widgets.Button(name="Copy link", button_type="default", sizing_mode="stretch_width",
                                   description="Copy this page's address: opening it reproduces this run")
        button.js_on_click(code="""
const url = window.location.href;
const done = () => { cb_obj.label = "Link copied"; setTimeout(() => { cb_obj.label = "Copy link"; }, 1500); };
if (navigator.clipboard && window.isSecureContext) { navigator.clipboard.writeText(url).then(done, () => window.prompt("Copy this link", url)); }
else { window.prompt("Copy this link", url); }
""")
        return button

    def _open_wanted_tab(self) -> None:
        wanted = (self._wanted_tab or "").lower()
        titles = [t.lower() for t in self._tab_titles]
        if wanted and wanted in titles:
            self._tabs.active = titles.index(wanted)
        elif wanted:
            self.notify(f"tab = {self._wanted_tab!r} is not a tab of this page (one of {', '.join(titles)}); "
                        "kept Relaxation", level="warning")

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

    # -- stored runs -------------------------------------------------------------------------
    def show_run(self, run: Run, upto: int | None = None) -> None:
        """Draw a stored run in every view (at the next drain), up to its frame ``upto`` (None: all);
        the live run is no longer drawn."""
        self._ignore_upto = self.worker.latest_run
        self._replay, self._replay_upto = run, upto

    def replay_player(self) -> pn.Column:
        """Scrub the shown finished run step by step across every view (space: play or pause,
        arrow keys: a step back or forward)."""
        self.player = pn.widgets.Player(name="Replay", start=0, end=1, value=0, step=1, interval=120,
                                        loop_policy="once", show_value=False, disabled=True,
                                        visible_buttons=["slower", "previous", "reverse", "pause", "play",
                                                         "next", "faster"], sizing_mode="stretch_width")
        self.replay_text = pn.pane.HTML("<div class='hint'>Replay: a finished run can be scrubbed here "
                                        "(space plays or pauses, arrow keys step).</div>", margin=(0, 10))
        self.player.param.watch(self._on_scrub, "value")
        # Pausing does not move the frame: the caption follows the play direction too (it said "playing").
        self.player.param.watch(lambda _e: self._caption_replay(), "direction")
        return pn.Column(self.player, self.replay_text, sizing_mode="stretch_width")

    def _on_scrub(self, event) -> None:
        run = self._replay_run
        if self._applying or run is None:
            return
        self._caption_replay()
        self.show_run(run, int(event.new))

    def _caption_replay(self) -> None:
        run = getattr(self, "_replay_run", None)
        if self._applying or run is None:
            return
        frame = int(self.player.value)
        phase, step, steps = replay_position(run, frame)
        self.replay_text.object = (f"<div class='hint'>{'paused' if self.player.direction == 0 else 'playing'} "
                                   f"at {phase} step {step} of {steps} (frame {frame + 1} of "
                                   f"{replay_frames(run)})</div>")

    def _arm_replay(self, run: Run) -> None:
        """A run finished: the player now scrubs it (set at its last frame, without redrawing)."""
        if not hasattr(self, "player") or run is None:
            return
        self._replay_run = run
        with self._applying_settings():
            self.player.end = max(replay_frames(run) - 1, 1)
            self.player.value = self.player.end
        self.player.disabled = False

    def _on_select_run(self, event) -> None:
        run_id = event.new
        if self._applying or run_id is None or run_id == getattr(self.run, "id", None) or run_id not in self.store:
            return
        run = self.store.select(run_id)
        self.show_run(run)
        self._arm_replay(run)

    def _saved_run(self) -> Run | None:
        """The shown run once it is stored (finished), else the newest stored one."""
        shown = self.store.get(self.run.id) if self.run is not None else None
        runs = self.store.runs()
        return shown or (runs[-1] if runs else None)

    def _run_file(self):
        """The Save run button's file, built when clicked."""
        run = self._saved_run()
        try:
            if run is None:
                raise ValueError("no run has finished yet")
            data = save_run(run)
        except Exception as exc:   # a person clicked: say why, keep serving
            self.notify(f"could not save the run: {exc}")
            self.save_run.filename = "run-not-saved.txt"
            return io.BytesIO(f"The run could not be saved: {exc}\n".encode())
        self.save_run.filename = f"run-{run.id}.parquet"
        return io.BytesIO(data)

    def _export_file(self, kind: str):
        """An export button's file (CSV, JSON, HTML replay; PNG, SVG or GIF of the chosen view) of the
        shown finished run, built when clicked."""
        from .. import export
        run, button = self._saved_run(), self.exports[kind]
        view = self.export_view.value
        makers = {"csv": export.csv_bytes, "json": export.json_bytes, "html": export.html_bytes,
                  "gif": lambda r: export.gif_bytes(r, view),
                  "png": lambda r: export.figure_bytes(r, view, "png"),
                  "svg": lambda r: export.figure_bytes(r, view, "svg")}
        try:
            if run is None:
                raise ValueError("no run has finished yet")
            data = makers[kind](run)
        except Exception as exc:   # a person clicked: say why, keep serving
            self.notify(f"could not export the run as {kind.upper()}: {exc}")
            button.filename = "run-not-exported.txt"
            return io.BytesIO(f"The run could not be exported: {exc}\n".encode())
        stem = f"run-{run.id}" + (f"-{view}" if kind in ("png", "svg", "gif") else "")
        button.filename = f"{stem}.{kind}"
        return io.BytesIO(data)

    def _on_open_run(self, event) -> None:
        data, name = event.new, self.open_run.filename or "the file"
        if not data:
            return
        try:
            run = load_run(data)
        except RunFileError as exc:
            self.notify(f"could not open {name}: {exc}")
            return
        except Exception as exc:   # anything else a hostile file provokes: one message, keep serving
            log.exception("opening a run file failed")
            self.notify(f"could not open {name}: it is not a readable run file ({type(exc).__name__}: {exc})")
            return
        self.store.add(run)
        self.clear_alert()   # an earlier file's refusal no longer applies (it stayed above the opened run)
        self.notify(f"opened run {run.id} from {name}", level="success")
        self.show_run(run)
        self._arm_replay(run)     # a saved run opens into the same replay

    def _list_runs(self) -> None:
        """Keep the Runs list in step with the store (on the page's thread, in the drain)."""
        shown = getattr(self.run, "id", None)
        if self._listed == (self.store.version, shown):
            return
        self._listed = (self.store.version, shown)
        options = {f"{r.summary()} · {r.id[-5:]}": r.id for r in reversed(self.store.runs())}
        with self._applying_settings():
            self.runs_select.options = options
            self.runs_select.value = shown if shown in options.values() else None
        self.save_run.disabled = not options
        self._sync_exports()

    def _sync_exports(self, *_events) -> None:
        """Export buttons need a finished run; the GIF, a view over time."""
        finished = bool(self.runs_select.options)
        view = self.export_view.value
        for kind, button in self.exports.items():
            why = self._export_refusal(kind, view, finished)
            button.disabled = why is not None
            shown = f"the shown run's {view} view" if kind in ("png", "svg", "gif") else "the shown run"
            button.description = why or f"Download {shown} as {button.label}"

    @staticmethod
    def _export_refusal(kind: str, view: str, finished: bool) -> str | None:
        """Why an export button cannot apply now (None: it can)."""
        if not finished:
            return "Exports need a finished run"
        if kind == "gif" and view not in TIMED_EXPORT_VIEWS:
            return f"A GIF moves along a view over time ({', '.join(TIMED_EXPORT_VIEWS)}), not {view}"
        return None

    # ------------------------------------------------------------------------------------
    # Messages
    # ------------------------------------------------------------------------------------
    def _architecture_controls(self) -> None:
        """Depth and residual are disabled, with the reason as their tooltip, for a checkpoint they
        cannot change (a zoo family's member moves to its siblings instead)."""
        reason = self.state.architecture_reason()
        labels = {self.state.param.depth.label, self.state.param.residual.label}
        for w in getattr(self, "_model_controls", pn.Column()).select(pn.widgets.Widget):
            if w.name in labels:
                w.disabled = reason is not None
                help_ = next(p.doc for p in (self.state.param.depth, self.state.param.residual) if p.label == w.name)
                w.description = reason or help_
                if w.name in self._help_icons:
                    self._help_icons[w.name].value = reason or help_

    def notify(self, text: str, level: str = "error", key: str | None = None) -> None:
        """Tell the person: a toast (when served) and the alert pane; kept in ``messages``. Another
        message with the same ``key`` within a few seconds (a slider dragged over refused values)
        only updates the alert pane: one toast a drag, not one a position. Keys are remembered
        apart: a depth drag over a trained family alternates refusals and opened siblings, and a
        last-key-only memory gave a toast at every alternation (a pile of them)."""
        now = time.monotonic()
        repeat = key is not None and now - self._notified.get(key, -REPEAT_SECONDS) < REPEAT_SECONDS
        if key is not None:
            self._notified[key] = now
        if repeat:
            if level in ("error", "warning"):
                self.alert.param.update(object=text, visible=True,
                                        alert_type="danger" if level == "error" else "warning")
            return
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
        """Move what the worker recorded (or a stored run) into the views; returns frames drawn."""
        self._apply_visibility()
        events, self._backlog = self._backlog + self.worker.drain(), []
        self._drained_events = len(events)
        latest = self.worker.latest_run
        # A stale run's leftovers, and the live run while a stored one is shown, are not drawn.
        events = [ev for ev in events
                  if ev.run_id == REPLAY_ID or (ev.run_id == latest and ev.run_id > self._ignore_upto)]
        if self._replay is not None:
            events, self._replay = replay_events(self._replay, self._replay_upto) + events, None
            self._drained_events += 1
        start = next((i for i, ev in enumerate(events) if isinstance(ev, RunStarted)), None)
        if start is not None and start + 1 < len(events) and not transport.folds_streams():
            # A run's start replaces the views' data, its frames then stream into it. In one message
            # the page would get the streamed rows twice (Bokeh sends the replaced data as it is at
            # sending time, rows included, then the stream): unless the tick folds those streams
            # away (transport.fold_streams), the frames go in the next update.
            events, self._backlog = events[:start + 1], events[start + 1:]
        self.run, self._shown_number, drawn = feed(list(self.views.values()), events, self.run,
                                                   self._shown_number)
        for ev in events:
            if isinstance(ev, RunStarted):
                self._first_frame_due = True
                if ev.run_id != REPLAY_ID:
                    self.gallery.show(ev.run.sample)
                self._update_status()
            elif isinstance(ev, RunFailed):
                self.notify(f"the relaxation failed: {ev.message}")
            elif isinstance(ev, RunEnded) and ev.run_id != REPLAY_ID and not ev.cancelled:
                self._arm_replay(ev.run)
        if drawn:
            self._first_frame_due = False
        if self._display_dirty:
            self._display_dirty = False
            for view in self.views.values():
                view.refresh_display()
        self._list_runs()
        self.frames_drawn += drawn
        return drawn

    def _update_status(self) -> None:
        run = self.run
        spec = run.network["spec"]
        params = run.network.get("parameters")
        if self.device.type == "cuda":
            where = f"GPU: {torch.cuda.get_device_name(self.device)}"
        else:
            where = f"CPU, {self._threads or torch.get_num_threads()} torch thread(s) per page, no GPU"
        text = (f"<div class='status'><b>{spec.get('name', run.network['model'])}</b> · "
                f"depth {len(run.hidden)} · {'residual' if run.residual else 'plain'} · "
                + (f"{params:,} parameters · " if params is not None else "") + f"{where}</div>")
        if self.status.object != text:   # only a new model changes it
            self.status.object = text

    def counts(self) -> dict[str, int]:
        """Rows of data per view that a run streams into (the comparison waits for a pinned run)."""
        return {k: v.data_count() for k, v in self.views.items() if k != "compare"}

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
        while self.worker.busy or self._backlog or self._replay is not None:
            if time.monotonic() > deadline:
                raise TimeoutError("the relaxation did not finish in time")
            self.drain()
            time.sleep(0.01)
        while self.drain() or self._backlog:
            pass
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
                code=transport.page_js()))
        # A plain timer on the server's event loop: it only looks (no document lock, a few attribute
        # reads) and schedules a locked tick when there is something to send or to check.
        self._callback = PeriodicCallback(self._poll, TICK_MS)
        self._callback.start()
        pn.state.on_session_destroyed(self._on_session_destroyed)

    def _poll(self) -> None:
        if self._doc is None:
            return
        transport.flush_stranded_writes(self._doc)
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
                or self._replay is not None or self.train.has_news() or self._unconfirmed()
                or self._visibility_changed() or self._confirm):
            return
        self._tick_scheduled = True
        self._doc.add_next_tick_callback(self._locked_tick)

    def _unconfirmed(self) -> bool:
        """The last update has waited too long for the page's confirmation (once per update), or the
        page said it is ready without having had what was sent before (a page that took longer than
        READY_TIMEOUT + LOST_AFTER to load lost the update and its resend: seen on a loaded machine)."""
        acked, ready = self.ack_source.data["seq"][0], self.ack_source.data["ready"][0]
        if ready and not self._ready_seen:
            self._ready_seen = True
            if self._sent > acked:
                self._resent = -1      # resend now, whatever was resent before
                self._sent_at = 0.0
        return self._sent > acked and self._resent != self._sent and time.monotonic() - self._sent_at > LOST_AFTER

    def _locked_tick(self) -> None:
        """Runs as a Bokeh next-tick callback, with the document locked."""
        self._tick_scheduled = False
        with transport.current_document(self._doc):
            if self._confirm:
                # Through Panel's write queue, behind the widget updates it may still hold (a direct
                # Bokeh write overtook them: the page then got an older value after the confirmed one).
                with pn.io.hold(self._doc):
                    self.confirm_controls()
            self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        # A new run goes out at once (the latency a person feels after moving a control), and so
        # does its first frame when the start went out without one (the worker announces a run
        # before its first step); the frames of a running one at most every SEND_EVERY.
        new_run = self.worker.latest_run > max(self._shown_number, self._ignore_upto)
        first_frame = self._first_frame_due and bool(self.worker.pending_events or self._backlog)
        if now - self._sent_at < SEND_EVERY and not ((new_run and self.worker.pending_events) or first_frame
                                                     or self._replay is not None):
            return
        acked = self.ack_source.data["seq"][0]
        if self._unconfirmed():
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
            transport.fold_streams(self._doc)   # a new run's start and first frames: one update

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
                    # Not a read-only one: a FactorRange's start and end are the page's to compute (the
                    # server holds 0 for both; resent, they collapsed the output and probe bar charts
                    # to nothing, their sources full).
                    if attr in model.properties() and (attr != "data" or isinstance(model, ColumnDataSource)) \
                            and not model.lookup(attr).property.readonly:
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
            sockets = transport.websockets(session)
            if sockets != self._no_delay_for:
                transport.send_without_delay(sockets - self._no_delay_for)
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
            self._sections[title] = pn.Column(pn.pane.HTML(f"<div class='section'>{title}</div>",
                                                           stylesheets=[self.css], margin=(8, 10, 0, 10)),
                                              *items, sizing_mode="stretch_width")
            return self._sections[title]
        model = self._model_controls = pn.Param(s, parameters=["model", "depth", "residual"], show_name=False,
                                                sizing_mode="stretch_width")
        self._architecture_controls()
        upload_help = pn.pane.HTML("<div class='hint'>Upload a checkpoint: select <b>NAME.json</b> and "
                                   "<b>NAME.safetensors</b> together.</div>", stylesheets=[self.css],
                                   margin=(0, 10))
        widgets = {n: {"type": pn.widgets.FloatSlider, "format": fmt,
                       "start": SLIDER_RANGES[n][0], "end": SLIDER_RANGES[n][1]}
                   for n, fmt in (("alpha", "0.0"), ("beta", "0.00"))}
        # the tolerance is typed (1e-4, 1e-6 ...): a slider cannot span its decades
        widgets["tol"] = {"type": pn.widgets.FloatInput}
        dynamics = pn.Param(s, parameters=["alpha", "beta", "t_free", "t_nudge", "schedule", "tol", "stop_at_tol"],
                            show_name=False, widgets=widgets,
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
        runs_help = pn.pane.HTML("<div class='hint'>This page's finished runs: choose one to draw it again. "
                                 "Open a run file saved here (<b>.parquet</b>).</div>", stylesheets=[self.css],
                                 margin=(0, 10))
        display = pn.Param(s, parameters=["units_layer", "map_layer", "map_channel", "map_phase"],
                           show_name=False, sizing_mode="stretch_width")
        sections = [section("Model", self.tab_note, model, self.model_note, upload_help, self.upload),
                    section("Dynamics", dynamics),
                    section("Input", self.gallery.pane, inputs),
                    section("Playback", playback_buttons, speed, self.replay_player()),
                    section("Display", display),
                    section("Runs", self.runs_select, self.save_run, runs_help, self.open_run,
                            pn.pane.HTML("<div class='hint'>Export the shown run (exports need a finished "
                                         "run): its records, an offline replay, or one view as a picture "
                                         "or a GIF over the run.</div>",
                                         stylesheets=[self.css], margin=(0, 10)),
                            pn.Row(*(self.exports[k] for k in ("csv", "json", "html"))),
                            self.export_view, pn.Row(*(self.exports[k] for k in ("png", "svg", "gif")))),
                    section("Compare A / B", self.pin_button(), self.views["compare"].body()),
                    section("Share", self.copy_link())]
        self._help_texts(sections)
        transport.pass_changes_at_once(w for sec in sections for w in sec.select(pn.widgets.Widget))
        return sections

    def _help_texts(self, sections) -> None:
        """Every setting's widget carries its parameter's doc as help (the '?' beside its name),
        also where a widget type was chosen by hand (the alpha and beta sliders, speed)."""
        params = self.state.param.objects("existing")
        docs = {p.label: p.doc for p in params.values() if p.doc and p.label}
        names = {p.label: n for n, p in params.items() if p.label}
        self._setting_widgets = {}
        for w in (w for sec in sections for w in sec.select(pn.widgets.Widget)):
            if w.name in names:
                self._setting_widgets.setdefault(names[w.name], []).append(w)
            if w.name in docs and not getattr(w, "description", None) and "description" in w.param:
                w.description = docs[w.name]
        # Panel 1.9's sliders and checkboxes have no help of their own: a "?" beside each.
        self._help_icons = with_help_icons(sections, docs)
        self._architecture_controls()

    def relaxation_tab(self):
        """The views in reading order (their titles are numbered so); the output beside the verdict."""
        v = self.views
        cards = self._view_cards = {key: v[key].panel() for key in VIEW_ORDER}
        # The output plot keeps room for its ten class labels beside the input image.
        v["output"].fig.min_width = 320
        for pane in cards["output"].select(pn.pane.Bokeh):
            if pane.object is v["output"].fig:
                pane.min_width = 320
        cards["output"].param.update(min_width=560)
        cards["verdict"].param.update(sizing_mode="fixed", width=VERDICT_SIZE[False][0])
        top = pn.Row(cards["output"], cards["verdict"], sizing_mode="stretch_width")
        return pn.Column(top, *(cards[k] for k in VIEW_ORDER[2:]), sizing_mode="stretch_width")

    def fullscreen_targets(self) -> dict[str, str]:
        """The Full screen picker's browser-side values (the view's key; its title as well) -> view key.
        Keyed by title alone, the button did nothing: Panel's Select sends the key, not the label."""
        return {**{self.views[k].title: k for k in VIEW_ORDER}, **{k: k for k in VIEW_ORDER}}

    def presentation_controls(self) -> pn.Column:
        """Presentation mode: a toggle, the views shown, a view full screen (Fullscreen API)."""
        titles = {self.views[k].title: k for k in VIEW_ORDER}
        self.present = pn.widgets.Toggle(name="Presentation mode", value=getattr(self, "_present_wanted", False),
                                         button_type="primary", sizing_mode="stretch_width")
        self.shown_views = pn.widgets.MultiChoice(name="Views shown", options=titles, value=list(VIEW_ORDER),
                                                  sizing_mode="stretch_width")
        self.full_view = pn.widgets.Select(name="Full screen", options=titles, value="output",
                                           sizing_mode="stretch_width")
        full = pn.widgets.Button(name="Show full screen", sizing_mode="stretch_width")
        full.js_on_click(args={"pick": self.full_view, **{k: self._view_cards[k] for k in VIEW_ORDER}},
                         code="const cards = {" + ", ".join(f"{value!r}: {k}" for value, k in
                                                            self.fullscreen_targets().items())
                         + "};" + FULLSCREEN_JS)
        self.sidebar_fit = SidebarFit(present=self.present.value, width=0, height=0, margin=0)
        self.present.link(self.sidebar_fit, value="present")
        self.present.param.watch(self._on_present, "value")
        self.shown_views.param.watch(self._on_present, "value")
        self._on_present()
        return pn.Column(self.present, self.shown_views, self.full_view, full, sizing_mode="stretch_width")

    def _sidebar_for_tab(self, *_events) -> None:
        """Show the sidebar sections that act on the open tab; say that the others are hidden."""
        if self._tabs is None or not self._tab_titles:
            return
        tab = self._tab_titles[self._tabs.active]
        used = SECTION_TABS.get(tab)
        for title, section in self._sections.items():
            section.visible = used is None or title in used
        hidden = [t for t in self._sections if used is not None and t not in used]
        self.tab_note.visible = bool(hidden)
        if hidden:
            self.tab_note.object = (f"<div class='hint tab-note'>The {tab} tab uses only the settings shown here "
                                    f"(its own are in the tab); {', '.join(hidden)} act on the Relaxation tab "
                                    "and are hidden.</div>")

    def _on_present(self, *_events) -> None:
        on = self.present.value
        # The verdict's text is larger in presentation mode (assets/app.css): its card grows with it.
        width, height = VERDICT_SIZE[on]
        if "verdict" in self._view_cards:
            self._view_cards["verdict"].width = width
        self.views["verdict"].html.min_height = height
        for key, card in self._view_cards.items():
            card.visible = key in self.shown_views.value
        for pane in self._tabs.select(pn.pane.Bokeh) if self._tabs is not None else ():
            style(pane.object, present=on)
        for tab in (self.train, self.scan, self.sweep, self.gradients):
            tab.present = on   # their own layouts and HoloViews charts

    def tabs(self) -> pn.Tabs:
        """The main area: the live relaxation, and training with EP."""
        titled = [("Relaxation", self.relaxation_tab()), ("Train", self.train), ("Scan", self.scan),
                  ("Sweep", self.sweep), ("EP vs BPTT", self.gradients)]
        self._tab_titles = [t for t, _ in titled]
        tabs = pn.Tabs(*titled, dynamic=True, sizing_mode="stretch_width")
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
        self._open_wanted_tab()
        self._tabs.param.watch(self._write_address, ["active"])
        sidebar = self.controls()
        self._tabs.param.watch(self._sidebar_for_tab, ["active"])
        self._sidebar_for_tab()
        present = self.presentation_controls()
        sidebar.insert(0, pn.Column(pn.pane.HTML("<div class='section'>Present</div>", stylesheets=[self.css],
                                                 margin=(8, 10, 0, 10)), present, sizing_mode="stretch_width"))
        tmpl = pn.template.FastListTemplate(
            title="Hopfield-ResNet explorer · equilibrium propagation, live",
            sidebar=sidebar, main=[pn.Column(self.sidebar_fit, self.status, self.alert, self._tabs,
                                             sizing_mode="stretch_width")],
            sidebar_width=330, accent="#0072B2", main_layout=None, design=OfflineFast,
            # Light or dark (the header's toggle reloads the page with ?theme=dark).
            theme_toggle=True,
            collapsed_sidebar=self.present.value,
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
