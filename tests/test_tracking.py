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
