"""Plots of a study (matplotlib, Agg backend), each written as PNG and PDF:

- ``profiles``: test loss and accuracy (and their robust versions) along t, one panel row per path, one line per
  group of the ``by`` factors with a band of ± one standard deviation over the group's runs (its seed pairs);
- ``barrier_vs_eps``: clean (solid) and robust (dashed) loss barrier against the PGD training epsilon, one line
  per group, error bars the 95% t-interval (only when the study sweeps ``train.attack.eps``);
- ``barrier_by_symmetry``: linear-path loss and error barrier per symmetry method, one bar per group, error bars
  the 95% t-interval (only when the study sweeps ``model.symmetry``).

Factors that vary but are neither on an axis nor in ``by`` are pooled; the figure title says which.
:func:`log_to_parent` attaches the files to the study's parent MLflow run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.aggregate import keys, level_order, summarize
from analysis.load import StudyData, StudySource, factor_columns, load_profiles, path_kinds
from study.common.errors import UsageError
from study.common.validation import unknown_name
from study.tracking import schema
from study.tracking.schema import FINISHED

FORMATS = ("png", "pdf")
EPS = "train.attack.eps"
SYMMETRY = "model.symmetry"
DEFAULT_HUE = ("align.method",)
PROFILE_COLUMNS = (("test_loss", "test loss"), ("test_acc", "test accuracy"),
                   ("robust_test_loss", "robust test loss"), ("robust_test_acc", "robust test accuracy"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _varying(column: str, runs: pd.DataFrame, planned: pd.DataFrame | None) -> bool:
    return column in runs and len(level_order(column, planned, runs)) > 1


def default_hue(runs: pd.DataFrame, planned: pd.DataFrame | None = None) -> list[str]:
    """``align.method`` when it varies, else the first varying one of symmetry, epsilon, architecture."""
    for column in (*DEFAULT_HUE, SYMMETRY, EPS, "model.arch"):
        if _varying(column, runs, planned):
            return [column]
    return []


def _label(columns: Sequence[str], key: tuple) -> str:
    if not columns:
        return "all runs"
    if len(columns) == 1:
        return str(key[0])
    return ", ".join(f"{c}={v}" for c, v in zip(columns, key))


def _pooled(runs: pd.DataFrame, planned: pd.DataFrame | None, used: Sequence[str]) -> str:
    pooled = [c for c in factor_columns(runs) if c not in used and c != "seeds" and _varying(c, runs, planned)]
    return f" (pooled over {', '.join(pooled)})" if pooled else ""


def _save(fig: Any, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(path)
    _pyplot().close(fig)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# The three plots
# ---------------------------------------------------------------------------------------------------------------
def plot_profiles(profiles: pd.DataFrame, by: Sequence[str], stem: Path, *, title: str = "",
                  planned: pd.DataFrame | None = None) -> list[Path]:
    """Loss/accuracy along t per path (rows) and quantity (columns), a band of ± one std over runs per group."""
    plt = _pyplot()
    by = list(by)
    paths = sorted(profiles["path"].unique(), key=lambda p: p != "linear")
    columns = [(c, name) for c, name in PROFILE_COLUMNS if c in profiles and profiles[c].notna().any()]
    fig, axes = plt.subplots(len(paths), len(columns), figsize=(3.6 * len(columns), 2.8 * len(paths)),
                             squeeze=False)
    groups = sorted(dict.fromkeys(keys(profiles, by)),
                    key=lambda k: tuple(level_order(c, planned, profiles).index(v) for c, v in zip(by, k)))
    group_of = keys(profiles, by)
    for row, path in enumerate(paths):
        on_path = (profiles["path"] == path).to_numpy()
        for index, group in enumerate(groups):
            mask = on_path & np.array([g == group for g in group_of])
            part = profiles[mask]
            for col, (column, name) in enumerate(columns):
                stats = part.groupby("t")[column].agg(["mean", "std", "count"]).sort_index()
                ax = axes[row][col]
                color = f"C{index % 10}"
                label = f"{_label(by, group)} (n={stats['count'].max()})"
                ax.plot(stats.index, stats["mean"], color=color, label=label)
                ax.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0),
                                stats["mean"] + stats["std"].fillna(0), color=color, alpha=0.2, linewidth=0)
                ax.set(xlabel="t", ylabel=name, title=f"{path}: {name}")
    axes[0][-1].legend(fontsize=7, title=", ".join(by) or None, title_fontsize=7)
    fig.suptitle(title or "profiles along the path (mean ± std over runs)", fontsize=9)
    fig.tight_layout()
    return _save(fig, stem)


def _interval_lines(ax: Any, stats: pd.DataFrame, metric: str, x: str, hue: Sequence[str], style: str,
                    suffix: str, hue_order: list[tuple]) -> None:
    part = stats[stats["metric"] == metric]
    hue_keys = keys(part, hue)
    for index, group in enumerate(hue_order):
        rows = part[[k == group for k in hue_keys]].sort_values(x)
        rows = rows[rows["n"] > 0]
        if not len(rows):
            continue
        ax.errorbar(rows[x].astype(float), rows["mean"], yerr=np.nan_to_num(rows["ci95"].to_numpy(dtype=float)),
                    fmt=style, color=f"C{index % 10}", capsize=3, label=f"{_label(hue, group)}{suffix}")


def plot_barrier_vs_eps(runs: pd.DataFrame, hue: Sequence[str], stem: Path, *,
                        planned: pd.DataFrame | None = None) -> list[Path]:
    """Clean (solid) and robust (dashed) loss barrier against PGD epsilon, per path, per hue group."""
    plt = _pyplot()
    hue = [h for h in hue if h != EPS]
    paths = path_kinds(runs.columns) or ["linear"]
    metrics = [m for p in paths for m in (f"barrier_chord/{p}/test_loss", f"robust/barrier_chord/{p}/test_loss")
               if m in runs]
    stats = summarize(runs, [EPS, *hue], metrics, planned=planned)
    hue_order = sorted(dict.fromkeys(keys(stats, hue)),
                       key=lambda k: tuple(level_order(c, planned, runs).index(v) for c, v in zip(hue, k)))
    fig, axes = plt.subplots(1, len(paths), figsize=(4.2 * len(paths), 3.4), squeeze=False)
    for ax, path in zip(axes[0], paths):
        _interval_lines(ax, stats, f"barrier_chord/{path}/test_loss", EPS, hue, "o-", "", hue_order)
        if f"robust/barrier_chord/{path}/test_loss" in metrics:
            _interval_lines(ax, stats, f"robust/barrier_chord/{path}/test_loss", EPS, hue, "s--", " (robust)",
                            hue_order)
        ax.set(xlabel="PGD training epsilon", ylabel="loss barrier (chord, test)", title=path)
    axes[0][-1].legend(fontsize=7, title=", ".join(hue) or None, title_fontsize=7)
    fig.suptitle("barrier vs PGD epsilon, mean ± 95% CI" + _pooled(runs, planned, [EPS, *hue]), fontsize=9)
    fig.tight_layout()
    return _save(fig, stem)


def plot_barrier_by_symmetry(runs: pd.DataFrame, hue: Sequence[str], stem: Path, *,
                             planned: pd.DataFrame | None = None) -> list[Path]:
    """Linear loss and error barrier per symmetry method (x), one bar per hue group, 95% CI error bars."""
    plt = _pyplot()
    hue = [h for h in hue if h != SYMMETRY]
    metrics = [m for m in ("barrier_chord/linear/test_loss", "barrier_chord/linear/test_error") if m in runs]
    stats = summarize(runs, [SYMMETRY, *hue], metrics, planned=planned)
    symmetries = [s for s in level_order(SYMMETRY, planned, runs) if s is not None]
    hue_order = sorted(dict.fromkeys(keys(stats, hue)),
                       key=lambda k: tuple(level_order(c, planned, runs).index(v) for c, v in zip(hue, k)))
    width = 0.8 / max(1, len(hue_order))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        part = stats[stats["metric"] == metric]
        sym_keys, hue_keys = keys(part, [SYMMETRY]), keys(part, hue)
        for index, group in enumerate(hue_order):
            means, errors = [], []
            for symmetry in symmetries:
                row = part[[s == (symmetry,) and h == group for s, h in zip(sym_keys, hue_keys)]]
                means.append(float(row["mean"].iloc[0]) if len(row) else np.nan)
                errors.append(float(row["ci95"].iloc[0]) if len(row) else np.nan)
            x = np.arange(len(symmetries)) + (index - (len(hue_order) - 1) / 2) * width
            ax.bar(x, np.nan_to_num(means), width, yerr=np.nan_to_num(errors), capsize=3, color=f"C{index % 10}",
                   label=_label(hue, group))
        ax.set_xticks(np.arange(len(symmetries)), [str(s) for s in symmetries])
        ax.set(ylabel=metric.split("/")[-1].replace("_", " ") + " barrier (linear)", title=metric)
    axes[0][-1].legend(fontsize=7, title=", ".join(hue) or None, title_fontsize=7)
    fig.suptitle("barrier by symmetry method, mean ± 95% CI" + _pooled(runs, planned, [SYMMETRY, *hue]),
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, stem)


# ---------------------------------------------------------------------------------------------------------------
# A whole study
# ---------------------------------------------------------------------------------------------------------------
def plot_study(data: StudyData, out_dir: str | Path, *, by: Sequence[str] | None = None) -> list[Path]:
    """Every plot that fits the study into ``out_dir``; returns the files written (PNG and PDF of each)."""

    runs, planned = data.runs, data.planned
    factors = [*factor_columns(runs), "study"]
    for column in by or []:
        if column not in factors:
            raise UsageError(unknown_name("factor", column, factors))
    hue = list(by) if by is not None else default_hue(runs, planned)
    out_dir = Path(out_dir)
    written: list[Path] = []
    finished = runs[runs["status"] == FINISHED]
    profiles = load_profiles(finished)
    if len(profiles):
        title = "profiles along the path, mean ± std over runs" + _pooled(runs, planned, hue)
        written += plot_profiles(profiles, hue, out_dir / "profiles", title=title, planned=planned)
    if _varying(EPS, runs, planned) and len(finished):
        written += plot_barrier_vs_eps(finished, hue, out_dir / "barrier_vs_eps", planned=planned)
    if _varying(SYMMETRY, runs, planned) and "barrier_chord/linear/test_loss" in runs and len(finished):
        written += plot_barrier_by_symmetry(finished, hue, out_dir / "barrier_by_symmetry", planned=planned)
    if not written:
        raise UsageError(f"nothing to plot for {', '.join(s.name for s in data.sources)}: no finished run has "
                          f"a profiles.csv, and the study sweeps neither {EPS} nor {SYMMETRY}")
    return written


def log_to_parent(source: StudySource, paths: Sequence[Path], artifact_path: str = "plots") -> str | None:
    """Attach ``paths`` to the study's parent run (tag ``kind=study``); returns its run id (None: no parent)."""
    client = schema.open_client(source.tracking_uri)
    experiment = client.get_experiment_by_name(source.name)
    parent = None if experiment is None else schema.parent_run(client, experiment.experiment_id)
    if parent is None:
        return None
    run_id = parent.info.run_id
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)
    return run_id


__all__ = ["plot_study", "plot_profiles", "plot_barrier_vs_eps", "plot_barrier_by_symmetry", "log_to_parent",
           "default_hue", "FORMATS"]
