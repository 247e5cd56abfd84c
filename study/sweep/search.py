"""Optuna instead of a grid: a seeded TPE search whose state lives in the study folder (``optuna.db``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch

from study.sweep.spec import StudySpec


def distributions(space: dict[str, dict[str, Any]]) -> dict[str, optuna.distributions.BaseDistribution]:
    """The spec's ``optuna.space`` as Optuna distributions."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for key, dist in space.items():
        if dist["type"] == "choice":
            out[key] = optuna.distributions.CategoricalDistribution(dist["values"])
        elif dist["type"] == "int":
            out[key] = optuna.distributions.IntDistribution(int(dist["low"]), int(dist["high"]))
        else:
            out[key] = optuna.distributions.FloatDistribution(float(dist["low"]), float(dist["high"]),
                                                              log=dist["type"] == "loguniform")
    return out


def search_algorithm(spec: StudySpec, study_dir: Path) -> tuple[Repeater, int]:
    """Tune's search algorithm for the spec's Optuna settings, and the number of Tune samples it needs."""
    assert spec.optuna is not None
    settings = spec.optuna
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")
    searcher = OptunaSearch(space=distributions(settings.space), metric=settings.metric, mode=settings.mode,
                            sampler=optuna.samplers.TPESampler(seed=settings.seed), storage=storage,
                            study_name=spec.name)
    repeats = len(settings.repeat_seeds)
    # Always through Repeater, even for one seed pair: it hands Optuna only each trial's final result, while
    # the trials' intermediate progress reports (which lack the metric) stay with Tune.
    return Repeater(searcher, repeat=repeats, set_index=True), settings.samples * repeats
