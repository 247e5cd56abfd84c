"""The integrity audit of a study folder, run after every fault scenario (tests/faults, bench/chaos.py).

A study is intact when: every planned trial has exactly one MLflow run and it is FINISHED, with a result record in
the folder; every planned endpoint is in the store and has exactly one FINISHED run; nothing is left RUNNING;
``study status`` agrees. Read with MLflow's client only after the driver has exited, and in a fresh process each
time: MLflow caches a store (and its pooled SQLite connections) per URI for the life of a process, so a client
opened here before a ``--rebuild-tracking`` would go on reading the old, damaged file through its open handle.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from study.sweep.folder import StudyFolder
from study.sweep.spec import validate
from study.tracking import schema


def integrity_problems(study_dir: Path, spec: dict[str, Any], *, status_env: dict[str, str] | None = None
                       ) -> list[str]:
    """Everything that is not as it must be (an empty list: the study is intact)."""
    planned = validate(spec)
    folder = StudyFolder(Path(study_dir))
    problems: list[str] = []
    runs = _mlflow_runs(folder.root, planned.name)
    if runs is None:
        return [f"no MLflow experiment {planned.name!r}"]
    running = [r for r in runs if r["status"] == schema.RUNNING]
    if running:
        problems.append(f"{len(running)} run(s) left RUNNING")
    for kind, keys in ((schema.TRIAL_RUN, {t.key for t in planned.trials}),
                       (schema.ENDPOINT_RUN, set(planned.endpoints()))):
        of_kind = [r for r in runs if r["kind"] == kind]
        counts = Counter(r["key"] for r in of_kind)
        duplicated = sorted(k for k, n in counts.items() if n > 1)
        if duplicated:
            problems.append(f"{len(duplicated)} {kind}(s) logged more than once")
        finished = {r["key"] for r in of_kind if r["status"] == schema.FINISHED}
        if keys - finished:
            problems.append(f"{len(keys - finished)} planned {kind}(s) without a FINISHED run")
        if set(counts) - keys:
            problems.append(f"{len(set(counts) - keys)} {kind} run(s) that were not planned")
    missing_results = [t.key for t in planned.trials if folder.finished_result(t.key) is None]
    if missing_results:
        problems.append(f"{len(missing_results)} planned trial(s) without a result record")
    missing_endpoints = set(planned.endpoints()) - set(folder.store().keys())
    if missing_endpoints:
        problems.append(f"{len(missing_endpoints)} planned endpoint(s) missing from the store")
    status = subprocess.run([sys.executable, "-m", "study.cli", "status", str(folder.root)], capture_output=True,
                            text=True, env=status_env)
    expected = f"{len(planned.trials)} planned, {len(planned.trials)} finished, 0 to run"
    if status.returncode != 0 or expected not in status.stdout or "Traceback" in status.stderr:
        problems.append(f"`study status` disagrees (exit {status.returncode}): {status.stdout.strip()} "
                        f"{status.stderr.strip()[-300:]}")
    return problems


def _mlflow_runs(study_dir: Path, experiment: str) -> list[dict[str, Any]] | None:
    """Every run of ``experiment`` in the study's MLflow store as {kind, key, status}, read by MLflow's client in a
    new process (see the module docstring); None when the experiment does not exist."""
    out = subprocess.run([sys.executable, "-m", "tests.support.audit", str(study_dir), experiment],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    if out.returncode != 0:
        raise RuntimeError(f"reading the MLflow runs failed (exit {out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _print_mlflow_runs(study_dir: Path, experiment: str) -> None:
    client = schema.open_client(schema.default_uri(study_dir))
    found = client.get_experiment_by_name(experiment)
    runs = None if found is None else [
        {"kind": r.data.tags.get(schema.KIND), "key": r.data.tags.get(schema.TRIAL_KEY), "status": r.info.status}
        for r in schema.search_all(client, found.experiment_id, "")]
    print(json.dumps(runs))


if __name__ == "__main__":
    _print_mlflow_runs(Path(sys.argv[1]), sys.argv[2])
