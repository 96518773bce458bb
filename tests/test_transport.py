"""The page's transport tuning (explorer/app/transport.py) and the set-up's kernel build.

The tuning uses Panel and Bokeh internals only on the versions it was written for and where
the names are there; otherwise the page must still drain and stream, on plain Panel behaviour,
with one log line saying so.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

import panel as pn
from bokeh.document import Document
from panel.io import document as panel_document
from panel.reactive import Syncable

from explorer import native
from explorer.app import ExplorerApp, ExplorerState, transport
from explorer.app.served import ROOT


@pytest.fixture
def fresh(monkeypatch):
    """The transport as in a new process: nothing fallen back, nothing logged."""
    monkeypatch.setattr(transport, "fallbacks", set())
    monkeypatch.setattr(transport, "_logged", False)


def transport_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == transport.log.name]


def widgets(app) -> list:
    return [w for section in app.controls() for w in section.select(pn.widgets.Widget)]


def relax_and_drain(app: ExplorerApp) -> None:
    """One run, drained the way the served page's tick does (Panel's current document set)."""
    doc = Document()
    assert app.restart() is not None
    with transport.current_document(doc):
        app.run_until_idle(timeout=120)
    assert transport.flush_stranded_writes(doc) is False   # nothing queued for a document never served


def assert_drained_and_streamed(app: ExplorerApp) -> None:
    assert app.frames_drawn > 0
    counts = app.counts()
    assert counts and all(n > 0 for n in counts.values()), counts
    assert [text for level, text in app.messages if level == "error"] == []


def a_session(*sockets):
    """A Bokeh ServerSession as the transport sees it: its connections, each with a socket."""
    return SimpleNamespace(_subscribed_connections=[SimpleNamespace(_socket=s) for s in sockets])


@pytest.fixture
def app():
    a = ExplorerApp(state=ExplorerState(zoo=[], t_free=30, t_nudge=12, speed="max"), autostart=False)
    yield a
    a.shutdown("test over")


def test_on_the_versions_written_for_every_tuning_is_on(fresh, app, caplog):
    # A Panel or Bokeh upgrade fails here first: check the internals, then update WRITTEN_FOR.
    caplog.set_level(logging.INFO, logger=transport.log.name)
    assert all(w._debounce == 0 for w in widgets(app))
    assert "const internals = true;" in transport.page_js()
    assert transport.websockets(a_session("ws1", "ws2")) == {"ws1", "ws2"}
    assert transport.offline_design()._resources["font"] == {}
    relax_and_drain(app)
    assert_drained_and_streamed(app)
    assert transport.fallbacks == set()
    assert transport_lines(caplog) == []


def test_another_panel_version_gets_plain_behaviour_and_one_log_line(fresh, app, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger=transport.log.name)
    monkeypatch.setattr(pn, "__version__", "1.10.0")
    assert all(w._debounce == Syncable._debounce > 0 for w in widgets(app))   # Panel's own
    assert "const internals = false;" in transport.page_js()
    assert transport.websockets(a_session("ws1")) == frozenset()
    assert transport.offline_design().__module__.startswith("panel.")
    relax_and_drain(app)
    assert_drained_and_streamed(app)
    assert {"undebounced controls", "BokehJS repaint shortcuts", "no-delay websockets",
            "current document", "stranded-write flush"} <= transport.fallbacks
    lines = transport_lines(caplog)
    assert len(lines) == 1 and "panel 1.10.0" in lines[0], lines


def test_a_panel_without_the_private_names_gets_plain_behaviour_and_one_log_line(fresh, app, caplog,
                                                                                 monkeypatch):
    caplog.set_level(logging.INFO, logger=transport.log.name)
    monkeypatch.delattr(Syncable, "_debounce")
    monkeypatch.delattr(panel_document, "_dispatch_msgs")
    assert not any("_debounce" in vars(w) for w in widgets(app))
    assert transport.websockets(SimpleNamespace(connection_count=1)) == frozenset()
    relax_and_drain(app)
    assert_drained_and_streamed(app)
    assert transport.fallbacks == {"undebounced controls", "no-delay websockets", "stranded-write flush"}
    assert "const internals = true;" in transport.page_js()   # Bokeh's are all there
    lines = transport_lines(caplog)
    assert len(lines) == 1 and "undebounced controls" in lines[0], lines


def test_rows_streamed_into_a_source_whose_data_the_update_replaces_are_sent_once():
    """A replaced ``data`` goes out as it is at sending time (later streams included): those streams
    are dropped from the update; other sources' streams, patches and a partial replacement stay."""
    from bokeh.document.events import ColumnDataChangedEvent, ColumnsPatchedEvent, ColumnsStreamedEvent
    from bokeh.models import ColumnDataSource

    doc = Document()
    replaced = ColumnDataSource(data={"x": [1], "y": [2]})
    other = ColumnDataSource(data={"x": [1], "y": [2]})
    for source in (replaced, other):
        doc.add_root(source)
    doc.hold("combine")
    replaced.stream({"x": [0], "y": [0]})          # before the replacement: the page applies it, then replaces
    replaced.data = {"x": [], "y": []}
    replaced.stream({"x": [3], "y": [4]})
    replaced.patch({"y": [(0, 5)]})
    other.data.update(x=[7])                       # one column of two: not the whole data
    other.stream({"x": [8], "y": [9]})
    assert transport.fold_streams(doc) == 1
    kinds = [(type(e), e.model) for e in doc.callbacks._held_events]
    assert kinds == [(ColumnsStreamedEvent, replaced), (ColumnDataChangedEvent, replaced),
                     (ColumnsPatchedEvent, replaced), (ColumnDataChangedEvent, other),
                     (ColumnsStreamedEvent, other)]
    assert dict(replaced.data) == {"x": [3], "y": [5]}
    assert transport.fold_streams(doc) == 0
    assert transport.fold_streams(Document()) == 0    # nothing held


def test_the_test_commands_setup_built_the_native_kernels():
    """scripts/test.sh runs scripts/setup.sh, which builds the fused kernels: here they load at once
    (the first relaxation of a test once waited on the compiler beyond its 60 s)."""
    if not native.enabled():
        pytest.skip("EXPLORER_NATIVE=0: the kernels are off")
    compiler = os.environ.get("CXX", "c++")   # what torch builds with
    if shutil.which(compiler) is None:
        pytest.skip(f"no C++ compiler ({compiler}): the engine uses its eager tensor code")
    done = subprocess.run([sys.executable, "-m", "explorer.native", "--build"], cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = done.stdout.strip()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already built" in line, (f"{line}: bash scripts/test.sh builds them in its set-up "
                                     "(python -m explorer.native --build)")
