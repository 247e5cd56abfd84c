"""MLflow tracking of a study, written only by the driver (one sqlite writer, works unchanged on a cluster).

One experiment per study with its artifact location inside the study folder, one parent run holding the spec,
one run per trial found by the ``trial_key`` tag, so retries and resumed studies never duplicate runs (Ray's
own MLflow callback creates a new run when a trial is restored, which would duplicate them). Trials write their
profile CSVs and plots to the study folder; the driver attaches them to the trial's run.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

from study.common.errors import TrackingUnavailable
from study.tracking import schema

log = logging.getLogger(__name__)

_TRANSIENT = ("database is locked", "database table is locked", "busy", "unable to open database")
#: Store faults no retry can fix: reported as one TrackingUnavailable message (a user error), not a traceback.
_FATAL = {"readonly database": "the store is read-only", "read-only file system": "the store is read-only",
          "disk is full": "the disk is full", "no space left": "the disk is full",
          "disk i/o error": "disk I/O error", "file is not a database": "the file is not a database",
          "malformed": "the database is damaged", "no such table": "the database is not an MLflow store"}


class _RetryingClient:
    """An MlflowClient whose calls retry while sqlite is locked or busy (another process holds the write lock,
    an NFS hiccup), with exponential backoff; any other error surfaces at once. Gives up with a clear message."""

    def __init__(self, client: Any, uri: str, attempts: int = 7, first_delay_s: float = 0.25):
        self._client, self._uri, self._attempts, self._delay = client, uri, attempts, first_delay_s

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            delay = self._delay
            for attempt in range(1, self._attempts + 1):
                try:
                    return method(*args, **kwargs)
                except Exception as error:  # noqa: BLE001 - MLflow wraps sqlite errors in its own types
                    text = str(error).lower()
                    fatal = next((why for marker, why in _FATAL.items() if marker in text), None)
                    if fatal is not None:
                        raise TrackingUnavailable(
                            f"MLflow store {self._uri}: {fatal} ({name}: {str(error).splitlines()[0][:200]}); "
                            f"fix it, then `study resume` continues the study") from None
                    if not any(t in text for t in _TRANSIENT):
                        raise
                    if attempt == self._attempts:
                        raise TrackingUnavailable(
                            f"MLflow store {self._uri} still locked/unavailable after {attempt} attempts "
                            f"({name}): {str(error).splitlines()[0]}") from error
                    log.warning("MLflow store busy (%s); retrying %s in %.2f s", str(error).splitlines()[0],
                                name, delay)
                    time.sleep(delay)
                    delay *= 2
            raise AssertionError("unreachable")

        return call


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


#: MLflow's limits (mlflow.utils.validation): key length, param value length, params/tags and metrics per batch.
MAX_KEY, MAX_PARAM_VALUE, MAX_TAGS_PER_BATCH, MAX_METRICS_PER_BATCH = 250, 6000, 100, 1000
MAX_TAG_VALUE = 5000


def flatten_params(values: Mapping[str, Any]) -> dict[str, str]:
    """Nested values as flat MLflow params (``{"model": {"symmetry": "w_asym"}}`` -> ``model.symmetry``), keys and
    values cut to MLflow's limits."""
    out: dict[str, str] = {}
    _flatten("", values, out)
    return {k[:MAX_KEY]: v[:MAX_PARAM_VALUE] for k, v in out.items()}


def provenance_tags(source: str | None = None) -> dict[str, str]:
    """MLflow's source tags for runs this driver creates: what was run (``source``), by whom, and the git commit
    of the symstudy code, where it is a git checkout (nothing is said where it is not)."""
    tags = {schema.SOURCE_TYPE: "LOCAL"}
    if source:
        tags[schema.SOURCE_NAME] = source[:MAX_TAG_VALUE]
    try:
        tags[schema.USER] = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5)
        if commit.returncode == 0 and commit.stdout.strip():
            tags[schema.GIT_COMMIT] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def dataset_input(data: Mapping[str, Any]) -> DatasetInput:
    """A run's data set (a trial config's ``data`` section) as an MLflow dataset input: its name, a digest of
    its settings, where it comes from."""
    from study.common.identity import content_key

    name = str(data.get("name", "data"))
    source = json.dumps({k: data.get(k) for k in ("name", "root", "download") if data.get(k) is not None},
                        default=str)
    dataset = Dataset(name=name, digest=content_key(dict(data))[:10], source_type="local", source=source,
                      profile=json.dumps({k: v for k, v in data.items() if k != "name"}, default=str)[:5000])
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])


def profile_metrics(csv: Path) -> list[tuple[str, float, int]]:
    """A trial's ``profiles.csv`` as stepped metrics ``profile/<path>/<column>`` at step = index of t along the
    path, so MLflow's charts draw (and overlay across runs) the loss and accuracy curves."""
    import pandas as pd

    table = pd.read_csv(csv)
    if "path" not in table or "t" not in table:
        return []
    out: list[tuple[str, float, int]] = []
    for path, rows in table.groupby("path", sort=False):
        rows = rows.sort_values("t")
        for column in rows.columns:
            if column in ("path", "t") or not pd.api.types.is_numeric_dtype(rows[column]):
                continue
            out.extend((f"{schema.PROFILE_PREFIX}{path}/{column}", float(v), step)
                       for step, v in enumerate(rows[column]) if math.isfinite(float(v)))
    return out


class StudyTracker:
    """Driver-side MLflow bookkeeping for one study; every method is idempotent."""

    def __init__(self, tracking_uri: str, study_name: str, study_dir: Path, *, description: str = "",
                 run_tags: Mapping[str, str] | None = None):
        self.uri, self.study_name, self.study_dir = tracking_uri, study_name, study_dir
        self.description = description
        #: Tags every new run gets: the spec's description as its note, provenance (source, user, git commit).
        self.run_tags = {**({schema.NOTE: description[:MAX_TAG_VALUE]} if description else {}), **(run_tags or {})}
        self.client = _RetryingClient(schema.open_client(tracking_uri), tracking_uri)
        experiment = self.client.get_experiment_by_name(study_name)
        if experiment is None:
            artifacts = (study_dir / "mlartifacts").resolve()
            artifacts.mkdir(parents=True, exist_ok=True)
            self.experiment_id = self.client.create_experiment(study_name, artifact_location=artifacts.as_uri(),
                                                               tags={schema.EXPERIMENT_KIND: schema.EXPERIMENT_KIND_ML})
        else:
            self.experiment_id = experiment.experiment_id
        self._runs: dict[str, str] = {}
        self.parent_run_id = self._find_or_create(schema.kind_filter(schema.STUDY_RUN),
                                                  f"{study_name} (study; endpoint runs inside)",
                                                  {schema.KIND: schema.STUDY_RUN, **self.run_tags})

    # -- runs -------------------------------------------------------------------------------------------------------
    def _find_or_create(self, query: str, run_name: str, tags: Mapping[str, str]) -> str:
        hits = self.client.search_runs([self.experiment_id], filter_string=query, max_results=2)
        if hits:
            return hits[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={schema.STUDY: self.study_name, **tags})
        return run.info.run_id

    def describe_experiment(self, factors: Sequence[str], metrics: Sequence[str] = schema.SUMMARY_METRICS) -> None:
        """The experiment's description (the spec's), its kind (MLflow then opens it on the runs table) and the
        saved runs-table view that :func:`study.tracking.schema.runs_url` opens: trial runs, factor and
        ``metrics`` columns."""
        tags = {schema.EXPERIMENT_KIND: schema.EXPERIMENT_KIND_ML,
                schema.SHARED_VIEW_PREFIX + schema.TRIALS_VIEW: json.dumps(schema.trials_view(factors, metrics))}
        if self.description:
            tags[schema.NOTE] = self.description
        existing = self.client.get_experiment(self.experiment_id).tags
        for key, value in tags.items():
            if existing.get(key) != value:
                self.client.set_experiment_tag(self.experiment_id, key, value)

    def log_spec(self, spec_source: Mapping[str, Any], spec_path: Path) -> None:
        params = [Param(k, v) for k, v in flatten_params({"factors": spec_source.get("factors", {})}).items()]
        existing = self.client.get_run(self.parent_run_id).data.params
        new = [p for p in params if p.key not in existing]
        if new:
            self.client.log_batch(self.parent_run_id, params=new[:100])
        self.client.log_artifact(self.parent_run_id, str(spec_path))

    def trial_run(self, key: str, *, name: str, kind: str, params: Mapping[str, Any],
                  config: Mapping[str, Any] | None = None) -> str:
        """The run of trial ``key``, created once; later calls find it by tag. ``params``: the factor values
        (params and ``factor.*`` tags); ``config``: the full resolved config, logged as params too (a factor's
        own value wins where both name a key). Pair trials are top-level runs, endpoint runs children of the
        study run. A config with a ``data`` section also becomes the run's dataset input."""
        if key in self._runs:
            return self._runs[key]
        if kind not in (schema.TRIAL_RUN, schema.ENDPOINT_RUN):
            raise ValueError(f"a trial run is of kind {schema.TRIAL_RUN!r} or {schema.ENDPOINT_RUN!r}, not {kind!r}")
        hits = self.client.search_runs([self.experiment_id], filter_string=schema.key_filter(key), max_results=1)
        if hits:
            run_id = hits[0].info.run_id
        else:
            factors = flatten_params(params)
            flat = {**flatten_params(config or {}), **factors}
            tags = {schema.STUDY: self.study_name, schema.KIND: kind, schema.TRIAL_KEY: key, **self.run_tags}
            if kind == schema.ENDPOINT_RUN:
                tags[schema.PARENT] = self.parent_run_id
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            params_list = [Param(k, v) for k, v in flat.items()]
            factor_tags = [RunTag(k, v[:MAX_TAG_VALUE]) for k, v in schema.factor_tags(factors).items()]
            step = MAX_TAGS_PER_BATCH
            for start in range(0, max(len(params_list), len(factor_tags), 1), step):
                self.client.log_batch(run_id, params=params_list[start:start + step],
                                      tags=factor_tags[start:start + step])
            data = (config or {}).get("data")
            if isinstance(data, Mapping) and data.get("name"):
                self.client.log_inputs(run_id, datasets=[dataset_input(data)])
        self._runs[key] = run_id
        return run_id

    def mark_running(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        for start in range(0, len(batch), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=batch[start:start + MAX_METRICS_PER_BATCH])

    def log_final(self, run_id: str, metrics: Mapping[str, Any], artifacts: Path | None = None) -> None:
        """A trial's final metrics and files, exactly once: metrics the run already has are not logged again (a
        second value would add a point to their history), files only if the run has none yet. The profiles in
        ``artifacts/profiles.csv`` become stepped metrics (:func:`profile_metrics`)."""
        existing = self.client.get_run(run_id).data.metrics
        self.log_metrics(run_id, {k: v for k, v in metrics.items() if k not in existing})
        if artifacts is not None and (artifacts / "profiles.csv").is_file():
            now = int(time.time() * 1000)
            points = [Metric(k, v, now, step) for k, v, step in profile_metrics(artifacts / "profiles.csv")
                      if k not in existing]
            for start in range(0, len(points), MAX_METRICS_PER_BATCH):
                self.client.log_batch(run_id, metrics=points[start:start + MAX_METRICS_PER_BATCH])
        if artifacts is not None and not self.client.list_artifacts(run_id):
            self.log_artifacts(run_id, artifacts)

    def runs_by_key(self, kind: str) -> dict[str, Any]:
        """The study's runs of ``kind`` by their ``trial_key`` (one search, for reconciling many at once)."""
        runs = schema.search_all(self.client, self.experiment_id, schema.kind_filter(kind))
        return {r.data.tags[schema.TRIAL_KEY]: r for r in runs if schema.TRIAL_KEY in r.data.tags}

    def log_artifacts(self, run_id: str, directory: Path) -> None:
        if directory.is_dir() and any(directory.iterdir()):
            self.client.log_artifacts(run_id, str(directory))

    def finish(self, run_id: str, *, failed: bool = False, reason: str | None = None) -> None:
        if reason:
            self.client.set_tag(run_id, schema.ERROR, reason[:MAX_TAG_VALUE])
        self.client.set_terminated(run_id, status=schema.FAILED if failed else schema.FINISHED)

    def close_orphans(self) -> int:
        """Runs left RUNNING by a killed driver are marked KILLED (a resumed study re-opens the ones it reruns)."""
        hits = self.client.search_runs([self.experiment_id], filter_string=f"attributes.status = '{schema.RUNNING}'")
        count = 0
        for run in hits:
            if run.info.run_id != self.parent_run_id:
                self.client.set_terminated(run.info.run_id, status=schema.KILLED)
                count += 1
        return count

    def finish_study(self, summary: Mapping[str, Any]) -> None:
        self.log_metrics(self.parent_run_id, summary)
        self.client.set_terminated(self.parent_run_id, status=schema.FINISHED)

    def mark_retried(self, run_id: str, failures: int) -> None:
        self.client.set_tag(run_id, schema.RETRIED, str(failures))

    def results_table(self, extra_metrics: tuple[str, ...] = ()) -> Any:
        """The study's pair-trial runs as a table (:func:`study.tracking.schema.results_table`)."""
        return schema.results_table(self.client, self.experiment_id, extra_metrics)


def prepare_store(tracking_uri: str) -> None:
    """Create/migrate the sqlite DB once, on the driver, before any trial starts (concurrent first-time
    creation races in alembic's migrations and can leave a half-migrated database)."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
