"""Trial runs of one or several studies, from MLflow into one tidy pandas DataFrame (one row per pair trial).

Columns, in this order:

- meta: ``study`` (the experiment's name), ``run_id``, ``trial_key``, ``run_name``, ``status`` (FINISHED, FAILED,
  RUNNING, KILLED, ...), ``error`` (the reason of a failed trial, else empty);
- factors: one column per factor of the grid, named by its dotted trial path (``model.symmetry``,
  ``align.method``, ``train.attack.eps``, ``seeds``). MLflow gives every value back as a string; they are cast per
  column: whole numbers to ``Int64``, other numbers to ``float64``, ``True``/``False`` to ``boolean``, the rest
  stay text. Bundle factors that span sections (the ``trial:`` factor of a spec) lose their ``trial.`` prefix, so
  an architecture is ``model.arch`` whichever way the spec sweeps it. ``seeds`` stays the logged pair
  (``"[0, 1]"``); ``seed_a``/``seed_b`` hold it as integers;
- metrics: every metric the trial logged (flat names with a ``/``, see :mod:`study.core.metrics`), as floats, NaN when
  a run has none (failed runs), plus the derived ``endpoint_mean/test_acc`` (mean of both endpoints' test
  accuracy);
- ``study_dir`` and ``tracking_uri``: where the run came from (for the profiles).

:func:`load` also returns the *planned* trials (the grid in the study's ``spec.yaml``, factor columns typed the
same way), so tables can show trials that never ran as missing. Profiles (one row per t of each path) are joined
from the trials' ``profiles.csv`` artifacts by :func:`load_profiles`, only when asked for.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from study.common.errors import SpecError, UsageError
from study.sweep import spec as study_spec
from study.tracking import schema
from study.tracking.health import sqlite_problem
from study.tracking.schema import FINISHED
from study.tracking.tracker import flatten_params

log = logging.getLogger(__name__)

META_COLUMNS = ("study", "run_id", "trial_key", "run_name", "status", "error")
SEED_COLUMNS = ("seed_a", "seed_b")
SOURCE_COLUMNS = ("study_dir", "tracking_uri")
NON_FACTORS = frozenset((*META_COLUMNS, *SEED_COLUMNS, *SOURCE_COLUMNS))
ROOT_BUNDLE = "trial."
ENDPOINT_MEAN = "endpoint_mean/test_acc"
DERIVED = {ENDPOINT_MEAN: ("endpoint_a/test_acc", "endpoint_b/test_acc")}

_INT = re.compile(r"^[+-]?\d+$")
_MISSING_TEXT = frozenset(("None", "null", ""))


@dataclass(frozen=True)
class StudySource:
    """Where one study's runs live: its experiment name, its folder (if any) and the tracking URI."""

    name: str
    directory: Path | None
    tracking_uri: str


@dataclass
class StudyData:
    """Loaded runs plus the planned grid (``planned_from`` is ``"spec"`` or ``"inferred"``)."""

    runs: pd.DataFrame
    planned: pd.DataFrame
    sources: list[StudySource]
    planned_from: dict[str, str] = field(default_factory=dict)

    @property
    def factors(self) -> list[str]:
        return factor_columns(self.runs)

    @property
    def metrics(self) -> list[str]:
        return metric_columns(self.runs)


# ---------------------------------------------------------------------------------------------------------------
# Column kinds
# ---------------------------------------------------------------------------------------------------------------
def factor_columns(frame: pd.DataFrame) -> list[str]:
    """Factor columns of a runs (or planned) frame: everything that is neither meta nor a metric."""
    return [c for c in frame.columns if c not in NON_FACTORS and "/" not in c]


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Metric columns: flat metric names always contain a ``/``."""
    return [c for c in frame.columns if "/" in c]


# ---------------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------------
def study_source(directory: str | Path, tracking_uri: str | None = None) -> StudySource:
    """The study in folder ``directory`` (it must hold the ``spec.yaml`` that ``study run`` copies there)."""
    directory = Path(directory)
    spec_file = directory / "spec.yaml"
    if not spec_file.is_file():
        what = "no such folder" if not directory.exists() else "no spec.yaml"
        raise UsageError(f"{directory}: not a study folder ({what}); give the folder `study run` wrote "
                          f"(<out>/<name>)")
    try:
        raw = yaml.safe_load(spec_file.read_text())
    except yaml.YAMLError as error:
        raise UsageError(f"{spec_file}: not valid YAML: {error}") from None
    name = raw.get("name") if isinstance(raw, Mapping) else None
    if not isinstance(name, str) or not name:
        raise UsageError(f"{spec_file}: has no study name")
    if tracking_uri is None:
        db = directory / "mlflow.db"
        problem = sqlite_problem(db)  # opening a missing or empty store would create (and migrate) a new one
        if problem == "missing":
            raise UsageError(f"{directory}: no runs yet (no mlflow.db); run the study first: "
                             f"study resume {directory}")
        if problem not in (None, "read-only"):
            raise UsageError(f"{db} is {problem}; `study resume {directory} --rebuild-tracking` rebuilds its runs "
                             f"from the study folder")
        tracking_uri = schema.default_uri(directory)
    return StudySource(name, directory.resolve(), tracking_uri)


# ---------------------------------------------------------------------------------------------------------------
# Raw rows (strings) -> typed frame
# ---------------------------------------------------------------------------------------------------------------
def _normalize_names(raw: Mapping[str, str]) -> dict[str, str]:
    """Drop the root bundle's ``trial.`` prefix unless the short name is itself a factor."""
    out: dict[str, str] = {}
    for key, value in raw.items():
        short = key[len(ROOT_BUNDLE):] if key.startswith(ROOT_BUNDLE) else key
        out[key if short in raw and short != key else short] = value
    return out


def _run_row(run: Any, source: StudySource) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
    tags = run.data.tags
    factors = schema.factors_of(tags)
    if not factors:  # runs logged by other tools: their params are the factors
        factors = dict(run.data.params)
    meta = {"study": source.name, "run_id": run.info.run_id, "trial_key": tags.get(schema.TRIAL_KEY, ""),
            "run_name": tags.get(schema.RUN_NAME, run.info.run_name or ""), "status": run.info.status,
            "error": tags.get(schema.ERROR, "")}
    # profile/* metrics are the per-t profiles stepped for MLflow's charts (their latest value is t = 1 only):
    # load_profiles gives them whole
    metrics = {k: float(v) for k, v in run.data.metrics.items() if not k.startswith(schema.PROFILE_PREFIX)}
    return meta, _normalize_names(factors), metrics


def _cast(values: pd.Series) -> pd.Series:
    """One factor column from strings to its natural dtype (the same rule for runs and the planned grid)."""
    present = [v for v in values if isinstance(v, str) and v not in _MISSING_TEXT]
    cleaned = values.where(values.map(lambda v: isinstance(v, str) and v not in _MISSING_TEXT), None)
    if not present:
        return cleaned.astype(object)
    if all(_INT.match(v) for v in present):
        return pd.to_numeric(cleaned, errors="coerce").astype("Int64")
    try:
        [float(v) for v in present]
    except ValueError:
        pass
    else:
        return pd.to_numeric(cleaned, errors="coerce").astype("float64")
    if all(v in ("True", "False") for v in present):
        return cleaned.map(lambda v: None if v is None else v == "True").astype("boolean")
    return values.where(values.map(lambda v: isinstance(v, str)), None).astype("str")


def _seed_pair(text: Any) -> tuple[Any, Any]:
    try:
        pair = json.loads(text)
    except (TypeError, ValueError):
        return pd.NA, pd.NA
    if isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, int) for s in pair):
        return pair[0], pair[1]
    return pd.NA, pd.NA


def typed_frame(frames: Sequence[pd.DataFrame], factor_names: Sequence[str]) -> list[pd.DataFrame]:
    """Cast the factor columns of several frames of strings together, so they share dtypes."""
    sizes = [len(f) for f in frames]
    joined = pd.concat([f.reindex(columns=list(dict.fromkeys([*f.columns, *factor_names]))) for f in frames],
                       ignore_index=True) if frames else pd.DataFrame()
    for name in factor_names:
        joined[name] = _cast(joined[name].astype(object))
    out, start = [], 0
    for frame, size in zip(frames, sizes):
        part = joined.iloc[start:start + size].reset_index(drop=True)
        out.append(part[[c for c in part.columns if c in frame.columns or c in factor_names]])
        start += size
    return out


# ---------------------------------------------------------------------------------------------------------------
# Planned grid
# ---------------------------------------------------------------------------------------------------------------
def _planned_from_spec(source: StudySource) -> list[dict[str, str]] | None:
    """Every trial of the spec's grid, as the factor strings its run is tagged with (None: not a grid).

    The grid is the spec module's own expansion, so a table's "missing" rows are exactly the trials that
    ``study run`` plans."""
    if source.directory is None or not (source.directory / "spec.yaml").is_file():
        return None
    try:
        spec = study_spec.load(source.directory / "spec.yaml")
    except SpecError as error:
        log.warning("%s: planned trials unknown, the spec no longer validates (%s)", source.directory,
                    error.problems[0])
        return None
    if spec.search != "grid":
        return None
    return [_normalize_names(flatten_params(item.factors)) for item in spec.trials]


def _planned_inferred(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Without a grid: every factor combination seen, crossed with every seed pair seen."""
    seeds = list(dict.fromkeys(r.get("seeds") for r in rows))
    combos = list(dict.fromkeys(json.dumps({k: v for k, v in r.items() if k != "seeds"}, sort_keys=True)
                                for r in rows))
    out = []
    for combo in combos:
        for seed in seeds:
            row = json.loads(combo)
            if seed is not None:
                row["seeds"] = seed
            out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Public loading API
# ---------------------------------------------------------------------------------------------------------------
def load(dirs: Iterable[str | Path] = (), *, tracking_uri: str | None = None,
         experiments: Iterable[str] = ()) -> StudyData:
    """Trial runs of the study folders ``dirs`` (and/or of the experiments named in ``experiments`` on
    ``tracking_uri``), with the planned grid. ``tracking_uri`` overrides each folder's own ``mlflow.db``.

    Raises the CLI's usage error for a folder that is not a study, a study without trial runs, an unknown
    experiment."""
    sources = [study_source(d, tracking_uri) for d in dirs]
    if experiments:
        if tracking_uri is None:
            raise UsageError("experiments by name need a tracking URI (--tracking-uri)")
        sources += [StudySource(name, None, tracking_uri) for name in experiments]
    if not sources:
        raise UsageError("no study given: name at least one study folder")
    sources = list(dict.fromkeys(sources))  # the same study twice would count every run twice

    metas, factor_rows, metric_rows, planned_rows, planned_from = [], [], [], [], {}
    for source in sources:
        client = schema.open_client(source.tracking_uri)
        experiment = client.get_experiment_by_name(source.name)
        where = source.directory if source.directory is not None else source.tracking_uri
        if experiment is None:
            raise UsageError(f"{where}: no runs (no MLflow experiment {source.name!r} in {source.tracking_uri})")
        runs = schema.search_all(client, experiment.experiment_id, schema.kind_filter(schema.TRIAL_RUN))
        if not runs:
            raise UsageError(f"{where}: no trial runs in study {source.name!r} yet (has it run? "
                              f"`study status` shows its progress)")
        rows = [_run_row(run, source) for run in runs]
        for meta, factors, metrics in rows:
            metas.append({**meta, "study_dir": str(source.directory) if source.directory else "",
                          "tracking_uri": source.tracking_uri})
            factor_rows.append(factors)
            metric_rows.append(metrics)
        planned = _planned_from_spec(source)
        planned_from[source.name] = "spec" if planned is not None else "inferred"
        if planned is None:
            planned = _planned_inferred([f for _, f, _ in rows])
        planned_rows += [{"study": source.name, **p} for p in planned]

    factor_names = list(dict.fromkeys(k for row in (*planned_rows, *factor_rows) for k in row if k != "study"))
    factor_frame = pd.DataFrame(factor_rows, columns=factor_names, dtype=object)
    planned_frame = pd.DataFrame(planned_rows, columns=["study", *factor_names], dtype=object)
    factor_frame, planned_frame = typed_frame([factor_frame, planned_frame], factor_names)
    planned_frame = planned_frame[["study", *factor_names]].astype({"study": "str"})

    meta = pd.DataFrame(metas)
    seeds = factor_frame["seeds"] if "seeds" in factor_frame else pd.Series([None] * len(meta), dtype=object)
    pairs = [_seed_pair(s) for s in seeds]
    seed_frame = pd.DataFrame({"seed_a": pd.array([p[0] for p in pairs], dtype="Int64"),
                               "seed_b": pd.array([p[1] for p in pairs], dtype="Int64")})
    metric_frame = pd.DataFrame(metric_rows, dtype="float64")
    metric_frame = metric_frame.reindex(columns=sorted(metric_frame.columns))
    for name, parts in DERIVED.items():
        if all(p in metric_frame for p in parts) and name not in metric_frame:
            metric_frame[name] = metric_frame[list(parts)].mean(axis=1, skipna=False)
    runs = pd.concat([meta[list(META_COLUMNS)], factor_frame, seed_frame, metric_frame,
                      meta[list(SOURCE_COLUMNS)]], axis=1)
    for column in ("study", "run_id", "trial_key", "run_name", "status", "error"):
        runs[column] = runs[column].fillna("").astype("str")
    runs = runs.sort_values(["study", *factor_names], kind="stable", na_position="last").reset_index(drop=True)
    return StudyData(runs, planned_frame, sources, planned_from)


def load_profiles(runs: pd.DataFrame, *, finished_only: bool = True) -> pd.DataFrame:
    """The per-t profiles of ``runs`` (one row per run, path and t), joined with the runs' factor columns.

    Each trial's ``profiles.csv`` is read from ``<study>/artifacts/<trial_key>/``; when that folder is gone it is
    fetched from the run's MLflow artifacts. Runs without a profile are listed in ``.attrs["missing"]``."""
    selected = runs[runs["status"] == FINISHED] if finished_only else runs
    keep = ["study", "run_id", "status", *factor_columns(runs), *[c for c in SEED_COLUMNS if c in runs]]
    frames, missing = [], []
    clients: dict[str, Any] = {}
    for _, row in selected.iterrows():
        profile = _read_profile(row, clients)
        if profile is None:
            missing.append(row["run_id"])
            continue
        for column in keep:
            profile[column] = row[column]
        frames.append(profile)
    if missing:
        log.warning("%d run(s) have no profiles.csv: %s", len(missing), ", ".join(missing[:5]))
    if not frames:
        out = pd.DataFrame(columns=[*keep, "path", "t"])
    else:
        out = pd.concat(frames, ignore_index=True)
        for column in keep:  # concat of scalars loses the typed columns
            if column in runs:
                try:
                    out[column] = out[column].astype(runs[column].dtype)
                except (TypeError, ValueError):
                    pass
        profile_columns = [c for c in out.columns if c not in keep]
        out = out[[*keep, *profile_columns]]
    out.attrs["missing"] = missing
    return out


def _read_profile(row: pd.Series, clients: dict[str, Any]) -> pd.DataFrame | None:
    return read_trial_csv(row, "profiles.csv", clients)


def read_trial_csv(row: pd.Series, name: str, clients: dict[str, Any]) -> pd.DataFrame | None:
    """A trial's CSV artifact ``name``: ``<study>/artifacts/<trial_key>/<name>``, else from its MLflow run (None
    when neither has it). ``clients`` caches one MLflow client per tracking URI."""
    if row.get("study_dir") and row.get("trial_key"):
        local = Path(row["study_dir"]) / "artifacts" / row["trial_key"] / name
        if local.is_file():
            return pd.read_csv(local)
    uri = row.get("tracking_uri")
    if not uri:
        return None
    client = clients.setdefault(uri, schema.open_client(uri))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(row["run_id"], name, tmp)
        except Exception as error:  # noqa: BLE001 - no such artifact, unreachable store: the run has none
            log.debug("no %s for run %s: %s", name, row["run_id"], error)
            return None
        return pd.read_csv(path)


def path_kinds(metrics: Iterable[str]) -> list[str]:
    """Path names that appear in metric names (``linear`` first, then curves in order of appearance)."""
    kinds = []
    for name in metrics:
        parts = name.split("/")
        if parts[0] == "robust":
            parts = parts[1:]
        if len(parts) >= 2 and parts[0] in ("barrier_chord", "barrier_mean", "barrier_mid", "acc_min", "acc_avg",
                                            "endpoint_acc", "path_length"):
            kinds.append(parts[1])
    kinds = list(dict.fromkeys(kinds))
    return sorted(kinds, key=lambda k: k != "linear")


def is_missing(value: Any) -> bool:
    """NA of any flavour (None, NaN, pd.NA)."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)
