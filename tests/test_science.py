"""The papers' claims as property tests on small offline nets (the fast subset of ``bench/science.py``).

Thresholds sit far from the measured values (in the comments; digits, one seed pair, one CPU thread) and far
from what a broken piece would give: alignment that does not permute leaves the unaligned barrier; a W-Asym net
whose fixed entries are ignored has the standard net's barrier; a BN policy that keeps the endpoints' running
statistics collapses TinyTen's aligned midpoint (its barrier then exceeds the unaligned one).
"""

from __future__ import annotations

from typing import Any

import pytest

from study.core import trial
from study.store.endpoints import EndpointStore
from tests.support.threads import torch_threads

LINEAR = "barrier_chord/linear/test_loss"
RECIPE = {"epochs": 8, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4, "augment": False}


@pytest.fixture(scope="module")
def barrier(tmp_path_factory):
    """``barrier(arch, width, symmetry, method) -> linear test-loss barrier`` (endpoints trained once)."""
    store = EndpointStore(tmp_path_factory.mktemp("endpoints"))
    cache: dict[tuple, dict[str, Any]] = {}

    def run(arch: str, width: float, symmetry: str = "standard", method: str = "none") -> dict[str, float]:
        key = (arch, width, symmetry, method)
        if key not in cache:
            config = {"data": {"name": "digits"}, "model": {"arch": arch, "width": width, "symmetry": symmetry},
                      "train": RECIPE, "seeds": [0, 1], "align": {"method": method, "samples": 500},
                      "eval": {"points": 5}, "device": "cpu"}
            with torch_threads(1):
                cache[key] = trial.run(config, store=store)["metrics"]
        return cache[key]

    return run


def test_mlp_alignment_and_w_asym_each_remove_most_of_the_barrier(barrier):
    standard = barrier("mlp", 0.25)[LINEAR]                              # measured 0.25 (5-point grid)
    weight = barrier("mlp", 0.25, method="weight")[LINEAR]               # 0.023
    activation = barrier("mlp", 0.25, method="activation")[LINEAR]
    w_asym = barrier("mlp", 0.25, symmetry="w_asym")                     # 0.026, accuracy 0.958 vs 0.975
    assert standard > 0.1
    assert weight < 0.4 * standard and activation < 0.4 * standard
    assert w_asym[LINEAR] < 0.4 * standard
    assert w_asym["endpoint_a/test_acc"] > barrier("mlp", 0.25)["endpoint_a/test_acc"] - 0.05


def test_tinyten_activation_matching_with_bn_recalibration_lowers_the_barrier(barrier):
    unaligned = barrier("tinyten", 0.5)[LINEAR]                          # measured 2.31
    aligned = barrier("tinyten", 0.5, method="activation")               # 0.469
    assert unaligned > 1.0
    assert aligned[LINEAR] < 0.5 * unaligned
    assert aligned["align/applied"] == 1.0
