"""Ensembles and merged models (study.core.merging) on known answers.

Identical endpoints: the ensemble's averaged softmax is the endpoint's own, and the merged θ(½) is the endpoint,
so ensemble = merge = endpoint, clean and under PGD. Different endpoints: the ensemble's accuracy is the argmax of
the two softmaxes averaged by hand, and the linear merge equals the path profile's row at t = ½.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from study.core import data as datasets, merging, models
from study.core.attacks import AttackConfig
from study.core.evaluate import evaluate, path_profile
from study.core.paths import Path, trainable_state

SHAPE = (1, 6, 6)
ATTACK = AttackConfig(eps=0.1, steps=2)


@pytest.fixture(scope="module")
def small():
    return datasets.load("synthetic", in_shape=SHAPE, n_train=96, n_test=64, val_fraction=0.0)


def _net(data, seed: int, norm: str = "none"):
    return models.build("mlp", num_classes=data.num_classes, in_shape=data.in_shape, seed=seed, mean=data.mean,
                        std=data.std, width=0.0625, norm=norm).eval()


def test_identical_endpoints_ensemble_equals_merge_equals_endpoint(small):
    model = _net(small, 0)
    twin = copy.deepcopy(model)
    theta = trainable_state(model)
    endpoint = evaluate(model, small, "test")
    robust = evaluate(model, small, "test", attack=ATTACK, generator=torch.Generator().manual_seed(3))
    ensemble = merging.ensemble_metrics(model, twin, small, attack=ATTACK, seed=3)
    merged = merging.merge_metrics(model, Path(theta, theta), "linear", small, attack=ATTACK, seed=3)
    for out, prefix in ((ensemble, "ensemble"), (merged, "merge/linear")):
        assert out[f"{prefix}/test_acc"] == endpoint["acc"]
        assert out[f"{prefix}/test_loss"] == pytest.approx(endpoint["loss"], rel=1e-5)
        assert out[f"robust/{prefix}/test_acc"] == pytest.approx(robust["acc"], abs=1.5 / small.size("test"))
        assert out[f"robust/{prefix}/test_loss"] == pytest.approx(robust["loss"], rel=1e-3)
    assert set(ensemble) | set(merged) == merging.metric_names(["linear"], robust_splits=["test"])


def test_ensemble_is_the_average_of_the_softmaxes(small):
    a, b = _net(small, 0), _net(small, 1)
    x, y = small.batch("test", slice(0, small.size("test")))
    with torch.no_grad():
        probs = (F.softmax(a(x), dim=1) + F.softmax(b(x), dim=1)) / 2
    expected_acc = float((probs.argmax(dim=1) == y).double().mean())
    expected_loss = float(-probs[torch.arange(len(y)), y].log().mean())
    out = merging.ensemble_metrics(a, b, small)
    assert out["ensemble/test_acc"] == pytest.approx(expected_acc)
    assert out["ensemble/test_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert "robust/ensemble/test_acc" not in out  # no attack, no robust numbers


def test_linear_merge_is_the_profile_midpoint_after_bn_recalibration(small):
    a, b = _net(small, 0, "batchnorm"), _net(small, 1, "batchnorm")
    path = Path(trainable_state(a), trainable_state(b))
    profile = path_profile(a, path, small, points=3)
    middle = profile[profile["t"] == 0.5].iloc[0]
    out = merging.merge_metrics(a, path, "linear", small)
    assert out["merge/linear/test_acc"] == pytest.approx(middle["test_acc"])
    assert out["merge/linear/test_loss"] == pytest.approx(middle["test_loss"], rel=1e-5)
    # and it is not the endpoints' running statistics that were used: those give another number
    raw = copy.deepcopy(a)
    with torch.no_grad():
        for name, p in raw.named_parameters():
            p.copy_(path.weights(0.5)[name])
    assert evaluate(raw, small, "test")["loss"] != pytest.approx(out["merge/linear/test_loss"], rel=1e-3)


# A whole trial logs these metrics on every path: tests/test_plane.py::test_trial_with_a_plane_... runs one trial
# for both (a trial is the slow part of either test).
