"""Every split a trial config accepts (train, val, test) gets its clean and robust metrics.

``eval.robust_splits`` accepts val; a robust val profile that produced no metric would be a silent hole in a
sweep's results.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study.core import data as datasets
from study.core import metrics, models, trial
from study.core.attacks import AttackConfig
from study.core.config import parse
from study.core.evaluate import path_profile
from study.core.paths import Path, trainable_state

ALL = ("train", "val", "test")


def _profile(clean: tuple[str, ...], robust: tuple[str, ...]) -> pd.DataFrame:
    t = np.linspace(0.0, 1.0, 5)
    columns: dict[str, np.ndarray] = {"t": t, "segment_length": np.r_[0.0, np.full(4, 0.25)]}
    for i, split in enumerate(clean):
        columns[f"{split}_loss"] = 0.5 + i + np.sin(np.pi * t)
        columns[f"{split}_acc"] = 0.9 - 0.2 * np.sin(np.pi * t)
    for i, split in enumerate(robust):
        columns[f"robust_{split}_loss"] = 2.0 + i + np.sin(np.pi * t)
        columns[f"robust_{split}_acc"] = 0.5 - 0.3 * np.sin(np.pi * t)
    return pd.DataFrame(columns)


def test_every_split_the_config_accepts_is_a_metrics_split():
    accepted = []
    for split in ("train", "val", "test", "validation"):
        try:
            parse({"eval": {"robust_splits": [split]}})
            accepted.append(split)
        except ValueError:
            pass
    assert tuple(accepted) == ALL
    assert set(accepted) <= set(metrics.SPLITS)


@pytest.mark.parametrize("robust", [("val",), ("train", "val", "test")])
def test_summarize_emits_clean_and_robust_metrics_for_every_split_present(robust):
    summary = metrics.summarize(_profile(ALL, robust), "linear")
    assert set(summary) == set(metrics.metric_names("linear", splits=ALL, robust_splits=robust))
    # the val numbers are val's, not another split's
    assert summary["barrier_chord/linear/val_loss"] == pytest.approx(1.0)  # sin(pi t) peaks at 1 over a flat chord
    assert summary["robust/acc_min/linear/val"] == pytest.approx(0.2)


def test_metric_names_default_is_still_the_clean_splits_a_profile_has_by_default():
    names = metrics.metric_names("linear")
    assert "barrier_chord/linear/train_loss" in names and "barrier_chord/linear/test_loss" in names
    assert not any("/val" in n for n in names)


@pytest.fixture(scope="module")
def images():
    return datasets.load("synthetic", in_shape=(1, 6, 6), n_train=80, n_test=24, val_fraction=0.25)


def test_a_path_profile_with_robust_val_gives_clean_and_robust_val_metrics(images):
    a, b = (models.build("mlp", num_classes=images.num_classes, in_shape=images.in_shape, seed=s, width=0.0625)
            for s in (0, 1))
    profile = path_profile(a, Path(trainable_state(a), trainable_state(b)), images, points=3,
                           attack=AttackConfig(eps=0.05, steps=1), robust_splits=("val",))
    assert {"val_loss", "val_acc", "robust_val_loss", "robust_val_acc"} <= set(profile.columns)
    summary = metrics.summarize(profile, "linear")
    assert set(summary) == set(metrics.metric_names("linear", splits=ALL, robust_splits=("val",)))


def test_a_trial_with_robust_val_reports_robust_val_barriers():
    result = trial.run({"data": {"name": "digits"}, "model": {"arch": "mlp", "width": 0.125},
                        "train": {"epochs": 1, "batch_size": 64, "augment": False}, "seeds": [0, 1],
                        "eval": {"points": 3, "attack": {"eps": 0.03, "steps": 1}, "robust_splits": ["val"]},
                        "device": "cpu"})
    m = result["metrics"]
    for key in ("robust/barrier_chord/linear/val_loss", "robust/acc_min/linear/val", "barrier_chord/linear/val_loss",
                "barrier_chord/linear/test_loss"):
        assert key in m, key
    assert not any(k.startswith("robust/") and "/test" in k for k in m)  # only the robust splits asked for
