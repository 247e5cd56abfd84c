"""Aggregation over seeds: mean, std, n and a Student-t confidence interval per group of factors, and paired
differences where one factor is toggled on otherwise identical trials (same seed pair, same other factors).

Only FINISHED runs enter a mean. Every group also counts its failed, unfinished (running, killed) and missing
runs (planned in the grid but never started), so a thin group is visible as such rather than silently dropped.
Groups are whole grid cells: a group with no run at all still appears, with ``n = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import factor_columns, is_missing
from study.tracking.schema import FAILED, FINISHED

STAT_COLUMNS = ("n", "mean", "std", "ci95", "ci_low", "ci_high")
COUNT_COLUMNS = ("finished", "failed", "unfinished", "missing")
BASELINE_PREFERENCE = ("none", "standard", "linear")


@dataclass(frozen=True)
class Interval:
    n: int
    mean: float
    std: float      # sample standard deviation (ddof=1); NaN for n < 2
    half: float     # half-width of the two-sided t-interval; NaN for n < 2

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def t_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Mean, std and the two-sided Student-t interval (``n − 1`` degrees of freedom) of the non-NaN values."""
    from scipy import stats

    x = np.asarray(list(values), dtype=np.float64)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Interval(1, mean, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))
    return Interval(n, mean, std, half)


# ---------------------------------------------------------------------------------------------------------------
# Group keys and their order
# ---------------------------------------------------------------------------------------------------------------
def _norm(value: Any) -> Hashable:
    if is_missing(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def keys(frame: pd.DataFrame, columns: Sequence[str]) -> list[tuple]:
    """One hashable tuple per row (NA of any kind becomes None, numpy scalars become Python ones)."""
    if not columns:
        return [()] * len(frame)
    return [tuple(_norm(v) for v in row) for row in frame[list(columns)].itertuples(index=False, name=None)]


def level_order(column: str, *frames: pd.DataFrame | None) -> list[Hashable]:
    """The levels of a factor in display order: numbers ascending, text in order of first appearance in the
    planned grid (the spec author's order), NA last."""
    seen: list[Hashable] = []
    for frame in frames:
        if frame is not None and column in frame:
            seen += [_norm(v) for v in frame[column]]
    levels = list(dict.fromkeys(v for v in seen if v is not None))
    if levels and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in levels):
        levels.sort()
    return levels + ([None] if None in seen else [])


def _sorter(columns: Sequence[str], *frames: pd.DataFrame | None):
    ranks = [{v: i for i, v in enumerate(level_order(c, *frames))} for c in columns]
    return lambda key: tuple(rank.get(v, len(rank)) for rank, v in zip(ranks, key))


def _typed(rows: list[dict[str, Any]], columns: Sequence[str], like: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=list(columns))
    for column in columns:
        if column in like:
            try:
                out[column] = out[column].astype(like[column].dtype)
            except (TypeError, ValueError):
                pass
    return out


def default_baseline(levels: Sequence[Hashable]) -> Hashable:
    """``none`` / ``standard`` when present, else the first level (smallest number)."""
    for preferred in BASELINE_PREFERENCE:
        if preferred in levels:
            return preferred
    if not levels:
        raise ValueError("no levels to choose a baseline from")
    return levels[0]


# ---------------------------------------------------------------------------------------------------------------
# Per-group statistics
# ---------------------------------------------------------------------------------------------------------------
def summarize(runs: pd.DataFrame, by: Sequence[str], metrics: Sequence[str], *,
              planned: pd.DataFrame | None = None, confidence: float = 0.95) -> pd.DataFrame:
    """Long table, one row per (group, metric): ``*by, metric, n, mean, std, ci95, ci_low, ci_high, finished,
    failed, unfinished, missing``.

    ``n`` counts the finished runs that have the metric; ``ci95`` is the half-width of the ``confidence``
    t-interval (the column keeps its name for any confidence). ``missing`` = planned trials of the group
    (``planned``: one row per trial of the grid) without any run."""
    by, metrics = list(by), list(metrics)
    run_keys = keys(runs, by)
    groups: dict[tuple, list[int]] = {}
    for position, key in enumerate(run_keys):
        groups.setdefault(key, []).append(position)
    planned_counts: dict[tuple, int] = {}
    if planned is not None:
        planned = planned[planned["study"].isin(set(runs["study"]))] if "study" in planned else planned
        for key in keys(planned.reindex(columns=by), by):
            planned_counts[key] = planned_counts.get(key, 0) + 1
    order = sorted(dict.fromkeys([*groups, *planned_counts]), key=_sorter(by, planned, runs))

    status = runs["status"].to_numpy()
    values = {m: runs[m].to_numpy(dtype=np.float64) for m in metrics}
    rows = []
    for key in order:
        members = np.asarray(groups.get(key, []), dtype=int)
        finished = members[status[members] == FINISHED] if members.size else members
        failed = int((status[members] == FAILED).sum()) if members.size else 0
        counts = {"finished": int(finished.size), "failed": failed,
                  "unfinished": int(members.size - finished.size - failed),
                  "missing": max(0, planned_counts.get(key, 0) - int(members.size))}
        for metric in metrics:
            interval = t_interval(values[metric][finished], confidence)
            rows.append({**dict(zip(by, key)), "metric": metric, "n": interval.n, "mean": interval.mean,
                         "std": interval.std, "ci95": interval.half, "ci_low": interval.low,
                         "ci_high": interval.high, **counts})
    return _typed(rows, [*by, "metric", *STAT_COLUMNS, *COUNT_COLUMNS], runs)


# ---------------------------------------------------------------------------------------------------------------
# Paired differences
# ---------------------------------------------------------------------------------------------------------------
def paired_differences(runs: pd.DataFrame, factor: str, metrics: Sequence[str], *, by: Sequence[str] = (),
                       baseline: Hashable | None = None, planned: pd.DataFrame | None = None,
                       confidence: float = 0.95) -> pd.DataFrame:
    """``level − baseline`` of ``factor`` for each metric, paired on everything else (study, seed pair and every
    other factor), aggregated over the pairs within each group of ``by``.

    Long table: ``*by, <factor> (the level), baseline, metric, n (complete pairs), mean, std, ci95, ci_low,
    ci_high, incomplete`` where ``incomplete`` counts the pairs of the group (planned or with any run) that lack a
    finished value on either side, so they are visible rather than silently dropped."""
    if factor not in runs:
        raise KeyError(factor)
    by = [b for b in by if b != factor]
    pair_on = ["study", *[c for c in factor_columns(runs) if c != factor]]
    missing_by = [b for b in by if b not in pair_on]
    if missing_by:
        raise KeyError(f"group-by columns {missing_by} are not factors")
    levels = [v for v in level_order(factor, planned, runs) if v is not None]
    if baseline is None:
        baseline = default_baseline(levels)
    baseline = _norm(baseline)
    if baseline not in levels:
        raise ValueError(f"baseline {baseline!r} is not a level of {factor}: {levels}")
    planned = planned[planned["study"].isin(set(runs["study"]))] if planned is not None else None

    run_level = [k[0] for k in keys(runs, [factor])]
    run_pairs = keys(runs.reindex(columns=pair_on), pair_on)
    finished = (runs["status"] == FINISHED).to_numpy()
    plan_level = [k[0] for k in keys(planned, [factor])] if planned is not None else []
    plan_pairs = keys(planned.reindex(columns=pair_on), pair_on) if planned is not None else []
    project = [pair_on.index(b) for b in by]
    sort_key = _sorter(by, planned, runs)

    rows: list[tuple[tuple, dict[str, Any]]] = []
    for level_index, level in enumerate(levels):
        if level == baseline:
            continue
        sides = {level, baseline}
        # every pairing key where both sides are planned or have a run: a comparison the study does not make
        # (a level left out of the grid for that setting, e.g. by the spec's exclude:) is no incomplete pair
        present: dict[Hashable, set[tuple]] = {level: set(), baseline: set()}
        for p, lv in [*zip(plan_pairs, plan_level), *zip(run_pairs, run_level)]:
            if lv in sides:
                present[lv].add(p)
        universe = dict.fromkeys(p for p in [*plan_pairs, *run_pairs]
                                 if p in present[level] and p in present[baseline])
        by_group: dict[tuple, list[tuple]] = {}
        for pair in universe:
            by_group.setdefault(tuple(pair[i] for i in project), []).append(pair)
        for metric_index, metric in enumerate(metrics):
            column = runs[metric].to_numpy(dtype=np.float64)
            value: dict[tuple[Hashable, tuple], list[float]] = {}
            for i, (lv, pair) in enumerate(zip(run_level, run_pairs)):
                if lv in sides and finished[i] and not math.isnan(column[i]):
                    value.setdefault((lv, pair), []).append(float(column[i]))
            for group in sorted(by_group, key=sort_key):
                diffs = [float(np.mean(value[(level, p)]) - np.mean(value[(baseline, p)]))
                         for p in by_group[group] if (level, p) in value and (baseline, p) in value]
                interval = t_interval(diffs, confidence)
                row = {**dict(zip(by, group)), factor: level, "baseline": baseline, "metric": metric,
                       "n": interval.n, "mean": interval.mean, "std": interval.std, "ci95": interval.half,
                       "ci_low": interval.low, "ci_high": interval.high,
                       "incomplete": len(by_group[group]) - interval.n}
                rows.append(((sort_key(group), level_index, metric_index), row))
    rows.sort(key=lambda item: item[0])
    columns = [*by, factor, "baseline", "metric", *STAT_COLUMNS, "incomplete"]
    return _typed([row for _, row in rows], columns, runs)
