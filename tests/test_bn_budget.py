"""``eval.bn_samples``: BatchNorm recalibrated on the first N clean training images, recorded as the policy.

Without a budget (None, the default) or with one that covers the training split, every number is bit for bit
what the whole-split policy gives; with a budget k < split, each BN layer's running statistics are exactly those
of the first k images (an independent float64 computation), at every place that recalibrates evaluated weights
(path points one at a time and stacked, REPAIR's endpoints, the plane's grid, the merged midpoint). The budget
is part of a trial's identity and its ``bn_policy``, never of an endpoint's.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from study.core import bn, merging, models, trial
from study.core import data as datasets
from study.core.config import ConfigError, EvalConfig, parse
from study.core.ensemble import StackedModel
from study.core.evaluate import (
    EVAL_BATCH_SIZE,
    clean_batches,
    evaluate,
    load_weights,
    path_profile,
    recalibration_batches,
)
from study.core.paths import Path, trainable_state
from study.store import EndpointStore
from study.sweep.records import resolved_config
from study.sweep.spec import trial_key
from study.tracking.tracker import flatten_params

BUDGET = 300  # not a multiple of the batch (256 + 44), far below digits' 1,293 training images


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


def _tinyten(data: datasets.Dataset, seed: int) -> nn.Module:
    return models.build("tinyten", num_classes=10, in_shape=data.in_shape, mean=data.mean, std=data.std,
                        width=0.25, seed=seed).eval()


def _profile_by_hand(model: nn.Module, path: Path, data: datasets.Dataset, points: int,
                     bn_samples: int | None) -> pd.DataFrame:
    """The profile's clean columns the way the code computed them before the budget existed: load θ(t),
    recalibrate on clean_batches of the training split (cut at ``bn_samples``), evaluate train and test."""
    model = copy.deepcopy(model)
    rows = []
    for t in torch.linspace(0.0, 1.0, points).tolist():
        with torch.no_grad():
            load_weights(model, {k: v.detach() for k, v in path.weights(t).items()})
        bn.recalibrate(model, clean_batches(data, "train", EVAL_BATCH_SIZE, max_samples=bn_samples))
        row = {"t": t}
        for split in ("train", "test"):
            result = evaluate(model, data, split)
            row[f"{split}_loss"], row[f"{split}_acc"] = result["loss"], result["acc"]
        rows.append(row)
    return pd.DataFrame(rows)


def test_no_budget_or_one_covering_the_split_is_bit_identical_to_the_whole_split(digits):
    a, b = _tinyten(digits, 0), _tinyten(digits, 1)
    path = Path(trainable_state(a), trainable_state(b))
    n_train = digits.size("train")
    expected = _profile_by_hand(a, path, digits, 3, None)
    columns = list(expected.columns)
    default = path_profile(a, path, digits, points=3)
    pd.testing.assert_frame_equal(default[columns], expected, check_exact=True)
    for budget in (None, n_train, n_train + 1, 10**6):
        got = path_profile(a, path, digits, points=3, bn_samples=budget)
        pd.testing.assert_frame_equal(got, default, check_exact=True, obj=f"bn_samples={budget}")
    stacked = path_profile(a, path, digits, points=3, parallel_points=3)
    for budget in (n_train, 10**6):
        got = path_profile(a, path, digits, points=3, parallel_points=3, bn_samples=budget)
        pd.testing.assert_frame_equal(got, stacked, check_exact=True, obj=f"stacked, bn_samples={budget}")


def test_a_budget_changes_the_profile_exactly_as_recalibrating_on_the_first_images(digits):
    a, b = _tinyten(digits, 0), _tinyten(digits, 1)
    path = Path(trainable_state(a), trainable_state(b))
    got = path_profile(a, path, digits, points=3, bn_samples=BUDGET)
    expected = _profile_by_hand(a, path, digits, 3, BUDGET)
    pd.testing.assert_frame_equal(got[list(expected.columns)], expected, check_exact=True)
    full = path_profile(a, path, digits, points=3)
    assert (got["test_loss"] - full["test_loss"]).abs().max() > 1e-6  # the budget is not ignored
    stacked = path_profile(a, path, digits, points=3, bn_samples=BUDGET, parallel_points=3)
    pd.testing.assert_frame_equal(stacked, got, rtol=1e-4, atol=1e-5, obj="stacked with a budget")


class OneBN(nn.Module):
    """A conv, one BatchNorm, a head: the BN layer's input is the conv's output, computable in float64."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.norm(self.conv(x))).flatten(1))


def _reference(model: OneBN, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance of the conv's output on ``images``, in float64."""
    out = F.conv2d(images.double(), model.conv.weight.double(), model.conv.bias.double(), padding=1)
    values = out.transpose(0, 1).reshape(out.shape[1], -1)
    return values.mean(dim=1), values.var(dim=1, unbiased=True)


def _assert_statistics(layer: nn.Module, mean: torch.Tensor, var: torch.Tensor) -> None:
    torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-5, atol=1e-6)


def test_a_budget_gives_the_exact_statistics_of_the_first_images(digits):
    model = OneBN()
    with torch.no_grad():
        model.norm.running_mean.normal_()  # statistics that recalibration must replace
    first = digits.batch("train", slice(0, BUDGET))[0]
    mean_k, var_k = _reference(model, first)
    mean_all, var_all = _reference(model, digits.batch("train")[0])
    assert (mean_k - mean_all).abs().max() > 1e-3 and (var_k - var_all).abs().max() > 1e-3

    theta = trainable_state(model)  # a path from the model to itself: its midpoint is the model
    merged = merging.merged_model(model, Path(theta, theta), digits, bn_samples=BUDGET)
    _assert_statistics(merged.norm, mean_k, var_k)
    assert int(merged.norm.num_batches_tracked) == 2  # 256 + 44 images
    full = merging.merged_model(model, Path(theta, theta), digits)
    _assert_statistics(full.norm, mean_all, var_all)

    stacked = StackedModel(model, [theta, theta])
    stacked.recalibrate(recalibration_batches(digits, EVAL_BATCH_SIZE, BUDGET))
    for i in range(2):
        _assert_statistics(stacked.point(i).norm, mean_k, var_k)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "x"])
def test_config_rejects_a_bad_budget(value):
    with pytest.raises(ConfigError, match=r"trial\.eval: bn_samples must be an integer"):
        parse({"eval": {"bn_samples": value}})
    with pytest.raises(ValueError, match="bn_samples"):
        EvalConfig(bn_samples=value)
    with pytest.raises(ValueError, match="bn_samples"):
        path_profile(nn.Linear(2, 2), None, None, bn_samples=value)  # checked before anything runs


def test_config_accepts_a_budget():
    assert parse({}).eval.bn_samples is None
    assert parse({"eval": {"bn_samples": 1}}).eval.bn_samples == 1
    assert parse({"eval": {"bn_samples": 2000}}).eval.bn_samples == 2000


def test_policy_string_says_the_budget():
    assert bn.policy(None, 1293) == bn.POLICY
    assert bn.policy(1293, 1293) == bn.POLICY and bn.policy(5000, 1293) == bn.POLICY  # the same pass
    text = bn.policy(256, 1293)
    assert "over one clean train-mode pass of the first 256 training images (of 1293; eval.bn_samples)" in text
    assert text != bn.POLICY and "training data" not in text


def test_the_budget_is_part_of_a_trials_identity_not_of_its_endpoints():
    base = {"model": {"arch": "mlp", "options": {"norm": "batchnorm"}}, "eval": {"points": 5}}
    budget = {**base, "eval": {"points": 5, "bn_samples": 500}}
    assert "bn_samples" not in parse(base).identity()["eval"]  # the default keeps every existing trial key
    assert parse(budget).identity()["eval"]["bn_samples"] == 500
    assert trial_key(budget) != trial_key(base)
    assert trial_key(budget) != trial_key({**base, "eval": {"points": 5, "bn_samples": 400}})
    assert trial_key({**base, "eval": {"points": 5, "bn_samples": None}}) == trial_key(base)
    for seed in (0, 1):
        assert parse(budget).endpoint_key(seed) == parse(base).endpoint_key(seed)
        assert parse(budget).endpoint_description(seed) == parse(base).endpoint_description(seed)


TRIAL = {
    "data": {"name": "digits"},
    "model": {"arch": "mlp", "width": 0.125, "options": {"norm": "batchnorm"}},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "augment": False},
    "seeds": [0, 1],
    "align": {"method": "none"},
    "curve": {"kind": "bezier", "bends": 3, "train": {"epochs": 1, "batch_size": 64}},
    "eval": {"points": 3, "plane": {"grid": 2}, "bn_samples": 100},
    "runtime": {"parallel_points": 2},
    "device": "cpu",
}


def _counting(monkeypatch) -> dict[str, list[int]]:
    """Record how many images every BN recalibration (one model or stacked points) sees."""
    seen: dict[str, list[int]] = {"model": [], "stacked": []}
    real_model, real_stacked = bn.recalibrate, StackedModel.recalibrate

    def count(inputs, kind: str) -> list[torch.Tensor]:
        batches = list(inputs.split(EVAL_BATCH_SIZE) if isinstance(inputs, torch.Tensor) else inputs)
        seen[kind].append(sum(x.shape[0] for x in batches))
        return batches

    monkeypatch.setattr(bn, "recalibrate", lambda model, inputs, **k: real_model(model, count(inputs, "model"), **k))
    monkeypatch.setattr(StackedModel, "recalibrate", lambda self, inputs: real_stacked(self, count(inputs, "stacked")))
    return seen


def test_a_trial_recalibrates_everywhere_on_the_budget_and_records_it(digits, tmp_path, monkeypatch):
    store = EndpointStore(tmp_path / "endpoints")
    seen = _counting(monkeypatch)
    result = trial.run(TRIAL, store=store)
    n_train = digits.size("train")  # the trial's split: the same loader and val hold-out
    # path points stacked two at a time, the plane's 4 grid points, both merged midpoints: all on 100 images
    assert seen["stacked"] and set(seen["stacked"]) == {100}, seen
    assert len(seen["model"]) >= 2 and set(seen["model"]) == {100}, seen  # merges (and the odd point)
    assert result["bn_policy"] == bn.policy(100, n_train) != bn.POLICY
    assert "first 100 training images" in result["bn_policy"]
    assert result["config"]["eval"]["bn_samples"] == 100
    assert flatten_params(resolved_config(TRIAL))["eval.bn_samples"] == "100"  # the MLflow param

    repaired = {**TRIAL, "eval": {**TRIAL["eval"], "repair": True, "plane": None}}
    repaired.pop("runtime")
    seen["model"].clear()
    seen["stacked"].clear()
    result = trial.run(repaired, store=store)
    assert result["endpoints"]["a"]["cached"] and result["endpoints"]["b"]["cached"]  # same endpoints
    # REPAIR: its two endpoints, then every remaining path point one at a time, then the merges
    assert len(seen["model"]) >= 2 + 1 + 1 + 2 and set(seen["model"]) == {100}, seen
    assert not seen["stacked"]

    full = {**TRIAL, "eval": {"points": 3}}
    seen["model"].clear()
    seen["stacked"].clear()
    result = trial.run(full, store=store)
    assert result["endpoints"]["a"]["cached"]
    assert set(seen["model"] + seen["stacked"]) == {n_train}, seen
    assert result["bn_policy"] == bn.POLICY
