"""The loss surface on the plane through θ_A, a curve's middle bend and θ_B (Garipov et al. 2018, Fig. 1-2).

Garipov et al.'s orthonormal basis (their ``plane.py``): u = θ_B − θ_A, v = bend − θ_A with its component along u
removed; both are normalised, and a point of the plane is θ_A + x·‖u‖·û + y·‖v‖·v̂. Coordinates are in those
units, so θ_A = (0, 0), θ_B = (1, 0), the bend is at (b_x, 1), and every grid is comparable between trials (the
linear path is the segment y = 0, 0 ≤ x ≤ 1). The grid is ``grid`` × ``grid`` points over
[−margin, 1 + margin]², as in Garipov's ``--margin_left/right/bottom/top`` (their default 0.2).

Every grid point is evaluated like a path point (:func:`study.core.evaluate.path_profile`): only trainable
parameters move (buffers are the architecture), BN statistics are recalibrated on the clean training split
(:mod:`study.core.bn`), then train and test loss and accuracy are measured. ``parallel_points`` > 1 evaluates
that many grid points at once as one vmapped network (:class:`study.core.ensemble.StackedModel`), halving the
chunk on out-of-memory and falling back to one point at a time if the stacked network cannot run.

Degenerate planes: when ‖u‖ or ‖v‖ (after orthogonalisation) is zero to float precision (θ_A = θ_B, or a bend on
the line through them, e.g. an untrained curve), that direction contributes nothing: its basis vector is 0 and
every grid point along it is the same weight vector, so the plane of a model with itself is one constant point.
``plane/degenerate`` in the frame's ``attrs`` says which directions were dropped.

A trial needs a curve for its plane (the bend is the third point): ``eval.plane`` without ``curve`` is refused
when the config is parsed (:mod:`study.core.config`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from study.core import bn
from study.core.data import Dataset
from study.core.ensemble import StackedModel
from study.core.evaluate import (
    EVAL_BATCH_SIZE,
    check_bn_samples,
    evaluate,
    load_weights,
    recalibration_batches,
    working_copy,
)
from study.core.runtime import mixed_precision

log = logging.getLogger(__name__)

#: A direction whose norm is below this fraction of ‖θ_A‖ (or absolutely, for a zero θ_A) counts as zero.
DEGENERATE_RTOL = 1e-7
MAX_GRID = 101  # grid points per axis (each is a BN recalibration and two split evaluations)
SPLITS = ("train", "test")
#: Kinds of the rows of a plane frame besides the grid: markers for the plot.
MARKERS = ("endpoint_a", "endpoint_b", "bend", "curve")


@dataclass(frozen=True)
class PlaneBasis:
    """θ_A and the plane's two directions, scaled: a point is ``origin + x * du + y * dv``."""

    origin: dict[str, Tensor]
    du: dict[str, Tensor]        # ‖u‖·û = θ_B − θ_A
    dv: dict[str, Tensor]        # ‖v‖·v̂: the bend's offset orthogonal to u (0 when degenerate)
    unit_x: float                # ‖u‖
    unit_y: float                # ‖v‖ after orthogonalisation
    degenerate: tuple[str, ...]  # "x" and/or "y": directions of (numerically) zero length

    def point(self, x: float, y: float) -> dict[str, Tensor]:
        return {k: self.origin[k] + x * self.du[k] + y * self.dv[k] for k in self.origin}

    def coordinates(self, theta: Mapping[str, Tensor]) -> tuple[float, float, float]:
        """(x, y, distance from the plane) of ``theta``: its orthogonal projection, in the grid's units."""
        diff = {k: (theta[k] - self.origin[k]).double() for k in self.origin}
        x = _dot(diff, self.du) / self.unit_x ** 2 if "x" not in self.degenerate else 0.0
        y = _dot(diff, self.dv) / self.unit_y ** 2 if "y" not in self.degenerate else 0.0
        residual = {k: diff[k] - x * self.du[k].double() - y * self.dv[k].double() for k in diff}
        return x, y, math.sqrt(max(_dot(residual, residual), 0.0))


def _dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    return float(sum((a[k].detach().double() * b[k].detach().double()).sum() for k in a))


def basis(theta_a: Mapping[str, Tensor], theta_b: Mapping[str, Tensor], bend: Mapping[str, Tensor]) -> PlaneBasis:
    """Garipov et al.'s basis of the plane through ``theta_a``, ``theta_b`` and ``bend`` (computed in float64)."""
    if not set(theta_a) == set(theta_b) == set(bend):
        raise ValueError("plane points must have the same parameter names")
    origin = {k: v.detach() for k, v in theta_a.items()}
    scale = max(math.sqrt(_dot(origin, origin)), 1.0)
    u = {k: (theta_b[k].detach() - origin[k]).double() for k in origin}
    unit_x = math.sqrt(_dot(u, u))
    degenerate = []
    if unit_x <= DEGENERATE_RTOL * scale:
        degenerate.append("x")
        u = {k: torch.zeros_like(v) for k, v in u.items()}
        unit_x = 0.0
    v = {k: (bend[k].detach() - origin[k]).double() for k in origin}
    if unit_x > 0:
        along = _dot(v, u) / unit_x ** 2
        v = {k: v[k] - along * u[k] for k in v}
    unit_y = math.sqrt(max(_dot(v, v), 0.0))
    if unit_y <= DEGENERATE_RTOL * scale:
        degenerate.append("y")
        v = {k: torch.zeros_like(t) for k, t in v.items()}
        unit_y = 0.0
    dtype = {k: t.dtype for k, t in origin.items()}
    return PlaneBasis(origin, {k: t.to(dtype[k]) for k, t in u.items()}, {k: t.to(dtype[k]) for k, t in v.items()},
                      unit_x, unit_y, tuple(degenerate))


def grid_coordinates(grid: int, margin: float) -> np.ndarray:
    """The ``grid`` values of each axis: ``linspace(−margin, 1 + margin, grid)``."""
    return np.linspace(-margin, 1.0 + margin, grid)


def evaluate_points(model: nn.Module, weights: Callable[[int], dict[str, Tensor]], count: int, data: Dataset, *,
                    splits: Sequence[str] = SPLITS, batch_size: int = EVAL_BATCH_SIZE,
                    max_samples: int | None = None, parallel_points: int = 1, bf16: bool = False,
                    progress: Callable[[int, int], None] | None = None,
                    bn_samples: int | None = None, channels_last: bool = False) -> list[dict[str, float]]:
    """``{split}_loss``/``{split}_acc`` at ``count`` weight vectors (``weights(i)``), each after BN
    recalibration on the clean training split (its first ``bn_samples`` images with a budget, as
    :func:`study.core.evaluate.path_profile`), ``parallel_points`` at a time (see the module docstring), one at a
    time in channels_last with ``channels_last`` (as ``path_profile``)."""
    if not isinstance(parallel_points, int) or parallel_points < 1:
        raise ValueError(f"parallel_points must be an integer >= 1, got {parallel_points!r}")
    check_bn_samples(bn_samples)
    model = working_copy(model, data.device, channels_last)
    rows: list[dict[str, float]] = []
    first = 0
    while first < count:
        chunk = list(range(first, min(first + parallel_points, count)))
        with torch.no_grad():
            vectors = [weights(i) for i in chunk]
        with mixed_precision(data.device, bf16):
            try:
                results = _evaluate_chunk(model, vectors, data, splits, batch_size, max_samples, bn_samples)
            except torch.cuda.OutOfMemoryError:
                if len(chunk) == 1:
                    raise
                parallel_points = (len(chunk) + 1) // 2
                log.warning("out of memory evaluating %d plane points together; retrying with %d", len(chunk),
                            parallel_points)
                del vectors
                if data.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            except RuntimeError as error:  # an op the stacked (vmapped) network cannot run: one at a time
                if len(chunk) == 1:
                    raise
                log.warning("stacked evaluation of plane points failed (%s); evaluating one at a time", error)
                parallel_points = 1
                continue
        rows += results
        first += len(chunk)
        if progress is not None:
            progress(len(rows), count)
    return rows


def _evaluate_chunk(model: nn.Module, vectors: list[dict[str, Tensor]], data: Dataset, splits: Sequence[str],
                    batch_size: int, max_samples: int | None, bn_samples: int | None = None
                    ) -> list[dict[str, float]]:
    if len(vectors) == 1:
        load_weights(model, vectors[0])
        bn.recalibrate(model, recalibration_batches(data, batch_size, bn_samples))
        per_split = {s: [evaluate(model, data, s, batch_size=batch_size, max_samples=max_samples)] for s in splits}
    else:
        stacked = StackedModel(model, vectors)
        stacked.recalibrate(recalibration_batches(data, batch_size, bn_samples))
        per_split = {s: stacked.evaluate(data, s, batch_size=batch_size, max_samples=max_samples) for s in splits}
    out = []
    for i in range(len(vectors)):
        row: dict[str, float] = {}
        for split in splits:
            row[f"{split}_loss"], row[f"{split}_acc"] = per_split[split][i]["loss"], per_split[split][i]["acc"]
        out.append(row)
    return out


def plane_frame(model: nn.Module, theta_a: Mapping[str, Tensor], theta_b: Mapping[str, Tensor],
                bend: Mapping[str, Tensor], data: Dataset, *, grid: int = 11, margin: float = 0.2,
                curve: Callable[[float], Mapping[str, Tensor]] | None = None, curve_points: int = 61,
                splits: Sequence[str] = SPLITS, batch_size: int = EVAL_BATCH_SIZE, max_samples: int | None = None,
                parallel_points: int = 1, bf16: bool = False,
                progress: Callable[[int, int], None] | None = None, bn_samples: int | None = None,
                channels_last: bool = False) -> pd.DataFrame:
    """The plane through ``theta_a``, ``bend`` and ``theta_b`` as one long frame.

    Columns: ``kind`` (``grid``, or a marker: ``endpoint_a``, ``endpoint_b``, ``bend``, ``curve``), ``i``, ``j``
    (grid indices along x and y; −1 for markers), ``x``, ``y`` (coordinates in units of ‖u‖ and ‖v‖), ``t``
    (the curve's parameter for ``curve`` rows), ``off_plane`` (distance of a marker from the plane: 0 for a
    3-point Bezier curve, which lies in it), ``{split}_loss``/``{split}_acc`` (grid rows only; BN recalibrated
    at each point, on the first ``bn_samples`` training images with a budget), and the constants ``unit_x``, ``unit_y``. ``curve(t)`` gives the curve's weights at t.
    ``channels_last``: grid points evaluated one at a time run in channels_last (:func:`evaluate_points`).
    ``attrs``: ``degenerate`` (see the module docstring), ``grid``, ``margin``."""
    if isinstance(grid, bool) or not isinstance(grid, int) or not 2 <= grid <= MAX_GRID:
        raise ValueError(f"grid must be an integer >= 2 and <= {MAX_GRID}, got {grid!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 10:
        raise ValueError(f"margin must be a number >= 0 and <= 10, got {margin!r}")
    plane = basis(theta_a, theta_b, bend)
    if plane.degenerate:
        log.warning("degenerate plane (zero-length direction %s): every grid point along it is the same weights",
                    " and ".join(plane.degenerate))
    axis = grid_coordinates(grid, float(margin))
    cells = [(i, j) for i in range(grid) for j in range(grid)]
    values = evaluate_points(model, lambda n: plane.point(float(axis[cells[n][0]]), float(axis[cells[n][1]])),
                             len(cells), data, splits=splits, batch_size=batch_size, max_samples=max_samples,
                             parallel_points=parallel_points, bf16=bf16, progress=progress, bn_samples=bn_samples,
                             channels_last=channels_last)
    rows: list[dict[str, float | int | str]] = [
        {"kind": "grid", "i": i, "j": j, "x": float(axis[i]), "y": float(axis[j]), "t": math.nan,
         "off_plane": 0.0, **value} for (i, j), value in zip(cells, values)]
    markers = [("endpoint_a", theta_a, math.nan), ("endpoint_b", theta_b, math.nan), ("bend", bend, math.nan)]
    if curve is not None:
        with torch.no_grad():
            markers += [("curve", {k: v.detach() for k, v in curve(float(t)).items()}, float(t))
                        for t in np.linspace(0.0, 1.0, curve_points)]
    for kind, theta, t in markers:
        x, y, off = plane.coordinates(theta)
        rows.append({"kind": kind, "i": -1, "j": -1, "x": x, "y": y, "t": t, "off_plane": off})
    frame = pd.DataFrame(rows)
    frame["unit_x"], frame["unit_y"] = plane.unit_x, plane.unit_y
    frame.attrs.update(degenerate=list(plane.degenerate), grid=grid, margin=float(margin))
    return frame


__all__ = ["PlaneBasis", "basis", "grid_coordinates", "evaluate_points", "plane_frame", "MARKERS", "MAX_GRID"]
