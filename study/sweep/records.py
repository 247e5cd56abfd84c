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

from study.sweep.folder import StudyFolder
from study.sweep.spec import Trial
from study.tracking import schema
from study.tracking.tracker import StudyTracker

log = logging.getLogger(__name__)

#: Final metrics of an endpoint run (beyond these, endpoint runs hold their training curves).
ENDPOINT_METRICS = ("cached", "seconds", "val_acc")


def pair_run_name(factors: Mapping[str, Any]) -> str:
    name = "-".join(str(v) if not isinstance(v, (dict, list)) else "x" for v in factors.values())
    return name[:120]


def endpoint_run_info(description: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(run name, params) of an endpoint from its store description."""
    model = description.get("model", {})
    name = f"endpoint-{model.get('arch')}-{model.get('symmetry')}-s{description.get('seed')}"
    return name, {"model": model, "train": description.get("train", {}), "seed": description.get("seed")}


def result_record(item: Trial, result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON record a finished pair trial leaves in ``artifacts/<key>/result.json``: the trial's result (less
    its profiles, which are the CSV beside it) plus what its MLflow run needs."""
    record = {k: v for k, v in result.items() if k != "profiles"}
    record.update(trial_key=item.key, run_name=pair_run_name(item.factors) or item.key, factors=item.factors,
                  finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return record


@dataclass
class Reconciled:
    trials_logged: int = 0      # finished trials whose run was missing or unfinished
    endpoints_logged: int = 0   # stored endpoints whose run was missing or unfinished

    def __str__(self) -> str:
        return f"{self.trials_logged} trial run(s) and {self.endpoints_logged} endpoint run(s)"


def reconcile(folder: StudyFolder, tracker: StudyTracker) -> Reconciled:
    """Give every finished trial and every stored endpoint exactly one FINISHED run with its final metrics."""
    out = Reconciled()
    trials = tracker.runs_by_key(schema.TRIAL_RUN)
    for record in folder.finished_results():
        key = record["trial_key"]
        run = trials.get(key)
        if run is not None and run.info.status == schema.FINISHED:
            continue
        run_id = run.info.run_id if run is not None else tracker.trial_run(
            key, name=record["run_name"], kind=schema.TRIAL_RUN, params=record["factors"])
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
        name, params = endpoint_run_info(stored.description)
        history = stored.metadata.get("history") or [{}]
        run_id = run.info.run_id if run is not None else tracker.trial_run(
            key, name=name, kind=schema.ENDPOINT_RUN, params=params)
        tracker.log_final(run_id, {"cached": 0, "seconds": stored.metadata.get("seconds", float("nan")),
                                   "val_acc": history[-1].get("val_acc", float("nan"))})
        tracker.finish(run_id)
        out.endpoints_logged += 1
    if out.trials_logged or out.endpoints_logged:
        log.warning("brought MLflow up to date with the study folder: logged %s", out)
    return out
