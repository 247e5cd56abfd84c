"""The `study` command's own features, without Ray: overrides, plan, list, --version, ui's port check and link."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from study import cli
from study.sweep import naming
from study.sweep.spec import SpecError, apply_overrides, validate

SPEC = {
    "name": "clistudy",
    "description": "A small grid for the CLI tests.",
    "trial": {"data": {"name": "digits"}, "model": {"arch": "mlp", "width": 0.125},
              "train": {"epochs": 3, "batch_size": 128}, "eval": {"points": 3}, "device": "cpu"},
    "factors": {"seeds": [[0, 1], [2, 3]], "align.method": ["none", "weight"]},
    "resources": {"cpu": 1},
}


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "clistudy.yaml"
    path.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    return path


@pytest.fixture
def no_ray(monkeypatch):
    from study.sweep import ray_session

    monkeypatch.setattr(ray_session, "init_ray", lambda *a, **k: pytest.fail("started Ray"))


def test_overrides_merge_dotted_keys_trial_settings_and_whole_factor_keys():
    raw = apply_overrides(SPEC, ["train.epochs=1", "trial.eval.points=5", "factors.align.method=[none]",
                                 "name=quick", "factors.seeds=[[4,5]]"])
    spec = validate(raw)
    assert spec.name == "quick" and spec.base["train"] == {"epochs": 1, "batch_size": 128}
    assert spec.base["eval"]["points"] == 5 and spec.factors == {"seeds": [[4, 5]], "align.method": ["none"]}
    assert len(spec.trials) == 1
    assert SPEC["trial"]["train"]["epochs"] == 3  # the given document is left as it was
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        apply_overrides(SPEC, ["epochs"])


def test_validate_with_overrides_and_a_misspelt_override_key(spec_file, capsys):
    assert cli.main(["validate", str(spec_file), "train.epochs=1", "factors.seeds=[[0,1]]"]) == 0
    out = capsys.readouterr().out
    assert "2 pair trials, 2 unique endpoints, 1 CPU per trial" in out and "Resources(" not in out
    assert cli.main(["validate", str(spec_file), "train.epocs=1"]) == 2
    err = capsys.readouterr().err
    assert "with train.epocs=1" in err and "unknown key 'epocs' (did you mean 'epochs'?)" in err


def test_run_with_a_misspelt_override_stops_before_compute(spec_file, tmp_path, capsys, no_ray):
    assert cli.main(["run", str(spec_file), "trial.train.epocs=1", "--out", str(tmp_path / "out")]) == 2
    assert "did you mean 'epochs'?" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_writes_the_overridden_spec_to_the_study_folder(spec_file, tmp_path, monkeypatch, capsys):
    from study.cli import commands

    ran = {}
    monkeypatch.setattr(commands, "_run", lambda spec, study_dir, args: ran.update(spec=spec, dir=study_dir) or 0)
    assert cli.main(["run", str(spec_file), "--out", str(tmp_path / "out"), "train.epochs=1"]) == 0  # after options
    kept = (tmp_path / "out" / "clistudy" / "spec.yaml").read_text()
    assert kept.startswith(f"# {spec_file} with overrides: train.epochs=1")
    assert validate(yaml.safe_load(kept)).base["train"]["epochs"] == 1 == ran["spec"].base["train"]["epochs"]


def _finish(study_dir: Path, item, seconds: float) -> None:
    """A finished trial's record, as a trainable leaves it."""
    directory = study_dir / "artifacts" / item.key
    directory.mkdir(parents=True)
    (directory / "result.json").write_text(json.dumps({
        "trial_key": item.key, "run_name": "x", "factors": item.factors, "config": item.config,
        "metrics": {"time/endpoints": seconds / 2, "time/eval": seconds / 2, "barrier_chord/linear/test_loss": 1.0}}))


def test_plan_counts_what_is_done_and_estimates_from_stored_timings(spec_file, tmp_path, capsys, no_ray):
    out = tmp_path / "out"
    assert cli.main(["plan", str(spec_file), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pair trials: 4, 0 finished, 4 to run" in text and "unique endpoints: 4, 0 in the store" in text
    assert "no stored timings yet" in text
    spec = validate(SPEC)
    for item, seconds in zip(spec.trials[:2], (10.0, 30.0)):
        _finish(out / "clistudy", item, seconds)
    assert cli.main(["plan", str(spec_file), "--out", str(out), "--max-concurrent", "1"]) == 0
    text = capsys.readouterr().out
    assert "pair trials: 4, 2 finished, 2 to run" in text
    assert "about 0m40s at 1 trial(s) at once (mean 20 s per pair trial from 2 finished" in text
    names = naming.trial_names(spec.trials)
    assert f"to run: {names[spec.trials[2].key]}" in text and names[spec.trials[0].key] not in text


def test_list_shows_each_study_with_done_and_total(spec_file, tmp_path, capsys, no_ray):
    root = tmp_path / "studies"
    for name, finished in (("alpha", 1), ("beta", 4)):
        study_dir = root / name
        study_dir.mkdir(parents=True)
        document = {**SPEC, "name": name}
        (study_dir / "spec.yaml").write_text(yaml.safe_dump(document))
        for item in validate(document).trials[:finished]:
            _finish(study_dir, item, 1.0)
    (root / "not-a-study").mkdir()
    assert cli.main(["list", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["study", "done/total", "failed", "state", "folder"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"alpha", "beta"}
    assert rows["alpha"][1:4] == ["1/4", "?", "partial"] and rows["beta"][1:4] == ["4/4", "?", "done"]
    assert cli.main(["list", str(tmp_path / "nowhere")]) == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("study (symstudy) ")


def test_ui_refuses_a_busy_port_and_otherwise_becomes_the_mlflow_server(tmp_path, capsys, monkeypatch):
    study_dir = tmp_path / "s"
    study_dir.mkdir()
    (study_dir / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    (study_dir / "mlflow.db").write_bytes(b"")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["ui", str(study_dir), "--port", str(port)]) == 2
    assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err

    from study.cli import commands

    def execve(path, argv, env):
        raise SystemExit(("exec", argv, env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION")))

    monkeypatch.setattr(commands.os, "execve", execve)
    with pytest.raises(SystemExit) as exec_:
        cli.main(["ui", str(study_dir), "--port", str(port)])
    _, argv, jobs = exec_.value.code
    assert argv[1:3] == ["ui", "--backend-store-uri"] and argv[-3:] == [str(port), "--workers", "1"]
    assert jobs == "false"
