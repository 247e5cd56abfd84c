"""What ``bench/science.py``'s claims share: the settings, the row they return, their registry, and running trials.

A claim is a function ``(Settings) -> Row`` registered with :func:`claim`; it runs real trials through
:func:`results` (``study.core.trial.run`` with one endpoint store for the whole run, so every variant of a seed
pair compares the same two trained networks) and compares means over seed pairs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from study.core import trial
from study.store.endpoints import EndpointStore

LINEAR_LOSS = "barrier_chord/linear/test_loss"


@dataclass(frozen=True)
class Settings:
    """How big the measurements are: ``quick`` shrinks nets and epochs so the claims run inside the test suite."""

    pairs: int = 3
    quick: bool = False
    store: EndpointStore | None = None

    @property
    def seed_pairs(self) -> list[list[int]]:
        return [[2 * i, 2 * i + 1] for i in range(self.pairs)]


@dataclass
class Row:
    claim: str
    source: str
    expected: str
    numbers: dict[str, tuple[float, float]]  # label -> (mean, std) over seed pairs
    verdict: bool
    note: str = ""
    values: dict[str, list[float]] = field(default_factory=dict)

    def line(self) -> str:
        numbers = ", ".join(f"{k} {m:.4f}±{s:.4f}" for k, (m, s) in self.numbers.items())
        return f"{'PASS' if self.verdict else 'FAIL'}  {self.claim} ({self.source}): {self.expected}\n      {numbers}" + (
            f"\n      {self.note}" if self.note else "")


Claim = Callable[[Settings], Row]
CLAIMS: dict[str, Claim] = {}


def claim(name: str) -> Callable[[Claim], Claim]:
    def register(function: Claim) -> Claim:
        CLAIMS[name] = function
        return function
    return register


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in section by section (nested mappings merge, other values replace)."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def results(settings: Settings, base: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]]
            ) -> dict[str, list[dict[str, Any]]]:
    """``{variant: [trial result per seed pair]}``: one CPU trial per variant and seed pair."""
    out: dict[str, list[dict[str, Any]]] = {}
    for label, overrides in variants.items():
        for seeds in settings.seed_pairs:
            config = merged(merged(base, overrides), {"seeds": seeds, "device": "cpu"})
            out.setdefault(label, []).append(trial.run(config, store=settings.store))
    return out


def metric(got: Mapping[str, list[dict[str, Any]]], name: str) -> dict[str, list[float]]:
    """One metric of every variant's trials: ``{variant: [value per seed pair]}``."""
    return {label: [float(r["metrics"][name]) for r in runs] for label, runs in got.items()}


def measure(settings: Settings, base: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]],
            metrics: tuple[str, ...] = (LINEAR_LOSS,)) -> dict[str, dict[str, list[float]]]:
    """``{metric: {variant: [value per seed pair]}}``."""
    got = results(settings, base, variants)
    return {m: metric(got, m) for m in metrics}


def stats(values: Mapping[str, list[float]]) -> dict[str, tuple[float, float]]:
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) for k, v in values.items()}


def mean(values: Mapping[str, list[float]], label: str) -> float:
    return float(np.mean(values[label]))
