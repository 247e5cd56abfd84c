"""Fault injection for tests and chaos runs, kept out of the production trainable.

A :class:`FaultyTrial` wraps :func:`study.core.trial.run`: a marker file ``<study>/.faults/once-<seed_a>-<seed_b>``
makes the next pair trial with those seeds fail (and removes the file); ``always-...`` makes every attempt fail.
The file's content picks the fault: ``error`` (default), ``oom`` (an out-of-memory error) or ``nan``
(divergence). It is handed to :func:`study.sweep.driver.run_study` as ``trial_fn``; this module is pickled by
value, so Ray workers need not be able to import ``tests``.

``python tests/support/faults.py ARGS`` is the ``study`` command with every study's pair trials wrapped.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray.cloudpickle
import torch

from study.core import trial
from study.core.train import DivergenceError

FAULTS = {
    "error": lambda what: RuntimeError(f"injected {what}"),
    "oom": lambda what: torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (injected {what})"),
    "nan": lambda what: DivergenceError(f"training diverged: mean train objective is nan (injected {what}); "
                                        "try a lower lr"),
}


def inject(marker_dir: Path, config: Mapping[str, Any]) -> None:
    """Raise the fault a marker in ``marker_dir`` asks for this trial's seeds, if any."""
    if not marker_dir.is_dir():
        return
    seeds = "-".join(map(str, config.get("seeds", [])))
    for mode in ("always", "once"):
        marker = marker_dir / f"{mode}-{seeds}"
        if marker.exists():
            kind = marker.read_text().strip() or "error"
            if mode == "once":
                marker.unlink()
            if kind not in FAULTS:
                raise ValueError(f"unknown injected fault {kind!r}; allowed: {', '.join(FAULTS)}")
            raise FAULTS[kind](f"{'permanent' if mode == 'always' else 'transient'} failure for seeds {seeds}")


class FaultyTrial:
    """``trial.run`` that first raises the faults asked for under ``<study_dir>/.faults``."""

    def __init__(self, study_dir: str | Path):
        self.marker_dir = Path(study_dir).resolve() / ".faults"

    def __call__(self, config: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        inject(self.marker_dir, config)
        return trial.run(config, **kwargs)


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def main(argv: list[str] | None = None) -> int:
    """The ``study`` command, every ``run_study`` given a :class:`FaultyTrial` for its folder."""
    from study.cli.main import main as study_main
    from study.sweep import driver

    original = driver.run_study

    def run_study(spec, study_dir, **kwargs):
        return original(spec, study_dir, trial_fn=FaultyTrial(study_dir), **kwargs)

    driver.run_study = run_study
    return study_main(argv)


if __name__ == "__main__":
    sys.exit(main())
