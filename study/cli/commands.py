"""``study run | resume | status | ui | validate``: one function per command, each taking the parsed arguments.

Heavy layers (Ray, MLflow, torch) are imported inside the command that needs them, so ``study --help`` and
``study validate`` answer at once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from study.common.errors import SpecError, UsageError
from study.sweep.spec import load, preflight

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
                        max_concurrent=args.max_concurrent, show_progress=not args.quiet)
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
        return 130
    return 1 if outcome.failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    spec = _load_spec(args.spec)
    _preflight(spec, args)
    study_dir = Path(args.out) / spec.name
    _check_writable(study_dir)
    copy = study_dir / "spec.yaml"
    if copy.exists() and copy.read_text() != Path(args.spec).read_text():
        raise UsageError(f"{study_dir} already holds a different spec; use `study resume {study_dir}` to continue "
                         f"it, or another --out or name")
    study_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.spec, copy)
    return _run(spec, study_dir, args)


def cmd_resume(args: argparse.Namespace) -> int:
    study_dir = _study_dir(args.dir)
    spec = _load_spec(str(study_dir / "spec.yaml"))
    _preflight(spec, args)
    return _run(spec, study_dir, args)


def cmd_status(args: argparse.Namespace) -> int:
    study_dir = _study_dir(args.dir)
    spec = _load_spec(str(study_dir / "spec.yaml"))
    from study.store import EndpointStore
    from study.tracking.schema import default_uri
    from study.tracking.tracker import StudyTracker

    tracker = StudyTracker(args.tracking_uri or default_uri(study_dir), spec.name, study_dir)
    table = tracker.results_table()
    total = len(spec.trials) if spec.search == "grid" else spec.optuna.samples * len(spec.optuna.repeat_seeds)
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    stored = len(list(EndpointStore(study_dir / "endpoints").keys()))
    print(f"study {spec.name!r} in {study_dir}")
    print(f"  trials: {total} planned, " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
          + f", {max(0, total - len(table))} not started")
    print(f"  endpoints stored: {stored}")
    for _, row in table[table["status"] == "FAILED"].iterrows():
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
