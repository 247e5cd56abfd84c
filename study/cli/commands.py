"""``study run | resume | status | ui | validate | plan | list``: one function per command, each taking the parsed
arguments.

Heavy layers (Ray, MLflow, torch) are imported inside the command that needs them, so ``study --help`` and
``study validate`` answer at once.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import json
import math
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import yaml

from study.common.errors import SpecError, UsageError
from study.common.files import atomic_write
from study.sweep.folder import StudyFolder
from study.sweep.spec import apply_overrides, load, parse_yaml, preflight, read_text, validate

OVERRIDES_HELP = ("override spec settings, OmegaConf dotlist style: trial.train.epochs=2 (or train.epochs=2: keys "
                  "not naming a top-level spec key are trial settings), factors.seeds=[[0,1],[2,3]], name=quick")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("symstudy")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _problems(path: str, problems: list[str], overrides: list[str]) -> UsageError:
    given = f" with {' '.join(overrides)}" if overrides else ""
    hint = (["  (a swept setting is overridden as factors.PATH=[values])"]
            if overrides and any("which trial." in p for p in problems) else [])
    return UsageError("\n".join([f"{path}{given}: {len(problems)} problem(s) in the study spec:",
                                 *(f"  - {p}" for p in problems), *hint]))


def _load_spec(path: str, overrides: list[str] | None = None):
    """The validated spec of file ``path``, with command-line ``overrides`` applied (:func:`_load_with_text`)."""
    return _load_with_text(path, overrides)[0]


def _load_with_text(path: str, overrides: list[str] | None = None):
    """(spec, text): the spec of ``path`` with ``overrides`` and the YAML text the study folder keeps of it (the
    file as written; with overrides, the merged spec, headed by where it came from)."""
    overrides = list(overrides or [])
    try:
        if not overrides:
            return load(path), read_text(path)
        raw = apply_overrides(parse_yaml(read_text(path), path), overrides)
        spec = validate(raw, source=path)
    except SpecError as error:
        raise _problems(path, error.problems, overrides) from None
    text = (f"# {path} with overrides: {' '.join(overrides)}\n"
            + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return spec, text


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


def _resources_text(spec) -> str:
    cpu, gpu = spec.resources.cpu, spec.resources.gpu
    text = f"{cpu:g} CPU" + ("s" if cpu != 1 else "")
    return text + (f", {gpu:g} GPU" if gpu else "")


def _counts(spec) -> tuple[int, int | None]:
    """(pair trials, unique endpoints or None for a search that picks them as it goes)."""
    if spec.search == "grid":
        return len(spec.trials), len(spec.endpoints())
    return spec.optuna.samples * len(spec.optuna.repeat_seeds), None


def cmd_validate(args: argparse.Namespace) -> int:
    spec = _load_spec(args.spec, getattr(args, "overrides", None))
    trials, endpoints = _counts(spec)
    print(f"{args.spec}: ok — study {spec.name!r}, search {spec.search}, {trials} pair trials, "
          f"{endpoints if endpoints is not None else 'on-demand'} unique endpoints, "
          f"{_resources_text(spec)} per trial")
    return 0


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0]
    return sum(finite) / len(finite) if finite else None


def cmd_plan(args: argparse.Namespace) -> int:
    """What `study run` would do, from the spec and the study folder alone: no Ray, no MLflow."""
    from study.sweep.naming import trial_names

    spec = _load_spec(args.spec, args.overrides)
    study_dir = Path(args.out) / spec.name
    folder = StudyFolder(study_dir)
    trials, endpoints = _counts(spec)
    records = list(folder.finished_results()) if study_dir.is_dir() else []
    finished = {r["trial_key"] for r in records}
    store = folder.store()
    stored = set(store.keys()) if (study_dir / "endpoints").is_dir() else set()
    print(f"study {spec.name!r} ({spec.search}) -> {study_dir}")
    if spec.description:
        print(f"  {' '.join(spec.description.split())}")
    if spec.search == "grid":
        planned = {t.key for t in spec.trials}
        done, wanted = len(planned & finished), set(spec.endpoints())
        have = len(wanted & stored)
        todo_trials, todo_endpoints = trials - done, len(wanted) - have
        print(f"  factors: " + ", ".join(f"{k} ({len(v)})" for k, v in spec.factors.items()))
        print(f"  pair trials: {trials}, {done} finished, {todo_trials} to run")
        print(f"  unique endpoints: {endpoints}, {have} in the store, {todo_endpoints} to train")
        names = trial_names(spec.trials)
        pending = [names[t.key] for t in spec.trials if t.key not in finished]
        for name in pending[:5]:
            print(f"    to run: {name}")
        if len(pending) > 5:
            print(f"    ... and {len(pending) - 5} more")
    else:
        done = len(finished)
        todo_trials, todo_endpoints = max(0, trials - done), None
        print(f"  pair trials: {trials} ({spec.optuna.samples} samples x {len(spec.optuna.repeat_seeds)} seed "
              f"pairs), {done} finished; endpoints are trained as the search picks them")
    print(f"  resources per trial: {_resources_text(spec)}")
    trial_s = _mean([sum(v for k, v in r["metrics"].items() if k.startswith("time/") and isinstance(v, (int, float)))
                     for r in records])
    endpoint_s = _mean([float(store.get(k).metadata.get("seconds", float("nan"))) for k in list(stored)[:200]
                        if store.get(k) is not None])
    at_once = args.max_concurrent or spec.execution.max_concurrent or max(1, int((os.cpu_count() or 1)
                                                                                 // max(spec.resources.cpu, 1e-9)))
    if not todo_trials and not todo_endpoints:
        print("  nothing to run: every planned trial has finished")
    elif trial_s is None:
        print("  time: no stored timings yet (an estimate needs finished trials in the study folder)")
    else:
        total = todo_trials * trial_s + (todo_endpoints or 0) * (endpoint_s if endpoint_s is not None else 0.0)
        print(f"  time: about {_duration(total / at_once)} at {at_once} trial(s) at once (mean {trial_s:.0f} s per "
              f"pair trial from {len(records)} finished"
              + (f", {endpoint_s:.0f} s per endpoint from {len(stored)} stored" if endpoint_s is not None else "")
              + "; Ray start-up and scheduling not included)")
    return 0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def cmd_list(args: argparse.Namespace) -> int:
    """The study folders under ``root``: trials done/failed/total from the folder and (read-only) MLflow."""
    from study.store.lock import HeartbeatLock
    from study.tracking.health import run_statuses

    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder (study folders live under the --out of `study run`, ./studies)")
    rows = []
    for spec_path in sorted(root.glob("*/spec.yaml")):
        directory = spec_path.parent
        folder = StudyFolder(directory)
        try:
            spec = load(spec_path)
            total, _ = _counts(spec)
            planned = {t.key for t in spec.trials} if spec.search == "grid" else None
        except SpecError:
            spec, total, planned = None, None, None
        finished = folder.finished_keys()
        done = len(finished & planned) if planned is not None else len(finished)
        statuses = run_statuses(folder.mlflow_db, spec.name, "trial") if spec is not None else None
        failed = statuses.get("FAILED", 0) if statuses is not None else None
        lock = HeartbeatLock(folder.lock_path).read()
        state = "running" if lock is not None and HeartbeatLock(folder.lock_path).stale_reason(lock) is None else (
            "done" if total is not None and done >= total else "")
        rows.append((directory.name, f"{done}/{total if total is not None else '?'}",
                     "?" if failed is None else str(failed), state or ("invalid spec" if spec is None else "partial"),
                     str(directory)))
    if not rows:
        print(f"{root}: no studies (no */spec.yaml)")
        return 0
    header = ("study", "done/total", "failed", "state", "folder")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _preflight(spec, args: argparse.Namespace) -> None:
    problems = preflight(spec, local=args.address is None)
    if problems:
        raise UsageError("\n".join([f"{spec.name}: {len(problems)} problem(s) on this machine:",
                                    *(f"  - {p}" for p in problems)]))


def _run(spec, study_dir: Path, args: argparse.Namespace) -> int:
    from study.sweep.driver import run_study
    from study.tracking import schema

    outcome = run_study(spec, study_dir, address=args.address, tracking_uri=args.tracking_uri,
                        max_concurrent=args.max_concurrent, show_progress=not args.quiet,
                        rebuild_tracking=getattr(args, "rebuild_tracking", False),
                        source=" ".join(["study", *sys.argv[1:]]) if sys.argv[1:] else None)
    table = outcome.results
    if len(table):
        import pandas as pd

        shown = table.drop(columns=[c for c in ("error", "run", "run_id") if c in table])
        with pd.option_context("display.max_rows", 200, "display.width", 200, "display.max_colwidth", 40):
            print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        for _, row in table[table["status"] == "FAILED"].iterrows():
            print(f"FAILED {row.get('run') or '?'} (MLflow run {str(row.get('run_id', ''))[:12]}): {row['error']}")
        from analysis.headline import headline

        closing = headline(table)
        if closing:
            print(f"\n{closing}")
    print(f"\nstudy folder: {outcome.study_dir}")
    uri = outcome.tracking_uri or ""
    if outcome.experiment_id is not None and uri.startswith(("http://", "https://")):
        print(f"browse: {schema.runs_url(uri, outcome.experiment_id)}")
    else:
        link = f"  (then {schema.runs_url(UI_BASE, outcome.experiment_id)})" if outcome.experiment_id else ""
        print(f"browse: study ui {outcome.study_dir}{link}")
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
    spec, text = _load_with_text(args.spec, args.overrides)
    _preflight(spec, args)
    study_dir = Path(args.out) / spec.name
    _check_writable(study_dir)
    folder = StudyFolder(study_dir)
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
        factors = ", ".join(f"{k}={row[k]}" for k in table.columns if k not in schema.RESULT_META and
                            isinstance(row[k], str))
        print(f"  FAILED {row['run']} ({factors}): {row['error']}")
    return 0


UI_BASE = "http://127.0.0.1:5000"  # `study ui`'s default address


def _port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, not an address of this machine), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        return f"cannot resolve {host!r} ({error.strerror})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like the server: TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use (another `study ui`/`mlflow ui`?); pick another " \
                       f"with --port"
            return f"cannot listen on {host}:{port} ({error.strerror})"
    return None


def cmd_ui(args: argparse.Namespace) -> int:
    """Serve the study's MLflow store: this process becomes the MLflow server (exec), so Ctrl-C and SIGTERM
    reach the server itself and nothing is left running."""
    from study.tracking.health import experiment_id
    from study.tracking.schema import runs_url

    study_dir = _study_dir(args.dir)
    db = (study_dir / "mlflow.db").resolve()
    if not db.exists():
        raise UsageError(f"{study_dir}: no mlflow.db yet (has the study run?)")
    problem = _port_taken(args.host, args.port)
    if problem is not None:
        raise UsageError(problem)
    beside = Path(sys.executable).with_name("mlflow")  # this environment's MLflow, not another one on PATH
    mlflow = str(beside) if beside.is_file() else (shutil.which("mlflow") or str(beside))
    command = [mlflow, "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", args.host, "--port",
               str(args.port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    host = f"[{args.host}]" if ":" in args.host else args.host
    base = f"http://{host}:{args.port}"
    try:
        name = load(study_dir / "spec.yaml").name
    except SpecError:
        name = study_dir.name
    ident = experiment_id(db, name)
    print(f"MLflow UI for {study_dir} at {base}  (Ctrl-C to stop)")
    if ident is not None:
        print(f"trial runs: {runs_url(base, ident)}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("warning: listening beyond this machine; anyone who can reach it can read the study")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)  # never returns
