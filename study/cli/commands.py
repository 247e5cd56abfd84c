"""``study run | resume | status | ui | validate``: one function per command, each taking the parsed arguments.

Heavy layers (Ray, MLflow, torch) are imported inside the command that needs them, so ``study --help`` and
``study validate`` answer at once.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from study.common.errors import SpecError, UsageError
from study.common.files import atomic_write
from study.sweep.folder import StudyFolder
from study.sweep.spec import load, parse_yaml, preflight, validate

def _load_spec(path: str):
    try:
        return load(path)
    except SpecError as error:
        raise UsageError("\n".join([f"{path}: {len(error.problems)} problem(s) in the study spec:",
                                    *(f"  - {p}" for p in error.problems)])) from None


def _study_dir(path: str) -> Path:
    directory = Path(path)
    if not (directory / "spec.yaml").is_file():
        raise UsageError(f"{directory}: not a study folder (no spec.yaml); run `study run SPEC.yaml` first")
    return directory


def _check_writable(directory: Path) -> None:
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{directory}: cannot write there ({probe} is a file, not a folder)")
    if not os.access(probe, os.W_OK):
        raise UsageError(f"{directory}: cannot write there (no permission on {probe})")


def cmd_validate(args: argparse.Namespace) -> int:
    spec = _load_spec(args.spec)
    endpoints = len(spec.endpoints()) if spec.search == "grid" else "on-demand"
    trials = len(spec.trials) if spec.search == "grid" else f"{spec.optuna.samples} x {len(spec.optuna.repeat_seeds)}"
    print(f"{args.spec}: ok — study {spec.name!r}, search {spec.search}, {trials} pair trials, "
          f"{endpoints} unique endpoints, resources per trial {spec.resources}")
    return 0


def _preflight(spec, args: argparse.Namespace) -> None:
    problems = preflight(spec, local=args.address is None)
    if problems:
        raise UsageError("\n".join([f"{spec.name}: {len(problems)} problem(s) on this machine:",
                                    *(f"  - {p}" for p in problems)]))


def _run(spec, study_dir: Path, args: argparse.Namespace) -> int:
    from study.sweep.driver import run_study

    outcome = run_study(spec, study_dir, address=args.address, tracking_uri=args.tracking_uri,
                        max_concurrent=args.max_concurrent, show_progress=not args.quiet,
                        rebuild_tracking=getattr(args, "rebuild_tracking", False))
    table = outcome.results
    if len(table):
        import pandas as pd

        with pd.option_context("display.max_rows", 200, "display.width", 200, "display.max_colwidth", 40):
            print(table.drop(columns=["error"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        for _, row in table[table["status"] == "FAILED"].iterrows():
            print(f"FAILED: {row['error']}")
    print(f"\nstudy folder: {outcome.study_dir}")
    print(f"browse: study ui {outcome.study_dir}")
    if outcome.interrupted:
        print(f"interrupted; continue with: study resume {outcome.study_dir}")
        return 128 + int(outcome.signal or signal.SIGINT)  # 130 after SIGINT, 143 after SIGTERM
    return 1 if outcome.failed else 0


def _spec_diff(old_text: str, new_text: str, old_name: str, new_name: str, limit: int = 40) -> str:
    lines = list(difflib.unified_diff(old_text.splitlines(), new_text.splitlines(), old_name, new_name, lineterm=""))
    shown = lines[:limit] + ([f"... ({len(lines) - limit} more lines)"] if len(lines) > limit else [])
    return "\n".join(f"    {line}" for line in shown)


def _check_extension(old_text: str, new, study_dir: Path) -> None:
    """An extension keeps every trial of the spec as run (more seeds, more levels, new factors at the old value
    are fine) and the study's name; anything else belongs in a new study folder."""
    try:
        old = validate(parse_yaml(old_text), source=f"{study_dir}/spec.yaml (as run)")
    except SpecError:
        raise UsageError(f"{study_dir}: the spec it ran no longer validates, so an extension cannot be checked; "
                         f"use a new study folder (--out or another name)") from None
    if old.name != new.name:
        raise UsageError(f"{study_dir}: --extend keeps the study's name ({old.name!r}), got {new.name!r}")
    if old.search != "grid" or new.search != "grid":
        raise UsageError(f"{study_dir}: --extend extends grids; an Optuna study takes more samples by raising "
                         f"optuna.samples in a new study folder")
    dropped = {t.key for t in old.trials} - {t.key for t in new.trials}
    if dropped:
        raise UsageError(f"{study_dir}: the new spec drops {len(dropped)} of the {len(old.trials)} trials this "
                         f"study planned (--extend only adds trials); use a new study folder for a different grid")


def _adopt_spec(folder_spec: Path, applied: Path, new_text: str, new, given: str, extend: bool, verb: str) -> None:
    """Refuse a spec that differs from the one the study ran, unless ``--extend`` and it only adds trials."""
    if not applied.is_file():
        return
    old_text = applied.read_text()
    if old_text == new_text:
        return
    if not extend:
        raise UsageError(f"{folder_spec.parent} ran a different spec than {given}:\n"
                         + _spec_diff(old_text, new_text, f"{folder_spec.parent}/spec.yaml (as run)", given)
                         + f"\n  `study {verb} ... --extend` runs the trials it adds (finished ones are kept); "
                           f"for a different grid use another --out or study name")
    _check_extension(old_text, new, folder_spec.parent)
    backup = folder_spec.with_name(f"spec.{time.strftime('%Y%m%dT%H%M%S')}.yaml")
    shutil.copyfile(applied, backup)
    print(f"extending {folder_spec.parent}: the spec it ran is kept as {backup.name}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    spec = _load_spec(args.spec)
    _preflight(spec, args)
    study_dir = Path(args.out) / spec.name
    _check_writable(study_dir)
    folder = StudyFolder(study_dir)
    text = _read_text(Path(args.spec))
    applied = folder.applied_spec_path if folder.applied_spec_path.is_file() else folder.spec_path
    _adopt_spec(folder.spec_path, applied, text, spec, args.spec, args.extend, "run SPEC.yaml")
    study_dir.mkdir(parents=True, exist_ok=True)
    if not folder.spec_path.is_file() or folder.spec_path.read_text() != text:
        atomic_write(folder.spec_path, text)
    return _run(spec, study_dir, args)


def cmd_resume(args: argparse.Namespace) -> int:
    study_dir = _study_dir(args.dir)
    folder = StudyFolder(study_dir)
    spec = _load_spec(str(folder.spec_path))
    _adopt_spec(folder.spec_path, folder.applied_spec_path, folder.spec_path.read_text(), spec,
                str(folder.spec_path), args.extend, "resume DIR")
    _preflight(spec, args)
    return _run(spec, study_dir, args)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 text file") from None


def cmd_status(args: argparse.Namespace) -> int:
    """Counts from the folder (the truth) checked against MLflow; never creates or changes a store."""
    study_dir = _study_dir(args.dir)
    folder = StudyFolder(study_dir)
    spec = _load_spec(str(folder.spec_path))
    from study.tracking import schema
    from study.tracking.health import sqlite_problem

    finished = folder.finished_keys()
    stored = set(folder.store().keys())
    if spec.search == "grid":
        planned = {t.key for t in spec.trials}
        planned_endpoints = set(spec.endpoints())
        total = len(planned)
    else:
        planned, planned_endpoints = finished, set()
        total = spec.optuna.samples * len(spec.optuna.repeat_seeds)
    done = len(planned & finished)
    print(f"study {spec.name!r} in {study_dir}")
    print(f"  trials: {total} planned, {done} finished, {max(0, total - done)} to run")
    missing = planned_endpoints - stored
    print(f"  endpoints: {len(planned_endpoints & stored) if planned_endpoints else len(stored)} stored"
          + (f", {len(missing)} missing (`study resume` trains them)" if missing else ""))
    problem = sqlite_problem(folder.mlflow_db) if args.tracking_uri is None else None
    if problem is not None:
        if problem == "missing" and not folder.has_history():
            print("  MLflow: no runs yet")
            return 0
        print(f"  MLflow: {folder.mlflow_db} is {problem}; `study resume {study_dir} --rebuild-tracking` rebuilds "
              f"the runs of {len(finished)} finished trial(s) and {len(stored)} endpoint(s) from the folder")
        return 0
    client = schema.open_client(args.tracking_uri or schema.default_uri(study_dir))
    experiment = client.get_experiment_by_name(spec.name)
    runs = [] if experiment is None else schema.search_all(client, experiment.experiment_id,
                                                           schema.kind_filter(schema.TRIAL_RUN))
    if not runs:
        print("  MLflow: no trial runs yet" + (f" ({len(finished)} finished trial(s) are logged by `study resume`)"
                                                if finished else ""))
        return 0
    table = schema.results_table(client, experiment.experiment_id, runs=runs)
    counts = table["status"].value_counts().to_dict()
    print("  MLflow runs: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))
    logged = {r.data.tags.get(schema.TRIAL_KEY) for r in runs if r.info.status == schema.FINISHED}
    unlogged = finished - logged
    if unlogged:
        print(f"  {len(unlogged)} finished trial(s) not yet FINISHED in MLflow (`study resume` logs them)")
    for _, row in table[table["status"] == schema.FAILED].iterrows():
        factors = ", ".join(f"{k}={row[k]}" for k in table.columns if k not in ("status", "error") and
                            isinstance(row[k], str))
        print(f"  FAILED ({factors}): {row['error']}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    study_dir = _study_dir(args.dir)
    db = (study_dir / "mlflow.db").resolve()
    if not db.exists():
        raise UsageError(f"{study_dir}: no mlflow.db yet (has the study run?)")
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", args.host, "--port",
               str(args.port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    print(f"MLflow UI for {study_dir} at http://{args.host}:{args.port}  (Ctrl-C to stop)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("warning: listening beyond this machine; anyone who can reach it can read the study", flush=True)
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0
