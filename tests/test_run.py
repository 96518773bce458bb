"""A run as data: explorer/run.py (Run, RunStore, run files)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from explorer.ep import run_phases
from explorer.record import ENERGY_STATS, LAYER_STATS, Finding, RecordConfig, Verdict
from explorer.run import (STORE_ENV, Run, RunFileError, RunStore, load, network_identity, rose_steps, save,
                          verdict_data)

T_FREE, T_NUDGE = 25, 6


def make_run(net, x, t, *, record: RecordConfig | None = None, beta: float = 0.2, model: str = "test net") -> Run:
    record = record or RecordConfig(units=3, state_layers=("s2", "y"), state_samples=(0, 2), state_every=4)
    run = Run(Run.new_id(), {"beta": beta, "t_free": T_FREE, "t_nudge": T_NUDGE, "schedule": "paper",
                             "alpha": net.alpha, "tol": None},
              network_identity(net, model), x, t, tuple(f"class {k}" for k in range(net.spec.n_classes)),
              sample=7, record=dataclasses.asdict(record))
    run_phases(net, x, t, beta=beta, t_free=T_FREE, t_nudge=T_NUDGE, record=record, on_phase=run.add_phase)
    return run


@pytest.fixture
def a_run(small_net, batch):
    net = small_net()
    x, t = batch(net, 3)
    return make_run(net, x, t)


def assert_same_run(a: Run, b: Run) -> None:
    assert (a.id, a.settings, a.network, a.class_names, a.sample, a.record) == \
        (b.id, b.settings, b.network, b.class_names, b.sample, b.record)
    assert torch.equal(a.x, b.x) and a.x.dtype == b.x.dtype and torch.equal(a.target, b.target)
    assert list(a.phases) == list(b.phases)
    for name, pa in a.phases.items():
        pb = b.phases[name]
        assert (pa.phase, pa.beta, pa.steps, pa.verdict) == (pb.phase, pb.beta, pb.steps, pb.verdict)
        assert torch.equal(pa.output, pb.output)
        assert len(pa.records) == len(pb.records) > 0
        for ra, rb in zip(pa.records, pb.records):
            assert (ra.phase, ra.step, ra.beta, ra.layers) == (rb.phase, rb.step, rb.beta, rb.layers)
            for ta, tb in ((ra.stats, rb.stats), (ra.energy, rb.energy), (ra.units, rb.units)):
                assert ta.dtype == tb.dtype and ta.shape == tb.shape and torch.equal(ta, tb)
            assert ra.states.keys() == rb.states.keys()
            for k in ra.states:
                assert ra.states[k].dtype == rb.states[k].dtype and torch.equal(ra.states[k], rb.states[k])


def test_a_saved_run_loads_back_with_every_tensor_and_verdict_equal(a_run, tmp_path):
    assert sum(1 for r in a_run.records() if r.states) < len(list(a_run.records()))   # states every 4th step
    path = save(a_run, tmp_path / "run.parquet")
    assert_same_run(a_run, load(path))
    assert_same_run(a_run, load(path.read_bytes()))        # the page's Open run hands bytes


def test_pandas_reads_a_run_file_in_one_line(a_run, tmp_path):
    path = save(a_run, tmp_path / "run.parquet")
    df = pd.read_parquet(path)
    records = list(a_run.records())
    layers, batch = a_run.layers, a_run.x.shape[0]
    assert len(df) == len(records) * len(layers) * batch
    assert {"phase", "step", "beta", "layer", "sample", *LAYER_STATS, *ENERGY_STATS, "units", "state"} <= set(df)
    # One row: the numbers of that phase, step, layer and sample.
    rec = a_run.phases["nudged-"].records[3]
    row = df[(df.phase == "nudged-") & (df.step == rec.step) & (df.layer == "s3") & (df["sample"] == 1)]
    assert len(row) == 1
    i = layers.index("s3")
    assert row["residual_share"].item() == rec.stat("residual_share", "s3")[1].item()
    assert row["F"].item() == rec.energy_of("F")[1].item()
    assert np.array_equal(row["units"].item(), rec.units[i, :, 1].numpy())


def test_a_verdicts_evidence_is_kept_as_data(a_run, tmp_path):
    finding = Finding("energy_rose", "Phi rose at step 4 and 1 later steps", 4)
    finding.evidence = {"steps": [4, 9]}   # the engine's evidence (the field may be declared or not)
    verdict = verdict_data(Verdict("not_converged", [finding]))
    assert verdict["findings"][0]["evidence"] == {"steps": [4, 9]} and rose_steps(verdict) == [4, 9]
    assert rose_steps(verdict_data(Verdict("converged", [Finding("energy_rose", "rose", 3)]))) == [3]
    a_run.phases["free"].verdict = verdict
    assert load(save(a_run)).phases["free"].verdict == verdict


def test_the_network_identity_names_the_weights(small_net):
    net, other = small_net(seed=1), small_net(seed=2)
    a = network_identity(net, "m")
    assert a == network_identity(small_net(seed=1), "m")
    assert a["weights_sha256"] != network_identity(other, "m")["weights_sha256"]
    with torch.no_grad():
        net.biases["s1"][0] += 1.0
    assert network_identity(net, "m")["weights_sha256"] != a["weights_sha256"]


def test_the_store_evicts_the_oldest_runs_never_the_current_or_a_pinned_one(small_net, batch):
    net = small_net()
    x, t = batch(net, 1)
    runs = [make_run(net, x, t, beta=0.1 * (k + 1)) for k in range(4)]
    size = runs[0].nbytes()
    assert size > x.nbytes and all(abs(r.nbytes() - size) < size * 0.05 for r in runs)
    store = RunStore(max_bytes=int(2.5 * size))
    store.add(runs[0])
    store.pin(runs[0].id)
    for r in runs[1:]:
        store.add(r)
    kept = [r.id for r in store.runs()]
    assert kept == [runs[0].id, runs[3].id]           # pinned, and the newest
    assert store.nbytes <= store.max_bytes and store.current == runs[3].id
    store.pin(runs[0].id, False)
    big = RunStore(max_bytes=size // 2)                # one run over the budget is still kept
    big.add(runs[1])
    assert [r.id for r in big.runs()] == [runs[1].id]


def test_the_store_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(STORE_ENV, "2.5")
    assert RunStore().max_bytes == int(2.5 * 2 ** 20)
    assert RunStore(max_bytes=1000).max_bytes == 1000
    monkeypatch.setenv(STORE_ENV, "lots")
    with pytest.raises(ValueError, match=STORE_ENV):
        RunStore()
    monkeypatch.delenv(STORE_ENV)
    assert RunStore().max_bytes == 64 * 2 ** 20


def test_files_that_are_not_runs_are_refused_with_one_message(a_run, tmp_path):
    with pytest.raises(RunFileError, match="not a run file") as refused:
        load(b"PAR1 but not really a parquet file")
    assert "input source" not in str(refused.value)     # pyarrow's prefix is no help to a person
    plain = tmp_path / "plain.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(plain)
    with pytest.raises(RunFileError, match="no 'explorer.run' metadata"):
        load(plain)
    import pyarrow.parquet as pq
    from explorer.run import to_table
    table = to_table(a_run)
    cut = table.slice(0, table.num_rows - 1)          # a row short of what the metadata describes
    pq.write_table(cut, tmp_path / "cut.parquet")
    with pytest.raises(RunFileError, match="rows"):
        load(tmp_path / "cut.parquet")
    with pytest.raises(RunFileError, match="not a run file"):
        load(tmp_path / "missing.parquet")
