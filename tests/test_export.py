"""Exports of a run (explorer/export.py): CSV, JSON, GIF, standalone HTML, PNG and SVG."""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from explorer.export import (VIEWS, ExportError, csv_bytes, figure_bytes, gif_bytes, html_bytes, json_bytes,
                             series)
from explorer.record import ENERGY_STATS, LAYER_STATS, RecordConfig
from explorer.run import Run, network_identity
from test_app_browser import Watched
from test_run import make_run


@pytest.fixture
def run(small_net, batch):
    net = small_net()
    x, t = batch(net, 3)
    return make_run(net, x, t, record=RecordConfig(units=2))


def test_the_csv_holds_every_record_exactly(run):
    """Exact: the CSV's floats read back (as the record's dtype) equal the record's tensors bit for bit."""
    df = pd.read_csv(io.BytesIO(csv_bytes(run)))
    records = list(run.records())
    layers, batch = run.layers, run.x.shape[0]
    assert len(df) == len(records) * len(layers) * batch
    assert list(df.columns) == ["phase", "step", "beta", "layer", "sample", *LAYER_STATS, *ENERGY_STATS]
    dtype = records[0].stats.dtype
    for phase in ("free", "nudged+", "nudged-"):
        recs = run.phases[phase].records
        got = df[df.phase == phase]
        stats = torch.tensor(got[list(LAYER_STATS)].to_numpy(), dtype=dtype) \
            .reshape(len(recs), len(layers), batch, -1).permute(0, 1, 3, 2)
        assert torch.equal(stats, torch.stack([r.stats for r in recs]))
        energy = torch.tensor(got[list(ENERGY_STATS)].to_numpy(), dtype=dtype) \
            .reshape(len(recs), len(layers), batch, -1)[:, 0].permute(0, 2, 1)
        assert torch.equal(energy, torch.stack([r.energy for r in recs]))
        assert got.step.to_numpy().reshape(len(recs), -1)[:, 0].tolist() == [r.step for r in recs]
        assert set(got.beta) == {run.phases[phase].beta}


def test_the_csv_round_trips_float32_records_exactly(small_net, batch):
    net = small_net()
    x, t = batch(net, 2)
    run = make_run(net, x, t, record=RecordConfig(units=0))
    for r in run.records():                      # as the page's float32 models record them
        r.stats, r.energy = r.stats.float(), r.energy.float()
    df = pd.read_csv(io.BytesIO(csv_bytes(run)), dtype={n: np.float32 for n in (*LAYER_STATS, *ENERGY_STATS)})
    stats = torch.from_numpy(df[list(LAYER_STATS)].to_numpy().copy())
    want = torch.stack([r.stats for r in run.records()]).permute(0, 1, 3, 2).reshape(len(df), -1)
    assert torch.equal(stats, want)


def test_the_json_holds_settings_identity_verdicts_and_every_record(run):
    """Exact: JSON numbers are the shortest repr of each value, read back to the same float."""
    data = json.loads(json_bytes(run))
    assert data["settings"] == run.settings and data["network"] == run.network
    assert data["verdicts"] == {n: p.verdict for n, p in run.phases.items()}
    assert (data["layers"], data["layer_stats"], data["energy_stats"]) == \
        (list(run.layers), list(LAYER_STATS), list(ENERGY_STATS))
    records = list(run.records())
    assert len(data["records"]) == len(records)
    for got, r in zip(data["records"], records):
        assert (got["phase"], got["step"], got["beta"]) == (r.phase, r.step, r.beta)
        assert torch.equal(torch.tensor(got["stats"], dtype=r.stats.dtype), r.stats)
        assert torch.equal(torch.tensor(got["energy"], dtype=r.energy.dtype), r.energy)


def test_the_views_series_follow_the_pages_time_axis(run):
    s = series(run, sample=1)
    t_free, t_nudge = run.steps_of("free"), run.steps_of("nudged+")
    assert s["x"][0] == 0 and s["x"][-1] == t_free + 2 * t_nudge
    last = run.phases["nudged-"].records[-1]
    assert s["F"][-1] == last.energy_of("F")[1].item()
    assert s[f"step_size:{run.layers[1]}"][-1] == last.stat("step_size", run.layers[1])[1].item()


@pytest.mark.parametrize("view", VIEWS)
def test_each_view_exports_as_png_and_svg(run, view):
    png = figure_bytes(run, view, "png")
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.width > 300 and image.height > 200
    # Not blank: the curves and bars put many distinct colours on the page.
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20
    svg = figure_bytes(run, view, "svg").decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "<path" in svg


def test_unknown_views_and_formats_are_refused_by_name(run):
    with pytest.raises(ExportError, match="'nope' is not one of energy"):
        figure_bytes(run, "nope", "png")
    with pytest.raises(ExportError, match="'jpg' is not one of png, svg"):
        figure_bytes(run, "energy", "jpg")


def test_a_run_without_records_is_refused(small_net, batch):
    net = small_net()
    x, t = batch(net, 1)
    empty = Run(Run.new_id(), {"beta": 0.1, "t_free": 5, "t_nudge": 2, "schedule": "paper", "alpha": 1.0},
                network_identity(net, "n"), x, t)
    with pytest.raises(ExportError, match="no records"):
        csv_bytes(empty)


@pytest.mark.parametrize("view", ["energy", "step_size", "saturation"])
def test_the_gif_moves_a_marker_over_the_run(run, view):
    gif = Image.open(io.BytesIO(gif_bytes(run, view, max_frames=12)))
    n_records = len(list(run.records()))
    assert gif.format == "GIF" and gif.is_animated
    assert 6 < gif.n_frames <= 12 + 1 < n_records       # a frame every few steps (and the last step)
    frames = []
    for k in (0, gif.n_frames - 1):
        gif.seek(k)
        frames.append(np.asarray(gif.convert("RGB"), dtype=np.int16))
    assert np.abs(frames[0] - frames[1]).sum() > 0     # the marker moved


def _doc_json(html: str) -> dict:
    blocks = re.findall(r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>', html, re.S)
    assert len(blocks) == 1
    return next(iter(json.loads(blocks[0]).values()))


def _sources(node, found):
    if isinstance(node, dict):
        if node.get("name") == "ColumnDataSource" or node.get("type") == "object" and \
                (node.get("attributes") or {}).get("name") in ("curves", "marker"):
            attrs = node.get("attributes", {})
            found[attrs.get("name")] = attrs.get("data")
        for v in node.values():
            _sources(v, found)
    elif isinstance(node, list):
        for v in node:
            _sources(v, found)
    return found


def _plain(v):
    """A Bokeh-serialized column: a plain list, or a map wrapper around its entries."""
    return v if isinstance(v, list) else v.get("entries", v)


def test_the_standalone_html_fetches_nothing_and_embeds_the_records(run):
    html = html_bytes(run).decode()
    # Nothing loaded from the network. The markup (outside the inline scripts and styles) names no
    # http(s) address, and the document uses nothing BokehJS would lazily fetch (MathJax for TeX text,
    # the Tabler icon font): its JSON holds no address and no math or icon model.
    markup = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", "", html, flags=re.S | re.I)
    assert "<script" in html and not re.search(r"https?://|src\s*=|href\s*=", markup, re.I)
    assert not re.search(r"<script[^>]*\bsrc\s*=|<link\b", html, re.I)
    doc = _doc_json(html)
    text = json.dumps(doc)
    assert not re.search(r"https?://|\$\$|\\\\\(|TeX|MathML|TablerIcon", text)
    assert "Bokeh.embed.embed_items" in html and "slider.value" in text     # the replay's JS is in the file
    data = _sources(doc, {})
    assert "curves" in data, "the replay's data source is embedded"
    entries = data["curves"]
    cols = dict(entries["entries"]) if isinstance(entries, dict) and "entries" in entries else entries
    s = series(run)
    assert set(cols) == set(s)
    records = list(run.records())
    dtype = records[0].stats.dtype
    assert torch.equal(torch.tensor(cols["F"], dtype=dtype), torch.stack([r.energy_of("F")[0] for r in records]))
    layer = run.layers[-1]
    assert torch.equal(torch.tensor(cols[f"step_size:{layer}"], dtype=dtype),
                       torch.stack([r.stat("step_size", layer)[0] for r in records]))
    assert cols["x"] == s["x"]


# ---------------------------------------------------------------------------
# The page's export buttons (Python level)
# ---------------------------------------------------------------------------

def test_the_pages_export_buttons_download_the_shown_run(tmp_path):
    from explorer.app import ExplorerApp, ExplorerState
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=30, t_nudge=12, speed="max"), autostart=False)
    try:
        assert all(b.disabled and "finished run" in b.description for b in app.exports.values())
        app.restart()
        app.run_until_idle(timeout=60)
        shown = app.run
        assert not any(b.disabled for b in app.exports.values())
        csv = app.exports["csv"].callback().getvalue()
        assert app.exports["csv"].filename == f"run-{shown.id}.csv" and csv == csv_bytes(shown)
        assert json.loads(app.exports["json"].callback().getvalue())["id"] == shown.id
        assert Image.open(app.exports["gif"].callback()).is_animated
        assert app.exports["gif"].filename == f"run-{shown.id}-energy.gif"
        assert b"slider.value" in app.exports["html"].callback().getvalue()
        app.export_view.value = "residual_share"
        assert Image.open(app.exports["png"].callback()).format == "PNG"
        assert app.exports["png"].filename == f"run-{shown.id}-residual_share.png"
        assert b"<svg" in app.exports["svg"].callback().getvalue()
        assert Image.open(app.exports["gif"].callback()).is_animated      # the GIF of the chosen view
        assert app.exports["gif"].filename == f"run-{shown.id}-residual_share.gif"
        app.export_view.value = "nudge"            # not a view over time: no GIF, and the button says why
        assert app.exports["gif"].disabled and "not nudge" in app.exports["gif"].description
        assert not app.exports["png"].disabled and Image.open(app.exports["png"].callback()).format == "PNG"
    finally:
        app.shutdown("test over")


# ---------------------------------------------------------------------------
# A download in the real browser
# ---------------------------------------------------------------------------

@pytest.mark.browser
def test_the_csv_download_in_the_browser_equals_the_saved_run(server, browser, tmp_path):  # noqa: F811
    from explorer.run import load
    from test_app_runs_browser import JS_RUNS
    w = Watched(browser, server.url)
    try:
        w.wait_for(w.all_drawn, what="the first run")
        w.wait_for(lambda: (w.page.evaluate(JS_RUNS) or {}).get("options"), what="the first run to be listed")
        files = {}
        for label, name in (("Save run", "run.parquet"), ("CSV", "run.csv")):
            with w.page.expect_download(timeout=60_000) as info:
                w.page.get_by_role("button", name=label, exact=True).click()
            files[label] = tmp_path / name
            info.value.save_as(files[label])
        shown = load(files["Save run"])
        assert info.value.suggested_filename == f"run-{shown.id}.csv"
        assert files["CSV"].read_bytes() == csv_bytes(shown)      # the browser's file is the shown run's records
        assert w.errors() == [], w.console
    finally:
        w.page.close()


JS_REPLAY_TO = """(i) => {
  const slider = [...Bokeh.documents[0]._all_models.values()].find((m) => m.title === 'record');
  slider.value = i;
}"""
JS_MARKER = """() => {
  const marker = [...Bokeh.documents[0]._all_models.values()].find((m) => m.name === 'marker');
  return {x: marker.data.x[0], y: marker.data.y[0]};
}"""


@pytest.mark.browser
def test_the_standalone_html_replays_offline_in_the_browser(browser, run, tmp_path):  # noqa: F811
    path = tmp_path / "run.html"
    path.write_bytes(html_bytes(run))
    context = browser.new_context(offline=True)
    page = context.new_page()
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(path.as_uri())
        page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
        s = series(run)
        i = len(s["x"]) - 5
        page.evaluate(JS_REPLAY_TO, i)         # as a person dragging the slider (CustomJS runs async)
        page.wait_for_function(f"() => ({JS_MARKER})().x === {s['x'][i]}", timeout=30_000)
        assert page.evaluate(JS_MARKER) == {"x": s["x"][i], "y": s["F"][i]}
        assert page.get_by_text(f"step {s['x'][i]} of {s['x'][-1]}").count() == 1
        assert [u for u in requests if not u.startswith(("file:", "data:", "blob:"))] == [] and errors == []
    finally:
        context.close()


def test_the_html_replays_energy_axis_follows_the_energy_after_free_step_3():
    """Seen offline: the start at 0 against -490 left the whole energy replay a flat line at the bottom."""
    from bokeh.models import DataRange1d, Range1d

    from explorer.export import _energy_range
    s = {"x": [0, 1, 2, 3, 4, 5], "phi": [0.0, -400.0, -480.0, -489.0, -490.0, -490.0],
         "F": [0.0, -401.0, -481.0, -489.5, -490.5, -490.25]}
    r = _energy_range(s)
    assert isinstance(r, Range1d) and -491.0 < r.start < -490.5 and -489.0 < r.end < -488.0
    nothing = {"x": [0, 1], "phi": [0.0, float("nan")], "F": [0.0, float("inf")]}
    assert isinstance(_energy_range(nothing), DataRange1d)     # nothing finite after step 3: automatic
