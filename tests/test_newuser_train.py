"""What a new user tripped over in the Train tab (issue 18, item 6), in-process.

The probe output looked empty while its source held values: early in training every output y is
near 0 or below it, under a fixed 0..1 axis. Each bar now carries its value and the axis holds
every bar. Also: help beside the tab's sliders, and log-axis tick labels never "5.000e-4".
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import panel as pn
import pytest

from explorer.app import ExplorerApp, ExplorerState
from explorer.app.views.train import LOG_TICKS_JS

TINY = dict(depth=3, width=4, limit=64, eval_limit=32, batch_size=32, t_free=10, t_nudge=4, epochs=1,
            probe_every=1000)


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_TRAINED_DIR", str(tmp_path / "trained"))
    a = ExplorerApp(state=ExplorerState(zoo=[], t_free=20, t_nudge=8, speed="max"), autostart=False)
    a.train.settings.param.update(**TINY)
    yield a
    a.shutdown("test over")


def test_the_probe_output_writes_each_value_and_its_axis_holds_every_bar(app):
    import time
    view = app.train
    view.settings.param.trigger("start")
    deadline = time.monotonic() + 120   # a safety net against a hang only
    while view.outcome is None:
        assert time.monotonic() < deadline, f"training did not end: {app.messages}"
        view.drain()
        time.sleep(0.05)
    assert view.outcome == "done", app.messages
    out = view.probe_output.data
    y = np.asarray(out["y"])
    assert len(y) == 10 and np.all(np.isfinite(y))
    assert list(out["text"]) == [f"{v:.2f}" for v in y]          # every bar says its value, however small
    assert all(t >= 0 for t in out["text_y"])
    y_range = view.out_fig.y_range
    assert y_range.start <= min(y.min(), 0.0) and y_range.end >= max(y.max(), 1.0)
    assert f"(y {y.max():.2f})" in view.probe_text.object      # the prediction says its output too


def test_the_train_tabs_sliders_and_checkboxes_have_help_beside_them(app):
    column = app.train.controls()
    docs = {p.label: p.doc for p in app.train.settings.param.objects("existing").values() if p.label}
    kinds = (pn.widgets.IntSlider, pn.widgets.FloatSlider, pn.widgets.Checkbox)
    helped = {}
    for row in column.select(pn.Row):
        widgets = [o for o in row.objects if isinstance(o, kinds)]
        icons = [o for o in row.objects if isinstance(o, pn.widgets.TooltipIcon)]
        if widgets and icons:
            helped[widgets[0].name] = icons[0].value
    assert {"Depth", "Beta", "T free", "T nudge", "Residual"} <= set(helped)
    assert all(helped[name] == docs[name] for name in helped)
    sliders = [w for w in column.select(pn.widgets.Widget) if isinstance(w, kinds)]
    assert len(helped) == len(sliders)      # none left without


def test_log_axis_tick_labels_are_powers_of_ten_or_plain_numbers(app):
    from bokeh.models import CustomJSTickFormatter, LogAxis
    axes = [a for a in app.train.step_fig.yaxis if isinstance(a, LogAxis)]
    assert axes and all(isinstance(a.formatter, CustomJSTickFormatter) for a in axes)
    # What Bokeh's LogTicker gives: whole decades, or ticks within one (a narrow or zoomed axis),
    # where Bokeh's own LogTickFormatter printed "3.000e-4".
    cases = [[1e-4, 1e-3, 1e-2, 1e-1, 1.0], [3e-4, 4e-4, 5e-4], [2e-7, 5e-7], [0.02, 0.05, 0.1], [1.0, 10.0, 1e4]]
    script = (f"const f = new Function('tick', 'index', 'ticks', {json.dumps(LOG_TICKS_JS)});\n"
              f"console.log(JSON.stringify({json.dumps(cases)}.map((t) => t.map((x, i) => f(x, i, t)))));")
    labels = json.loads(subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True).stdout)
    assert labels[0] == ["10⁻⁴", "10⁻³", "10⁻²", "10⁻¹", "1"]
    assert labels[1] == ["0.0003", "0.0004", "0.0005"]
    assert labels[4] == ["1", "10", "10⁴"]
    for text in (t for case in labels for t in case):
        assert not re.search(r"\d\.\d+e", text), text
