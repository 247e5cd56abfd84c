"""STE matching (Git Re-Basin): keeps a planted permutation, beats weight matching's midpoint, fails early."""

from __future__ import annotations

import copy

import pytest
import torch

from study.core import align, models
from study.core import data as datasets
from study.core import permutation as P
from study.core.align import ste
from study.core.evaluate import path_profile
from study.core.paths import Path, trainable_state
from study.core.train import Recipe, train


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


def _trained(digits, arch: str, seed: int, width: float, epochs: int) -> torch.nn.Module:
    model = models.build(arch, num_classes=10, in_shape=digits.in_shape, width=width, seed=seed,
                         mean=digits.mean, std=digits.std)
    train(model, digits, Recipe(epochs=epochs, batch_size=64, lr=0.05, augment=False), seed=seed, validate=False)
    return model.eval()


@pytest.fixture(scope="module")
def pair(digits):
    """Two LayerNorm MLPs (64 units per layer) trained from different seeds."""
    return _trained(digits, "mlp", 0, 0.125, 4), _trained(digits, "mlp", 1, 0.125, 4)


def _planted(model: torch.nn.Module) -> tuple[torch.nn.Module, dict]:
    perms = P.random(model.permutation_spec(), torch.Generator().manual_seed(5), model=model)
    return P.apply(model, perms), perms


def _midpoint_train_loss(model_a, model_b, perms, digits) -> float:
    """Train loss of θ(½) over the whole train split, as a profile evaluates it (not STE's own objective)."""
    path = Path(trainable_state(model_a), trainable_state(P.apply(model_b, perms)), kind="linear")
    return float(path_profile(model_a, path, digits, points=3).iloc[1]["train_loss"])


def test_projection_recovers_the_permutation_onto_a_permuted_copy(pair):
    """The forward pass's LAP projection: relaxed weights equal to A, B a permuted A -> the planted inverse."""
    model_a = pair[0]
    model_b, planted = _planted(model_a)
    spec = model_a.permutation_spec()
    relaxed, b = trainable_state(model_a), trainable_state(model_b)
    spec_b = P.PermutationSpec({k: spec.axes[k] for k in spec.axes if k in b})
    start = P.identity(spec.sizes(model_a.state_dict()))
    assert P.is_identity(P.compose(planted, ste._project(spec_b, relaxed, b, start, max_sweeps=100)))


@pytest.mark.parametrize("arch, width, epochs, steps", [("mlp", 0.125, 0, 20), ("resnet20", 0.25, 1, 5)],
                         ids=["mlp", "resnet20"])
def test_planted_permutation_is_recovered_exactly(digits, pair, arch, width, epochs, steps):
    model_a = pair[0] if arch == "mlp" else _trained(digits, arch, 0, width, epochs)
    model_b, planted = _planted(model_a)
    result = align.match(model_a, model_b, method="ste", data=digits, steps=steps, eval_every=5)
    assert result.method == "ste"
    assert P.is_identity(P.compose(planted, result.perms))
    aligned = P.apply(model_b, result.perms)
    for key, value in model_a.state_dict().items():
        assert torch.allclose(value.float(), aligned.state_dict()[key].float()), key
    d = result.diagnostics
    assert d["ste_changed_fraction"] == 0.0 and d["ste_loss_final"] == d["ste_loss_init"]
    assert d["ste_steps"] == steps and d["function_preserving"] == 1.0


def test_midpoint_loss_is_lower_than_weight_matching_on_trained_endpoints(digits, pair):
    model_a, model_b = pair
    weight = align.match(model_a, model_b, method="weight")
    result = align.match(model_a, model_b, method="ste", data=digits, steps=50)
    d = result.diagnostics
    loss_weight = _midpoint_train_loss(model_a, model_b, weight.perms, digits)
    loss_ste = _midpoint_train_loss(model_a, model_b, result.perms, digits)
    print(f"\nmidpoint train loss: weight matching {loss_weight:.4f}, STE {loss_ste:.4f}; STE objective "
          f"{d['ste_loss_init']:.4f} -> {d['ste_loss_final']:.4f}, changed {d['ste_changed_fraction']:.2f}")
    assert d["ste_loss_final"] < d["ste_loss_init"]  # the steps found better permutations than the start
    assert 0 < d["ste_changed_fraction"] < 1 and d["ste_candidates"] > 1
    assert loss_ste <= 0.95 * loss_weight  # measured on the whole train split, not STE's fixed batches
    assert all(isinstance(v, float) for v in d.values())  # they become MLflow metrics


def test_seeded_and_reproducible(digits, pair):
    runs = [align.match(*pair, method="ste", data=digits, steps=20, eval_every=5, seed=3) for _ in range(2)]
    assert all(torch.equal(runs[0].perms[p], runs[1].perms[p]) for p in runs[0].perms)
    assert runs[0].diagnostics["ste_loss_final"] == runs[1].diagnostics["ste_loss_final"]


@pytest.mark.parametrize("options, message", [
    ({"steps": 0}, r"ste: steps must be an integer in \[1, inf\), got 0"),
    ({"batch_size": 1.5}, r"ste: batch_size must be an integer"),
    ({"lr": -1.0}, r"ste: lr must be a number in \[0, inf\), got -1.0"),
    ({"weight_init": "yes"}, r"ste: weight_init must be true or false"),
    ({"stpes": 3}, r"unknown option 'stpes' of alignment method 'ste' \(did you mean 'steps'\?\)"),
])
def test_bad_options_fail_before_any_compute(monkeypatch, digits, options, message):
    monkeypatch.setattr(ste, "weight_matching", lambda *a, **k: pytest.fail("computed despite bad options"))
    model = models.build("mlp", num_classes=10, in_shape=digits.in_shape, width=0.125, seed=0)
    with pytest.raises(ValueError, match=message):
        align.match(model, copy.deepcopy(model), method="ste", data=digits, **options)


def test_ste_needs_the_whole_dataset(digits):
    model = models.build("mlp", num_classes=10, in_shape=digits.in_shape, width=0.125, seed=0)
    with pytest.raises(ValueError, match=r"'ste' needs data \(the whole Dataset\), got Tensor"):
        align.match(model, model, method="ste", data=digits.batch("train", slice(0, 10))[0])
