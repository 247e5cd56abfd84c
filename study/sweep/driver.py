"""Executing a study with Ray Tune: stage 1 trains every unique endpoint once, stage 2 runs the pair trials.

The study folder holds everything (:mod:`study.sweep.folder`), so a study is resumed from its folder alone and,
on a cluster, lives on shared storage. Each run of the driver plans from the folder: endpoints missing from the
store, then pair trials without a result record, each stage a fresh Tune experiment under ``ray_results/``.
Before that it brings MLflow up to date with the folder (:func:`study.sweep.records.reconcile`), so every
finished trial has exactly one finished run, even if a driver died between a trial's end and its logging.
One driver at a time owns a folder (:mod:`study.sweep.owner`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from ray import tune

from study.common.errors import TrackingUnavailable
from study.common.files import atomic_write
from study.core import config as trial_config
from study.core import trial
from study.core.runtime import EMULATED_BF16_WARNING
from study.sweep import naming, ray_session, search
from study.sweep.callbacks import LazyTracker, MLflowTrials
from study.sweep.folder import StudyFolder
from study.sweep.owner import driver_lock
from study.sweep.progress import ProgressLine, install_one_line_trial_errors
from study.sweep.spec import StudySpec
from study.sweep.records import Reconciled, reconcile
from study.sweep.trainables import TrialFunction, endpoint_trainable, pair_trainable
from study.tracking.health import sqlite_problem
from study.tracking.schema import FAILED, default_uri
from study.tracking.tracker import flatten_params, prepare_store, provenance_tags

log = logging.getLogger(__name__)


@dataclass
class StudyOutcome:
    study_dir: Path
    results: pd.DataFrame  # one row per pair trial: factors, status, error, metrics
    failed: int
    interrupted: bool
    signal: int | None = None  # the signal that stopped the study (SIGINT, SIGTERM), if one did
    reconciled: Reconciled | None = None  # runs brought up to date from the folder when the driver started
    experiment_id: str | None = None  # the study's MLflow experiment
    tracking_uri: str | None = None


class StopRequest:
    """SIGINT/SIGTERM stop the study: running trials are cancelled (their state is in the folder), no further
    stage starts, and the driver returns with the signal noted. SIGTERM is turned into SIGINT, which Tune's
    own handler turns into a graceful stop while a stage runs."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal = signum
        if signum == signal.SIGTERM:
            os.kill(os.getpid(), signal.SIGINT)
        else:
            raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _incomplete(grid: Any) -> bool:
    """A stage stopped before every trial ended (finished or failed for good): it was interrupted."""
    return any(r.metrics is None or not r.metrics.get("final") for r in grid if r.error is None)


def check_embedded_store(folder: StudyFolder, *, rebuild: bool) -> None:
    """Refuse to run on a missing, empty or damaged ``mlflow.db`` of a study that has run before (opening it would
    silently start an empty store and lose the finished trials' runs), unless ``rebuild``: then a damaged file is
    moved aside and the runs are rebuilt from the folder's records."""
    db = folder.mlflow_db
    problem = sqlite_problem(db)
    if problem is None or (problem == "missing" and not folder.has_history()):
        return
    if problem == "read-only":
        raise TrackingUnavailable(f"{db} is read-only: the study cannot record its runs; make the study folder "
                                  f"writable, then `study resume {folder.root}`")
    if not rebuild:
        trials = len(folder.finished_keys())
        raise TrackingUnavailable(
            f"{db} is {problem}, but this study has run before: opening it would lose the finished trials' runs "
            f"from MLflow. Restore the file, pass --tracking-uri if the runs live elsewhere, or rebuild them from "
            f"the study folder ({trials} finished trial(s), {len(folder.store().keys())} endpoint(s)) with "
            f"`study resume {folder.root} --rebuild-tracking`.")
    if db.exists():
        aside = db.with_name(f"mlflow.db.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(db, aside)
        log.warning("moved the damaged %s aside to %s; rebuilding its runs from the study folder", db, aside)


def _resources(spec: StudySpec) -> dict[str, float]:
    res = {"cpu": spec.resources.cpu}
    if spec.resources.gpu:
        res["gpu"] = spec.resources.gpu
    return res


def _callbacks(spec: StudySpec, stage: str, tracking: LazyTracker, jobs: list[tuple[dict, int]] | None,
               progress: ProgressLine | None, names: dict[str, str] | None = None) -> list[Any]:
    callbacks: list[Any] = [MLflowTrials(spec, stage, tracking, jobs, names)]
    if progress is not None:
        callbacks.append(progress.callback(stage))
    return callbacks


def _grid_space(indices: list[int], names: list[str], factors: list[dict[str, Any]]) -> dict[str, Any]:
    """A stage's Tune param space: the grid ``index`` (what the trainable resolves), and, for Ray's own tools
    (``ResultGrid``, ``ExperimentAnalysis``, trial folders), the trial's run ``name`` and its ``factors``."""
    by_index = {i: (names[i], factors[i]) for i in indices}
    return {"index": tune.grid_search(indices),
            "name": tune.sample_from(lambda config: by_index[config["index"]][0]),
            "factors": tune.sample_from(lambda config: by_index[config["index"]][1])}


class TrialNames:
    """Tune's trial names and folders after the study's run names (``pairs_0003_tinyten_w_asym_align=weight…``)
    instead of ``pair_trainable_…_index=3``. Optuna trials are named from their sampled values."""

    def __init__(self, stage: str, spec: StudySpec | None = None, by_index: dict[int, str] | None = None):
        self.stage, self.spec, self.by_index = stage, spec, by_index or {}

    def name(self, trial: Any) -> str:
        config = trial.config  # Tune names a trial before it resolves sample_from values: go by the index
        if "index" in config and int(config["index"]) in self.by_index:
            return self.by_index[int(config["index"])]
        if self.spec is not None:
            from study.sweep.trainables import resolve_trial

            item = resolve_trial(self.spec, config)
            return naming.trial_name(self.spec.trials, item)
        return str(trial.trial_id)

    def dirname(self, trial: Any) -> str:
        index = trial.config.get("index")
        prefix = f"{self.stage}_{int(index):04d}" if index is not None else f"{self.stage}_{trial.trial_id}"
        return naming.dirname(self.name(trial), prefix)


def _run_stage(name: str, study_dir: Path, trainable: Any, param_space: dict[str, Any], spec: StudySpec,
               callbacks: list[Any], max_concurrent: int | None, search_alg: Any = None,
               num_samples: int = 1, names_by_index: dict[int, str] | None = None) -> Any:
    names = TrialNames(name, spec if spec.search != "grid" else None, names_by_index)
    tune_config = tune.TuneConfig(reuse_actors=True, max_concurrent_trials=max_concurrent, search_alg=search_alg,
                                  num_samples=num_samples, trial_name_creator=names.name,
                                  trial_dirname_creator=names.dirname)
    # A fresh Tune experiment every time: what is done is read from the study folder, so Tune's saved state (which
    # lags behind, and would bring back the first run's callbacks and flags) is never restored.
    # Checkpoints live in the study folder (study.sweep.checkpoints), not in Tune's.
    run_config = tune.RunConfig(
        name=f"{name}-{time.strftime('%Y%m%dT%H%M%S')}", storage_path=str((study_dir / "ray_results").resolve()),
        callbacks=callbacks, verbose=0, failure_config=tune.FailureConfig(max_failures=spec.execution.max_failures))
    try:
        return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config).fit()
    except Exception:
        fault = next((c.fault for c in callbacks if getattr(c, "fault", None) is not None), None)
        if fault is not None:  # a full disk or a broken store, reported as itself rather than as Tune's traceback
            raise fault from None
        raise


def run_study(spec: StudySpec, study_dir: Path, *, address: str | None = None, tracking_uri: str | None = None,
              max_concurrent: int | None = None, show_progress: bool = True, trial_fn: TrialFunction = trial.run,
              rebuild_tracking: bool = False, source: str | None = None) -> StudyOutcome:
    """Run (or continue) ``spec`` in ``study_dir``; returns one row per pair trial.

    Whatever ran before, only what the folder lacks is computed: endpoints not in the store, pair trials without
    a result record. ``trial_fn`` is what a pair trial runs (:func:`study.core.trial.run`; the test suite passes
    a wrapper that injects faults). ``rebuild_tracking`` recreates a lost or damaged ``mlflow.db`` from the
    folder. ``source``: what was run (the command line), for the runs' ``mlflow.source.name``. Raises
    :class:`~study.sweep.owner.StudyBusy` while another driver runs the study."""
    folder = StudyFolder(study_dir.resolve())
    folder.root.mkdir(parents=True, exist_ok=True)
    with driver_lock(folder.lock_path):
        return _drive(spec, folder, address=address, tracking_uri=tracking_uri, max_concurrent=max_concurrent,
                      show_progress=show_progress, trial_fn=trial_fn, rebuild_tracking=rebuild_tracking,
                      source=source)


def _forces_emulated_cpu_bf16(spec: StudySpec) -> bool:
    """Whether a CPU trial of ``spec`` asks for bf16 explicitly on a driver CPU that emulates it: said once by the
    driver, before compute, because the workers' own warning goes to their logs, not the console (on a cluster
    the workers' CPUs may differ; the driver's is the best guess a laptop user needs). A grid's trials only
    (an Optuna search's are drawn later), each distinct (device, runtime) parsed once: a grid of 100k trials
    would otherwise spend ~40 s here."""
    distinct: dict[str, dict[str, Any]] = {}
    for item in spec.trials:
        marker = json.dumps([item.config.get("device"), item.config.get("runtime")], sort_keys=True, default=str)
        distinct.setdefault(marker, item.config)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    for config in distinct.values():
        parsed = trial_config.parse(config)
        if parsed.runtime.emulates_cpu_bf16(torch.device(auto if parsed.device == "auto" else parsed.device)):
            return True
    return False


def _plan_note(spec: StudySpec, folder: StudyFolder, endpoints: dict[str, Any]) -> str:
    finished = folder.finished_keys()
    if spec.search == "grid":
        store = folder.store()
        train = sum(not store.contains(key) for key in endpoints)
        run = sum(item.key not in finished for item in spec.trials)
        what = f"{train} of {len(endpoints)} endpoints to train, {run} of {len(spec.trials)} pair trials to run"
    else:
        assert spec.optuna is not None
        what = f"{len(finished)} of {spec.optuna.samples * len(spec.optuna.repeat_seeds)} pair trials finished"
    return f"study {spec.name!r}: {what}; starting Ray ..."


def _view_metrics(spec: StudySpec) -> list[str]:
    """The metric columns of the runs-table view: endpoint accuracy, the linear path's (and the curve's) test-loss
    barrier, the robust one where the study attacks."""
    metrics = ["endpoint_a/test_acc", "barrier_chord/linear/test_loss"]
    try:
        cfg = trial_config.parse(spec.trials[0].config if spec.trials else spec.base)
    except Exception:  # noqa: BLE001 - an Optuna base config may lack what the search fills in
        return metrics + ["barrier_chord/linear/test_error"]
    if cfg.curve is not None:
        metrics.append(f"barrier_chord/{cfg.curve.kind}/test_loss")
    if cfg.eval.attack is not None:
        metrics.append("robust/barrier_chord/linear/test_loss")
    return metrics


def _factor_columns(spec: StudySpec) -> list[str]:
    """The params that hold the factor values (the columns of the runs-table view)."""
    if spec.search != "grid" and spec.optuna is not None:
        return [*spec.optuna.space, "seeds"]
    columns: dict[str, None] = {}
    for item in spec.trials:
        columns.update(dict.fromkeys(flatten_params(item.factors)))
    return list(columns)


def _drive(spec: StudySpec, folder: StudyFolder, *, address: str | None, tracking_uri: str | None,
           max_concurrent: int | None, show_progress: bool, trial_fn: TrialFunction,
           rebuild_tracking: bool, source: str | None) -> StudyOutcome:
    study_dir = folder.root
    if address:
        ray_session.check_reachable(address)  # before anything is written
    if tracking_uri is None:
        check_embedded_store(folder, rebuild=rebuild_tracking)
    uri = tracking_uri or default_uri(study_dir)
    prepare_store(uri)
    tracking = LazyTracker(uri, spec.name, str(study_dir), description=spec.description.strip(),
                           run_tags=provenance_tags(source or str(folder.spec_path)))
    tracker = tracking.get()  # creates the DB, experiment and parent run before any trial starts
    tracker.describe_experiment(_factor_columns(spec), _view_metrics(spec))
    grid = spec.search == "grid"
    endpoints = spec.endpoints() if grid else {}
    endpoint_factors = naming.endpoint_factors(spec.trials, endpoints) if grid else {}
    endpoint_names = naming.endpoint_names(spec.trials, endpoints, endpoint_factors) if grid else {}
    trial_names = naming.trial_names(spec.trials) if grid else {}
    reconciled = reconcile(folder, tracker, endpoint_names)
    orphans = tracker.close_orphans()
    if orphans:
        log.warning("closed %d MLflow run(s) left RUNNING by an interrupted driver", orphans)
    if not folder.spec_path.exists():  # the CLI copies the user's file (comments included); API callers get a dump
        atomic_write(folder.spec_path, yaml.safe_dump(spec.source, sort_keys=False))
    atomic_write(folder.applied_spec_path, folder.spec_path.read_text())
    tracker.log_spec(spec.source, folder.spec_path)
    concurrency = max_concurrent or spec.execution.max_concurrent
    progress = ProgressLine() if show_progress else None
    install_one_line_trial_errors()
    if progress is not None:  # said before Ray starts (seconds), so the console is never silent
        progress.note(_plan_note(spec, folder, endpoints))
    if _forces_emulated_cpu_bf16(spec):
        log.warning("%s", EMULATED_BF16_WARNING)
    ray_session.stop_orphaned_ray(study_dir)
    session_dir = ray_session.init_ray(address)
    if session_dir:
        ray_session.record_session(study_dir, session_dir)
    pairs = tune.with_resources(tune.with_parameters(pair_trainable, spec=spec, study_dir=str(study_dir),
                                                     trial_fn=trial_fn), _resources(spec))
    interrupted = False
    with StopRequest() as stop:
        try:
            if spec.search == "grid":
                # Indices refer to the full, deterministic endpoint list and grid, the same in every run.
                jobs = list(endpoints.values())
                store = folder.store()
                missing = [i for i, key in enumerate(endpoints) if not store.contains(key)]
                if missing:
                    trainable = tune.with_resources(
                        tune.with_parameters(endpoint_trainable, spec=spec, jobs=jobs, study_dir=str(study_dir)),
                        _resources(spec))
                    labels = [endpoint_names[k] for k in endpoints]
                    space = _grid_space(missing, labels, [endpoint_factors[k] for k in endpoints])
                    result = _run_stage("endpoints", study_dir, trainable, space, spec,
                                        _callbacks(spec, "endpoints", tracking, jobs, progress, endpoint_names),
                                        concurrency, names_by_index={i: labels[i] for i in missing})
                    interrupted = _incomplete(result)
                finished = folder.finished_keys()
                pending = [i for i, item in enumerate(spec.trials) if item.key not in finished]
                if pending and not (interrupted or stop.signal):
                    labels = [trial_names[t.key] for t in spec.trials]
                    space = _grid_space(pending, labels, [t.factors for t in spec.trials])
                    result = _run_stage("pairs", study_dir, pairs, space, spec,
                                        _callbacks(spec, "pairs", tracking, None, progress, trial_names),
                                        concurrency, names_by_index={i: labels[i] for i in pending})
                    interrupted = _incomplete(result)
            else:
                search_alg, samples = search.search_algorithm(spec, study_dir)
                remaining = samples - len(folder.finished_keys())
                if remaining > 0:
                    result = _run_stage("pairs", study_dir, pairs, {}, spec,
                                        _callbacks(spec, "pairs", tracking, None, progress), concurrency,
                                        search_alg=search_alg, num_samples=remaining)
                    interrupted = _incomplete(result)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if session_dir:  # a Ray this driver started ends with it; one it joined (or a caller's) stays up
                ray_session.stop_local_ray(study_dir)
    interrupted = interrupted or stop.signal is not None
    if interrupted:  # the trials the stop cancelled are not running any more; say so in MLflow too
        # (a trial whose result reached the folder as the stop came is finished, not killed)
        reconcile(folder, tracker, endpoint_names, announce=False)
        tracker.close_orphans()
    curves = sorted({t.config.get("curve", {}).get("kind", "bezier") for t in spec.trials if t.config.get("curve")})
    extra = (*((spec.optuna.metric,) if spec.optuna is not None else ()),
             *(f"barrier_chord/{kind}/test_loss" for kind in curves))
    table = tracker.results_table(extra)
    failed = int((table["status"] == FAILED).sum()) if len(table) else 0
    if not interrupted:
        tracker.finish_study({"trials_failed": failed, "trials_total": len(table)})
    return StudyOutcome(study_dir, table, failed, interrupted,
                        signal=stop.signal if stop.signal is not None else (signal.SIGINT if interrupted else None),
                        reconciled=reconciled, experiment_id=tracker.experiment_id, tracking_uri=uri)
