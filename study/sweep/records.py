"""What each trial's MLflow run is called and holds, and how the study folder's records bring MLflow up to date.

The driver's callback and :func:`reconcile` use the same names and params, so a run rebuilt from the folder
(after the driver died between a trial's end and its logging, or after ``mlflow.db`` was lost) is the run the
callback would have logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from study.core import config as trial_config
from study.sweep import naming
from study.sweep.folder import StudyFolder
from study.sweep.spec import Trial
from study.tracking import schema
from study.tracking.tracker import StudyTracker

log = logging.getLogger(__name__)

#: Final metrics of an endpoint run (beyond these, endpoint runs hold their training curves).
ENDPOINT_METRICS = ("cached", "seconds", "val_acc")


def resolved_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial config with every default filled in (what the trial ran), for its run's params."""
    try:
        return trial_config.parse(config).to_dict()
    except Exception:  # noqa: BLE001 - a record of an older symstudy: its config as written
        return dict(config)


def endpoint_params(description: Mapping[str, Any]) -> dict[str, Any]:
    """An endpoint run's params: what decides the endpoint (its store description)."""
    return {k: v for k, v in description.items() if k != "format"}


def result_record(item: Trial, result: Mapping[str, Any], run_name: str | None = None) -> dict[str, Any]:
    """The JSON record a finished pair trial leaves in ``artifacts/<key>/result.json``: the trial's result (less
    its profiles, which are the CSV beside it) plus what its MLflow run needs (``run_name``:
    :func:`study.sweep.naming.trial_name`)."""
    record = {k: v for k, v in result.items() if k not in ("profiles", "plane")}  # both are CSV files beside it
    record.update(trial_key=item.key, run_name=run_name or item.key, factors=item.factors,
                  finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return record


@dataclass
class Reconciled:
    trials_logged: int = 0      # finished trials whose run was missing or unfinished
    endpoints_logged: int = 0   # stored endpoints whose run was missing or unfinished

    def __str__(self) -> str:
        return f"{self.trials_logged} trial run(s) and {self.endpoints_logged} endpoint run(s)"


def reconcile(folder: StudyFolder, tracker: StudyTracker, endpoint_names: Mapping[str, str] | None = None,
              announce: bool = True) -> Reconciled:
    """Give every finished trial and every stored endpoint exactly one FINISHED run with its final metrics.
    ``endpoint_names``: the spec's names of its endpoints (:func:`study.sweep.naming.endpoint_names`);
    ``announce``: warn when runs were brought up to date (a driver starting after another one died)."""
    out = Reconciled()
    endpoint_names = endpoint_names or {}
    trials = tracker.runs_by_key(schema.TRIAL_RUN)
    for record in folder.finished_results():
        key = record["trial_key"]
        run = trials.get(key)
        if run is not None and run.info.status == schema.FINISHED:
            continue
        run_id = run.info.run_id if run is not None else tracker.trial_run(
            key, name=record["run_name"], kind=schema.TRIAL_RUN, params=record["factors"],
            config=resolved_config(record["config"]))
        tracker.log_final(run_id, record["metrics"], folder.artifact_dir(key))
        tracker.finish(run_id)
        out.trials_logged += 1
    endpoints = tracker.runs_by_key(schema.ENDPOINT_RUN)
    store = folder.store()
    for key in store.keys():
        run = endpoints.get(key)
        if run is not None and run.info.status == schema.FINISHED:
            continue
        stored = store.get(key)
        if stored is None:
            continue
        name = endpoint_names.get(key) or naming.endpoint_fallback_name(stored.description, key)
        history = stored.metadata.get("history") or [{}]
        run_id = run.info.run_id if run is not None else tracker.trial_run(
            key, name=name, kind=schema.ENDPOINT_RUN, params={"seed": stored.description.get("seed")},
            config=endpoint_params(stored.description))
        tracker.log_final(run_id, {"cached": 0, "seconds": stored.metadata.get("seconds", float("nan")),
                                   "val_acc": history[-1].get("val_acc", float("nan"))})
        tracker.finish(run_id)
        out.endpoints_logged += 1
    if announce and (out.trials_logged or out.endpoints_logged):
        log.warning("brought MLflow up to date with the study folder: logged %s", out)
    return out
