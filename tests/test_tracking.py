"""MLflow bookkeeping survives a busy store and refuses to silently lose a study's history."""

from __future__ import annotations

import pytest

from study import cli
from study.common.errors import TrackingUnavailable
from study.tracking.tracker import _RetryingClient


class FlakyClient:
    def __init__(self, failures: int, message: str = "(sqlite3.OperationalError) database is locked"):
        self.failures, self.message, self.calls = failures, message, 0

    def log_batch(self, run_id, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(self.message)
        return "logged"


def test_locked_store_is_retried_until_it_frees():
    flaky = FlakyClient(failures=3)
    client = _RetryingClient(flaky, "sqlite:///x.db", attempts=5, first_delay_s=0.01)
    assert client.log_batch("run") == "logged" and flaky.calls == 4


def test_store_locked_for_good_gives_a_clear_error():
    client = _RetryingClient(FlakyClient(failures=99), "sqlite:///x.db", attempts=3, first_delay_s=0.01)
    with pytest.raises(TrackingUnavailable, match=r"sqlite:///x.db still locked/unavailable after 3 attempts"):
        client.log_batch("run")


def test_other_errors_are_not_retried():
    flaky = FlakyClient(failures=1, message="INVALID_PARAMETER_VALUE: bad metric")
    with pytest.raises(RuntimeError, match="bad metric"):
        _RetryingClient(flaky, "sqlite:///x.db", first_delay_s=0.01).log_batch("run")
    assert flaky.calls == 1


def test_resuming_a_study_whose_mlflow_db_vanished_is_refused(tmp_path, capsys, monkeypatch):
    import yaml

    study = tmp_path / "s"
    (study / "ray_results").mkdir(parents=True)
    (study / "spec.yaml").write_text(yaml.safe_dump({
        "name": "s", "trial": {"data": {"name": "digits"}, "model": {"arch": "mlp"}, "device": "cpu"},
        "factors": {"seeds": [[0, 1]]}}))
    from study.sweep import ray_session

    monkeypatch.setattr(ray_session, "init_ray", lambda *a, **k: pytest.fail("started Ray"))
    assert cli.main(["resume", str(study)]) == 2
    err = capsys.readouterr().err
    assert "mlflow.db is missing, but this study has run before" in err and "Traceback" not in err
    assert not (study / "mlflow.db").exists()


def test_runs_are_laid_out_for_the_mlflow_ui(tmp_path):
    """Trial runs are top-level (the table opens on them), endpoint runs fold under the study run; a run holds its
    full config as params, the spec's description as its note, its data set as an input, its profiles as
    stepped metrics; the experiment opens on runs, with a saved view of the factor columns."""
    import json

    from study.tracking import schema
    from study.tracking.health import experiment_id, run_statuses
    from study.tracking.tracker import StudyTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = StudyTracker(uri, "layout", tmp_path, description="what this study asks",
                           run_tags={schema.GIT_COMMIT: "abc123"})
    tracker.describe_experiment(["seeds", "align.method"], ["barrier_chord/linear/test_loss"])
    config = {"data": {"name": "digits", "val_fraction": 0.1}, "train": {"epochs": 2, "lr": 0.05},
              "options": {"deep": {"x": "y" * 7000}}, "seeds": [0, 1], "align": {"method": "weight"}}
    trial = tracker.trial_run("k1", name="align=weight·s0-1", kind=schema.TRIAL_RUN,
                              params={"align.method": "weight", "seeds": [0, 1]}, config=config)
    endpoint = tracker.trial_run("e1", name="endpoint·s0", kind=schema.ENDPOINT_RUN, params={"seed": 0},
                                 config={"data": config["data"], "seed": 0})
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "profiles.csv").write_text("t,train_loss,test_loss,path\n0,0.1,0.2,linear\n0.5,0.9,1.1,linear\n"
                                            "1,0.1,0.3,linear\n0,0.1,0.2,bezier\n0.5,0.3,0.4,bezier\n1,0.1,0.3,bezier\n")
    tracker.log_final(trial, {"barrier_chord/linear/test_loss": 0.85}, artifacts)
    tracker.log_final(trial, {"barrier_chord/linear/test_loss": 0.85}, artifacts)  # again: nothing doubles
    tracker.finish(trial)

    client = tracker.client
    run = client.get_run(trial)
    assert run.data.tags[schema.NOTE] == "what this study asks" and run.data.tags[schema.GIT_COMMIT] == "abc123"
    assert schema.PARENT not in run.data.tags
    assert client.get_run(endpoint).data.tags[schema.PARENT] == tracker.parent_run_id
    params = run.data.params
    assert params["train.epochs"] == "2" and params["data.val_fraction"] == "0.1" and params["seeds"] == "[0, 1]"
    assert len(params["options.deep.x"]) == 6000  # cut to MLflow's limit instead of failing the run
    assert run.data.tags["factor.align.method"] == "weight"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["digits"]
    history = client.get_metric_history(trial, "profile/linear/test_loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.2), (1, 1.1), (2, 0.3)]
    assert "profile/linear/t" not in run.data.metrics

    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.tags[schema.EXPERIMENT_KIND] == schema.EXPERIMENT_KIND_ML
    view = json.loads(experiment.tags[schema.SHARED_VIEW_PREFIX + schema.TRIALS_VIEW])
    assert view["selectedColumns"] == ["params.`seeds`", "params.`align.method`",
                                       "metrics.`barrier_chord/linear/test_loss`"]
    assert view["searchFilter"] == "tags.kind = 'trial'"
    url = schema.runs_url("http://127.0.0.1:5000", tracker.experiment_id)
    assert url == (f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
                   f"&viewStateShareKey={schema.TRIALS_VIEW}")
    assert experiment_id(tmp_path / "mlflow.db", "layout") == tracker.experiment_id  # read-only, for `study ui`
    assert run_statuses(tmp_path / "mlflow.db", "layout", schema.TRIAL_RUN) == {"FINISHED": 1}
