"""Driver-side MLflow bookkeeping of a Tune experiment: one run per trial, found again by its key.

Only the driver writes to the tracking store (one sqlite writer; works unchanged on a cluster). Tune pickles
callbacks into its experiment state, so the MLflow client is opened lazily and never pickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback

from study.common.errors import UserError
from study.core import config as trial_config
from study.sweep import naming
from study.sweep.records import ENDPOINT_METRICS, endpoint_params, resolved_config
from study.sweep.spec import StudySpec
from study.sweep.trainables import resolve_trial
from study.tracking import schema
from study.tracking.tracker import StudyTracker


class LazyTracker:
    """Pickle-safe holder: Tune pickles callbacks into the experiment state, an MLflow client must not be."""

    def __init__(self, uri: str, study_name: str, study_dir: str, description: str = "",
                 run_tags: dict[str, str] | None = None):
        self.uri, self.study_name, self.study_dir = uri, study_name, study_dir
        self.description, self.run_tags = description, dict(run_tags or {})
        self._tracker: StudyTracker | None = None

    def get(self) -> StudyTracker:
        if self._tracker is None:
            self._tracker = StudyTracker(self.uri, self.study_name, Path(self.study_dir),
                                         description=self.description, run_tags=self.run_tags)
        return self._tracker

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tracker": None}


def error_reason(trial: Any) -> str:
    """The last line of a failed trial's exception (the full traceback stays in Ray's error file)."""
    try:
        error = trial.get_error()
        if error is not None:
            text = str(error).strip().splitlines()
            return text[-1] if text else type(error).__name__
    except Exception:  # noqa: BLE001 - best effort across Ray versions
        pass
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        return lines[-1] if lines else "unknown error"
    return "unknown error"


class MLflowTrials(Callback):
    """One MLflow run per trial of ``stage`` (``endpoints`` or ``pairs``), found by its key: retries and resumes
    reuse it. ``jobs`` are the endpoint stage's (config, seed) pairs, indexed like its grid."""

    def __init__(self, spec: StudySpec, stage: str, tracking: LazyTracker,
                 jobs: list[tuple[dict, int]] | None = None, names: dict[str, str] | None = None):
        self.spec, self.stage, self.tracking, self.jobs = spec, stage, tracking, jobs
        self.names = names or {}  # run names by key (study.sweep.naming)
        self._run_ids: dict[str, str] = {}
        #: The first store fault (a full disk, a read-only store) that stopped the experiment. Tune wraps a
        #: callback's exception in a TuneError holding a traceback; the driver re-raises this one instead.
        self.fault: Exception | None = None

    def _guard(self, hook, *args: Any) -> None:
        try:
            hook(*args)
        except (UserError, OSError) as error:
            self.fault = self.fault or error
            raise

    def _describe(self, trial: Any) -> tuple[str, str, str, dict[str, Any], dict[str, Any]]:
        """(key, run name, run kind, factor params, full config) of a Tune trial."""
        if self.stage == "endpoints":
            assert self.jobs is not None
            config, seed = self.jobs[int(trial.config["index"])]
            parsed = trial_config.parse(config)
            description = parsed.endpoint_description(seed)
            key = parsed.endpoint_key(seed)
            name = self.names.get(key) or naming.endpoint_fallback_name(description, key)
            return key, name, schema.ENDPOINT_RUN, {"seed": seed}, endpoint_params(description)
        item = resolve_trial(self.spec, trial.config)
        name = self.names.get(item.key) or naming.trial_name(self.spec.trials, item)
        return item.key, name, schema.TRIAL_RUN, item.factors, resolved_config(item.config)

    def _run(self, trial: Any) -> str:
        """The trial's run id, resolved once per Tune trial (results arrive every epoch)."""
        if trial.trial_id not in self._run_ids:
            key, name, kind, params, config = self._describe(trial)
            self._run_ids[trial.trial_id] = self.tracking.get().trial_run(key, name=name, kind=kind, params=params,
                                                                          config=config)
        return self._run_ids[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._guard(lambda: self.tracking.get().mark_running(self._run(trial)))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._guard(lambda: self.tracking.get().mark_retried(self._run(trial), trial.num_failures))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._guard(self._log_result, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._guard(lambda: self.tracking.get().finish(self._run(trial)))

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = error_reason(trial)
        folder = getattr(trial, "path", None)  # the trial's folder under ray_results/ (Tune syncs error.txt there)
        if folder:
            reason += f" (full error: {Path(folder) / 'error.txt'})"
        self._guard(lambda: self.tracking.get().finish(self._run(trial), failed=True, reason=reason))

    def _log_result(self, trial: Any, result: dict[str, Any]) -> None:
        run = self._run(trial)
        tracker = self.tracking.get()
        if result.get("final"):
            metrics = {k: v for k, v in result.items() if "/" in k or k in ENDPOINT_METRICS}
            tracker.log_final(run, metrics, Path(result["artifact_dir"]) if result.get("artifact_dir") else None)
        elif "epoch" in result:
            tracker.log_metrics(run, {f"progress/{result.get('phase')}_loss": result["progress_loss"]},
                                step=int(result.get("training_iteration", 0)))
