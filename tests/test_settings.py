"""The settings schemas: one definition each, and what is derived from them (options, queries, dicts)."""
import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from explorer import settings as S
from explorer.settings import RunSettings, TrainSettings
from explorer.train import CONFIG_FIELDS, TrainConfig, config_from_args, parse_train_args

ROOT = Path(__file__).resolve().parent.parent


def parser_for(schema, **kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="test")
    S.add_arguments(p, schema, **kw)
    return p


def test_every_setting_has_a_doc_and_a_default_that_its_bounds_take():
    for schema in (RunSettings, TrainSettings):
        for name in S.names(schema):
            p = schema.param[name]
            assert p.doc and p.doc.strip(), f"{schema.__name__}.{name} has no doc"
            assert S.check(schema, name, p.default) == p.default


def test_run_settings_hold_a_tolerance_in_bounds_and_the_choice_to_stop_there():
    s = RunSettings()
    assert s.tol == 1e-4 and s.stop_at_tol is False
    for bad in (0.0, 1.0, -1e-3):
        with pytest.raises(ValueError):
            s.tol = bad
    with pytest.raises(ValueError, match=r"tol = 0 is outside 0 to 1 \(both ends excluded\)"):
        S.check(RunSettings, "tol", 0.0)


def test_train_config_is_built_from_the_training_schema():
    assert CONFIG_FIELDS == S.names(TrainSettings)
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert fields == {n: TrainSettings.param[n].default for n in S.names(TrainSettings)}
    c = TrainConfig(beta=3.0)
    with pytest.raises(ValueError, match=r"beta = 3 is outside 0 to 2"):
        c.resolved()
    with pytest.raises(ValueError, match=r"unknown settings \['colour'\]"):
        TrainConfig.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match=r"epochs = 0 is outside 1 to 100000"):
        TrainConfig.from_dict({"epochs": 0})
    assert TrainConfig.from_dict({"dataset": "Fashion-MNIST", "epochs": "3", "lr": 1}).resolved().epochs == 3


def test_options_come_with_help_defaults_and_checked_values():
    p = parser_for(RunSettings, only=("beta", "t_free", "schedule", "stop_at_tol"))
    text = p.format_help()
    assert "Nudging strength beta" in text and "0 to 2 (both ends excluded)" in text and "(default: 0.15)" in text
    assert "{paper,descent_safe,synchronous}" in text and "(default: off)" in text
    values = S.from_args(p.parse_args(["--beta", "0.3", "--stop-at-tol"]), RunSettings,
                         only=("beta", "t_free", "schedule", "stop_at_tol"))
    assert values == {"beta": 0.3, "t_free": 120, "schedule": "paper", "stop_at_tol": True}
    args = p.parse_args(["--no-stop-at-tol"])
    assert S.from_args(args, RunSettings, only=("stop_at_tol",)) == {"stop_at_tol": False}
    for argv, words in ((["--beta", "1.5e9"], "--beta 1.5e9 is outside 0 to 2 (both ends excluded)"),
                        (["--t-free", "0"], "--t-free 0 is outside 1 to 1000"),
                        (["--t-free", "ten"], "--t-free ten is not an integer"),
                        (["--schedule", "fast"], "--schedule fast is not one of paper, descent_safe, synchronous"),
                        (["--stop-at-tol", "maybe"], "--stop-at-tol maybe is not true or false")):
        with pytest.raises(ValueError) as err:
            S.from_args(p.parse_args(argv), RunSettings, only=("beta", "t_free", "schedule", "stop_at_tol"))
        assert str(err.value) == words


def test_an_option_absent_takes_the_base_then_the_commands_default():
    p = parser_for(TrainSettings)
    values = S.from_args(p.parse_args(["--epochs", "3"]), TrainSettings, base={"epochs": 7, "depth": 3},
                         defaults={"width": 4})
    assert (values["epochs"], values["depth"], values["width"], values["beta"]) == (3, 3, 4, 0.15)
    with pytest.raises(ValueError, match="depth = 30 is outside 1 to 25"):
        S.from_args(p.parse_args([]), TrainSettings, base={"depth": 30})


def test_train_options_keep_their_old_spellings():
    args = parse_train_args(["--no-progress", "--flip", "true", "--amp", "--randaugment", "3", "9",
                             "--limit", "all", "--normalize", "false", "--eval-tol", "0"])
    c = config_from_args(args)
    assert (c.progress, c.flip, c.amp, c.randaugment, c.limit, c.normalize) == (False, True, True, [3, 9], None,
                                                                                 False)
    assert c.resolved().eval_tol is None              # 0: no tolerance at evaluation
    with pytest.raises(ValueError, match="--dataset mnist is not one of fashion_mnist, cifar10, cifar100"):
        config_from_args(parse_train_args(["--dataset", "mnist"]))


def test_a_config_file_with_a_bad_value_names_the_file_and_the_setting(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"beta": 5, "epochs": 2}))
    with pytest.raises(ValueError, match=r"config file .*bad.json: beta = 5 is outside 0 to 2"):
        config_from_args(parse_train_args(["--config", str(bad)]))
    for path in (ROOT / "configs").glob("*.json"):
        assert config_from_args(parse_train_args(["--config", str(path)])).resolved()


def test_a_query_applies_what_it_can_and_names_each_problem():
    s = RunSettings(beta=0.2)
    values, problems = S.parse_query(s, {"beta": "1.5e9", "t_free": "80", "speed": "max", "stop_at_tol": "on",
                                         "schedule": "fast", "alpha": "nan", "depth": "x", "colour": "red"})
    assert values == {"t_free": 80, "speed": "max", "stop_at_tol": True}
    assert "beta = 1.5e9 is outside 0 to 2 (both ends excluded); kept 0.2" in problems
    assert "schedule = fast is not one of paper, descent_safe, synchronous; kept paper" in problems
    assert "alpha = nan is not a finite number; kept 6" in problems
    assert "depth = x is not an integer; kept 5" in problems
    assert any(p.startswith("unknown setting 'colour'") for p in problems) and len(problems) == 5
    # a class: what a bad value keeps is the default
    _, problems = S.parse_query(RunSettings, {"t_nudge": "0"})
    assert problems == ["t_nudge = 0 is outside 1 to 1000; kept 50"]


def test_settings_go_to_plain_values_and_back():
    s = RunSettings(beta=0.3, schedule="descent_safe", speed="max", stop_at_tol=True)
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d and d["beta"] == 0.3 and d["speed"] == "max"
    again = RunSettings.from_dict(json.loads(json.dumps(d)))
    assert again.to_dict() == d
    t = TrainSettings(randaugment=[3, 9], limit=100)
    assert TrainSettings.from_dict(json.loads(json.dumps(t.to_dict()))).to_dict() == t.to_dict()
    with pytest.raises(ValueError, match=r"randaugment = 3 is not 2 ints"):
        S.from_dict(TrainSettings, {"randaugment": [3]})
    with pytest.raises(ValueError, match=r"unknown settings \['colour'\]"):
        RunSettings.from_dict({"colour": "red"})
    assert S.from_dict(RunSettings, {"colour": "red", "t_free": 9.0}, strict=False) == {"t_free": 9}
