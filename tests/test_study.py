"""Studies through real Ray Tune and a real sqlite MLflow store: runs, reuse, retries, interrupt and resume."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from study.sweep.spec import validate
from study.store import EndpointStore
from study.sweep.driver import run_study
from tests.support.faults import FaultyTrial

SPEC = {
    "name": "e2e",
    "trial": {"data": {"name": "digits"}, "model": {"arch": "mlp", "width": 0.125},
              "train": {"epochs": 1, "batch_size": 128, "augment": False}, "eval": {"points": 3},
              "device": "cpu"},
    "factors": {"seeds": [[0, 1], [1, 2]], "align.method": ["none", "weight"]},
    "resources": {"cpu": 1},
    "execution": {"max_failures": 1},
}


def _runs(study_dir: Path, kind: str):
    client = mlflow.MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(SPEC["name"])
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.kind = '{kind}'")


def _trained(study_dir: Path) -> dict[str, float]:
    """Endpoint key -> creation time, straight from the store's sidecars."""
    store = EndpointStore(study_dir / "endpoints")
    return {key: store.get(key).created for key in store.keys()}


def test_end_to_end_study_logs_every_trial_once_and_trains_each_endpoint_once(ray_session, tmp_path):
    spec = validate(SPEC)
    outcome = run_study(spec, tmp_path / "e2e", show_progress=False)
    assert not outcome.interrupted and outcome.failed == 0
    runs = _runs(tmp_path / "e2e", "trial")
    assert len(runs) == 4
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["align.method"] in ("none", "weight")
        assert run.data.params["seeds"] in ("[0, 1]", "[1, 2]")
        assert "barrier_chord/linear/test_loss" in run.data.metrics
        artifacts = {a.path for a in mlflow.MlflowClient(f"sqlite:///{tmp_path / 'e2e' / 'mlflow.db'}")
                     .list_artifacts(run.info.run_id)}
        assert {"profiles.csv", "profiles.png", "result.json"} <= artifacts
    endpoint_runs = _runs(tmp_path / "e2e", "endpoint")
    assert len(endpoint_runs) == 3 and all(r.data.metrics["cached"] == 0 for r in endpoint_runs)
    # Named by their factors, distinct; trial runs top-level, endpoint runs under the study run; full configs.
    names = sorted(r.info.run_name for r in runs)
    assert names == ["align=none·s0-1", "align=none·s1-2", "align=weight·s0-1", "align=weight·s1-2"]
    assert sorted(r.info.run_name for r in endpoint_runs) == ["endpoint·s0", "endpoint·s1", "endpoint·s2"]
    study_run = _runs(tmp_path / "e2e", "study")[0]
    assert all("mlflow.parentRunId" not in r.data.tags for r in runs)
    assert {r.data.tags["mlflow.parentRunId"] for r in endpoint_runs} == {study_run.info.run_id}
    assert all(r.data.params["train.epochs"] == "1" and r.data.params["eval.points"] == "3" for r in runs)
    assert all(len(r.data.metrics) > 10 and "profile/linear/test_loss" in r.data.metrics for r in runs)
    # Tune's own records carry the names and factors (ResultGrid, ExperimentAnalysis, trial folders).
    from ray.tune import ExperimentAnalysis

    (pairs_dir,) = (tmp_path / "e2e" / "ray_results").glob("pairs-*")
    configs = ExperimentAnalysis(str(pairs_dir)).get_all_configs()
    assert sorted(c["name"] for c in configs.values()) == names
    assert {c["factors"]["align.method"] for c in configs.values()} == {"none", "weight"}
    assert sorted(p.name for p in pairs_dir.iterdir() if p.is_dir())[0] == "pairs_0000_align=none_s0-1"
    created = _trained(tmp_path / "e2e")
    assert len(created) == 3  # seeds 0, 1, 2: the pair trials reused them

    # Running the same study again redoes nothing and duplicates nothing.
    again = run_study(spec, tmp_path / "e2e", show_progress=False)
    assert len(_runs(tmp_path / "e2e", "trial")) == 4 and len(_runs(tmp_path / "e2e", "endpoint")) == 3
    assert _trained(tmp_path / "e2e") == created
    assert again.results["status"].tolist() == ["FINISHED"] * 4


def test_transient_failure_is_retried_and_permanent_failure_is_reported(ray_session, tmp_path):
    study_dir = tmp_path / "faults"
    (study_dir / ".faults").mkdir(parents=True)
    (study_dir / ".faults" / "once-0-1").touch()
    (study_dir / ".faults" / "always-1-2").write_text("oom")
    outcome = run_study(validate(SPEC), study_dir, show_progress=False, trial_fn=FaultyTrial(study_dir))
    table = outcome.results
    assert outcome.failed == 2  # both trials of seeds [1, 2]
    failed = table[table["status"] == "FAILED"]
    assert set(failed["seeds"]) == {"[1, 2]"}
    assert all("out of memory" in reason and "injected permanent failure" in reason for reason in failed["error"])
    finished = table[table["status"] == "FINISHED"]
    assert set(finished["seeds"]) == {"[0, 1]"} and len(finished) == 2
    retried = [r for r in _runs(study_dir, "trial") if r.data.tags.get("retried")]
    assert len(retried) >= 1  # the transient failure was retried and then finished
    from study import cli

    import io
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["status", str(study_dir)]) == 0
    status = out.getvalue()
    assert "2 failed" in status and "2 finished" in status and status.count("out of memory") == 2


def _study(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "study.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.faults  # a fault scenario of 1-2 minutes: make test-faults
def test_interrupted_study_resumes_without_duplicates_or_retraining(tmp_path):
    spec = copy.deepcopy(SPEC)
    spec["name"] = "e2e"
    spec["factors"]["align.method"] = ["none", "weight", "activation"]
    spec["resources"] = {"cpu": 2}  # one trial at a time, so the interrupt lands mid-study
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    study_dir = tmp_path / "out" / "e2e"
    proc = _study("run", str(path), "--out", str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    deadline = time.time() + 240
    artifacts = study_dir / "artifacts"
    while time.time() < deadline and proc.poll() is None:
        if artifacts.is_dir() and len(list(artifacts.iterdir())) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "study resume" in output
    before = _trained(study_dir)
    done_before = len(list(artifacts.iterdir()))
    assert done_before < 6

    resumed = _study("resume", str(study_dir), "--quiet", cwd=tmp_path)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    runs = _runs(study_dir, "trial")
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["trial_key"] for r in runs}) == 6
    after = _trained(study_dir)
    assert {k: after[k] for k in before} == before  # nothing retrained
    assert len(after) == 3


def test_optuna_search_runs_seeded_and_is_restart_safe(ray_session, tmp_path):
    import optuna

    spec = validate({
        "name": "e2e",
        "trial": {**SPEC["trial"], "curve": {"kind": "bezier", "train": {"epochs": 1, "batch_size": 128,
                                                                           "augment": False}}},
        "search": "optuna",
        "optuna": {"metric": "barrier_chord/bezier/test_loss", "mode": "min", "samples": 3, "seed": 0,
                   "repeat_seeds": [[0, 1]],
                   "space": {"curve.train.lr": {"type": "loguniform", "low": 1e-3, "high": 0.3}}},
        "resources": {"cpu": 1},
    })
    outcome = run_study(spec, tmp_path / "opt", show_progress=False)
    assert outcome.failed == 0 and len(outcome.results) == 3
    lrs = sorted(float(v) for v in outcome.results["curve.train.lr"])
    assert len(set(lrs)) == 3 and all(1e-3 <= v <= 0.3 for v in lrs)
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path / 'opt' / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3 and all(t.value is not None for t in complete)
    run_study(spec, tmp_path / "opt", show_progress=False)  # restart: nothing new, nothing duplicated
    assert len(_runs(tmp_path / "opt", "trial")) == 3


def test_same_study_twice_gives_identical_metrics_and_divergence_is_reported_not_hidden(ray_session, tmp_path):
    raw = copy.deepcopy(SPEC)
    raw["factors"] = {"seeds": [[0, 1]], "align.method": ["weight"], "train.lr": [0.05, 1.0e6]}
    raw["execution"] = {"max_failures": 0}
    spec = validate(raw)
    first = run_study(spec, tmp_path / "one", show_progress=False)
    second = run_study(spec, tmp_path / "two", show_progress=False)
    for outcome in (first, second):
        table = outcome.results
        assert outcome.failed == 1
        diverged = table[table["status"] == "FAILED"]
        assert diverged["train.lr"].tolist() == ["1000000.0"]
        assert "training diverged" in diverged["error"].iloc[0] and "lower lr" in diverged["error"].iloc[0]

    def metrics(study_dir: Path) -> dict:
        return {r.data.tags["trial_key"]: r.data.metrics for r in _runs(study_dir, "trial")
                if r.info.status == "FINISHED"}

    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) == 1
    for key in one:
        same = {k: v for k, v in one[key].items() if not k.startswith("time/") and "seconds" not in k}
        assert same == {k: two[key][k] for k in same}  # bit-identical on CPU
