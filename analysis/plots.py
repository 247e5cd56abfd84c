"""Plots of a study, as a paper would print them (matplotlib, Agg backend; each written as vector PDF and PNG).

- ``profiles_<quantity>`` (test loss, test accuracy, and their robust versions): the quantity along t, linear path
  (dashed) and curve (solid) overlaid on one axis, one colour per group of the ``by`` factors (default: the
  alignment method), a band of ± one standard deviation over the group's seed pairs, clipped to the quantity's
  range (accuracy in [0, 1], loss ≥ 0); one panel per condition (every other swept factor: architecture as
  rows, PGD epsilon as columns, and so on);
- ``barrier_vs_eps``: clean (solid) and robust (dashed) loss barrier against the PGD training epsilon, error bars
  the 95% t-interval, one panel per path and condition (only when the study sweeps ``train.attack.eps``);
- ``barrier_by_symmetry``: linear-path loss and error barrier per symmetry method, one bar per group with its
  95% t-interval, one panel per metric and condition, each with its own y-axis, so an MLP and a conv net whose
  barriers differ tenfold never share a scale (only when the study sweeps ``model.symmetry``);
- ``merge_vs_ensemble``: test accuracy of the endpoints, their ensemble and the merged θ(½) of each path, with
  95% t-intervals, per alignment method (when the runs logged ``ensemble/test_acc``);
- ``planes``: test loss on the plane through θ_A, the bend and θ_B (``eval.plane``), aligned vs unaligned side by
  side on a shared colour scale, one row per condition, for the first seed pair of each.

Cells whose alignment was computed but not applied (asymmetric nets, ``align/applied`` = 0) are the unaligned
runs over again; they are left out and the figure says so (:func:`analysis.tables.unapplied_alignment`).
Colours are fixed per alignment method (``METHOD_COLORS``) and line styles per path, in every figure.
:func:`log_to_parent` attaches the files to the study's parent MLflow run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.aggregate import keys, level_order, summarize
from analysis.load import (ENDPOINT_MEAN, StudyData, StudySource, factor_columns, load_profiles, path_kinds,
                           read_trial_csv)
from study.common.errors import UsageError
from study.common.validation import unknown_name
from study.tracking import schema
from study.tracking.schema import FINISHED

FORMATS = ("png", "pdf")
EPS = "train.attack.eps"
SYMMETRY = "model.symmetry"
ALIGN = "align.method"
DEFAULT_HUE = (ALIGN,)
PROFILE_COLUMNS = (("test_loss", "test loss"), ("test_acc", "test accuracy"),
                   ("robust_test_loss", "robust test loss"), ("robust_test_acc", "robust test accuracy"))
#: One colour per alignment method in every figure (none: dark grey, the unaligned reference).
METHOD_COLORS = {"none": "#444444", "activation": "#1f77b4", "weight": "#d62728", "pam": "#2ca02c",
                 "ste": "#9467bd"}
_SPARE_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
PATH_STYLES = {"linear": "--", "bezier": "-", "polychain": "-."}
PANEL = (1.9, 1.55)  # inches per panel: two panels fit a 3.4 in column, four a 7 in page
STYLE = {"font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "legend.fontsize": 6, "xtick.labelsize": 6,
         "ytick.labelsize": 6, "lines.linewidth": 1.1, "axes.linewidth": 0.6, "pdf.fonttype": 42,
         "ps.fonttype": 42, "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
         "savefig.dpi": 200, "figure.dpi": 100}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def _style():
    plt = _pyplot()
    with plt.rc_context(STYLE):
        yield plt


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


def _short(column: str) -> str:
    return {EPS: "ε", "curve.train.attack.eps": "curve ε", "model.arch": "arch", SYMMETRY: "symmetry",
            ALIGN: "align", "data.name": "data"}.get(column, column)


_SELF_EXPLAINING = frozenset(("model.arch", SYMMETRY, ALIGN, "data.name", "study"))


def _condition_title(columns: Sequence[str], key: tuple) -> str:
    """``mlp · w_asym · ε=0.03``: levels of architecture, symmetry, data and method speak for themselves."""
    parts = []
    for c, v in zip(columns, key):
        value = f"{v:g}" if isinstance(v, float) else str(v)
        parts.append(value if c in _SELF_EXPLAINING else f"{_short(c)}={value}")
    return " · ".join(parts) or "all runs"


def _layout(fig: Any, rows: int, cols: int) -> None:
    """Fixed margins in inches (no tight_layout: it costs a full draw per figure, and a study has many): the
    legend above, titles, tick labels and the footer below, so the figure is the same however many panels."""
    left, right, gap_w, gap_h, xlabel = 0.5, 0.2, 0.42, 0.45, 0.4
    top = 0.22 + 0.13 * getattr(fig, "legend_rows", 0)
    bottom = xlabel + 0.095 * getattr(fig, "footer_lines", 0) + 0.04
    width = left + right + cols * PANEL[0] + (cols - 1) * gap_w
    height = top + bottom + rows * PANEL[1] + (rows - 1) * gap_h
    fig.set_size_inches(width, height)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        wspace=gap_w / PANEL[0], hspace=gap_h / PANEL[1])
    if getattr(fig, "footer", None) is not None:
        fig.footer.set_position((0.08 / width, (bottom - xlabel) / height))


def colors(hue: Sequence[str], groups: Sequence[tuple]) -> dict[tuple, str]:
    """Fixed colours: an alignment method always gets its ``METHOD_COLORS`` entry; other groups the spare
    colours in order."""
    out, spare = {}, itertools.cycle(_SPARE_COLORS)
    for group in groups:
        if list(hue) == [ALIGN] and group[0] in METHOD_COLORS:
            out[group] = METHOD_COLORS[group[0]]
        else:
            out[group] = next(spare)
    return out


def conditions(runs: pd.DataFrame, planned: pd.DataFrame | None, used: Sequence[str]) -> list[str]:
    """The swept factors that are neither a group (colour) nor on an axis: each value combination is a panel."""
    first = [c for c in ("model.arch", "data.name") if c in runs]
    order = [*first, *[c for c in factor_columns(runs) if c not in first]]
    return [c for c in order if c not in used and c != "seeds" and _varying(c, runs, planned)]


def _levels(column: str, *frames: pd.DataFrame | None) -> list[Hashable]:
    return [v for v in level_order(column, *frames) if v is not None]


def _combinations(columns: Sequence[str], *frames: pd.DataFrame | None) -> list[tuple]:
    """The level combinations of ``columns`` that occur in one of ``frames`` (the planned grid or the runs), in
    level order: bundled factors (an architecture with its width) and a spec's ``exclude:`` leave most of the
    cartesian product empty, and an empty panel per absent combination would bury the ones that exist."""
    present = [f for f in frames if f is not None and all(c in f for c in columns)]
    combos = list(itertools.product(*(_levels(c, *frames) for c in columns)))
    if not columns or not present:
        return combos
    return [k for k in combos if any(_mask(f, columns, k).any() for f in present)]


def _mask(frame: pd.DataFrame, columns: Sequence[str], key: tuple) -> np.ndarray:
    if not columns:
        return np.ones(len(frame), dtype=bool)
    return np.array([k == tuple(key) for k in keys(frame, columns)], dtype=bool)


def _grid(plt: Any, rows: int, cols: int) -> tuple[Any, np.ndarray]:
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL[0] * cols + 0.6, PANEL[1] * rows + 0.8), squeeze=False)
    fig.grid_shape = (rows, cols)
    return fig, axes


def _save(fig: Any, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, bbox_inches="tight" if getattr(fig, "tight", False) else None)
        paths.append(path)
    _pyplot().close(fig)
    return paths


def _footer(fig: Any, lines: Sequence[str]) -> None:
    """The caption under the panels, wrapped to the figure's width (about 26 characters per inch at 5.5 pt)."""
    import textwrap

    rows, cols = getattr(fig, "grid_shape", (1, 1))
    inches = 0.62 + cols * PANEL[0] + (cols - 1) * 0.42 if hasattr(fig, "grid_shape") else fig.get_size_inches()[0]
    width = max(40, int(inches * 21))
    text = "\n".join(textwrap.fill(line, width) for line in lines if line)
    fig.footer_lines = text.count("\n") + 1 if text else 0
    fig.footer = fig.text(0.01, 0.0, text, ha="left", va="top", fontsize=5.5, color="#333333") if text else None


def _legend(fig: Any, handles: list, labels: list[str], title: str | None = None) -> None:
    if handles:
        rows, cols = getattr(fig, "grid_shape", (1, 1))
        inches = 0.62 + cols * PANEL[0] + (cols - 1) * 0.42
        columns = max(1, min(len(handles), 6, int(inches / 1.0)))  # no wider than the figure
        fig.legend_rows = math.ceil(len(handles) / columns)
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1.0), ncol=columns,
                   title=title, title_fontsize=6, borderaxespad=0.1, handlelength=2.2)


# ---------------------------------------------------------------------------------------------------------------
# Profiles along t
# ---------------------------------------------------------------------------------------------------------------
def _clip_range(column: str) -> tuple[float, float]:
    return (0.0, 1.0) if column.endswith("_acc") else (0.0, math.inf)


def plot_profiles(profiles: pd.DataFrame, by: Sequence[str], stem: Path, *, column: str = "test_loss",
                  name: str = "test loss", facets: Sequence[str] = (), planned: pd.DataFrame | None = None,
                  notes: Sequence[str] = ()) -> list[Path]:
    """``column`` along t: one panel per combination of ``facets`` (the last with ≤ 4 levels as columns when
    there are two or more), linear (dashed) and curve (solid) on one axis, one colour per group of ``by``,
    mean ± 1 s.d. over runs clipped to the quantity's range."""
    by, facets = list(by), list(facets)
    col_factor = EPS if EPS in facets else (facets[-1] if len(facets) > 1 else None)
    row_factors = [f for f in facets if f != col_factor]
    row_keys = _combinations(row_factors, planned, profiles) or [()]
    col_keys = [(v,) for v in _levels(col_factor, planned, profiles)] if col_factor else [()]
    groups = [g for g in _combinations(by, planned, profiles) if _mask(profiles, by, g).any()] or [()]
    palette = colors(by, groups)
    paths = sorted(profiles["path"].unique(), key=lambda p: p != "linear")
    low, high = _clip_range(column)
    group_of = keys(profiles, by) if by else [()] * len(profiles)
    with _style() as plt:
        fig, axes = _grid(plt, len(row_keys), len(col_keys))
        counts: set[int] = set()
        for (r, row_key), (c, col_key) in itertools.product(enumerate(row_keys), enumerate(col_keys)):
            ax = axes[r][c]
            panel = _mask(profiles, row_factors, row_key) & (
                _mask(profiles, [col_factor], col_key) if col_factor else True)
            for group in groups:
                member = panel & np.array([g == group for g in group_of], dtype=bool)
                for path in paths:
                    part = profiles[member & (profiles["path"] == path).to_numpy()]
                    if not len(part) or column not in part:
                        continue
                    stats = part.groupby("t")[column].agg(["mean", "std", "count"]).sort_index()
                    counts.add(int(part["run_id"].nunique()))
                    std = stats["std"].fillna(0.0)
                    ax.plot(stats.index, stats["mean"], PATH_STYLES.get(path, ":"), color=palette[group])
                    ax.fill_between(stats.index, (stats["mean"] - std).clip(low, high),
                                    (stats["mean"] + std).clip(low, high), color=palette[group], alpha=0.15,
                                    linewidth=0)
            title = _condition_title([*row_factors, *([col_factor] if col_factor else [])], (*row_key, *col_key))
            ax.set_title(title, pad=2)
            ax.set_xlim(0, 1)
            if column.endswith("_acc"):
                top = ax.get_ylim()[1]
                ax.set_ylim(max(ax.get_ylim()[0], 0.0), min(top, 1.0) if top > 1 else top)
            else:
                top = ax.get_ylim()[1]
                ax.set_ylim(0.0, top * 1.05)  # losses from 0, with headroom above the highest band
            if r == len(row_keys) - 1:
                ax.set_xlabel("t")
            if c == 0:
                ax.set_ylabel(name)
        handles = [plt.Line2D([], [], color=palette[g], linewidth=2) for g in groups if g]
        labels = [_label(by, g) for g in groups if g]
        handles += [plt.Line2D([], [], color="black", linestyle=PATH_STYLES.get(p, ":")) for p in paths]
        labels += [f"{p} path" for p in paths]
        _legend(fig, handles, labels)
        n = "n = " + ("/".join(str(k) for k in sorted(counts)) if counts else "0")
        _footer(fig, [f"{name.capitalize()} along the path: mean ± 1 s.d. over seed pairs ({n} per line), band "
                      f"clipped to the quantity's range; BN recalibrated at every t.", *notes])
        _layout(fig, *fig.grid_shape)
        return _save(fig, stem)


# ---------------------------------------------------------------------------------------------------------------
# Barriers
# ---------------------------------------------------------------------------------------------------------------
def plot_barrier_vs_eps(runs: pd.DataFrame, hue: Sequence[str], stem: Path, *, planned: pd.DataFrame | None = None,
                        notes: Sequence[str] = ()) -> list[Path]:
    """Clean (solid) and robust (dashed) loss barrier against PGD epsilon; one panel per condition (rows) and
    path (columns), each with its own y-axis."""
    hue = [h for h in hue if h != EPS]
    paths = path_kinds(runs.columns) or ["linear"]
    metrics = [m for p in paths for m in (f"barrier_chord/{p}/test_loss", f"robust/barrier_chord/{p}/test_loss")
               if m in runs]
    facets = conditions(runs, planned, [EPS, *hue])
    stats = summarize(runs, [*facets, EPS, *hue], metrics, planned=planned)
    row_keys = _combinations(facets, planned, runs) or [()]
    groups = [g for g in _combinations(hue, planned, runs)] or [()]
    palette = colors(hue, groups)
    with _style() as plt:
        fig, axes = _grid(plt, len(row_keys), len(paths))
        for (r, row_key), (c, path) in itertools.product(enumerate(row_keys), enumerate(paths)):
            ax = axes[r][c]
            part = stats[_mask(stats, facets, row_key)]
            for metric, style in ((f"barrier_chord/{path}/test_loss", "o-"),
                                  (f"robust/barrier_chord/{path}/test_loss", "s--")):
                rows = part[part["metric"] == metric]
                for group in groups:
                    line = rows[_mask(rows, hue, group) & (rows["n"] > 0).to_numpy()].sort_values(EPS)
                    if len(line):
                        ax.errorbar(line[EPS].astype(float), line["mean"],
                                    yerr=_clipped_errors(line["mean"], line["ci95"], 0.0, math.inf), fmt=style,
                                    color=palette[group], capsize=2, markersize=3, elinewidth=0.7)
            ax.set_title(_condition_title([*facets], row_key) + f" · {path} path", pad=2)
            if r == len(row_keys) - 1:
                ax.set_xlabel("PGD training ε")
            if c == 0:
                ax.set_ylabel("loss barrier (test)")
        handles = [plt.Line2D([], [], color=palette[g], linewidth=2) for g in groups if g]
        labels = [_label(hue, g) for g in groups if g]
        handles += [plt.Line2D([], [], color="black", marker="o"), plt.Line2D([], [], color="black", marker="s",
                                                                              linestyle="--")]
        labels += ["clean", "robust (PGD at eval ε)"]
        _legend(fig, handles, labels)
        _footer(fig, ["Loss barrier (chord, test) vs the endpoints' PGD training ε: mean ± 95% t-interval over seed "
                      "pairs.", *notes])
        _layout(fig, *fig.grid_shape)
        return _save(fig, stem)


def _clipped_errors(means: Sequence[float], halves: Sequence[float], low: float, high: float) -> np.ndarray:
    """Asymmetric error bars of mean ± half clipped to [low, high] (a chord barrier is ≥ 0, an error ≤ 1)."""
    m, h = np.asarray(means, dtype=float), np.nan_to_num(np.asarray(halves, dtype=float))
    return np.vstack([m - np.clip(m - h, low, high), np.clip(m + h, low, high) - m]).clip(min=0)


def _bars(ax: Any, part: pd.DataFrame, x_column: str, x_levels: Sequence[Hashable], hue: Sequence[str],
          groups: Sequence[tuple], palette: dict[tuple, str], bounds: tuple[float, float] = (-math.inf, math.inf)
          ) -> list[str]:
    """Bars with 95% CIs (clipped to ``bounds``); a group with no finished run at an x level gets no bar.
    Returns the n labels."""
    width = 0.8 / max(1, len(groups))
    counts = []
    for index, group in enumerate(groups):
        means, errors, xs = [], [], []
        for position, level in enumerate(x_levels):
            row = part[_mask(part, [x_column], (level,)) & _mask(part, hue, group) & (part["n"] > 0).to_numpy()]
            if len(row):
                xs.append(position + (index - (len(groups) - 1) / 2) * width)
                means.append(float(row["mean"].iloc[0]))
                errors.append(float(row["ci95"].iloc[0]) if not math.isnan(row["ci95"].iloc[0]) else 0.0)
                counts.append(int(row["n"].iloc[0]))
        if xs:
            ax.bar(xs, means, width, yerr=_clipped_errors(means, errors, *bounds), capsize=1.5, color=palette[group],
                   error_kw={"elinewidth": 0.7})
    ax.set_xticks(np.arange(len(x_levels)), [str(v) for v in x_levels])
    ax.axhline(0, color="black", linewidth=0.5)
    return [str(c) for c in sorted(set(counts))]


def plot_barrier_by_symmetry(runs: pd.DataFrame, hue: Sequence[str], stem: Path, *,
                             planned: pd.DataFrame | None = None, notes: Sequence[str] = ()) -> list[Path]:
    """Linear loss and error barrier per symmetry method (x), one bar per hue group with its 95% CI; one panel
    per metric (rows) and condition (columns), each with its own y-axis."""
    hue = [h for h in hue if h != SYMMETRY]
    metrics = [m for m in ("barrier_chord/linear/test_loss", "barrier_chord/linear/test_error") if m in runs]
    facets = conditions(runs, planned, [SYMMETRY, *hue])
    stats = summarize(runs, [*facets, SYMMETRY, *hue], metrics, planned=planned)
    symmetries = _levels(SYMMETRY, planned, runs)
    col_keys = _combinations(facets, planned, runs) or [()]
    groups = _combinations(hue, planned, runs) or [()]
    palette = colors(hue, groups)
    counts: set[str] = set()
    with _style() as plt:
        fig, axes = _grid(plt, len(metrics), len(col_keys))
        for (r, metric), (c, col_key) in itertools.product(enumerate(metrics), enumerate(col_keys)):
            ax = axes[r][c]
            part = stats[(stats["metric"] == metric).to_numpy() & _mask(stats, facets, col_key)]
            bounds = (0.0, 1.0) if metric.endswith("_error") else (0.0, math.inf)  # chord barriers are >= 0
            counts |= set(_bars(ax, part, SYMMETRY, symmetries, hue, groups, palette, bounds))
            ax.set_title(_condition_title(facets, col_key), pad=2)
            if c == 0:
                ax.set_ylabel(("loss" if metric.endswith("loss") else "error") + " barrier (linear, test)")
        handles = [plt.Rectangle((0, 0), 1, 1, color=palette[g]) for g in groups if g]
        _legend(fig, handles, [_label(hue, g) for g in groups if g])
        _footer(fig, [f"Linear-path barrier (chord, test) per symmetry: mean ± 95% t-interval over seed pairs "
                      f"(n = {'/'.join(sorted(counts, key=int)) or '0'}); each panel has its own scale.", *notes])
        _layout(fig, *fig.grid_shape)
        return _save(fig, stem)


# ---------------------------------------------------------------------------------------------------------------
# Merging vs ensembling
# ---------------------------------------------------------------------------------------------------------------
MERGE_COLORS = {"endpoints": "#777777", "ensemble": "#2ca02c", "linear": "#ff7f0e", "bezier": "#1f77b4",
                "polychain": "#9467bd"}


def plot_merge_vs_ensemble(runs: pd.DataFrame, stem: Path, *, planned: pd.DataFrame | None = None,
                           robust: bool = False, notes: Sequence[str] = ()) -> list[Path]:
    """Test accuracy of the endpoints (mean of the two), their ensemble and each path's merged θ(½), per
    alignment method (x); one panel per condition (symmetry as columns)."""
    prefix = "robust/" if robust else ""
    paths = path_kinds(runs.columns) or ["linear"]
    items = [("endpoints", ENDPOINT_MEAN if not robust else "robust/endpoint_acc/linear/test"),
             ("ensemble", f"{prefix}ensemble/test_acc"),
             *((p, f"{prefix}merge/{p}/test_acc") for p in paths)]
    items = [(label, m) for label, m in items if m in runs]
    x_column = ALIGN if _varying(ALIGN, runs, planned) else None
    facets = conditions(runs, planned, [ALIGN])
    col_factor = SYMMETRY if SYMMETRY in facets else None
    row_factors = [f for f in facets if f != col_factor]
    stats = summarize(runs, [*facets, *([x_column] if x_column else [])], [m for _, m in items], planned=planned)
    row_keys = _combinations(row_factors, planned, runs) or [()]
    col_keys = [(v,) for v in _levels(col_factor, planned, runs)] if col_factor else [()]
    x_levels = _levels(x_column, planned, runs) if x_column else ["all"]
    width = 0.7 / max(1, len(items))
    with _style() as plt:
        fig, axes = _grid(plt, len(row_keys), len(col_keys))
        for (r, row_key), (c, col_key) in itertools.product(enumerate(row_keys), enumerate(col_keys)):
            ax = axes[r][c]
            panel = stats[_mask(stats, row_factors, row_key) & (_mask(stats, [col_factor], col_key)
                                                                if col_factor else True)]
            shown = [v for v in x_levels if not x_column or
                     (_mask(panel, [x_column], (v,)) & (panel["n"] > 0).to_numpy()).any()]
            for index, (label, metric) in enumerate(items):  # points with CIs: a zoomed bar would mislead
                for position, level in enumerate(shown):
                    row = panel[(panel["metric"] == metric).to_numpy() & (panel["n"] > 0).to_numpy() &
                                (_mask(panel, [x_column], (level,)) if x_column else True)]
                    if not len(row):
                        continue
                    mean, half = float(row["mean"].iloc[0]), float(row["ci95"].iloc[0])
                    ax.errorbar([position + (index - (len(items) - 1) / 2) * width], [mean],
                                yerr=_clipped_errors([mean], [half], 0.0, 1.0), fmt="o", markersize=3.5,
                                capsize=1.5, elinewidth=0.8, color=MERGE_COLORS.get(label, "C5"))
            ax.set_xticks(np.arange(len(shown)), [str(v) for v in shown])
            ax.set_xlim(-0.6, len(shown) - 0.4)
            ax.grid(axis="y", linewidth=0.3, alpha=0.5)
            title = _condition_title([*row_factors, *([col_factor] if col_factor else [])], (*row_key, *col_key))
            ax.set_title(title, pad=2)
            if c == 0:
                ax.set_ylabel(("robust " if robust else "") + "test accuracy")
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=MERGE_COLORS.get(label, "C5"))
                   for label, _ in items]
        names = {"endpoints": "endpoints (mean)", "ensemble": "ensemble (avg. softmax)"}
        labels = [names.get(label, f"merge θ(½), {label}") for label, _ in items]
        _legend(fig, handles, labels)
        _footer(fig, [("Robust t" if robust else "T") + "est accuracy: the endpoints, their ensemble (averaged "
                      "softmax) and the merged model θ(½) of each path after BN recalibration; mean ± 95% "
                      "t-interval over seed pairs.", *notes])
        _layout(fig, *fig.grid_shape)
        return _save(fig, stem)


# ---------------------------------------------------------------------------------------------------------------
# Loss-surface planes
# ---------------------------------------------------------------------------------------------------------------
def load_planes(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``plane.csv`` of each finished run that has one, by run id."""
    clients: dict[str, Any] = {}
    out = {}
    for _, row in runs[runs["status"] == FINISHED].iterrows():
        frame = read_trial_csv(row, "plane.csv", clients)
        if frame is not None:
            out[row["run_id"]] = frame
    return out


def plot_planes(runs: pd.DataFrame, planes: dict[str, pd.DataFrame], stem: Path, *,
                planned: pd.DataFrame | None = None, quantity: str = "test_loss",
                notes: Sequence[str] = ()) -> list[Path]:
    """Aligned vs unaligned planes: one row per condition, one column per alignment method, the first seed pair
    of each cell, the colour scale (log-spaced loss levels) shared within a row."""
    from study.sweep.artifacts import PLANE_QUANTITIES, draw_plane

    runs = runs[runs["run_id"].isin(set(planes))]
    methods = _levels(ALIGN, planned, runs) if ALIGN in runs else [None]
    facets = conditions(runs, planned, [ALIGN])
    row_keys = [k for k in _combinations(facets, planned, runs) if _mask(runs, facets, k).any()] or [()]
    split, _, kind = quantity.rpartition("_")
    with _style() as plt:
        fig, axes = plt.subplots(len(row_keys), len(methods), squeeze=False,
                                 figsize=(2.3 * len(methods) + 0.6, 1.9 * len(row_keys) + 0.4))
        seeds_used = set()
        for r, row_key in enumerate(row_keys):
            chosen = {}
            for method in methods:
                cell = runs[_mask(runs, facets, row_key) & (_mask(runs, [ALIGN], (method,)) if method else True)]
                cell = cell.sort_values("seeds") if "seeds" in cell else cell
                if len(cell):
                    chosen[method] = cell.iloc[0]
                    seeds_used.add(str(cell.iloc[0].get("seeds", "")))
            values = []
            for row in chosen.values():
                grid = planes[row["run_id"]]
                grid = grid[grid["kind"] == "grid"]
                values.append(grid[f"{split}_loss"] if kind == "loss" else 1.0 - grid[f"{split}_acc"])
            levels = None
            if values:
                every = pd.concat(values)
                low, high = float(every.min()), float(every.max())
                if kind == "loss" and high > max(low, 1e-4) * 1.0001:
                    levels = np.geomspace(max(low, 1e-4), high * 1.0001, 12)
                elif kind != "loss" and high > low + 1e-6:
                    levels = np.linspace(low, high + 1e-6, 12)
            for c, method in enumerate(methods):
                ax = axes[r][c]
                if method not in chosen:
                    ax.axis("off")
                    ax.text(0.5, 0.5, "not applied\n(= none)" if method != "none" else "no plane", ha="center",
                            va="center", transform=ax.transAxes, fontsize=6)
                    continue
                draw_plane(ax, planes[chosen[method]["run_id"]], quantity, levels=levels,
                           colorbar=c == len(methods) - 1 or levels is None)
                ax.set_title(_condition_title(facets, row_key) + (f" · {method}" if method else ""), pad=2)
                if r == len(row_keys) - 1:
                    ax.set_xlabel(r"$x$ / $\|\theta_B-\theta_A\|$")
                if c == 0:
                    ax.set_ylabel(r"$y$ / bend offset")
        what = PLANE_QUANTITIES.get(quantity, quantity).capitalize()
        _footer(fig, [f"{what} on the plane through θ_A, the curve's bend and θ_B "
                      f"(Garipov et al.'s basis; BN recalibrated at every grid point); dashed: linear path, solid: "
                      f"curve. One seed pair per panel ({', '.join(sorted(seeds_used))}); colour scale shared "
                      f"within a row.", *notes])
        fig.tight_layout()
        fig.tight = True  # colour bars: let matplotlib place them (one figure per study)
        return _save(fig, stem)


# ---------------------------------------------------------------------------------------------------------------
# A whole study
# ---------------------------------------------------------------------------------------------------------------
def _collapsed_notes(runs: pd.DataFrame, collapsed: Sequence[str]) -> list[str]:
    if not collapsed:
        return []
    what = collapsed[0].split("): ", 1)[-1].split(";")[0]
    return [f"Not shown: {what} (alignment computed but not applied, a permutation is not a symmetry of these nets; "
            f"the runs equal align.method = none's)."]


def plot_study(data: StudyData, out_dir: str | Path, *, by: Sequence[str] | None = None,
               where: Sequence[str] = ()) -> list[Path]:
    """Every plot that fits the study into ``out_dir``; returns the files written (PNG and PDF of each).
    ``where`` (the ``--where`` filter ``data`` was selected with) is named under every figure."""
    from analysis.tables import unapplied_alignment

    runs, planned = data.runs, data.planned
    factors = [*factor_columns(runs), "study"]
    for column in by or []:
        if column not in factors:
            raise UsageError(unknown_name("factor", column, factors))
    hue = list(by) if by is not None else default_hue(runs, planned)
    runs, planned, collapsed = unapplied_alignment(runs, planned)
    notes = ([f"Only runs with {', '.join(where)}."] if where else []) + _collapsed_notes(runs, collapsed)
    out_dir = Path(out_dir)
    written: list[Path] = []
    finished = runs[runs["status"] == FINISHED]
    profiles = load_profiles(finished)
    if len(profiles):
        facets = conditions(runs, planned, hue)
        for column, name in PROFILE_COLUMNS:
            if column in profiles and profiles[column].notna().any():
                written += plot_profiles(profiles, hue, out_dir / f"profiles_{column}", column=column, name=name,
                                         facets=facets, planned=planned, notes=notes)
    if _varying(EPS, runs, planned) and len(finished):
        written += plot_barrier_vs_eps(finished, hue, out_dir / "barrier_vs_eps", planned=planned, notes=notes)
    if _varying(SYMMETRY, runs, planned) and "barrier_chord/linear/test_loss" in runs and len(finished):
        written += plot_barrier_by_symmetry(finished, hue, out_dir / "barrier_by_symmetry", planned=planned,
                                            notes=notes)
    if "ensemble/test_acc" in finished and finished["ensemble/test_acc"].notna().any():
        written += plot_merge_vs_ensemble(finished, out_dir / "merge_vs_ensemble", planned=planned, notes=notes)
        if "robust/ensemble/test_acc" in finished and finished["robust/ensemble/test_acc"].notna().any():
            written += plot_merge_vs_ensemble(finished, out_dir / "merge_vs_ensemble_robust", planned=planned,
                                              robust=True, notes=notes)
    planes = load_planes(finished) if len(finished) else {}
    if planes:
        written += plot_planes(finished, planes, out_dir / "planes", planned=planned, notes=notes)
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


__all__ = ["plot_study", "plot_profiles", "plot_barrier_vs_eps", "plot_barrier_by_symmetry",
           "plot_merge_vs_ensemble", "plot_planes", "load_planes", "log_to_parent", "default_hue", "conditions",
           "colors", "FORMATS", "METHOD_COLORS"]
