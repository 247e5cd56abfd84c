"""Barrier and accuracy metrics computed from a path profile (docs/science.md, Metrics). Pure numpy/pandas.

A *profile* has one row per t of a grid that starts at 0 and ends at 1 (uniform in practice), with
``{split}_loss``/``{split}_acc`` columns, optionally ``robust_{split}_loss``/``robust_{split}_acc`` and
``segment_length`` (‖θ(t_i) − θ(t_{i−1})‖ in weight space, 0 in the first row). Accuracies are fractions in
[0, 1]; error is 1 − acc.

The three barrier definitions in the literature disagree whenever the endpoints differ, which is exactly when
a comparison needs them, so all three are logged:

- ``barrier_chord`` = max_t [L(t) − ((1−t)L(0) + tL(1))]  (Frankle et al., Entezari et al.): height above the
  straight line between the endpoint values; 0 for any profile at or below that line, ≥ 0 always (the endpoints
  contribute 0).
- ``barrier_mean`` = max_t L(t) − ½(L(0) + L(1))  (Git Re-Basin plots): never below |L(1) − L(0)|/2 when the
  endpoints are on the grid, so it is *not* 0 on a straight line between unequal endpoints. Not clipped.
- ``barrier_mid`` = L(½) − ½(L(0) + L(1))  (Lim et al.): negative when the middle of the path is better than
  the endpoints' average (common on curves). Not clipped: clipping would hide that.

NaN values (a diverged point) propagate into the barriers rather than being skipped, so they cannot look small.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

__all__ = [
    "METRIC_KINDS",
    "BARRIER_KINDS",
    "SPLITS",
    "PROFILE_SPLITS",
    "barrier_chord",
    "barrier_mean",
    "barrier_mid",
    "acc_min",
    "acc_avg",
    "path_length",
    "summarize",
    "metric_names",
]

BARRIER_KINDS: tuple[str, ...] = ("barrier_chord", "barrier_mean", "barrier_mid")
#: Every metric kind :func:`summarize` emits (the first component of its flat names, after an optional
#: ``robust/`` prefix).
METRIC_KINDS: tuple[str, ...] = (*BARRIER_KINDS, "acc_min", "acc_avg", "endpoint_acc", "path_length")
#: Every split a trial config accepts (``eval.robust_splits``; :data:`study.core.data.SPLITS`): each gets its
#: metrics whenever its columns are in the profile.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: The clean splits a path profile has by default (:func:`study.core.evaluate.path_profile`).
PROFILE_SPLITS: tuple[str, ...] = ("train", "test")

_MIN_POINTS = 3
_GRID_ATOL = 1e-9  # torch.linspace(0, 1, n) hits 0 and 1 exactly; allow only float noise beyond that


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------
def _as_1d(name: str, values: ArrayLike) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size < _MIN_POINTS:
        raise ValueError(f"{name} needs at least {_MIN_POINTS} points, got {array.size}")
    return array


def _check_t(t: ArrayLike) -> np.ndarray:
    """A validated grid: a barrier on a malformed grid would be a silently wrong number."""
    t_arr = _as_1d("t", t)
    if not np.all(np.isfinite(t_arr)):
        raise ValueError("t contains non-finite entries")
    if abs(t_arr[0]) > _GRID_ATOL or abs(t_arr[-1] - 1.0) > _GRID_ATOL:
        raise ValueError(f"t must start at 0 and end at 1, got {t_arr[0]!r} .. {t_arr[-1]!r}")
    if not np.all(np.diff(t_arr) > 0):
        raise ValueError("t must be strictly increasing")
    return t_arr


def _grid(t: ArrayLike, values: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t_arr, v_arr = _check_t(t), _as_1d("values", values)
    if t_arr.size != v_arr.size:
        raise ValueError(f"t and values differ in length: {t_arr.size} != {v_arr.size}")
    return t_arr, v_arr


def _lengths(acc: np.ndarray, segment_lengths: ArrayLike) -> np.ndarray:
    lengths = _as_1d("segment_lengths", segment_lengths)
    if lengths.size != acc.size:
        raise ValueError(f"acc and segment_lengths differ in length: {acc.size} != {lengths.size}")
    if not np.all(np.isfinite(lengths)) or np.any(lengths < 0):
        raise ValueError("segment_lengths must be finite and non-negative")
    if lengths[0] != 0:
        raise ValueError(f"segment_lengths[0] must be 0 (no segment leads to the first point), got {lengths[0]!r}")
    return lengths


# ---------------------------------------------------------------------------------------------------------------
# Barriers
# ---------------------------------------------------------------------------------------------------------------
def barrier_chord(t: ArrayLike, values: ArrayLike) -> float:
    """max_t [L(t) − ((1−t)L(0) + tL(1))]: the height above the chord between the endpoints (≥ 0)."""
    t_arr, v = _grid(t, values)
    chord = (1.0 - t_arr) * v[0] + t_arr * v[-1]
    return float(np.max(v - chord))


def barrier_mean(values: ArrayLike) -> float:
    """max_t L(t) − ½(L(0) + L(1)). Needs no t; ≥ |L(1) − L(0)|/2, so it is positive for unequal endpoints."""
    v = _as_1d("values", values)
    return float(np.max(v) - 0.5 * (v[0] + v[-1]))


def barrier_mid(t: ArrayLike, values: ArrayLike) -> float:
    """L(½) − ½(L(0) + L(1)), L(½) linearly interpolated off-grid. May be negative; not clipped."""
    t_arr, v = _grid(t, values)
    middle = float(np.interp(0.5, t_arr, v))
    return float(middle - 0.5 * (v[0] + v[-1]))


# ---------------------------------------------------------------------------------------------------------------
# Accuracy along the path (Tatro et al.) and path length
# ---------------------------------------------------------------------------------------------------------------
def acc_min(acc: ArrayLike) -> float:
    """The worst accuracy anywhere on the path (Tatro et al.'s "min")."""
    return float(np.min(_as_1d("acc", acc)))


def acc_avg(acc: ArrayLike, segment_lengths: ArrayLike) -> float:
    """Arc-length-weighted mean accuracy: Σ_i ℓ_i (a_{i−1}+a_i)/2 / Σ_i ℓ_i (trapezoid rule in weight space).

    Weighting by weight-space length (not by t) makes curves comparable whatever their speed. A path of length 0
    (a model with itself) has no arc length to weight by, so the plain mean is returned.
    """
    a = _as_1d("acc", acc)
    lengths = _lengths(a, segment_lengths)[1:]
    total = float(lengths.sum())
    if total == 0.0:
        return float(a.mean())
    return float(np.sum(lengths * 0.5 * (a[:-1] + a[1:])) / total)


def path_length(segment_lengths: ArrayLike) -> float:
    """Σ_i ‖θ(t_i) − θ(t_{i−1})‖ (the first entry, 0 by convention, included)."""
    lengths = np.asarray(segment_lengths, dtype=np.float64)
    if lengths.ndim != 1 or lengths.size == 0:
        raise ValueError(f"segment_lengths must be a non-empty 1-D array, got shape {lengths.shape}")
    if not np.all(np.isfinite(lengths)) or np.any(lengths < 0):
        raise ValueError("segment_lengths must be finite and non-negative")
    return float(lengths.sum())


# ---------------------------------------------------------------------------------------------------------------
# A whole profile -> flat metric names
# ---------------------------------------------------------------------------------------------------------------
def _columns_present(profile: pd.DataFrame, prefix: str) -> list[str]:
    """Splits whose ``{prefix}{split}_loss`` and ``_acc`` columns both exist (one without the other is an error)."""
    present = []
    for split in SPLITS:
        loss, acc = f"{prefix}{split}_loss", f"{prefix}{split}_acc"
        if (loss in profile) != (acc in profile):
            missing = acc if loss in profile else loss
            raise ValueError(f"profile has {loss if loss in profile else acc!r} but not {missing!r}")
        if loss in profile:
            present.append(split)
    return present


def _split_metrics(t: np.ndarray, loss: np.ndarray, acc: np.ndarray, lengths: np.ndarray | None,
                   path: str, split: str, prefix: str) -> dict[str, float]:
    error = 1.0 - acc
    out: dict[str, float] = {}
    for quantity, values in (("loss", loss), ("error", error)):
        out[f"{prefix}barrier_chord/{path}/{split}_{quantity}"] = barrier_chord(t, values)
        out[f"{prefix}barrier_mean/{path}/{split}_{quantity}"] = barrier_mean(values)
        out[f"{prefix}barrier_mid/{path}/{split}_{quantity}"] = barrier_mid(t, values)
    out[f"{prefix}acc_min/{path}/{split}"] = acc_min(acc)
    if lengths is not None:
        out[f"{prefix}acc_avg/{path}/{split}"] = acc_avg(acc, lengths)
    out[f"{prefix}endpoint_acc/{path}/{split}"] = float(0.5 * (acc[0] + acc[-1]))
    return out


def summarize(profile: pd.DataFrame, path: str) -> dict[str, float]:
    """Every metric of one path's profile under flat names such as ``barrier_chord/linear/test_loss``.

    Per split s present (any of train, val, test): ``{kind}/{path}/{s}_loss`` and ``{kind}/{path}/{s}_error`` for each
    barrier kind, ``acc_min/{path}/{s}``, ``acc_avg/{path}/{s}``, ``endpoint_acc/{path}/{s}``; the same with a
    ``robust/`` prefix for every split that has robust columns; ``path_length/{path}``. ``acc_avg`` and
    ``path_length`` need ``segment_length`` and are left out without it (a t-weighted stand-in would be a
    different quantity under the same name).
    """
    if "t" not in profile:
        raise ValueError("profile has no 't' column")
    if "/" in path or not path:
        raise ValueError(f"path name must be non-empty and contain no '/', got {path!r}")
    t = _check_t(profile["t"].to_numpy())
    lengths = profile["segment_length"].to_numpy(dtype=np.float64) if "segment_length" in profile else None
    out: dict[str, float] = {}
    for prefix in ("", "robust_"):
        name_prefix = prefix.replace("_", "/")
        for split in _columns_present(profile, prefix):
            loss = profile[f"{prefix}{split}_loss"].to_numpy(dtype=np.float64)
            acc = profile[f"{prefix}{split}_acc"].to_numpy(dtype=np.float64)
            out.update(_split_metrics(t, loss, acc, lengths, path, split, name_prefix))
    if not out:
        raise ValueError(f"profile has no '{{split}}_loss'/'{{split}}_acc' columns for splits {SPLITS}")
    if lengths is not None:
        out[f"path_length/{path}"] = path_length(lengths)
    return out


def metric_names(path: str, splits: Sequence[str] = PROFILE_SPLITS, robust_splits: Sequence[str] = (),
                 segment_length: bool = True) -> list[str]:
    """The names :func:`summarize` emits for a profile with these columns (for tables and tests)."""
    names: list[str] = []
    for prefix, chosen in (("", splits), ("robust/", robust_splits)):
        for split in chosen:
            for kind in BARRIER_KINDS:
                names += [f"{prefix}{kind}/{path}/{split}_loss", f"{prefix}{kind}/{path}/{split}_error"]
            names.append(f"{prefix}acc_min/{path}/{split}")
            if segment_length:
                names.append(f"{prefix}acc_avg/{path}/{split}")
            names.append(f"{prefix}endpoint_acc/{path}/{split}")
    if segment_length:
        names.append(f"path_length/{path}")
    return names
