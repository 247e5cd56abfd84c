"""Alignment recovers planted permutations; the linear barrier after alignment to a permuted copy is 0."""

from __future__ import annotations

import pytest
import torch

from study.core import align, bn, models
from study.core import permutation as P
from study.core.align import weight


def _trained(arch: str, shape: tuple[int, ...], width: float, steps: int = 20, seed: int = 0,
             **options) -> torch.nn.Module:
    """A model after some SGD on a fixed random task, so units are distinct and BN statistics are real."""
    model = models.build(arch, num_classes=10, in_shape=shape, width=width, seed=seed, **options)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(256, *shape, generator=g), torch.randint(0, 10, (256,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, 256, (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _planted(model: torch.nn.Module, seed: int = 5) -> tuple[torch.nn.Module, dict]:
    perms = P.random(model.permutation_spec(), torch.Generator().manual_seed(seed), model=model)
    return P.apply(model, perms), perms


CASES = [("mlp", (1, 8, 8), 0.125, {}), ("tinyten", (3, 12, 12), 1.0, {})]


@pytest.mark.parametrize("method", ["activation", "weight"])
@pytest.mark.parametrize("arch, shape, width, options", CASES, ids=[c[0] for c in CASES])
def test_planted_permutation_is_recovered_exactly(arch, shape, width, options, method):
    model_a = _trained(arch, shape, width, **options)
    model_b, planted = _planted(model_a)
    data = torch.rand(300, *shape, generator=torch.Generator().manual_seed(9))
    result = align.match(model_a, model_b, method=method, data=data)
    assert P.is_identity(P.compose(planted, result.perms))
    aligned = P.apply(model_b, result.perms)
    for key, value in model_a.state_dict().items():
        assert torch.allclose(value.float(), aligned.state_dict()[key].float()), key
    if method == "activation":
        assert result.diagnostics["mean_corr_after"] == pytest.approx(1.0, abs=1e-3)
        assert result.diagnostics["mean_corr_before"] < 0.5
    assert result.diagnostics["function_preserving"] == 1.0


def test_resnet_weight_matching_reaches_at_least_the_planted_objective():
    model_a = _trained("resnet20", (3, 8, 8), 0.5, steps=10)
    model_b, planted = _planted(model_a)
    result = align.match(model_a, model_b, method="weight", seed=1, restarts=2)
    spec = model_a.permutation_spec()
    params_a, params_b = weight._params(model_a, spec), weight._params(model_b, spec)
    planted_objective = weight._objective(spec, params_a, params_b, P.inverse(planted))
    assert result.diagnostics["objective"] >= planted_objective - 1e-6 * abs(planted_objective)
    assert result.diagnostics["objective"] > result.diagnostics["objective_identity"]


def test_resnet_activation_matching_recovers_tied_streams():
    model_a = _trained("resnet20", (3, 8, 8), 0.5, steps=10)
    model_b, planted = _planted(model_a)
    result = align.match(model_a, model_b, method="activation", data=torch.rand(200, 3, 8, 8))
    assert P.is_identity(P.compose(planted, result.perms))


def test_unaligned_is_identity_and_bad_requests_fail_early():
    model = _trained("mlp", (40,), 0.125, steps=1)
    assert P.is_identity(align.match(model, model, method="none").perms)
    with pytest.raises(ValueError, match=r"unknown alignment method 'wieght' \(did you mean 'weight'\?\)"):
        align.match(model, model, method="wieght")
    with pytest.raises(ValueError, match="needs data"):
        align.match(model, model, method="activation")
    other = models.build("mlp", num_classes=10, in_shape=(40,), width=0.25)
    with pytest.raises(ValueError, match="same architecture"):
        align.match(model, other, method="weight")


def test_alignment_of_asymmetric_nets_is_flagged_as_diagnostic():
    model_a = models.build("mlp", symmetry="w_asym", num_classes=10, in_shape=(40,), width=0.125, seed=0)
    model_b = models.build("mlp", symmetry="w_asym", num_classes=10, in_shape=(40,), width=0.125, seed=1)
    result = align.match(model_a, model_b, method="weight")
    assert result.diagnostics["function_preserving"] == 0.0


def test_bn_recalibration_recovers_training_statistics():
    model = _trained("tinyten", (3, 12, 12), 1.0, steps=5)
    data = torch.rand(512, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    bn.recalibrate(model, data, batch_size=128)
    first = [layer.running_mean.clone() for layer in bn.batchnorm_layers(model)]
    for layer in bn.batchnorm_layers(model):
        layer.running_mean.fill_(3.0)
    assert bn.recalibrate(model, data, batch_size=128) and not model.training
    for layer, expected in zip(bn.batchnorm_layers(model), first):
        assert torch.allclose(layer.running_mean, expected, atol=1e-6)
    # The exact statistics of the first layer's pre-activations, computed by hand.
    conv0 = model.convs[0](model.normalize(data))
    assert torch.allclose(bn.batchnorm_layers(model)[0].running_mean, conv0.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not bn.recalibrate(models.build("mlp", num_classes=10, in_shape=(40,), width=0.125), data[:, 0, 0])


@pytest.mark.parametrize("method", ["activation", "weight"])
def test_linear_barrier_after_aligning_a_permuted_copy_is_zero(method):
    """The whole chain on real data: align, interpolate, recalibrate BN, evaluate -> barrier 0."""
    from study.core import data as datasets
    from study.core import metrics
    from study.core.evaluate import path_profile
    from study.core.paths import Path, trainable_state

    from study.core.train import Recipe, train

    digits = datasets.load("digits")
    model_a = models.build("tinyten", num_classes=10, in_shape=digits.in_shape, mean=digits.mean, std=digits.std,
                           width=0.5, seed=0)
    train(model_a, digits, Recipe(epochs=3, batch_size=64, augment=False), seed=0)
    model_b, _ = _planted(model_a)
    result = align.match(model_a, model_b, method=method, data=digits.batch("train", slice(0, 300))[0])
    aligned = P.apply(model_b, result.perms)
    unaligned = metrics.summarize(path_profile(model_a, Path(trainable_state(model_a), trainable_state(model_b)),
                                               digits, points=5), "linear")
    profile = path_profile(model_a, Path(trainable_state(model_a), trainable_state(aligned)), digits, points=5)
    summary = metrics.summarize(profile, "linear")
    assert abs(summary["barrier_chord/linear/test_loss"]) <= 1e-5
    assert abs(summary["barrier_chord/linear/train_loss"]) <= 1e-5
    assert unaligned["barrier_chord/linear/test_loss"] > 0.01  # the planted permutation did create a barrier


@pytest.mark.parametrize("arch, shape, width", [("tinyten", (3, 8, 8), 1.0), ("resnet20", (3, 8, 8), 0.25)])
def test_activation_matching_equals_an_independent_float64_computation(arch, shape, width):
    """Batch moments in float32, totals in float64: on two *different* trained nets every group's permutation
    reaches the optimum of numpy's float64 Pearson matrix and equals the float64 permutation on every live unit
    (dead ReLU units correlate 0 with everything: their order among themselves is a tie either way)."""
    from scipy.optimize import linear_sum_assignment

    model_a, model_b = _trained(arch, shape, width, steps=10), _trained(arch, shape, width, steps=10, seed=1)
    data = torch.rand(160, *shape, generator=torch.Generator().manual_seed(3))
    found = align.match(model_a, model_b, method="activation", data=data, batch_size=64).perms
    spec = model_a.permutation_spec()
    acts: dict[str, dict[str, torch.Tensor]] = {"a": {}, "b": {}}
    for side, model in (("a", model_a), ("b", model_b)):
        modules = dict(model.named_modules())
        hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n, side=side: acts[side].__setitem__(n, o))
                 for names in spec.activations.values() for n in names]
        with torch.no_grad():
            model(data)
        for h in hooks:
            h.remove()
    for group, names in spec.activations.items():
        total, live = 0, None
        for n in names:
            a, b = (acts[s][n].movedim(1, -1).reshape(-1, acts[s][n].shape[1]).double().numpy() for s in "ab")
            unit_live = a.std(0) > 1e-3
            live = unit_live if live is None else live | unit_live
            a = (a - a.mean(0)) / (a.std(0) + 1e-5)
            b = (b - b.mean(0)) / (b.std(0) + 1e-5)
            total = total + a.T @ b / len(a)
        rows, expected = linear_sum_assignment(total, maximize=True)
        got = found[group].numpy()
        assert total[rows, got].sum() >= total[rows, expected].sum() - 1e-6, group
        assert live.sum() >= len(live) // 2, f"{group}: the test needs mostly live units"
        assert (got[live] == expected[live]).all(), group

