"""Study specs: the shipped ones validate; malformed ones get a specific message and exit 2 with nothing started."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from study import cli
from study.sweep.spec import SpecError, load, set_path, trial_key, validate

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "searchspaces").glob("*.yaml"))

GOOD = {
    "name": "t",
    "trial": {"data": {"name": "digits"}, "model": {"width": 0.25}, "train": {"epochs": 1}, "eval": {"points": 3},
              "device": "cpu"},
    "factors": {"seeds": [[0, 1], [2, 3]], "model.arch": ["mlp", "tinyten"], "align.method": ["none", "weight"]},
}


def test_shipped_specs_validate():
    assert {p.name for p in SHIPPED} >= {"quickstart.yaml"}
    for path in SHIPPED:
        spec = load(path)
        assert spec.trials or spec.search == "optuna", path


def test_quickstart_covers_both_papers_without_repeating_unaligned_asymmetric_trials():
    spec = load(ROOT / "searchspaces" / "quickstart.yaml")
    cells = [(t.config["model"]["arch"], t.config["model"]["symmetry"], t.config["align"].get("method", "none"),
              t.config["train"].get("attack", {}).get("eps", 0.0)) for t in spec.trials]
    assert {c[0] for c in cells} == {"mlp", "tinyten"} and len(spec.factors["seeds"]) >= 2
    for arch in ("mlp", "tinyten"):
        assert {(s, a) for x, s, a, eps in cells if x == arch and eps == 0} == {
            ("standard", "none"), ("standard", "activation"), ("standard", "weight"), ("w_asym", "none"),
            ("sigma_asym", "none")}
    assert {eps for *_, eps in cells} == {0.0, 0.03}
    assert min(t.config["model"]["width"] for t in spec.trials if t.config["model"]["arch"] == "tinyten") >= 0.5
    assert spec.base["curve"]["kind"] == "bezier"


def test_exclude_drops_exactly_the_matching_grid_points():
    raw = copy.deepcopy(GOOD)
    raw["factors"]["model.symmetry"] = ["standard", "w_asym"]
    full = validate(raw)
    raw["exclude"] = [{"model.symmetry": ["w_asym"], "align.method": ["weight"]},
                      {"model.arch": "tinyten", "seeds": [[2, 3]], "model.symmetry": ["standard"]}]
    kept = validate(raw)
    gone = {t.key for t in full.trials} - {t.key for t in kept.trials}
    expected = {t.key for t in full.trials
                if (t.factors["model.symmetry"] == "w_asym" and t.factors["align.method"] == "weight")
                or (t.factors["model.arch"] == "tinyten" and t.factors["seeds"] == [2, 3]
                    and t.factors["model.symmetry"] == "standard")}
    assert gone == expected and len(gone) == 4 + 2
    assert {t.key for t in kept.trials} <= {t.key for t in full.trials}


@pytest.mark.parametrize("exclude, message", [
    ([{"model.symetry": ["w_asym"]}], r"exclude\[0\]\.model\.symetry: unknown trial setting \(did you mean 'model.symmetry'"),
    ([{"align.method": ["wieght"]}], r"exclude\[0\]: matches no grid point \(align.method in \['wieght'\]\)"),
    ([{"align.method": ["none", "weight"]}], r"exclude: leaves out every grid point"),
    ({"align.method": ["none"]}, r"exclude: must be a list of non-empty mappings"),
])
def test_a_bad_exclude_is_refused(exclude, message):
    raw = {**copy.deepcopy(GOOD), "exclude": exclude}
    with pytest.raises(SpecError, match=message):
        validate(raw)


def test_grid_expands_and_counts_unique_endpoints():
    spec = validate(GOOD)
    assert len(spec.trials) == 2 * 2 * 2
    assert len({t.key for t in spec.trials}) == 8
    # endpoints depend on arch and seed, not on alignment: 2 archs x 4 seeds
    assert len(spec.endpoints()) == 8
    first = spec.trials[0]
    assert first.factors == {"seeds": [0, 1], "model.arch": "mlp", "align.method": "none"}
    assert first.config["model"] == {"width": 0.25, "arch": "mlp"}


def test_bundle_factor_merges_into_the_subtree():
    raw = copy.deepcopy(GOOD)
    raw["factors"] = {"model": [{"symmetry": "standard"}, {"symmetry": "w_asym", "options": {"n_fix": 8}}]}
    spec = validate(raw)
    assert [t.config["model"] for t in spec.trials] == [
        {"width": 0.25, "symmetry": "standard"}, {"width": 0.25, "symmetry": "w_asym", "options": {"n_fix": 8}}]


def test_set_path_creates_and_merges():
    config = {"train": {"epochs": 3}}
    set_path(config, "train.attack.eps", 0.1)
    set_path(config, "train", {"lr": 0.2})
    assert config == {"train": {"epochs": 3, "attack": {"eps": 0.1}, "lr": 0.2}}


def _with(path: str, value) -> dict:
    raw = copy.deepcopy(GOOD)
    if value is _DELETE:
        parent, _, leaf = path.rpartition(".")
        node = raw
        for part in parent.split(".") if parent else []:
            node = node[part]
        del node[leaf]
    else:
        node = raw
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return raw


_DELETE = object()

MALFORMED = [
    (_with("nmae", "x"), r"nmae: unknown top-level key \(did you mean 'name'\?\)"),
    (_with("name", "has space"), r"name: must be 1-64 letters"),
    (_with("name", _DELETE), r"name: must be"),
    (_with("factors/model.acrh", ["mlp"]), r"factors.model.acrh: unknown trial setting \(did you mean 'model.arch'\?\)"),
    (_with("factors/model.arch", []), r"factors.model.arch: empty list"),
    (_with("factors/model.arch", "mlp"), r"factors.model.arch: must be a list of values"),
    (_with("factors/model.arch", ["mlp", "resnet-20"]),
     r"factors \(.*model.arch=\"resnet-20\".*\): trial.model: unknown architecture 'resnet-20'"),
    (_with("factors/align.method", ["none", "wieght"]), r"unknown alignment method 'wieght' \(did you mean 'weight'\?\)"),
    (_with("factors/seeds", [[0, 0]]), r"trial.seeds must differ"),
    (_with("factors/seeds", [[0]]), r"trial.seeds must be a pair of integers"),
    (_with("factors/train.attack.eps", [-0.1]), r"eps must be a finite number >= 0"),
    (_with("factors/train.lr", ["0.1"]), r"Recipe.lr must be a number .* got '0.1' \(str\)"),
    (_with("factors/eval.points", [2]), r"points must be an integer >= 3"),
    (_with("factors/curve", [{"kind": "bezier", "bends": 2}]), r"bends must be an integer >= 3"),
    (_with("factors/model", [{"symmetry": "standard", "options": {"n_fix": 4}}]),
     r"option 'n_fix' only applies to symmetry 'w_asym'"),
    (_with("trial/data", {"name": "digitz"}), r"trial: trial.data: unknown data set 'digitz' \(did you mean 'digits'\?\)"),
    (_with("trial/data", {"name": "digits", "options": {"tset_fraction": 0.1}}), r"'tset_fraction' \(did you mean 'test_fraction'\?\)"),
    (_with("trial/store", "/tmp/x"), r"trial: unknown key 'store'"),
    (_with("trial/train", {"epochs": 0}), r"Recipe.epochs must be an integer"),
    (_with("trial/device", "gpu"), r"unknown device 'gpu'"),
    (_with("resources", {"cpu": -1}), r"resources.cpu: must be a number >= 0"),
    (_with("resources", {"cpu": 0, "gpu": 0}), r"resources: a trial needs cpu > 0 or gpu > 0"),
    (_with("resources", {"cpus": 1}), r"resources.cpus: unknown key \(did you mean 'cpu'\?\)"),
    (_with("resources", {"gpu": 1.5}), r"resources.gpu: above 1 it must be a whole number"),
    (_with("execution", {"max_failures": -1}), r"execution.max_failures: must be an integer >= 0"),
    (_with("search", "random"), r"search: unknown search 'random'"),
    (_with("search", "optuna"), r"optuna: 'search: optuna' needs an optuna section"),
    (_with("optuna", {"metric": "x"}), r"optuna: only used with 'search: optuna'"),
    (_with("trial", ["not", "a", "mapping"]), r"trial: must be a mapping"),
    (_with("factors/model", [{"symmetry": "standard"}, {"symmetry": "standard"}]), r"give the same trial"),
]


@pytest.mark.parametrize("raw, message", MALFORMED, ids=[f"case{i}" for i in range(len(MALFORMED))])
def test_malformed_specs_are_rejected_with_a_specific_message(raw, message):
    with pytest.raises(SpecError) as caught:
        validate(raw)
    assert any(__import__("re").search(message, p) for p in caught.value.problems), caught.value.problems


def test_several_problems_are_reported_at_once():
    raw = _with("resources", {"cpu": -1})
    raw["nmae"] = "x"
    with pytest.raises(SpecError) as caught:
        validate(raw)
    assert len(caught.value.problems) == 2


@pytest.mark.parametrize("raw, message", MALFORMED[:8] + [
    ("not: [valid", "not valid YAML"),
], ids=[f"cli{i}" for i in range(9)])
def test_cli_exits_2_and_starts_nothing(tmp_path, capsys, monkeypatch, raw, message):
    import study.sweep.driver

    monkeypatch.setattr(study.sweep.driver, "run_study", lambda *a, **k: pytest.fail("started a study"))
    path = tmp_path / "spec.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    out = tmp_path / "out"
    for command in (["validate", str(path)], ["run", str(path), "--out", str(out)]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert __import__("re").search(message, err), err
        assert "Traceback" not in err
    assert not out.exists()


def test_cli_usage_errors(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "no such spec file" in capsys.readouterr().err
    for command in ("resume", "status", "ui"):
        assert cli.main([command, str(tmp_path)]) == 2
        assert "not a study folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        cli.main(["rnu"])
    assert caught.value.code == 2


def test_unwritable_output_folder_is_a_usage_error(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        # root may write anywhere: use a path under a regular file instead, which nobody can create
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "sub"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "sub"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(GOOD))
    assert cli.main(["run", str(spec), "--out", str(out)]) == 2
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw["trial"].update(data={"name": "cifar10", "data_root": "/nonexistent/data"}),
     r"data_root: /nonexistent/data does not exist here"),
    (lambda raw: raw.update(resources={"cpu": 4096}), r"resources.cpu: 4096 per trial, but this machine has"),
    (lambda raw: raw.update(resources={"cpu": 1, "gpu": 8}), r"resources.gpu: 8 per trial, but this machine has"),
])
def test_machine_specific_problems_stop_the_run_before_ray_starts(tmp_path, capsys, monkeypatch, edit, message):
    import study.sweep.driver

    monkeypatch.setattr(study.sweep.driver, "run_study", lambda *a, **k: pytest.fail("started a study"))
    raw = copy.deepcopy(GOOD)
    edit(raw)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


TRIAL = {"data": {"name": "digits"}, "model": {"arch": "mlp", "width": 0.25}, "seeds": [0, 1], "device": "cpu",
         "curve": {"kind": "bezier"}}


@pytest.mark.parametrize("path, value", [
    ("train.eval_batch_size", 17), ("curve.train.eval_batch_size", 33), ("runtime.parallel_points", 3),
    ("runtime.compile", True), ("train.momentum", 0.5)])  # momentum: the recipe below uses AdamW
def test_settings_that_cannot_change_a_trials_results_keep_its_key(path, value):
    base = {**copy.deepcopy(TRIAL), "train": {"optimizer": "adamw"}}
    edited = copy.deepcopy(base)
    set_path(edited, path, value)
    assert trial_key(edited) == trial_key(base)


@pytest.mark.parametrize("path, value", [
    ("train.lr", 0.123), ("curve.train.epochs", 3), ("eval.points", 7), ("align.method", "weight"),
    ("seeds", [0, 2]), ("model.width", 0.5), ("eval.max_samples", 100)])
def test_settings_that_change_a_trials_results_change_its_key(path, value):
    edited = copy.deepcopy(TRIAL)
    set_path(edited, path, value)
    assert trial_key(edited) != trial_key(TRIAL)


def test_trial_keys_do_not_depend_on_defaults_being_spelt_out():
    spelt = {**copy.deepcopy(TRIAL), "align": {"method": "none"}, "eval": {"points": 25}}
    assert trial_key(spelt) == trial_key(TRIAL)


def test_an_unreachable_ray_address_is_one_clear_error_not_an_endless_retry(tmp_path, capsys):
    import time

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "addr", "trial": {"data": {"name": "digits"}, "device": "cpu"},
                                    "factors": {"seeds": [[0, 1]]}}))
    start = time.monotonic()
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "out"), "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in err and "Traceback" not in err
    assert time.monotonic() - start < 30
    assert not (tmp_path / "out" / "addr" / "mlflow.db").exists()


@pytest.mark.parametrize("extra", [{}, {"curve": {"kind": "bezier", "train": {"epochs": 1, "augment": False}},
                                        "eval": {"points": 3, "attack": {"eps": 0.03, "steps": 1},
                                                 "plane": {"grid": 2}}}])
def test_reported_metrics_are_exactly_what_a_trial_reports(extra):
    """What an Optuna metric is checked against before compute must be what the trial really logs."""
    from study.core import config as trial_config, trial
    from study.sweep.spec import reported_metrics

    config = {"data": {"name": "digits"}, "model": {"arch": "mlp", "width": 0.0625}, "seeds": [0, 1],
              "train": {"epochs": 1, "augment": False}, "eval": {"points": 3}, "device": "cpu"}
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value}
    logged = {k for k in trial.run(config)["metrics"] if not k.startswith("align/")}
    expected = {k for k in reported_metrics(trial_config.parse(config)) if not k.startswith("align/")}
    assert logged == expected
