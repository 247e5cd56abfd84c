"""The study folder is the truth: what it holds says what is done, whatever Tune's or MLflow's state says.

A pair trial is done when ``artifacts/<trial key>/result.json`` is complete (it is written atomically, last,
after the profiles, and holds everything needed to rebuild the trial's MLflow run). An endpoint is done when it
is in the endpoint store. Every run of the driver plans from these facts, so a trial is computed once however
the driver, a node or the tracking store died, and an edited or extended grid runs exactly the trials whose
results are missing.

Layout::

    spec.yaml              the spec as given (the user's file, comments included)
    .spec.applied.yaml     the spec the last driver ran (an edit of spec.yaml is noticed on resume)
    .driver.lock           held by the one driver of this study
    endpoints/             the endpoint store
    artifacts/<key>/       profiles.csv, profiles.png, result.json of each finished pair trial
    checkpoints/<key>/     training state of unfinished work (endpoints, curves), removed when it finishes
    mlflow.db, mlartifacts/  the MLflow store (embedded default)
    ray_results/           Tune's own records of each stage run (not needed to resume)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.store import EndpointStore

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
#: Fields a result file must have to count as a finished trial (and to rebuild its MLflow run).
RESULT_FIELDS = ("trial_key", "run_name", "factors", "metrics", "config")


@dataclass(frozen=True)
class StudyFolder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- paths ------------------------------------------------------------------------------------------------
    @property
    def spec_path(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def applied_spec_path(self) -> Path:
        return self.root / ".spec.applied.yaml"

    @property
    def lock_path(self) -> Path:
        return self.root / ".driver.lock"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def ray_results(self) -> Path:
        return self.root / "ray_results"

    def artifact_dir(self, key: str) -> Path:
        return self.root / "artifacts" / key

    def checkpoint_dir(self, key: str) -> Path:
        return self.root / "checkpoints" / key

    def store(self) -> EndpointStore:
        return EndpointStore(self.root / "endpoints")

    # -- facts ------------------------------------------------------------------------------------------------
    def finished_result(self, key: str) -> dict[str, Any] | None:
        """The trial's result record if it finished (a complete, readable result.json for this key), else None."""
        return read_result(self.artifact_dir(key) / RESULT_FILE, key)

    def finished_results(self) -> Iterator[dict[str, Any]]:
        """Every finished trial's result record (in key order); one warning for all the unusable ones."""
        unusable = 0
        for path in sorted((self.root / "artifacts").glob(f"*/{RESULT_FILE}")):
            record = read_result(path, path.parent.name)
            if record is None:
                unusable += 1
            else:
                yield record
        if unusable:
            log.warning("%s: %d result file(s) are damaged, incomplete or written by an older symstudy; their "
                        "trials count as not run", self.root / "artifacts", unusable)

    def finished_keys(self) -> set[str]:
        """Keys of the finished trials."""
        return {record["trial_key"] for record in self.finished_results()}

    def has_history(self) -> bool:
        """Whether a study ran here before (results, endpoints or Tune records exist)."""
        return (self.ray_results.exists() or any((self.root / "artifacts").glob(f"*/{RESULT_FILE}"))
                or bool(self.store().keys()))


def read_result(path: Path, key: str) -> dict[str, Any] | None:
    """A result record from ``path`` if it is complete and for ``key``; None (with a warning if damaged)."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.debug("ignoring unreadable result %s (%s): the trial will run again", path, error)
        return None
    if not isinstance(record, dict) or any(f not in record for f in RESULT_FIELDS) or record["trial_key"] != key:
        log.debug("ignoring incomplete result %s: the trial will run again", path)
        return None
    return record
