"""What runs inside a Ray worker: stage 1 trains one endpoint, stage 2 runs one pair trial.

Tune sees each trial as a tiny config (``{"index": i}`` of the grid, or Optuna's sampled values) that is
resolved against the spec here, so the experiment state Tune pickles stays small. The science is
:func:`study.core.trial.run`; this module only connects it to Tune's reporting and checkpoints and to the
study folder (endpoint store, per-trial artifacts).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from ray import tune

from study.core import config as trial_config
from study.core import trial
from study.store import EndpointStore
from study.sweep import artifacts
from study.sweep.spec import StudySpec, Trial, set_path, trial_key

log = logging.getLogger(__name__)

#: ``trial_fn(config, progress=, checkpoints=, store=) -> result``: :func:`study.core.trial.run`, or a wrapper
#: of it (the fault-injecting one of the test suite).
TrialFunction = Callable[..., dict[str, Any]]


def endpoint_store(study_dir: str | Path) -> EndpointStore:
    """The study's endpoint store (``<study>/endpoints``)."""
    return EndpointStore(Path(study_dir) / "endpoints")


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


def report_progress(event: Mapping[str, Any]) -> None:
    """Forward a trial's progress events to Tune (epoch ends only: a report costs a driver round trip)."""
    if event.get("phase") in ("endpoint", "curve"):
        tune.report({"phase": event["phase"], "epoch": event.get("epoch", 0),
                     "progress_loss": event.get("train_loss", float("nan"))})


class RayCheckpoints:
    """Training state in Tune checkpoints, so a retried or resumed trial continues where it stopped.

    Saved at most every ``interval_s`` seconds (a snapshot per epoch would flood Tune's experiment state on
    small models), each as ``<name>.pt`` in the trial's latest checkpoint; loaded with ``weights_only=True``."""

    def __init__(self, interval_s: float = 30.0):
        self.interval_s, self._last = interval_s, time.monotonic()

    def load(self, name: str) -> dict[str, Any] | None:
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
        if time.monotonic() - self._last < self.interval_s:
            return
        self._last = time.monotonic()
        with tempfile.TemporaryDirectory() as directory:
            torch.save(state, Path(directory) / f"{name}.pt")
            tune.report({"phase": "checkpoint", "epoch": int(state["epoch"])},
                        checkpoint=tune.Checkpoint.from_directory(directory))


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
    config, seed = jobs[int(tune_config["index"])]
    cfg = trial_config.parse(config)
    device = trial.resolve_device(cfg.device)
    data = trial.load_data(cfg, device)
    start = time.perf_counter()
    _, info = trial.endpoint(cfg, data, seed, device, progress=report_progress, checkpoints=RayCheckpoints(),
                             store=endpoint_store(study_dir))
    last = info.get("history", [{}])[-1] if info.get("history") else {}
    tune.report({"final": 1, "cached": int(info["cached"]), "seconds": time.perf_counter() - start,
                 "val_acc": float(last.get("val_acc", float("nan")))})


def pair_trainable(tune_config: Mapping[str, Any], *, spec: StudySpec, study_dir: str,
                   trial_fn: TrialFunction = trial.run) -> None:
    """Stage 2: one pair trial; endpoints come from the store, files go to ``artifacts/<trial key>``."""
    limit_gpu_memory(spec)
    item = resolve_trial(spec, tune_config)
    result = trial_fn(item.config, progress=report_progress, checkpoints=RayCheckpoints(),
                      store=endpoint_store(study_dir))
    directory = Path(study_dir) / "artifacts" / item.key
    artifacts.write_trial(directory, result, title=", ".join(f"{k}={v}" for k, v in item.factors.items()))
    tune.report({**result["metrics"], "final": 1, "trial_key": item.key, "artifact_dir": str(directory)})
