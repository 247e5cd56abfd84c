"""The offline data sets are learnable by the models: the floor every barrier measurement stands on."""

from __future__ import annotations

import pytest

from study import data as datasets
from study import models
from study.evaluate import evaluate
from study.train import Recipe, train


@pytest.mark.parametrize("name, epochs, floor", [
    ("digits", 10, 0.90),    # measured 0.975 (MLP 3x256, LayerNorm, GELU; 2 s on one CPU thread)
    ("mnist1d", 30, 0.55),   # measured 0.72; chance is 0.10 (7.5 s on one CPU thread)
])
def test_mlp_learns_the_offline_data_sets(name, epochs, floor):
    data = datasets.load(name)
    model = models.build("mlp", num_classes=data.num_classes, in_shape=data.in_shape, mean=data.mean,
                         std=data.std, width=0.5, seed=0)
    train(model, data, Recipe(epochs=epochs, batch_size=64, lr=0.05, augment=False), seed=0)
    accuracy = evaluate(model, data, "test")["acc"]
    print(f"{name}: test accuracy {accuracy:.3f}")
    assert accuracy > floor
