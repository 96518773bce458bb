"""Every use of a private Panel, Bokeh or tornado name, in one module.

The page's update rate and latency lean on a few internals (measured in bench/RESULTS-app.md):
changes from the page passed on without Panel's 50 ms debounce, websockets without Nagle's
delay, a Panel write queue race worked around, and BokehJS repaint shortcuts. Each is used only
where the installed Panel and Bokeh are the versions it was written for (``WRITTEN_FOR``) and the
name is still there; otherwise the app keeps Panel's and Bokeh's plain behaviour (correct, with
slower updates), notes the feature in ``fallbacks`` and logs that, once per process.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import re

import bokeh
import panel as pn

# The modules (``panel.io.state`` as an attribute is Panel's state object, not its module)
panel_document = importlib.import_module("panel.io.document")
panel_state = importlib.import_module("panel.io.state")

log = logging.getLogger("explorer.app.transport")

WRITTEN_FOR = {"panel": (1, 9), "bokeh": (3, 9)}   # major.minor, any patch release
fallbacks: set[str] = set()   # the tuning features this process runs without
_logged = False


@functools.lru_cache(maxsize=4)
def _version_problem(panel_version: str, bokeh_version: str) -> str | None:
    for name, version in (("panel", panel_version), ("bokeh", bokeh_version)):
        found = re.match(r"(\d+)\.(\d+)", version)
        wanted = WRITTEN_FOR[name]
        if found is None or (int(found[1]), int(found[2])) != wanted:
            return f"{name} {version} is not the {wanted[0]}.{wanted[1]}.x the page's tuning was written for"
    return None


def _usable(feature: str, *present: bool) -> bool:
    """True if ``feature`` may use the internals it needs (``present``: each one was found)."""
    problem = _version_problem(pn.__version__, bokeh.__version__)
    if problem is None and all(present):
        return True
    global _logged
    fallbacks.add(feature)
    if not _logged:   # once per process, whichever feature notices first
        _logged = True
        why = problem or (f"panel {pn.__version__} / bokeh {bokeh.__version__} lacks an internal that "
                          f"the page's {feature} use")
        log.warning("explorer: %s: that and any other tuning on Panel/Bokeh internals falls back to "
                    "their plain behaviour (correct, slower updates); logged once", why)
    return False


# ---------------------------------------------------------------------------------------------
# Server side
# ---------------------------------------------------------------------------------------------
def websockets(session) -> frozenset:
    """The tornado websocket handlers of a Bokeh server session's connections (Bokeh keeps them
    private: ``ServerSession._subscribed_connections``, each ``ServerConnection._socket``)."""
    connections = getattr(session, "_subscribed_connections", None)
    if not _usable("no-delay websockets", connections is not None):
        return frozenset()
    sockets = (getattr(conn, "_socket", None) for conn in connections)
    return frozenset(socket for socket in sockets if socket is not None)


def send_without_delay(sockets) -> None:
    """Turn off Nagle's algorithm on these websockets (tornado's public API).

    Tornado leaves it on, so the small frames of one update (Bokeh writes a message as a dozen
    frames) wait for the browser's delayed TCP acknowledgement: measured here, a socket write
    reached the page 33 ms later (3 ms the other way, Chromium sets no-delay), every update.
    """
    for socket in sockets:
        if getattr(socket, "ws_connection", None) is not None and not socket.ws_connection.is_closing():
            with contextlib.suppress(OSError):   # closed meanwhile: nothing to send on it anyway
                socket.set_nodelay(True)


_WRITE_QUEUE = ("_WRITE_MSGS", "_WRITE_BLOCK", "_dispatch_write_task", "_dispatch_msgs")


def flush_stranded_writes(doc) -> bool:
    """Send a Panel update message that a race left queued; True if there was one.

    Panel 1.9 queues a message when the socket is busy and starts a task that sends the queue
    unless the write block is gone. A task that finds nothing left to send removes the block,
    so a message queued while it was sending waits until the next one (seen here: after a
    slider move, the new run's second update reached the page only with the next update,
    1 s later after ACK_TIMEOUT). Put the block back and send the queue.
    """
    found = [getattr(panel_document, name, None) for name in _WRITE_QUEUE]
    if not _usable("stranded-write flush", *(f is not None for f in found)):
        return False
    pending, block, start, dispatch = found
    if doc not in pending or doc in block:
        return False
    block[doc] = True
    start(doc, dispatch, doc)
    return True


def folds_streams() -> bool:
    """True if :func:`fold_streams` can work here (else the page sends a run's start alone)."""
    from bokeh.document.callbacks import DocumentCallbackManager
    return _usable("one update per new run", "_held_events" in getattr(DocumentCallbackManager, "__annotations__", {}))


def fold_streams(doc) -> int:
    """Drop, from the changes ``doc`` holds for its next update, the rows streamed into a data
    source whose data that update also replaces; returns how many streams were dropped.

    Bokeh sends a replaced ``data`` as it is at sending time (the rows streamed since included),
    then each stream again: a new run's start (the views' data replaced) and its first frames
    (streamed) in one update drew those frames twice. Without this the start went out alone and
    the frames one update later: two rounds of painting before a slider move showed anything.
    Only a replacement whose value is the source's current data counts (so it holds every row).
    """
    held = getattr(getattr(doc, "callbacks", None), "_held_events", None)
    if not held or not folds_streams():
        return 0
    from bokeh.document.events import ColumnsStreamedEvent
    replaced, kept = set(), []
    for event in held:
        model = getattr(event, "model", None)
        if isinstance(event, ColumnsStreamedEvent) and id(model) in replaced:
            continue
        if _replaces_data(event, model):
            replaced.add(id(model))
        kept.append(event)
    dropped = len(held) - len(kept)
    if dropped:
        held[:] = kept
    return dropped


def _replaces_data(event, model) -> bool:
    """The event sends all of ``model``'s data as it is when sent (``source.data = ...``)."""
    from bokeh.document.events import ColumnDataChangedEvent, ModelChangedEvent
    data = getattr(model, "data", None)
    if getattr(event, "attr", None) != "data" or not isinstance(data, dict):
        return False
    if isinstance(event, ColumnDataChangedEvent):
        return event.data is None and (event.cols is None or set(event.cols) >= set(data))
    return isinstance(event, ModelChangedEvent) and event.new is data


def current_document(doc):
    """A context in which Panel's current document is ``doc`` (for a plain Bokeh callback)."""
    set_curdoc = getattr(panel_state, "set_curdoc", None)
    if not _usable("current document", set_curdoc is not None):
        return contextlib.nullcontext()
    return set_curdoc(doc)


def one_recompute(doc):
    """A context in which ``doc`` works out its set of models once, at the end: Bokeh walks every
    model of the document again after each root added and each callback attached (about 20 walks
    of some 1,450 models for one page), which was most of the 10-12 s a page took to appear."""
    freeze = getattr(getattr(doc, "models", None), "freeze", None)
    if not _usable("one model walk per page", callable(freeze)):
        return contextlib.nullcontext()
    return freeze()


def pass_changes_at_once(widgets) -> None:
    """Panel holds every change from the page for 50 ms (``Syncable._debounce``) to merge
    bursts; the worker already lets the newest setting win, so those 50 ms were a third of the
    latency a person feels after moving a slider."""
    from panel.reactive import Syncable
    if not _usable("undebounced controls", isinstance(getattr(Syncable, "_debounce", None), int)):
        return
    for widget in widgets:
        widget._debounce = 0


def offline_design():
    """Panel's Fast design without its web font (Open Sans from Google), so the page loads
    nothing from outside the server. Panel finds a design's bundled files by its class name,
    so the subclass keeps the name "Fast"."""
    from panel.theme.fast import Fast
    resources = getattr(Fast, "_resources", None)
    if not _usable("offline design", isinstance(resources, dict)):
        return Fast
    return type("Fast", (Fast,), {"_resources": {**resources, "font": {}}, "__module__": __name__})


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------
def page_js() -> str:
    """The script each page runs once (its arguments: ``visible``, ``tick``, ``ack``): the page's
    protocol (ready, which views are in sight, keyboard slider moves), plus BokehJS repaint
    shortcuts where Bokeh is the version they were written for."""
    internals = _usable("BokehJS repaint shortcuts")
    return PAGE_JS.replace("__EXPLORER_INTERNALS__", "true" if internals else "false")


# Plots scrolled out of sight skip their layout and repaints, and repaint with the latest data when
# they come back into view: the browser only draws what can be seen. (PlotView.pause() is not
# enough: Bokeh's own unpause() calls cancel it.) The page also reports which views are in sight,
# so the server sends data only to those.
PAGE_JS = """
if (!window.__explorer_page) {
  window.__explorer_page = true;
  const internals = __EXPLORER_INTERNALS__;
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
    if (!internals) return;
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
  // A plot lays itself out again whenever an axis's labels change size (most updates while a run's
  // ranges grow) and rewrites its grid's style sheets each time, mostly with the same text; each
  // write made Chromium recompute the styles of the whole page at the next measurement (about 1.7 ms
  // each, some 40 per slider move in a trace). Write a style sheet only when its text changes.
  patch("same_css", () => {
    const proto = Bokeh.require("core/dom").InlineStyleSheet.prototype;
    const own = proto._update;
    if (typeof own !== "function") return false;
    proto._update = function (css) { if (this.el.textContent !== css) own.call(this, css); };
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
      for (const name of internals ? ["repaint", "paint"] : []) {
        const own = v[name].bind(v);
        v[name] = (...args) => {
          if (v.__explorer_hidden) { v.__explorer_dirty = true; return; }
          return own(...args);
        };
      }
      v.el.__explorer_view = v;
      io.observe(v.el);
      sized.observe(v.el);
    }
  };
  // A plot whose box changed size without a window resize (the sidebar folding away, a row
  // reflowing) can keep its old layout and stay blank: lay it out again once its size settles.
  const sized = new ResizeObserver((entries) => {
    for (const e of entries) {
      const v = e.target.__explorer_view;
      const box = e.contentRect;
      if (v == null || box.width === 0 || box.height === 0) continue;
      const key = Math.round(box.width) + "x" + Math.round(box.height);
      if (v.__explorer_size === key) continue;
      v.__explorer_size = key;   // (the first size too: a plot laid out before its box was sized stays blank)
      if (typeof v.invalidate_layout === "function")
        requestAnimationFrame(() => { try { v.invalidate_layout(); } catch (err) { console.warn(err); } });
    }
  });
  // A slider moved with the arrow keys updates only value_throttled; copy it into value so the
  // move reaches the server like a drag (the settings follow "value").
  const sliders = new WeakSet();
  const scan_sliders = () => {
    for (const doc of Bokeh.documents) {
      for (const m of doc.all_models) {
        if (m.constructor.__name__ !== "Slider" || sliders.has(m)) continue;
        sliders.add(m);
        m.properties.value_throttled.change.connect(() => {
          if (m.value_throttled != null && m.value !== m.value_throttled) m.value = m.value_throttled;
        });
      }
    }
  };
  // A plot whose canvas kept an old size after its box settled (seen at page load while the
  // sidebar folds away: the chart drawn at half its box) is laid out again.
  window.__explorer_relayouts = 0;
  const heal = () => {
    for (const v of plots) {
      if (v.__explorer_hidden || !v.el.isConnected || v.canvas_view == null) continue;
      if (typeof v.invalidate_layout !== "function") continue;
      const box = v.el.getBoundingClientRect(), canvas = v.canvas_view.bbox;
      if (box.width === 0 || box.height === 0 || canvas == null) continue;
      if (Math.abs(canvas.width - box.width) > 2 || Math.abs(canvas.height - box.height) > 2) {
        window.__explorer_relayouts++;
        try { v.invalidate_layout(); } catch (err) { console.warn(err); }
      }
    }
  };
  scan();
  scan_sliders();
  setInterval(() => { scan(); scan_sliders(); heal(); }, 1000);
  // Replay keys (public model properties): space plays or pauses the replay player, the arrow
  // keys step it back or forward; not while typing in a field.
  document.addEventListener("keydown", (e) => {
    const el = e.composedPath ? e.composedPath()[0] : e.target;
    if (el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT")) return;
    // Nor on a focused control: the arrow keys move a slider (they also stepped the replay back to an
    // older run, shown with the slider at another depth), space presses a button.
    if (el && el.closest && el.closest("[role=slider], button, [role=button], [contenteditable]")) return;
    if (![" ", "ArrowLeft", "ArrowRight"].includes(e.key)) return;
    let player = null;
    for (const doc of Bokeh.documents)
      for (const m of doc.all_models)
        if (m.constructor.__name__ === "Player" && !m.disabled) player = m;
    if (player == null) return;
    e.preventDefault();
    if (e.key === " ") player.direction = player.direction === 0 ? 1 : 0;
    else {
      player.direction = 0;
      const v = player.value + (e.key === "ArrowRight" ? 1 : -1);
      player.value = Math.max(player.start, Math.min(player.end, v));
    }
  });
  // The page is ready: from now on the server may send changes (any sent while the page was still
  // connecting could be lost), and what came with the document is confirmed.
  ack.data = {seq: [tick.data.seq[0]], ready: [1]};
}
"""
