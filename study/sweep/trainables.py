"""What runs inside a Ray worker: stage 1 trains one endpoint, stage 2 runs one pair trial.

Tune sees each trial as a tiny config (``{"index": i}`` of the grid, or Optuna's sampled values) that is
resolved against the spec here, so the experiment state Tune pickles stays small. The science is
:func:`study.core.trial.run`; this module only connects it to Tune's reporting and to the study folder
(endpoint store, checkpoints, per-trial artifacts and result records).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from ray import tune

from study.core import config as trial_config
from study.core import trial
from study.sweep import artifacts, naming
from study.sweep.checkpoints import FolderCheckpoints
from study.sweep.folder import StudyFolder
from study.sweep.records import result_record
from study.sweep.spec import StudySpec, Trial, set_path, trial_key

log = logging.getLogger(__name__)

#: ``trial_fn(config, progress=, checkpoints=, store=) -> result``: :func:`study.core.trial.run`, or a wrapper
#: of it (the fault-injecting one of the test suite).
TrialFunction = Callable[..., dict[str, Any]]


def resolve_trial(spec: StudySpec, tune_config: Mapping[str, Any]) -> Trial:
    """The pair trial a Tune config stands for (grid: an index; Optuna: sampled values + a seed index)."""
    if "index" in tune_config:
        return spec.trials[int(tune_config["index"])]
    assert spec.optuna is not None
    config = copy.deepcopy(spec.base)
    sampled = {k: v for k, v in tune_config.items() if k in spec.optuna.space}
    for key, value in sampled.items():
        set_path(config, key, value)
    seeds = spec.optuna.repeat_seeds[int(tune_config.get("__trial_index__", 0)) % len(spec.optuna.repeat_seeds)]
    config["seeds"] = list(seeds)
    return Trial(trial_key(config), config, {**sampled, "seeds": list(seeds)})


def report_progress(event: Mapping[str, Any], epochs: Mapping[str, int] | None = None) -> None:
    """Forward a trial's progress events to Tune (epoch ends only: a report costs a driver round trip).
    ``epochs``: each phase's number of epochs, shown by the console's progress display."""
    if event.get("phase") in ("endpoint", "curve"):
        tune.report({"phase": event["phase"], "epoch": event.get("epoch", 0),
                     "epochs": int((epochs or {}).get(event["phase"], 0)),
                     "progress_loss": event.get("train_loss", float("nan"))})


def _reporter(config: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], None]:
    """:func:`report_progress` with the epochs of the trial's phases."""
    try:
        cfg = trial_config.parse(config)
        epochs = {"endpoint": cfg.train.epochs, "curve": cfg.curve.train.epochs if cfg.curve is not None else 0}
    except Exception:  # noqa: BLE001 - the trial itself reports a bad config
        epochs = {}
    return lambda event: report_progress(event, epochs)


def limit_gpu_memory(spec: StudySpec) -> None:
    """Ray's fractional GPUs only schedule; they do not partition memory. A trial with ``gpu: 0.25`` also caps
    its own CUDA allocations at a quarter of the device, so four packed trials cannot starve each other."""
    fraction = spec.resources.gpu
    if torch.cuda.is_available() and 0 < fraction < 1:
        torch.cuda.set_per_process_memory_fraction(float(fraction))


def endpoint_trainable(tune_config: Mapping[str, Any], *, spec: StudySpec, jobs: list[tuple[dict, int]],
                       study_dir: str) -> None:
    """Stage 1: train (or find in the store) one endpoint."""
    limit_gpu_memory(spec)
    folder = StudyFolder(Path(study_dir))
    config, seed = jobs[int(tune_config["index"])]
    cfg = trial_config.parse(config)
    device = trial.resolve_device(cfg.device)
    data = trial.load_data(cfg, device)
    start = time.perf_counter()
    checkpoints = FolderCheckpoints(folder.checkpoint_dir(f"endpoint-{cfg.endpoint_key(seed)}"))
    _, info = trial.endpoint(cfg, data, seed, device, progress=_reporter(config), checkpoints=checkpoints,
                             store=folder.store())
    checkpoints.clear()
    last = info.get("history", [{}])[-1] if info.get("history") else {}
    tune.report({"final": 1, "cached": int(info["cached"]), "seconds": time.perf_counter() - start,
                 "val_acc": float(last.get("val_acc", float("nan")))})


def pair_trainable(tune_config: Mapping[str, Any], *, spec: StudySpec, study_dir: str,
                   trial_fn: TrialFunction = trial.run) -> None:
    """Stage 2: one pair trial; endpoints come from the store, files go to ``artifacts/<trial key>``.

    A trial whose result is already in the folder (the driver died after it finished, before MLflow heard of
    it) reports that result instead of computing it again."""
    limit_gpu_memory(spec)
    folder = StudyFolder(Path(study_dir))
    item = resolve_trial(spec, tune_config)
    record = folder.finished_result(item.key)
    if record is None:
        checkpoints = FolderCheckpoints(folder.checkpoint_dir(item.key))
        result = trial_fn(item.config, progress=_reporter(item.config), checkpoints=checkpoints,
                          store=folder.store())
        record = result_record(item, result, naming.trial_name(spec.trials, item))
        artifacts.write_trial(folder.artifact_dir(item.key), result["profiles"], record,
                              title=", ".join(f"{k}={v}" for k, v in item.factors.items()),
                              plane=result.get("plane"))
        checkpoints.clear()
    tune.report({**record["metrics"], "final": 1, "trial_key": item.key,
                 "artifact_dir": str(folder.artifact_dir(item.key))})
