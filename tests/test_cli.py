import json
import subprocess
import sys

from explorer import HopfieldNetwork, hopfield_family
from explorer.checkpoint import save_checkpoint
from explorer.cli import main


def test_gradcheck_with_no_arguments_checks_a_small_network(capsys):
    assert main(["gradcheck", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["min_cosine_centered"] >= 0.99
    assert set(out["verdicts"]) == {"free", "nudged+", "nudged-"}
    errs = [(v["centered"]["rel_error"], v["one_sided"]["rel_error"]) for v in out["parameters"].values()]
    assert sum(c for c, _ in errs) < sum(o for _, o in errs)


def test_relax_prints_a_table_and_saves_the_record(tmp_path, capsys):
    net = HopfieldNetwork(hopfield_family(3, width=3), seed=1)
    stem = save_checkpoint(net, tmp_path / "net")
    record = tmp_path / "record.json"
    assert main(["relax", "--checkpoint", str(stem), "--beta", "0.2", "--t-free", "8", "--t-nudge", "4",
                 "--save", str(record), "--batch", "2"]) == 0
    text = capsys.readouterr().out
    assert "[free]" in text and "[nudged-]" in text and "residual_share" in text
    data = json.loads(record.read_text())
    assert [p["phase"] for p in data["phases"]] == ["free", "nudged+", "nudged-"]
    assert len(data["phases"][0]["records"]) == 9


def test_cli_errors_are_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad"
    bad.with_suffix(".json").write_text("{}")
    bad.with_suffix(".safetensors").write_bytes(b"junk")
    # In a real process once (the exit status and stderr a shell sees); a bad option value the same
    # way in process below (test_relax_takes_the_run_settings_options_checked_by_the_schema).
    proc = subprocess.run([sys.executable, "-m", "explorer", "relax", "--checkpoint", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_relax_takes_the_run_settings_options_checked_by_the_schema(tmp_path, capsys):
    net = HopfieldNetwork(hopfield_family(2, width=2), seed=1)
    stem = save_checkpoint(net, tmp_path / "net")
    base = ["relax", "--checkpoint", str(stem), "--json"]
    assert main(base + ["--t-free", "30"]) == 0
    whole = json.loads(capsys.readouterr().out)["phases"]
    assert [p["phase"] for p in whole] == ["free"] and len(whole[0]["records"]) == 31   # no --beta: free only
    # --stop-at-tol ends the phase at the tolerance (a loose one here); the default runs every step
    assert main(base + ["--t-free", "30", "--tol", "0.5", "--stop-at-tol"]) == 0
    assert len(json.loads(capsys.readouterr().out)["phases"][0]["records"]) < 31
    for args, words in ((["--beta", "3"], "--beta 3 is outside 0 to 2"),
                        (["--t-free", "0"], "--t-free 0 is outside 1 to 1000"),
                        (["--schedule", "fast"], "--schedule fast is not one of paper, descent_safe"),
                        (["--alpha", "0"], "--alpha 0 is outside 0 to 50")):
        capsys.readouterr()
        assert main(base + args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1
