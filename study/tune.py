"""Executing a study with Ray Tune: stage 1 trains every unique endpoint once, stage 2 runs the pair trials.

The study folder holds everything (``spec.yaml``, ``endpoints/``, ``ray_results/``, ``artifacts/``,
``mlflow.db``, ``mlartifacts/``, ``optuna.db``), so a study is resumed from its folder alone and, on a
cluster, lives on shared storage. Each stage is a Tune experiment under ``ray_results/<stage>``; running or
resuming a study restores a stage that already has state (finished trials are not redone) and skips endpoints
that are already in the store.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from study import artifacts
from study import config as trial_config
from study.spec import StudySpec, Trial, set_path, trial_key

log = logging.getLogger(__name__)

STAGES = ("endpoints", "pairs")
SUMMARY_METRICS = ("endpoint_a/test_acc", "barrier_chord/linear/test_loss", "barrier_chord/linear/test_error",
                   "robust/barrier_chord/linear/test_loss")


# --------------------------------------------------------------------------------------------------------------
# Trials as Tune sees them: a tiny config ({"index": i} or Optuna's sampled values) resolved against the spec.
# --------------------------------------------------------------------------------------------------------------
def resolve_trial(spec: StudySpec, tune_config: Mapping[str, Any]) -> Trial:
    """The pair trial a Tune config stands for (grid: an index; Optuna: sampled values + a seed index)."""
    if "index" in tune_config:
        return spec.trials[int(tune_config["index"])]
    assert spec.optuna is not None
    import copy

    config = copy.deepcopy(spec.base)
    sampled = {k: v for k, v in tune_config.items() if k in spec.optuna.space}
    for key, value in sampled.items():
        set_path(config, key, value)
    seeds = spec.optuna.repeat_seeds[int(tune_config.get("__trial_index__", 0)) % len(spec.optuna.repeat_seeds)]
    config["seeds"] = list(seeds)
    return Trial(trial_key(config), config, {**sampled, "seeds": list(seeds)})


def _reporter():
    """Forward a trial's progress events to Tune (epoch ends only: a report costs a driver round trip)."""
    from ray import tune

    def progress(event: Mapping[str, Any]) -> None:
        if event.get("phase") in ("endpoint", "curve"):
            tune.report({"phase": event["phase"], "epoch": event.get("epoch", 0),
                         "progress_loss": event.get("train_loss", float("nan"))})

    return progress


class RayCheckpoints:
    """Training state in Tune checkpoints, so a retried or resumed trial continues where it stopped.

    Saved at most every ``interval_s`` seconds (a snapshot per epoch would flood Tune's experiment state on
    small models), each as ``<name>.pt`` in the trial's latest checkpoint; loaded with ``weights_only=True``."""

    def __init__(self, interval_s: float = 30.0):
        self.interval_s, self._last = interval_s, time.monotonic()

    def load(self, name: str) -> dict[str, Any] | None:
        import torch
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            path = Path(directory) / f"{name}.pt"
            if not path.exists():
                return None
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # noqa: BLE001 - a partial or corrupted checkpoint must not wedge the trial
                log.warning("ignoring unreadable checkpoint %s (%s); %s starts over", path, error, name)
                return None
            log.info("resuming %s from %s", name, path)
            return state

    def save(self, name: str, state: dict[str, Any]) -> None:
        import tempfile

        import torch
        from ray import tune

        if time.monotonic() - self._last < self.interval_s:
            return
        self._last = time.monotonic()
        with tempfile.TemporaryDirectory() as directory:
            torch.save(state, Path(directory) / f"{name}.pt")
            tune.report({"phase": "checkpoint", "epoch": int(state["epoch"])},
                        checkpoint=tune.Checkpoint.from_directory(directory))


def limit_gpu_memory(spec: StudySpec) -> None:
    """Fractional GPUs only schedule (ecosystem.md §8): a trial with ``gpu: 0.25`` also caps its own CUDA
    allocations at a quarter of the device, so four packed trials cannot starve each other."""
    import torch

    fraction = spec.resources.gpu
    if torch.cuda.is_available() and 0 < fraction < 1:
        torch.cuda.set_per_process_memory_fraction(float(fraction))


def endpoint_trainable(tune_config: Mapping[str, Any], *, spec: StudySpec, jobs: list[tuple[dict, int]],
                       study_dir: str) -> None:
    """Stage 1: train (or find in the store) one endpoint."""
    from ray import tune

    from study import trial

    limit_gpu_memory(spec)
    config, seed = jobs[int(tune_config["index"])]
    cfg = trial_config.parse({**config, "store": str(Path(study_dir) / "endpoints")})
    device = trial.resolve_device(cfg.device)
    data = trial.load_data(cfg, device)
    start = time.perf_counter()
    _, info = trial.endpoint(cfg, data, seed, device, progress=_reporter(), checkpoints=RayCheckpoints())
    last = info.get("history", [{}])[-1] if info.get("history") else {}
    tune.report({"final": 1, "cached": int(info["cached"]), "seconds": time.perf_counter() - start,
                 "val_acc": float(last.get("val_acc", float("nan")))})


def pair_trainable(tune_config: Mapping[str, Any], *, spec: StudySpec, study_dir: str) -> None:
    """Stage 2: one pair trial; endpoints come from the store, files go to ``artifacts/<trial key>``."""
    from ray import tune

    from study import trial

    limit_gpu_memory(spec)
    item = resolve_trial(spec, tune_config)
    inject_fault(Path(study_dir), item.config)
    result = trial.run({**item.config, "store": str(Path(study_dir) / "endpoints")}, progress=_reporter(),
                       checkpoints=RayCheckpoints())
    directory = Path(study_dir) / "artifacts" / item.key
    artifacts.write_trial(directory, result, title=", ".join(f"{k}={v}" for k, v in item.factors.items()))
    tune.report({**result["metrics"], "final": 1, "trial_key": item.key, "artifact_dir": str(directory)})


def _fault(kind: str, what: str) -> Exception:
    import torch

    from study.train import DivergenceError

    faults = {
        "error": lambda: RuntimeError(f"injected {what}"),
        "oom": lambda: torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (injected {what})"),
        "nan": lambda: DivergenceError(f"training diverged: mean train objective is nan (injected {what}); "
                                       "try a lower lr"),
    }
    if kind not in faults:
        return ValueError(f"unknown injected fault {kind!r}; allowed: {', '.join(faults)}")
    return faults[kind]()


def inject_fault(study_dir: Path, config: Mapping[str, Any]) -> None:
    """Fault injection for tests and chaos runs: a file ``<study>/.faults/once-<seed_a>-<seed_b>`` makes the
    next pair trial with those seeds fail (and removes the file); ``always-...`` makes every attempt fail. The
    file's content picks the fault: ``error`` (default), ``oom`` (an out-of-memory error) or ``nan`` (divergence).
    """
    marker_dir = study_dir / ".faults"
    if not marker_dir.is_dir():
        return
    seeds = "-".join(map(str, config.get("seeds", [])))
    for mode in ("always", "once"):
        marker = marker_dir / f"{mode}-{seeds}"
        if marker.exists():
            kind = marker.read_text().strip() or "error"
            if mode == "once":
                marker.unlink()
            raise _fault(kind, f"{'permanent' if mode == 'always' else 'transient'} failure for seeds {seeds}")


# --------------------------------------------------------------------------------------------------------------
# Driver-side callbacks: MLflow bookkeeping and a one-line progress display.
# --------------------------------------------------------------------------------------------------------------
def _tune_callback_base():
    from ray.tune import Callback

    return Callback


class _LazyTracker:
    """Pickle-safe holder: Tune pickles callbacks into the experiment state, an MLflow client must not be."""

    def __init__(self, uri: str, study_name: str, study_dir: str):
        self.uri, self.study_name, self.study_dir = uri, study_name, study_dir
        self._tracker = None

    def get(self):
        if self._tracker is None:
            from study.tracking import StudyTracker

            self._tracker = StudyTracker(self.uri, self.study_name, Path(self.study_dir))
        return self._tracker

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tracker": None}


def make_callbacks(spec: StudySpec, stage: str, tracking: _LazyTracker, jobs: list[tuple[dict, int]] | None,
                   progress: "ProgressLine | None") -> list[Any]:
    Callback = _tune_callback_base()

    class MLflowTrials(Callback):
        """One MLflow run per trial, found by its key: retries and resumes reuse it."""

        def _describe(self, trial: Any) -> tuple[str, str, dict[str, Any]]:
            if stage == "endpoints":
                from study.store import endpoint_key

                config, seed = jobs[int(trial.config["index"])]  # type: ignore[index]
                parsed = trial_config.parse(config)
                key = endpoint_key(parsed.endpoint_description(seed))
                params = {"model": config.get("model", {}), "train": config.get("train", {}), "seed": seed}
                return key, f"endpoint-{parsed.model.arch}-{parsed.model.symmetry}-s{seed}", params
            item = resolve_trial(spec, trial.config)
            name = "-".join(str(v) if not isinstance(v, (dict, list)) else "x" for v in item.factors.values())
            return item.key, name[:120] or item.key, item.factors

        def _run(self, trial: Any) -> str:
            """The trial's run id, resolved once per Tune trial (results arrive every epoch)."""
            runs = self.__dict__.setdefault("_run_ids", {})
            if trial.trial_id not in runs:
                key, name, params = self._describe(trial)
                runs[trial.trial_id] = tracking.get().trial_run(
                    key, name=name, kind="endpoint" if stage == "endpoints" else "trial", params=params)
            return runs[trial.trial_id]

        def on_trial_start(self, iteration, trials, trial, **info):
            tracking.get().mark_running(self._run(trial))

        def on_trial_recover(self, iteration, trials, trial, **info):
            tracker = tracking.get()
            tracker.client.set_tag(self._run(trial), "retried", str(trial.num_failures))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            run = self._run(trial)
            if result.get("final"):
                tracking.get().log_metrics(run, {k: v for k, v in result.items() if "/" in k or k in (
                    "cached", "seconds", "val_acc")})
                if result.get("artifact_dir"):
                    tracking.get().log_artifacts(run, Path(result["artifact_dir"]))
            elif "epoch" in result:
                tracking.get().log_metrics(run, {f"progress/{result.get('phase')}_loss": result["progress_loss"]},
                                           step=int(result.get("training_iteration", 0)))

        def on_trial_complete(self, iteration, trials, trial, **info):
            tracking.get().finish(self._run(trial))

        def on_trial_error(self, iteration, trials, trial, **info):
            tracking.get().finish(self._run(trial), failed=True, reason=error_reason(trial))

    callbacks: list[Any] = [MLflowTrials()]
    if progress is not None:
        callbacks.append(progress.callback(stage))
    return callbacks


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


class ProgressLine:
    """``[pairs] 12/72 done, 2 running, 0 failed, 58 pending, ETA 3m10s`` on one terminal line."""

    def __init__(self, stream=sys.stderr, interval_s: float = 1.0):
        self.stream, self.interval_s = stream, interval_s
        self._last, self._start, self._shown = 0.0, time.time(), ""
        self._tty = hasattr(stream, "isatty") and stream.isatty()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment; streams do not pickle
        return {**self.__dict__, "stream": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stderr

    def callback(self, stage: str):
        Callback = _tune_callback_base()
        line = self

        class Progress(Callback):
            def setup(self, **info):
                line._start, line._shown = time.time(), ""  # also after a restore (callbacks are unpickled)

            def on_step_end(self, iteration, trials, **info):
                line.show(stage, trials)

            def on_experiment_end(self, trials, **info):
                line.show(stage, trials, force=True)
                if line._tty:
                    line.stream.write("\n")

        return Progress()

    def show(self, stage: str, trials: list[Any], force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        counts = {s: sum(t.status == s for t in trials) for s in ("TERMINATED", "RUNNING", "ERROR", "PENDING")}
        done, total = counts["TERMINATED"], len(trials)
        elapsed = now - self._start
        eta = "?" if done == 0 else _fmt(elapsed / done * (total - done - counts["ERROR"]))
        status = (f"[{stage}] {done}/{total} done, {counts['RUNNING']} running, {counts['ERROR']} failed, "
                  f"{counts['PENDING']} pending")
        if self._tty:
            self.stream.write(f"\r{status}, elapsed {_fmt(elapsed)}, ETA {eta}   ")
        elif status != self._shown:  # logs and pipes get one line per change, not a carriage-return storm
            self.stream.write(f"{status}, elapsed {_fmt(elapsed)}, ETA {eta}\n")
        self._shown = status
        self.stream.flush()


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


# --------------------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------------------
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


def _init_ray(address: str | None, spec: StudySpec) -> str | None:
    """Connect to ``address``, or start a local Ray; returns the session folder of a Ray this call started."""
    import ray

    if address is None:  # a throwaway local cluster: no token file in ~/.ray (ecosystem.md §4)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner: the progress line says it all
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    if ray.is_initialized():
        return None
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        return None
    context = ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                       object_store_memory=200 * 1024**2)
    return os.path.realpath(context.address_info["session_dir"])


# A driver that starts its own local Ray notes the session here, so that after a SIGKILL of that driver (which
# orphans two Ray agent processes, reparented to init: ray::DashboardAgent and ray::RuntimeEnvAgent, while gcs,
# raylet and workers die with it) the next run or resume of the study stops exactly that session's leftovers.
RAY_SESSION_FILE = ".ray_session.json"


def _record_ray_session(study_dir: Path, session_dir: str) -> None:
    import json
    import socket

    import ray  # noqa: F401 - puts Ray's vendored psutil on the path

    import psutil

    me = psutil.Process()
    (study_dir / RAY_SESSION_FILE).write_text(json.dumps({
        "session_dir": session_dir, "host": socket.gethostname(), "driver_pid": me.pid,
        "driver_started": me.create_time()}))


def stop_orphaned_ray(study_dir: Path) -> list[str]:
    """Stop the Ray processes still alive from the local Ray of a dead driver of this study (on this host).

    Only processes that name that driver's session folder on their command line or hold a file open in it are
    touched (a session folder is unique to one ``ray.init``), never another cluster's; nothing happens while
    that driver is still alive. Returns the names of the processes stopped."""
    import json
    import socket

    marker = study_dir / RAY_SESSION_FILE
    try:
        info = json.loads(marker.read_text())
        session, pid, started = str(info["session_dir"]), int(info["driver_pid"]), float(info["driver_started"])
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, OSError):
        log.warning("ignoring unreadable %s", marker)
        marker.unlink(missing_ok=True)
        return []
    if info.get("host") != socket.gethostname():
        return []  # that driver ran elsewhere: its processes are not ours to see
    import ray  # noqa: F401 - puts Ray's vendored psutil on the path

    import psutil

    try:
        if abs(psutil.Process(pid).create_time() - started) < 1.0:
            return []  # the driver is alive (another `study run` on this folder): leave its Ray alone
    except psutil.Error:
        pass
    prefix = session.rstrip("/") + "/"
    victims = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if any(prefix in arg or arg.endswith(session) for arg in proc.cmdline()) or any(
                    f.path.startswith(prefix) for f in proc.open_files()):
                victims.append(proc)
        except psutil.Error:
            continue
    names = []
    for proc in victims:
        try:
            names.append(proc.name())
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(victims, timeout=3)
    for proc in alive:  # the orphaned agents can ignore SIGTERM for 10 s or more
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=3)
    if names:
        log.warning("stopped %d Ray process(es) left running by this study's killed driver (pid %d, %s): %s",
                    len(names), pid, session, ", ".join(sorted(names)))
    marker.unlink(missing_ok=True)
    return names


def _stop_local_ray(study_dir: Path) -> None:
    import ray

    ray.shutdown()
    (study_dir / RAY_SESSION_FILE).unlink(missing_ok=True)


def _tuner(stage_dir: Path, trainable: Any, param_space: dict[str, Any], tune_config: Any, run_config: Any):
    from ray import tune

    if tune.Tuner.can_restore(str(stage_dir)):
        log.info("restoring %s", stage_dir)
        return tune.Tuner.restore(str(stage_dir), trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _run_stage(name: str, study_dir: Path, trainable: Any, param_space: dict[str, Any], spec: StudySpec,
               callbacks: list[Any], max_concurrent: int | None, search_alg: Any = None,
               num_samples: int = 1) -> Any:
    from ray import tune

    tune_config = tune.TuneConfig(reuse_actors=True, max_concurrent_trials=max_concurrent, search_alg=search_alg,
                                  num_samples=num_samples)
    run_config = tune.RunConfig(
        name=name, storage_path=str((study_dir / "ray_results").resolve()), callbacks=callbacks, verbose=0,
        failure_config=tune.FailureConfig(max_failures=spec.execution.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    tuner = _tuner(study_dir / "ray_results" / name, trainable, param_space, tune_config, run_config)
    return tuner.fit()


def run_study(spec: StudySpec, study_dir: Path, *, address: str | None = None, tracking_uri: str | None = None,
              max_concurrent: int | None = None, show_progress: bool = True) -> StudyOutcome:
    """Run (or continue) ``spec`` in ``study_dir``; returns one row per pair trial."""
    from ray import tune

    from study.store import EndpointStore
    from study.tracking import default_uri, prepare_store

    study_dir = study_dir.resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or default_uri(study_dir)
    if tracking_uri is None and (study_dir / "ray_results").exists() and not (study_dir / "mlflow.db").exists():
        from study.tracking import TrackingUnavailable

        raise TrackingUnavailable(
            f"{study_dir / 'mlflow.db'} is missing, but this study has run before: the finished trials' runs would "
            f"be lost from MLflow. Restore the file, or pass --tracking-uri if the runs live elsewhere.")
    prepare_store(uri)
    tracking = _LazyTracker(uri, spec.name, str(study_dir))
    tracker = tracking.get()  # creates the DB, experiment and parent run before any trial starts
    orphans = tracker.close_orphans()
    if orphans:
        log.warning("closed %d MLflow run(s) left RUNNING by an interrupted driver", orphans)
    spec_copy = study_dir / "spec.yaml"
    if not spec_copy.exists():  # the CLI copies the user's file (comments included); API callers get a dump
        import yaml

        spec_copy.write_text(yaml.safe_dump(spec.source, sort_keys=False))
    tracker.log_spec(spec.source, spec_copy)
    concurrency = max_concurrent or spec.execution.max_concurrent
    progress = ProgressLine() if show_progress else None
    stop_orphaned_ray(study_dir)
    session_dir = _init_ray(address, spec)
    if session_dir:
        _record_ray_session(study_dir, session_dir)
    interrupted = False
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))  # graceful, like Ctrl-C
    try:
        store = EndpointStore(study_dir / "endpoints")
        if spec.search == "grid":
            # Indices refer to the full, deterministic endpoint list, so a restored stage finds the same jobs.
            endpoints = spec.endpoints()
            jobs = list(endpoints.values())
            missing = [i for i, key in enumerate(endpoints) if not store.contains(key)]
            if missing:
                trainable = tune.with_resources(
                    tune.with_parameters(endpoint_trainable, spec=spec, jobs=jobs, study_dir=str(study_dir)),
                    _resources(spec))
                _run_stage("endpoints", study_dir, trainable, {"index": tune.grid_search(missing)},
                           spec, make_callbacks(spec, "endpoints", tracking, jobs, progress), concurrency)
            trainable = tune.with_resources(
                tune.with_parameters(pair_trainable, spec=spec, study_dir=str(study_dir)), _resources(spec))
            grid = _run_stage("pairs", study_dir, trainable,
                              {"index": tune.grid_search(list(range(len(spec.trials))))},
                              spec, make_callbacks(spec, "pairs", tracking, None, progress), concurrency)
        else:
            grid = _run_optuna(spec, study_dir, tracking, progress, concurrency)
        interrupted = any(r.metrics is None or not r.metrics.get("final") for r in grid if r.error is None)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        if session_dir:  # a Ray this driver started ends with it; one it joined (or a caller's) stays up
            _stop_local_ray(study_dir)
    table = results_table(spec, study_dir, tracker)
    failed = int((table["status"] == "FAILED").sum()) if len(table) else 0
    if not interrupted:
        tracker.finish_study({"trials_failed": failed, "trials_total": len(table)})
    return StudyOutcome(study_dir, table, failed, interrupted)


def _run_optuna(spec: StudySpec, study_dir: Path, tracking: _LazyTracker, progress: ProgressLine | None,
                concurrency: int | None) -> Any:
    import optuna
    from ray import tune
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    assert spec.optuna is not None
    settings = spec.optuna
    space = {}
    for key, dist in settings.space.items():
        if dist["type"] == "choice":
            space[key] = optuna.distributions.CategoricalDistribution(dist["values"])
        elif dist["type"] == "int":
            space[key] = optuna.distributions.IntDistribution(int(dist["low"]), int(dist["high"]))
        else:
            space[key] = optuna.distributions.FloatDistribution(float(dist["low"]), float(dist["high"]),
                                                                log=dist["type"] == "loguniform")
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")
    searcher = OptunaSearch(space=space, metric=settings.metric, mode=settings.mode,
                            sampler=optuna.samplers.TPESampler(seed=settings.seed), storage=storage,
                            study_name=spec.name)
    repeats = len(settings.repeat_seeds)
    # Always through Repeater, even for one seed pair: it hands Optuna only each trial's final result, while
    # the trials' intermediate progress reports (which lack the metric) stay with Tune.
    search_alg = Repeater(searcher, repeat=repeats, set_index=True)
    trainable = tune.with_resources(tune.with_parameters(pair_trainable, spec=spec, study_dir=str(study_dir)),
                                    _resources(spec))
    return _run_stage("pairs", study_dir, trainable, {}, spec, make_callbacks(spec, "pairs", tracking, None, progress),
                      concurrency, search_alg=search_alg, num_samples=settings.samples * repeats)


def results_table(spec: StudySpec, study_dir: Path, tracker: Any) -> pd.DataFrame:
    """One row per trial run in MLflow: factors, status, error and the headline metrics."""
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.kind = 'trial'",
                                      max_results=50_000)
    rows = []
    for run in runs:
        row = {k[len("factor."):]: v for k, v in run.data.tags.items() if k.startswith("factor.")}
        row["status"] = run.info.status
        row["error"] = run.data.tags.get("error", "")
        extra = (spec.optuna.metric,) if spec.optuna is not None else ()
        row.update({m: run.data.metrics.get(m, math.nan) for m in (*extra, *SUMMARY_METRICS)})
        rows.append(row)
    table = pd.DataFrame(rows).dropna(axis=1, how="all")
    factor_columns = [c for c in table.columns if c not in ("status", "error") and "/" not in c]
    return table.sort_values(factor_columns, kind="stable").reset_index(drop=True) if len(table) else table
