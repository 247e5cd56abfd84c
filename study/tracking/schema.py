"""How a study is laid out in MLflow: the one place that names tags, run kinds and statuses, and reads runs back.

The driver writes through :class:`study.tracking.tracker.StudyTracker`; ``study status``, the end-of-study
summary and the analysis read through the functions here, so a tag is spelled once for writers and readers.

Layout: one experiment per study (named after it). Pair trials (kind ``trial``) are its top-level runs, so the
runs table opens on them; one run of kind ``study`` holds the spec and is the parent of the endpoint runs (kind
``endpoint``), which stay folded under it. Every trial and endpoint run is found again by its ``trial_key`` tag (a
content hash), so retries and resumes never duplicate a run. A run's params are its full resolved config; its
factor values are also ``factor.<dotted path>`` tags. The experiment holds a saved view of the runs table
(factor and barrier columns), opened by :func:`runs_url`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

# -- tags -------------------------------------------------------------------------------------------------------
KIND = "kind"
STUDY = "study"
TRIAL_KEY = "trial_key"
ERROR = "error"
RETRIED = "retried"
FACTOR_PREFIX = "factor."
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"            # a run's (and an experiment's) description in the UI
SOURCE_NAME, SOURCE_TYPE = "mlflow.source.name", "mlflow.source.type"
GIT_COMMIT, USER = "mlflow.source.git.commit", "mlflow.user"
EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3 opens GenAI experiments on an overview page, others on runs
EXPERIMENT_KIND_ML = "custom_model_development"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."  # the UI's saved views: an experiment tag per share key
TRIALS_VIEW = "symstudy-trials"
PROFILE_PREFIX = "profile/"  # profile/<path>/<column>, one step per point t of the path

# -- run kinds --------------------------------------------------------------------------------------------------
STUDY_RUN, TRIAL_RUN, ENDPOINT_RUN = "study", "trial", "endpoint"
RUN_KINDS = (STUDY_RUN, TRIAL_RUN, ENDPOINT_RUN)

# -- run statuses (MLflow's) ------------------------------------------------------------------------------------
FINISHED, FAILED, RUNNING, KILLED = "FINISHED", "FAILED", "RUNNING", "KILLED"

#: Metrics shown in the end-of-study summary and by ``study status``.
SUMMARY_METRICS = ("endpoint_a/test_acc", "barrier_chord/linear/test_loss", "barrier_chord/linear/test_error",
                   "robust/barrier_chord/linear/test_loss")


def default_uri(study_dir: Path) -> str:
    """The embedded store: sqlite inside the study folder."""
    return f"sqlite:///{(Path(study_dir) / 'mlflow.db').resolve()}"


def runs_url(base: str, experiment_id: str, view: bool = True) -> str:
    """The MLflow UI's runs table of an experiment (``base``: the server, ``http://127.0.0.1:5000``), with the
    study's saved view (trial runs, factor and barrier columns). ``workflowType=machine_learning`` keeps MLflow 3
    from opening its GenAI overview instead."""
    query = "workflowType=machine_learning" + (f"&viewStateShareKey={TRIALS_VIEW}" if view else "")
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def trials_view(factors: Sequence[str], metrics: Sequence[str] = SUMMARY_METRICS) -> dict[str, Any]:
    """The saved view of the runs table: trial runs only, one column per factor and per summary metric."""
    columns = [*(f"params.`{f}`" for f in factors), *(f"metrics.`{m}`" for m in metrics)]
    return {"searchFilter": f"tags.{KIND} = '{TRIAL_RUN}'", "orderByKey": "attributes.start_time",
            "orderByAsc": False, "startTime": "ALL", "lifecycleFilter": "Active", "selectedColumns": columns,
            "runsHiddenMode": "SHOW_ALL"}


def kind_filter(kind: str) -> str:
    """An MLflow search filter for runs of one kind."""
    if kind not in RUN_KINDS:
        raise ValueError(f"unknown run kind {kind!r}; allowed: {', '.join(RUN_KINDS)}")
    return f"tags.{KIND} = '{kind}'"


def key_filter(key: str) -> str:
    return f"tags.{TRIAL_KEY} = '{key}'"


def factors_of(tags: Mapping[str, str]) -> dict[str, str]:
    """The ``factor.*`` tags of a run, without the prefix."""
    return {k[len(FACTOR_PREFIX):]: v for k, v in tags.items() if k.startswith(FACTOR_PREFIX)}


def factor_tags(flat: Mapping[str, str]) -> dict[str, str]:
    return {f"{FACTOR_PREFIX}{k}": v for k, v in flat.items()}


def open_client(uri: str) -> Any:
    """An MlflowClient for ``uri`` (no artifact progress bars: they garble logs and pipes)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient  # imported here: MLflow costs seconds, most commands never need it

    quiet_mlflow_logs()
    return MlflowClient(uri)


def quiet_mlflow_logs() -> None:
    """MLflow sets its loggers to INFO when imported ("Creating initial MLflow database tables...") and logs store
    errors with their traceback before raising them; we report those errors ourselves, in one line. Left alone
    when the user asked for verbose logs."""
    if logging.getLogger().getEffectiveLevel() <= logging.INFO:
        return
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def search_all(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    """Every run matching ``filter_string`` (MLflow pages results)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=5000, page_token=token)
        runs.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return runs


def parent_run(client: Any, experiment_id: str) -> Any | None:
    """The study's parent run, or None."""
    hits = client.search_runs([experiment_id], filter_string=kind_filter(STUDY_RUN), max_results=1)
    return hits[0] if hits else None


#: The results table's columns that are not factors or metrics.
RESULT_META = ("status", "error", "run", "run_id")


def results_table(client: Any, experiment_id: str, extra_metrics: Sequence[str] = (),
                  runs: Sequence[Any] | None = None) -> Any:
    """One row per pair-trial run: factors, ``status``, ``error``, the run's name (``run``) and id (``run_id``)
    and the summary metrics (a pandas DataFrame, sorted by factors). ``runs``: the trial runs, if the caller has
    already searched them."""
    rows = []
    for run in search_all(client, experiment_id, kind_filter(TRIAL_RUN)) if runs is None else runs:
        row: dict[str, Any] = factors_of(run.data.tags)
        row["status"] = run.info.status
        row["error"] = run.data.tags.get(ERROR, "")
        row["run"], row["run_id"] = run.info.run_name or "", run.info.run_id
        row.update({m: run.data.metrics.get(m, math.nan) for m in (*extra_metrics, *SUMMARY_METRICS)})
        rows.append(row)
    table = pd.DataFrame(rows).dropna(axis=1, how="all")
    factor_columns = [c for c in table.columns if c not in RESULT_META and "/" not in c]
    return table.sort_values(factor_columns, kind="stable").reset_index(drop=True) if len(table) else table
