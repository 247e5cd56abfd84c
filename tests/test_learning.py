"""The offline data sets are learnable by the models: the floor every barrier measurement stands on."""

from __future__ import annotations

import pytest

from study.core import data as datasets
from study.core import models
from study.core.evaluate import evaluate
from study.core.train import Recipe, train
from tests.support.threads import torch_threads


@pytest.mark.parametrize("name, width, epochs, floor", [
    # MLP 3x256, LayerNorm, GELU: measured 0.975; 2 s on one CPU thread
    ("digits", 0.5, 10, 0.90),
    # MLP 3x128 for 5 epochs: measured 0.537 / 0.539 / 0.568 for seeds 0 / 1 / 2 (3x256 for 30 epochs: 0.72);
    # chance is 0.10, sd ≈ 0.016 on the 1000 test signals; 0.4 s on one CPU thread
    ("mnist1d", 0.25, 5, 0.45),
])
def test_mlp_learns_the_offline_data_sets(name, width, epochs, floor):
    data = datasets.load(name)
    model = models.build("mlp", num_classes=data.num_classes, in_shape=data.in_shape, mean=data.mean,
                         std=data.std, width=width, seed=0)
    with torch_threads(1):
        train(model, data, Recipe(epochs=epochs, batch_size=64, lr=0.05, augment=False), seed=0)
    accuracy = evaluate(model, data, "test")["acc"]
    print(f"{name}: test accuracy {accuracy:.3f}")
    assert accuracy > floor
