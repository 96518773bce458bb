"""Runs A and B (issue 16, item 4), in-process: a pinned run A stays drawn in the energy, step-size,
residual-share and nudged-versus-free views while B streams, with A's own numbers; unpinning drops it.

Each view's pinned data are compared with A's Run record (sample 0), not with what the view drew
for A before: the views draw A from its record.
"""
from __future__ import annotations

import numpy as np
import pytest

from explorer.app import ExplorerApp, ExplorerState
from explorer.record import ENERGY_INDEX, STAT_INDEX

T_FREE, T_NUDGE = 30, 12
COMPARED = ("energy", "trajectories", "residual", "nudge")


@pytest.fixture
def app():
    a = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE, speed="max"), autostart=False)
    a.controls()
    yield a
    a.shutdown("test over")


def run(app) -> None:
    app.run_until_idle(timeout=60)


def recorded(run, phase: str, stat: str, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(step, value) of one layer statistic of sample 0 over a phase's real steps, from the record."""
    p = run.phases[phase]
    i = run.layers.index(layer)
    steps = np.array([r.step for r in p.records if r.step > 0])
    values = np.array([float(r.stats[i, STAT_INDEX[stat], 0]) for r in p.records if r.step > 0])
    return steps, values


def pinned_ids(app) -> dict[str, set]:
    return {k: set(app.views[k].pinned_sources()) for k in COMPARED}


def assert_holds_a(app, a) -> None:
    """Each compared view's pinned data are A's numbers."""
    energy = app.views["energy"].pinned_sources()[a.id]
    for phase, key in (("free", "phi"), ("nudged+", "F"), ("nudged-", "F")):
        want = [float(r.energy[ENERGY_INDEX[key], 0]) for r in a.phases[phase].records]
        assert np.allclose(energy[phase].data["value"], want), phase
        assert set(energy[phase].data["run"]) == {a.id}
    steps = app.views["trajectories"].pinned_sources()[a.id]["step_size"].data
    rows = np.isfinite(np.asarray(steps["x"], dtype=float))      # not the breaks between phases
    shares = app.views["residual"].pinned_shares()
    assert set(shares) == set(a.hidden)
    for layer in a.layers:
        i = a.layers.index(layer)
        want = np.array([float(r.stats[i, STAT_INDEX["step_size"], 0]) if r.step > 0 else np.nan
                         for r in a.records()])                  # one row per record, phase after phase
        drawn = np.asarray(steps[f"step_size__{layer}"], dtype=float)[rows]
        assert len(drawn) == len(want)
        assert np.allclose(drawn[want > 0], want[want > 0]) and np.isnan(drawn[~(want > 0)]).all(), layer
        for phase in ("free", "nudged+", "nudged-") if layer in shares else ():
            step, share = recorded(a, phase, "residual_share", layer)
            assert np.allclose(shares[layer][a.offset(phase) + step], np.clip(share, 0, 1)), (layer, phase)
    for phase in ("nudged+", "nudged-"):
        distances = app.views["nudge"].pinned_distances(phase)
        assert set(distances) == set(a.layers)
        for layer in a.layers:
            step, want = recorded(a, phase, "nudge_distance", layer)
            got = distances[layer][step]
            assert np.allclose(got[want > 0], want[want > 0]) and np.isnan(got[want <= 0]).all(), (layer, phase)


def test_pin_a_then_run_b_keeps_as_numbers_in_every_compared_view_and_unpin_drops_them(app):
    app.restart()
    run(app)
    a = app.run
    app.pin_current()
    app.drain()
    assert pinned_ids(app) == {k: set() for k in COMPARED}      # A on screen: drawn once, as itself
    app.state.residual = False
    run(app)
    b = app.run
    assert b.id != a.id and not b.residual
    assert pinned_ids(app) == {k: {a.id} for k in COMPARED}
    assert_holds_a(app, a)
    assert app.views["energy"].curves()[b.id]["free"].data["run"][0] == b.id   # B streams over A
    mark = app.views["energy"].pin_marks["free"].data                            # "A" at A's free curve's end
    assert mark["x"] == [a.x_end - 2 * T_NUDGE] and mark["value"] == pytest.approx(
        [float(a.phases["free"].records[-1].energy[ENERGY_INDEX["phi"], 0])])
    assert app.views["residual"].afig.visible and app.views["nudge"].afig.visible
    for k in COMPARED:
        note = app.views[k].pin_note.pane
        assert note.visible and "A (pinned)" in note.object and "residual" in note.object, k
    assert "dashed: A" in app.views["trajectories"].figs["step_size"].title.text

    # Scrubbing B with the replay player keeps A under it.
    app.player.value = T_FREE + 3
    run(app)
    assert pinned_ids(app) == {k: {a.id} for k in COMPARED}

    app.pin_current(False)
    app.drain()                                                  # unpinning takes effect at the next drain
    assert pinned_ids(app) == {k: set() for k in COMPARED}
    assert not app.views["residual"].afig.visible and not app.views["nudge"].afig.visible
    assert not any(app.views[k].pin_note.pane.visible for k in COMPARED)
    assert all(m.data["x"] == [] for m in app.views["energy"].pin_marks.values())
    step_fig = app.views["trajectories"].figs["step_size"]
    kept = [r for r in step_fig.renderers if (r.data_source.name or "").startswith("explorer.trajectories.pinned")]
    assert kept and all(len(r.data_source.data["x"]) == 0 for r in kept)   # lines kept, emptied
    app.state.residual = True                                    # a new run after unpin: as before
    run(app)
    assert pinned_ids(app) == {k: set() for k in COMPARED}
    assert all(n > 0 for k, n in app.counts().items() if k in COMPARED)


def test_a_view_out_of_sight_while_b_ran_draws_a_when_it_comes_into_view(app):
    app.restart()
    run(app)
    a = app.run
    app.pin_current()
    app.visible_source.data = {"keys": ["output", "energy"]}    # the page shows two views
    app.state.beta = 0.3
    run(app)
    assert pinned_ids(app)["energy"] == {a.id} and pinned_ids(app)["nudge"] == set()
    rows = {k: (va, vb) for k, va, vb, _ in app.views["compare"].rows()}   # the sidebar's table is never held back
    assert rows["beta"] == (pytest.approx(a.beta), pytest.approx(0.3))
    app.visible_source.data = {"keys": ["*"]}
    app.drain()
    assert pinned_ids(app) == {k: {a.id} for k in COMPARED}
    assert_holds_a(app, a)


def test_the_time_axis_covers_a_longer_pinned_a_and_shrinks_back_once_it_is_unpinned(app):
    app.state.t_free = 2 * T_FREE
    app.restart()
    run(app)
    a = app.run
    app.pin_current()
    app.state.t_free = T_FREE                                    # B is shorter than A
    run(app)
    b = app.run
    assert a.x_end > b.x_end
    axes = {k: app.views[k].x_range for k in ("energy", "trajectories", "residual")}
    assert {k: r.end for k, r in axes.items()} == {k: a.x_end for k in axes}
    app.pin_current(False)
    app.drain()
    assert {k: r.end for k, r in axes.items()} == {k: b.x_end for k in axes}
    assert {k: r.bounds for k, r in axes.items()} == {k: (0, b.x_end) for k in axes}
