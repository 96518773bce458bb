"""What a new user tripped over (issue 18, item 6), in-process: the sidebar's controls.

Each test drives an ExplorerApp as the page would (its widgets, their Bokeh models in a document,
its tabs) and checks what the person sees: the depth slider in step with the run after a rapid
drag, the sidebar showing only what acts on the open tab, a model change saying what it reset and
kept, what a listed accuracy means, a checkpoint's unused tensors named, help beside every slider.
"""
from __future__ import annotations

import shutil

import panel as pn
import pytest
from bokeh.document import Document
from bokeh.document.events import ModelChangedEvent

from explorer.app import ExplorerApp, ExplorerState
from explorer.app.state import SAMPLE_SHAPE
from explorer.checkpoint import save_checkpoint
from explorer.network import HopfieldNetwork, hopfield_family
from explorer.zoo import ZOO_DIR, list_entries

T_FREE, T_NUDGE = 20, 8
BROWSER = object()   # the setter of changes that come from the page


def zoo_app(tmp_path, names, first=None) -> ExplorerApp:
    """A page whose zoo holds copies of these shipped checkpoints, on ``first`` (default: the builder)."""
    for n in names:
        for ext in (".json", ".safetensors"):
            shutil.copy(ZOO_DIR / f"{n}{ext}", tmp_path / f"{n}{ext}")
    state = ExplorerState(zoo=list_entries(tmp_path), model="untrained resnet", t_free=T_FREE, t_nudge=T_NUDGE,
                          speed="max")
    app = ExplorerApp(state=state, autostart=False)
    if first is not None:
        app.state.model = choice(app, first)
        app.run_until_idle(timeout=60)
    return app


def choice(app, name) -> str:
    return next(c for c in app.state.param.model.objects if c.startswith(f"zoo: {name},"))


@pytest.fixture
def pages():
    made = []
    yield made
    for app in made:
        app.shutdown("test over")


def test_after_a_rapid_drag_the_depth_slider_shows_the_depth_of_the_run(tmp_path, pages):
    app = zoo_app(tmp_path, ["fmnist-resnet3-ep", "fmnist-resnet5-ep", "fmnist-resnet7-ep"], first="fmnist-resnet3-ep")
    pages.append(app)
    doc = Document()
    doc.add_root(pn.Column(*app.controls()).get_root(doc))
    slider = app._setting_widgets["depth"][0]
    (model, _), = slider._models.values()
    sent = []   # what the server sends the page: changes it did not get from the page
    doc.on_change(lambda e: sent.append(e.new) if isinstance(e, ModelChangedEvent) and e.model is model
                  and e.attr == "value" and e.setter is not BROWSER else None)
    # A drag from 3 to 7 the page sends faster than the server answers: the family has no depth 4
    # or 6 (refused and put back, sent to the page), 5 and 7 open the trained siblings.
    for depth in (4, 5, 6, 7):
        model.set_from_json("value", depth, setter=BROWSER)
    assert app.state.depth == 7 and app.state.model == choice(app, "fmnist-resnet7-ep")
    assert sent, "the refused depths were put back on the page"
    # The page shows the last value the server sent after the drag's (all sent before any answer).
    app.confirm_controls(force=True)
    shown = sent[-1]
    app.run_until_idle(timeout=60)
    assert shown == app.state.depth == slider.value == model.value == app.run.request.net.spec.depth == 7
    # Nothing moved since: nothing more to confirm.
    assert app.confirm_controls(force=True) == 0


def test_a_drag_across_a_trained_family_gives_one_message_of_each_kind_not_a_pile(tmp_path, pages):
    """Seen in the browser: a 30-move depth drag over resnet3/5/7 alternated refusals (no depth 4, 6, 8)
    with opened siblings, and each alternation gave another toast (a stack of them)."""
    app = zoo_app(tmp_path, ["fmnist-resnet3-ep", "fmnist-resnet5-ep", "fmnist-resnet7-ep"], first="fmnist-resnet3-ep")
    pages.append(app)
    app.controls()
    before = len(app.messages)
    for depth in [3, 4, 5, 6, 7, 8, 9, 8, 7, 6, 5, 4] * 2 + [3, 4, 5, 6, 7, 8]:    # 30 moves
        app.state.depth = depth
    said = app.messages[before:]
    assert len(said) <= 3, said          # one refusal, one opened sibling, one "what it reset and kept"
    assert [level for level, _ in said].count("error") == 1
    assert app.alert.visible and "depth 8" in app.alert.object       # the alert tells the last refusal
    assert app.state.depth == 7 and app.state.model == choice(app, "fmnist-resnet7-ep")


def test_the_confirmation_waits_until_the_page_stops_moving_a_slider(pages):
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    pages.append(app)
    doc = Document()
    doc.add_root(pn.Column(*app.controls()).get_root(doc))
    (model, _), = app._setting_widgets["beta"][0]._models.values()
    model.set_from_json("value", 0.3, setter=BROWSER)
    assert app.confirm_controls() == 0          # moved a moment ago: the drag may go on
    assert app.confirm_controls(force=True) == 1
    assert model.value == pytest.approx(0.3) and app.state.beta == pytest.approx(0.3)


def test_the_sidebar_shows_only_the_sections_that_act_on_the_open_tab(pages):
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    pages.append(app)
    app.template()
    tabs, sections = app._tabs, app._sections

    def shown():
        return {t for t, s in sections.items() if s.visible}
    everything = set(sections)
    assert shown() == everything and not app.tab_note.visible
    tabs.active = app._tab_titles.index("Train")
    assert shown() == {"Model", "Input", "Share"}
    assert app.tab_note.visible and "Dynamics" in app.tab_note.object and "Playback" in app.tab_note.object
    tabs.active = app._tab_titles.index("Scan")
    assert "Dynamics" in shown() and "Playback" not in shown()
    tabs.active = app._tab_titles.index("Relaxation")
    assert shown() == everything and not app.tab_note.visible


def test_a_model_change_says_what_it_reset_and_what_it_kept(tmp_path, pages):
    app = zoo_app(tmp_path, ["fmnist-plain7-ep"])
    pages.append(app)
    app.controls()
    app.state.param.update(alpha=4.0, schedule="descent_safe", beta=0.2)
    app.state.model = choice(app, "fmnist-plain7-ep")
    said = [text for level, text in app.messages if level == "info"][-1]
    assert said.startswith("fmnist-plain7-ep: ")
    assert "alpha 4 -> 6" in said and "schedule descent_safe -> paper (the model's)" in said
    assert "depth 5 -> 7" in said and "residual on -> off" in said
    assert "kept yours: beta 0.2 (it was trained with 0.15), T free 20, T nudge 8" in said
    assert "alpha 4 -&gt; 6" in app.model_note.object    # and it stays on the page, under the picker
    assert app.state.alpha == 6.0 and app.state.beta == 0.2


def test_a_bp_trained_model_says_its_accuracy_is_the_feed_forward_one(tmp_path, pages):
    app = zoo_app(tmp_path, ["fmnist-resnet7-bp", "fmnist-resnet7-ep"])
    pages.append(app)
    listed = app.state.param.model.objects
    assert "zoo: fmnist-resnet7-bp, 82.7 % test feed-forward (BP)" in listed
    assert "zoo: fmnist-resnet7-ep, 82.1 % test" in listed        # EP's number is the page's own
    app.controls()
    app.state.model = choice(app, "fmnist-resnet7-bp")
    note = app.model_note.object
    assert "82.7 % is the feed-forward pass" in note and "relaxes it with EP dynamics" in note
    assert "82.1 % is the test accuracy of its free phase" in app.state.model_info(choice(app, "fmnist-resnet7-ep"))


def test_a_checkpoint_with_extra_tensors_loads_and_says_what_they_are(tmp_path, pages):
    import torch
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    pages.append(app)
    app.controls()
    net = HopfieldNetwork(hopfield_family(depth=2, input_shape=SAMPLE_SHAPE, width=4), seed=1)
    extra = {f"extra.optim.m{i}": torch.zeros(3) for i in range(48)}
    extra.update({"extra.train.position": torch.zeros(2), "extra.rng.cpu": torch.zeros(4),
                  "extra.rng.cuda": torch.zeros(4)})
    stem = save_checkpoint(net, tmp_path / "extra", extra_tensors=extra)
    app.upload.filename = ["extra.json", "extra.safetensors"]
    app.upload.value = [stem.with_suffix(".json").read_bytes(), stem.with_suffix(".safetensors").read_bytes()]
    app.run_until_idle(timeout=60)
    assert app.state.model == "upload: extra"
    words = ("51 tensors the relaxation does not use: optimiser state (48), random-generator state (2), "
             "training position (1)")
    assert words in app.model_note.object
    assert [level for level, text in app.messages if level == "error"] == []


SLIDER_SETTINGS = ("alpha", "beta", "depth", "t_free", "t_nudge", "speed")


def test_every_slider_has_its_help_beside_it(pages):
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    pages.append(app)
    sections = app.controls()
    rows = [r for sec in sections for r in sec.select(pn.Row)]
    for name in SLIDER_SETTINGS:
        p = app.state.param[name]
        (widget,) = app._setting_widgets[name]
        row = next(r for r in rows if widget in r.objects)   # laid out beside its "?" icon
        icons = [o for o in row.objects if isinstance(o, pn.widgets.TooltipIcon)]
        assert len(icons) == 1 and icons[0].value == p.doc, name


# The page script's replay keys, run in node with the few browser objects it touches: a focused
# slider's arrow keys move the slider only (they also stepped the replay back to the previous run,
# which the views then showed with the slider at another depth).
KEYS_HARNESS = """
const handlers = {};
const player = {constructor: {__name__: "Player"}, disabled: false, direction: 0, value: 5, start: 0, end: 9};
globalThis.window = globalThis;
globalThis.document = {addEventListener: (kind, fn) => { handlers[kind] = fn; }};
globalThis.Bokeh = {documents: [{all_models: [player]}], index: {query: () => []},
                    require: () => { throw new Error("not in node"); }};
globalThis.IntersectionObserver = class { observe() {} };
globalThis.ResizeObserver = class { observe() {} };
globalThis.setInterval = () => 0;
globalThis.console = {warn: () => {}, log: console.log};
const tick = {data: {seq: [0]}}, ack = {data: {}}, visible = {data: {}};
eval(PAGE_JS);
const press = (key, target) => {
  let prevented = false;
  handlers.keydown({key, composedPath: () => [target], target, preventDefault: () => { prevented = true; }});
  return [player.value, player.direction, prevented];
};
const on = (selector) => ({tagName: "DIV", closest: (s) => (selector && s.includes(selector) ? {} : null)});
console.log(JSON.stringify({
  slider: press("ArrowLeft", on("[role=slider]")),
  button: press(" ", on("button")),
  page: press("ArrowLeft", on(null)),
  space: press(" ", on(null)),
}));
"""


def test_arrow_keys_on_a_focused_slider_do_not_step_the_replay():
    import json
    import subprocess

    from explorer.app import transport
    script = f"const PAGE_JS = {json.dumps(transport.page_js())};\n{KEYS_HARNESS}"
    result = subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True)
    seen = json.loads(result.stdout)
    assert seen["slider"] == [5, 0, False]     # the slider's own key: the replay stays at frame 5
    assert seen["button"] == [5, 0, False]     # space on a focused button presses the button only
    assert seen["page"] == [4, 0, True]        # elsewhere on the page the arrow steps the replay back
    assert seen["space"] == [4, 1, True]       # and space plays it


def test_a_resend_keeps_every_class_on_the_bar_charts_axes(pages, monkeypatch):
    # The bar charts (the output units, the Train tab's probe output) went blank with their sources
    # full: a resend of the page's state sent their FactorRange's start and end, which the server
    # holds as 0 (the page computes them), and the page's x axis collapsed to nothing. Both now draw
    # class k at x = k on a Range1d labelled by name (views/categories.py): a resend sends a range
    # that spans every class.
    from bokeh.models import ColumnDataSource, FactorRange, Range1d

    from explorer.app.state import class_name
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    pages.append(app)
    doc = Document()
    doc.add_root(pn.Column(app.relaxation_tab(), app.train).get_root(doc))
    app._doc = doc
    sent = []
    doc.on_change(lambda e: sent.append((e.model, e.attr, e.new)) if isinstance(e, ModelChangedEvent) else None)
    import contextlib
    # (Panel drops what is held for a document without a session: here each change goes out as made.)
    monkeypatch.setattr(pn.io, "hold", lambda *args, **kw: contextlib.nullcontext())
    app._resend(0.0)
    names = [class_name(app.state.samples.class_names, k) for k in range(10)]
    for fig in (app.views["output"].fig, app.train.out_fig):
        assert isinstance(fig.x_range, Range1d), fig.title.text
        axis = fig.xaxis[0]
        assert [axis.major_label_overrides[k] for k in axis.ticker.ticks] == names, fig.title.text
        resent = {a: new for m, a, new in sent if m is fig.x_range}
        assert (resent["start"], resent["end"]) == (-0.5, 9.5), fig.title.text
    # A FactorRange left elsewhere (the residual view's layers) keeps its start and end to the page.
    assert not [(m, a) for m, a, _ in sent if isinstance(m, FactorRange) and a in ("start", "end")]
    assert {m.name for m, a, _ in sent if isinstance(m, ColumnDataSource) and a == "data"} >= {
        "explorer.output.bars", "explorer.train.probe_output"}


def test_the_image_titles_fit_their_figures_at_the_presentation_font_size(pages):
    # In presentation mode (24 px titles) "Input #0: T-shirt/top" ran past the input image's 220-px
    # figure (the canvas cut it to "Input #0: T-shirt/to"). Each of a title's two lines, at a generous
    # 0.6 em a character (bold sans-serif averages about 0.45), fits right of the figure's left border.
    from explorer.app.state import class_name
    from explorer.app.views.base import FONT_SIZES
    from explorer.app.views.output import image_title
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    pages.append(app)
    # Two lines before an image is shown too (a title that gained a line left its old paint above it).
    assert app.views["output"].img_fig.title.text == image_title("Input") == "Input\n…"
    assert app.train.img_fig.title.text == image_title("Probe")
    samples = app.state.samples
    last = len(samples.labels) - 1
    app.state.sample = last
    app.run_until_idle(timeout=60)
    shown = app.views["output"].img_fig.title.text
    assert shown == image_title("Input", last, class_name(samples.class_names, int(samples.labels[last])))
    px = FONT_SIZES[True]["title"]
    for fig, what in ((app.views["output"].img_fig, "Input"), (app.train.img_fig, "Probe")):
        room = fig.width - fig.min_border_left
        for name in samples.class_names:
            for line in image_title(what, last, name).split("\n"):
                assert len(line) * 0.6 * px <= room, f"{line!r} overflows {what}'s {fig.width}-px figure"


def test_the_nudge_heat_map_title_fits_its_figure_at_the_presentation_font_size(pages):
    # At 1024x768 "‖s_β − s*‖ per layer and step (β = 0.15)" (439 px at 24 px) was cut in a 322-px
    # figure beside the 660-px feature maps. The heat map now keeps a least width that holds its
    # title right of its layer labels (at a generous 0.6 em a character), the maps wrapping below it.
    from explorer.app.views.base import FONT_SIZES
    from explorer.app.views.nudge import HEAT_MIN_WIDTH, heat_title
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    pages.append(app)
    view = app.views["nudge"]
    view.body()
    heat, maps = view.heat_row.objects
    assert heat.min_width == HEAT_MIN_WIDTH and view.heat_row.styles.get("flex-wrap") == "wrap"
    assert view.fig in [p.object for p in heat.objects if isinstance(p, pn.pane.Bokeh)]
    app.state.beta = 0.99                                      # the longest beta shown
    app.run_until_idle(timeout=60)
    assert view.fig.title.text == heat_title(0.99)
    px = FONT_SIZES[True]
    labels = 0.6 * px["tick"] * len("s25  −β") + 20          # the deepest network's row labels, ticks
    assert labels + 0.6 * px["title"] * len(view.fig.title.text) <= HEAT_MIN_WIDTH


def test_a_links_refused_value_stays_named_on_the_page_after_its_run_starts(pages):
    # "?beta=1.5&sample=3": the page applied sample 3 and kept beta 0.15, but the run the link
    # started (and sample's own change) cleared the alert that named beta 1.5: nothing on the page said why.
    from explorer.app import create_app
    app = create_app(settings={"beta": "1.5", "sample": "3"}, state=ExplorerState(zoo=[], t_free=T_FREE,
                                                                                  t_nudge=T_NUDGE, speed="max"))
    pages.append(app)
    assert app.state.sample == 3 and app.state.beta == 0.15
    assert app.alert.visible and "beta = 1.5" in app.alert.object and "kept beta = 0.15" in app.alert.object
    app.run_until_idle(timeout=60)
    assert app.alert.visible                       # the run ending does not clear it either
    app.state.beta = 0.2                           # a person's own change does
    assert not app.alert.visible


def test_the_residual_views_titles_and_legend_fit_at_the_presentation_font_size(pages):
    # At 1024x768 in presentation mode "Residual share ‖skip‖ / (‖direct‖ + ‖skip‖ + ‖feedback‖)" and
    # "Drive split at the latest step" were cut, and the drive split's legend ran past its 330-px figure.
    from explorer.app.views.base import FONT_SIZES
    from explorer.app.views.residual import PART_LABELS, SHARE_MIN_WIDTH, SPLIT_WIDTH
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    pages.append(app)
    view = app.views["residual"]
    view.body()
    heat, split = view.share_row.objects
    assert heat.min_width == SHARE_MIN_WIDTH and view.bfig.width == SPLIT_WIDTH
    assert split.width is None and split.min_width is None   # else the row's least width is their sum
    assert view.share_row.styles.get("flex-wrap") == "wrap"
    px = FONT_SIZES[True]
    em = lambda text, size: 0.6 * size * len(text)   # a generous width of bold sans-serif
    labels = em("s25", px["tick"]) + px["axis_label"] + 30   # row labels, the axis title, ticks
    titles = [view.fig.title.text]
    app.state.model = "untrained plain"
    app.run_until_idle(timeout=60)
    titles.append(view.fig.title.text)
    assert titles[0] != titles[1]
    for title in titles:
        assert labels + em(title, px["title"]) <= SHARE_MIN_WIDTH, title
    room = SPLIT_WIDTH - (em("s25", px["tick"]) + 20)
    for line in view.bfig.title.text.split("\n"):
        assert em(line, px["title"]) <= room, line
    legend = view.bfig.legend[0]
    width = sum(em(t, px["legend"]) * 0.8 + legend.glyph_width + legend.label_standoff for t in PART_LABELS.values())
    assert width + legend.spacing * (len(PART_LABELS) - 1) <= room


def test_the_replay_caption_says_paused_once_the_player_is_paused(pages):
    # Space played the replay, space again paused it: the caption still said "playing at …" (it
    # changed only when the frame did, and pausing does not move the frame).
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    pages.append(app)
    app.controls()
    app.restart()
    app.run_until_idle(timeout=60)
    app.player.direction = 1               # play (the page's space key) ...
    app.player.value = 3
    assert app.replay_text.object.startswith("<div class='hint'>playing at free step 3 of")
    app.player.direction = 0               # ... and pause, on the same frame
    assert app.replay_text.object.startswith("<div class='hint'>paused at free step 3 of")


def test_the_panes_text_takes_the_themes_colour_not_a_fixed_dark_grey():
    # In the dark theme (?theme=dark) the verdict's messages (#222), the prediction box (white text on
    # #f3f6f9), the status line and the hints (#333 to #555) were dark on dark: unreadable.
    import re

    from explorer.app import scan_tab, sweep_tab
    from explorer.app.main import CSS_FILE
    sources = {"app.css": CSS_FILE.read_text()}
    for module in (scan_tab, sweep_tab):
        sources[module.__name__] = open(module.__file__).read()
    for name, text in sources.items():
        for m in re.finditer(r"(?<![-\w])color:\s*#([0-9a-fA-F]{6}|[0-9a-fA-F]{3})\b", text):
            h = m.group(1) if len(m.group(1)) == 6 else "".join(c * 2 for c in m.group(1))
            r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
            assert not (r == g == b and r < 0x88), f"{name}: fixed dark grey text {m.group(0)!r}"
        for m in re.finditer(r"background:\s*#([0-9a-fA-F]{6})\b", text):
            r, g, b = (int(m.group(1)[i:i + 2], 16) for i in (0, 2, 4))
            assert min(r, g, b) < 0xE0, f"{name}: a near-white background {m.group(0)!r} under the theme's text"


def test_the_train_tabs_probe_energy_legend_is_below_its_plot_on_a_desk_and_when_presenting(pages):
    # Beside the plot the legend ("earlier probes (darker: later)", "latest probe") left the Phi
    # plot about 90 px at 1280x720.
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    pages.append(app)
    app.relaxation_tab()
    app.presentation_controls()
    fig = app.train.phi_fig
    for present in (False, True, False):
        app.present.value = present
        assert fig.legend[0] in fig.below and fig.legend[0] not in fig.right, present


def test_show_full_screen_finds_a_card_for_every_value_the_picker_sends(pages):
    """The button did nothing in the browser: its script looked cards up by title, the page sends the key."""
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    pages.append(app)
    app.relaxation_tab()
    app.presentation_controls()
    model = app.full_view.get_root(Document())
    sent = [value if isinstance(value, str) else value[0] for value in model.options]
    assert len(sent) == 6 and model.value in sent
    targets = app.fullscreen_targets()
    for value in sent:
        assert value in targets and targets[value] in app.views, value


def test_a_training_runs_batches_reach_the_page_once_when_its_start_shares_a_tick(tmp_path, monkeypatch, pages):
    # The loss and accuracy curves looped back to step 1 in the browser (48 batches arrived as 64
    # rows): the drain that empties the sources for a new run is sent as one held message, serialised
    # after the drain, and a stream in that drain extended the lists the emptying then carried.
    from bokeh.document.events import ColumnDataChangedEvent, ColumnsStreamedEvent
    monkeypatch.setenv("EXPLORER_TRAINED_DIR", str(tmp_path))
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    pages.append(app)
    view = app.train
    view.settings.param.update(depth=3, width=4, limit=256, eval_limit=64, batch_size=32, t_free=10, t_nudge=4,
                               epochs=1, probe_every=2)
    doc = Document()
    doc.add_root(view.loss_fig)          # draws the batches and the evaluations
    page = {}                            # rows per source as the page applies the server's messages

    def apply(event):                    # serialised when sent, as a served session does
        name = getattr(getattr(event, "model", None), "name", None)
        if isinstance(event, ColumnsStreamedEvent):
            page[name] += len(event.data["step"])
        elif isinstance(event, ColumnDataChangedEvent):    # carries the source's data as it is then
            page[name] = len(event.model.data["step"])
    doc.on_change(apply)
    view.settings.param.trigger("start")
    assert view.worker.wait(60)          # the run ends before the page's next tick: one drain holds it all
    doc.hold("combine")
    view.drain()
    doc.unhold()
    assert page["explorer.train.batches"] == len(view.batches.data["step"]) == 8
    assert page["explorer.train.evals"] == len(view.evals.data["step"]) == 1


def test_the_feature_maps_names_grow_with_the_presentation_font():
    # "s*  (free)", "s_β  (nudged +β)", "s_β − s*" stayed at 13 px beside 24-px titles when presenting.
    from bokeh.models import Text

    from explorer.app.views.base import style
    from explorer.app.views.nudge import MAP_LABEL_SIZE, NudgeView
    view = NudgeView(ExplorerState(zoo=[]))
    (glyph,) = [r.glyph for r in view.map_fig.renderers if isinstance(r.glyph, Text)]
    for present in (True, False):
        style(view.map_fig, present=present)     # as the page restyles its figures (ExplorerApp._on_present)
        assert glyph.text_font_size == MAP_LABEL_SIZE[present]
    assert MAP_LABEL_SIZE[True] > MAP_LABEL_SIZE[False]


def test_the_verdict_card_grows_with_its_text_on_a_desk_and_when_presenting(pages):
    # A fixed height cut the footer (run id, the r definition) at 1024x768 and 1280x720: headless
    # Chromium shows no scrollbar, and nobody scrolls a card on a projector.
    from explorer.app.main import VERDICT_SIZE
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    pages.append(app)
    app.template()
    pane = app.views["verdict"].html
    for on in (True, False):
        app.present.value = on
        assert pane.height is None and pane.min_height == VERDICT_SIZE[on][1]
        assert "overflow-y" not in pane.styles and app._view_cards["verdict"].height is None


def test_the_free_phase_verdict_and_its_stability_do_not_contradict_each_other():
    # The worker adds ρ after the diagnosis was written; the view tells the diagnosis ρ before showing it.
    import numpy as np

    from explorer.app.views.verdict import _phase_body
    from explorer.app.worker import PhaseEnded
    from explorer.diagnosis import classify
    trace = np.array([[0.0, 0.0]] + [[0.99 ** t, 0.1] for t in range(1, 21)])
    d = classify(trace, ("s1", "y"), 1e-4).to_dict()
    stability = {"spectral_radius": 1.02, "observed_rate": 0.99, "dominant_layer": "s1", "layer_share": {"s1": 1}}
    for phase, promised in (("free", False), ("nudged+", True)):   # ρ is estimated at the free phase's end
        verdict = {"status": "not_converged", "message": "", "diagnosis": d, "stability": stability}
        body = _phase_body(PhaseEnded(1, phase, 20, verdict, np.zeros(10)))
        assert ("more steps" in body) == promised and ("ρ = 1.020" in body) != promised


def test_the_views_marks_and_labels_read_on_the_light_and_the_dark_theme(pages):
    # The output view's "target (one-hot)" marker (#333333) vanished in its legend on the dark theme;
    # the feature maps' names (#222222), the s1 unit lines and an 8th layer (#000000) likewise.
    from bokeh.models import Title
    from bokeh.models.glyph import Glyph
    from bokeh.plotting import figure

    from explorer.app.views.base import LAYER_PALETTE

    def dark_grey(value) -> bool:
        if not (isinstance(value, str) and value.startswith("#") and len(value) == 7):
            return False
        r, g, b = (int(value[i:i + 2], 16) for i in (1, 3, 5))
        return max(r, g, b) < 0x60 and max(r, g, b) - min(r, g, b) < 0x20
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    pages.append(app)
    app.template()
    figs = [m for m in pn.Column(app._tabs).get_root().references() if isinstance(m, figure)]
    assert len(figs) > 10 and not [c for c in LAYER_PALETTE if dark_grey(c)]
    seen = 0
    for fig in figs:
        for model in fig.references():
            if isinstance(model, Glyph):
                names = [n for n in ("line_color", "fill_color", "text_color") if n in model.properties()]
            else:   # a title's colour comes from the theme unless set
                names = ["text_color"] if isinstance(model, Title) and "text_color" in model.properties_with_values(
                    include_defaults=False) else []
            for name in names:
                seen += 1
                assert not dark_grey(getattr(model, name)), f"{fig.title.text}: {type(model).__name__}.{name}"
    assert seen > 20
