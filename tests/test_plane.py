"""The loss-surface plane (study.core.plane): Garipov et al.'s basis, known answers on the grid, the trial option.

Known answers: the plane of a model with itself is one point (constant loss everywhere); grid points (0, 0) and
(1, 0) are θ_A and θ_B, evaluated exactly as a path point is; cross-entropy of a linear classifier is convex in
its weights, so along every grid line the loss has non-negative second differences.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from study.core import bn, data as datasets, merging, models, plane, trial
from study.core.config import ConfigError, parse
from study.core.evaluate import clean_batches, evaluate, load_weights
from study.core.paths import Path, trainable_state
from study.sweep import artifacts
from study.sweep.records import result_record

SHAPE = (1, 6, 6)


@pytest.fixture(scope="module")
def small():
    return datasets.load("synthetic", in_shape=SHAPE, n_train=96, n_test=48, val_fraction=0.0)


def _mlp(data, seed: int, norm: str = "batchnorm") -> nn.Module:
    net = models.build("mlp", num_classes=data.num_classes, in_shape=data.in_shape, seed=seed, mean=data.mean,
                       std=data.std, width=0.0625, norm=norm)
    return net.eval()


def _recalibrated(model: nn.Module, weights: dict, data) -> nn.Module:
    model = copy.deepcopy(model)
    load_weights(model, weights)
    bn.recalibrate(model, clean_batches(data, "train", 256))
    return model


def test_basis_is_orthogonal_and_maps_the_three_points(small):
    a, b, c = (trainable_state(_mlp(small, s)) for s in (0, 1, 2))
    basis = plane.basis(a, b, c)
    assert basis.degenerate == ()
    assert abs(plane._dot(basis.du, basis.dv)) < 1e-4 * basis.unit_x * basis.unit_y
    for theta, expected in ((a, (0.0, 0.0)), (b, (1.0, 0.0))):
        x, y, off = basis.coordinates(theta)
        assert (x, y) == pytest.approx(expected, abs=1e-5) and off == pytest.approx(0.0, abs=1e-3)
    bx, by, off = basis.coordinates(c)
    assert by == pytest.approx(1.0, abs=1e-5) and off == pytest.approx(0.0, abs=1e-3)
    back = basis.point(bx, by)  # the bend is a point of its own plane
    assert max(float((back[k] - c[k]).abs().max()) for k in c) < 1e-5
    # a 3-point Bezier curve lies in the plane of its control points; its middle is at y = 1/2
    curve = Path(a, b, kind="bezier", n_bends=3)
    with torch.no_grad():
        for name, bend in curve.bends[0].items():
            bend.copy_(c[name.replace("__", ".")])
        x, y, off = basis.coordinates(curve.weights(0.5))
    assert y == pytest.approx(0.5, abs=1e-5) and off < 1e-3 * basis.unit_x


def test_plane_of_a_model_with_itself_is_constant(small):
    model = _mlp(small, 0)
    theta = trainable_state(model)
    frame = plane.plane_frame(model, theta, theta, theta, small, grid=3, margin=0.5)
    grid = frame[frame["kind"] == "grid"]
    assert len(grid) == 9 and frame.attrs["degenerate"] == ["x", "y"]
    assert grid["test_loss"].nunique() == 1 and grid["train_acc"].nunique() == 1
    expected = evaluate(_recalibrated(model, theta, small), small, "test")
    assert grid["test_loss"].iloc[0] == pytest.approx(expected["loss"], rel=1e-6)
    assert np.isfinite(frame[["x", "y"]].to_numpy()).all()


def test_grid_corners_are_the_endpoints_and_stacked_points_agree(small):
    model_a, model_b, model_c = (_mlp(small, s) for s in (0, 1, 2))
    a, b, c = (trainable_state(m) for m in (model_a, model_b, model_c))
    one = plane.plane_frame(model_a, a, b, c, small, grid=2, margin=0.0)
    grid = one[one["kind"] == "grid"].set_index(["i", "j"])
    for (i, j), theta in (((0, 0), a), ((1, 0), b)):
        expected = evaluate(_recalibrated(model_a, theta, small), small, "test")
        assert grid.loc[(i, j), "test_loss"] == pytest.approx(expected["loss"], rel=1e-5)
        assert grid.loc[(i, j), "test_acc"] == pytest.approx(expected["acc"])
    stacked = plane.plane_frame(model_a, a, b, c, small, grid=2, margin=0.0, parallel_points=3)
    np.testing.assert_allclose(stacked["test_loss"].to_numpy(dtype=float), one["test_loss"].to_numpy(dtype=float),
                               rtol=1e-4, equal_nan=True)


def test_convex_toy_has_a_convex_plane(small):
    """A linear softmax classifier: its cross-entropy is convex in the weights, so on any plane too."""
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Flatten(), nn.Linear(math.prod(SHAPE), small.num_classes)) for _ in range(3)]
    with torch.no_grad():
        for net in nets:
            for p in net.parameters():
                p.mul_(20.0)  # far apart: a visibly curved surface
    a, b, c = (trainable_state(n) for n in nets)
    frame = plane.plane_frame(nets[0], a, b, c, small, grid=7, margin=0.3)
    table = frame[frame["kind"] == "grid"].pivot(index="j", columns="i", values="test_loss").to_numpy()
    tol = 1e-5 * np.abs(table).max()
    assert (np.diff(table, 2, axis=0) >= -tol).all() and (np.diff(table, 2, axis=1) >= -tol).all()
    assert np.diff(table, 2, axis=1).max() > 100 * tol  # and not trivially flat


def test_plane_needs_a_curve_and_valid_settings():
    with pytest.raises(ConfigError, match=r"trial.eval.plane: .*needs a curve"):
        parse({"eval": {"plane": {"grid": 5}}})
    with pytest.raises(ConfigError, match=r"trial.eval.plane: grid must be an integer in \[2, 101\]"):
        parse({"curve": {}, "eval": {"plane": {"grid": 1}}})
    assert parse({"curve": {}, "eval": {"plane": {}}}).eval.plane.grid == 11
    # the option is an extra output: off, it leaves a trial's identity (and so its key) as before
    assert "plane" not in parse({"curve": {}}).identity()["eval"]
    assert parse({"curve": {}, "eval": {"plane": {"grid": 5}}}).identity()["eval"]["plane"]["grid"] == 5


def test_trial_with_a_plane_writes_its_grid_and_contour_and_logs_merge_metrics(tmp_path):
    config = {"data": {"name": "synthetic", "options": {"in_shape": list(SHAPE), "n_train": 96, "n_test": 48}},
              "model": {"arch": "mlp", "width": 0.0625}, "train": {"epochs": 1, "batch_size": 32},
              "seeds": [0, 1], "align": {"method": "weight"},
              "curve": {"kind": "bezier", "bends": 3, "train": {"epochs": 1, "batch_size": 32}},
              "eval": {"points": 3, "plane": {"grid": 3, "margin": 0.1}, "attack": {"eps": 0.05, "steps": 1}},
              "device": "cpu"}
    result = trial.run(config)
    frame = result["plane"]
    assert isinstance(frame, pd.DataFrame) and (frame["kind"] == "grid").sum() == 9
    assert set(frame["kind"]) == {"grid", *plane.MARKERS}
    assert "plane" in result["timings"]
    # ensemble and merge metrics on every path, clean and robust (study.core.merging; tests/test_merging.py)
    metrics = result["metrics"]
    assert merging.metric_names(["linear", "bezier"], robust_splits=["test"]) <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in metrics if k.endswith("_acc") and ("merge" in k or "ensemble" in k))
    assert not parse({**config, "eval": {"merge": False}}).eval.merge

    class Item:  # what result_record needs of a planned trial
        key, factors = "k", {"seeds": [0, 1]}
    record = result_record(Item, result)
    assert "plane" not in record and "profiles" not in record
    artifacts.write_trial(tmp_path, result["profiles"], record, plane=frame)
    written = pd.read_csv(tmp_path / "plane.csv")
    assert len(written) == len(frame) and (tmp_path / "plane.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "result.json").is_file()
