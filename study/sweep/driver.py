"""Executing a study with Ray Tune: stage 1 trains every unique endpoint once, stage 2 runs the pair trials.

The study folder holds everything (``spec.yaml``, ``endpoints/``, ``ray_results/``, ``artifacts/``,
``mlflow.db``, ``mlartifacts/``, ``optuna.db``), so a study is resumed from its folder alone and, on a
cluster, lives on shared storage. Each stage is a Tune experiment under ``ray_results/<stage>``; running or
resuming a study restores a stage that already has state (finished trials are not redone) and skips endpoints
that are already in the store.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from ray import tune

from study.common.errors import TrackingUnavailable
from study.core import trial
from study.sweep import ray_session, search
from study.sweep.callbacks import LazyTracker, MLflowTrials
from study.sweep.progress import ProgressLine
from study.sweep.spec import StudySpec
from study.sweep.trainables import TrialFunction, endpoint_store, endpoint_trainable, pair_trainable
from study.tracking.schema import FAILED, default_uri
from study.tracking.tracker import prepare_store

log = logging.getLogger(__name__)


@dataclass
class StudyOutcome:
    study_dir: Path
    results: pd.DataFrame  # one row per pair trial: factors, status, error, metrics
    failed: int
    interrupted: bool


def _resources(spec: StudySpec) -> dict[str, float]:
    res = {"cpu": spec.resources.cpu}
    if spec.resources.gpu:
        res["gpu"] = spec.resources.gpu
    return res


def _callbacks(spec: StudySpec, stage: str, tracking: LazyTracker, jobs: list[tuple[dict, int]] | None,
               progress: ProgressLine | None) -> list[Any]:
    callbacks: list[Any] = [MLflowTrials(spec, stage, tracking, jobs)]
    if progress is not None:
        callbacks.append(progress.callback(stage))
    return callbacks


def _tuner(stage_dir: Path, trainable: Any, param_space: dict[str, Any], tune_config: Any, run_config: Any):
    if tune.Tuner.can_restore(str(stage_dir)):
        log.info("restoring %s", stage_dir)
        return tune.Tuner.restore(str(stage_dir), trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _run_stage(name: str, study_dir: Path, trainable: Any, param_space: dict[str, Any], spec: StudySpec,
               callbacks: list[Any], max_concurrent: int | None, search_alg: Any = None,
               num_samples: int = 1) -> Any:
    tune_config = tune.TuneConfig(reuse_actors=True, max_concurrent_trials=max_concurrent, search_alg=search_alg,
                                  num_samples=num_samples)
    run_config = tune.RunConfig(
        name=name, storage_path=str((study_dir / "ray_results").resolve()), callbacks=callbacks, verbose=0,
        failure_config=tune.FailureConfig(max_failures=spec.execution.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    tuner = _tuner(study_dir / "ray_results" / name, trainable, param_space, tune_config, run_config)
    return tuner.fit()


def run_study(spec: StudySpec, study_dir: Path, *, address: str | None = None, tracking_uri: str | None = None,
              max_concurrent: int | None = None, show_progress: bool = True,
              trial_fn: TrialFunction = trial.run) -> StudyOutcome:
    """Run (or continue) ``spec`` in ``study_dir``; returns one row per pair trial.

    ``trial_fn`` is what a pair trial runs (:func:`study.core.trial.run`; the test suite passes a wrapper that
    injects faults)."""
    study_dir = study_dir.resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or default_uri(study_dir)
    if tracking_uri is None and (study_dir / "ray_results").exists() and not (study_dir / "mlflow.db").exists():
        raise TrackingUnavailable(
            f"{study_dir / 'mlflow.db'} is missing, but this study has run before: the finished trials' runs would "
            f"be lost from MLflow. Restore the file, or pass --tracking-uri if the runs live elsewhere.")
    prepare_store(uri)
    tracking = LazyTracker(uri, spec.name, str(study_dir))
    tracker = tracking.get()  # creates the DB, experiment and parent run before any trial starts
    orphans = tracker.close_orphans()
    if orphans:
        log.warning("closed %d MLflow run(s) left RUNNING by an interrupted driver", orphans)
    spec_copy = study_dir / "spec.yaml"
    if not spec_copy.exists():  # the CLI copies the user's file (comments included); API callers get a dump
        spec_copy.write_text(yaml.safe_dump(spec.source, sort_keys=False))
    tracker.log_spec(spec.source, spec_copy)
    concurrency = max_concurrent or spec.execution.max_concurrent
    progress = ProgressLine() if show_progress else None
    ray_session.stop_orphaned_ray(study_dir)
    session_dir = ray_session.init_ray(address)
    if session_dir:
        ray_session.record_session(study_dir, session_dir)
    interrupted = False
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))  # graceful, like Ctrl-C
    pairs = tune.with_resources(tune.with_parameters(pair_trainable, spec=spec, study_dir=str(study_dir),
                                                     trial_fn=trial_fn), _resources(spec))
    try:
        if spec.search == "grid":
            # Indices refer to the full, deterministic endpoint list, so a restored stage finds the same jobs.
            endpoints = spec.endpoints()
            jobs = list(endpoints.values())
            store = endpoint_store(study_dir)
            missing = [i for i, key in enumerate(endpoints) if not store.contains(key)]
            if missing:
                trainable = tune.with_resources(
                    tune.with_parameters(endpoint_trainable, spec=spec, jobs=jobs, study_dir=str(study_dir)),
                    _resources(spec))
                _run_stage("endpoints", study_dir, trainable, {"index": tune.grid_search(missing)},
                           spec, _callbacks(spec, "endpoints", tracking, jobs, progress), concurrency)
            grid = _run_stage("pairs", study_dir, pairs, {"index": tune.grid_search(list(range(len(spec.trials))))},
                              spec, _callbacks(spec, "pairs", tracking, None, progress), concurrency)
        else:
            search_alg, samples = search.search_algorithm(spec, study_dir)
            grid = _run_stage("pairs", study_dir, pairs, {}, spec, _callbacks(spec, "pairs", tracking, None, progress),
                              concurrency, search_alg=search_alg, num_samples=samples)
        interrupted = any(r.metrics is None or not r.metrics.get("final") for r in grid if r.error is None)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        if session_dir:  # a Ray this driver started ends with it; one it joined (or a caller's) stays up
            ray_session.stop_local_ray(study_dir)
    extra = (spec.optuna.metric,) if spec.optuna is not None else ()
    table = tracker.results_table(extra)
    failed = int((table["status"] == FAILED).sum()) if len(table) else 0
    if not interrupted:
        tracker.finish_study({"trials_failed": failed, "trials_total": len(table)})
    return StudyOutcome(study_dir, table, failed, interrupted)
