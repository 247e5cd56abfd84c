"""Science a researcher gets by default (issue 12): W-Asym defaults as fractions of each layer's fan-in, the
W-Asym alignment diagnostic on effective weights, the curve fit's weight decay decided by the optimizer, and
endpoint quality in every result."""

from __future__ import annotations

import pytest
import torch

from study.core import align, models, trial
from study.core import data as datasets
from study.core import permutation as P
from study.core.align import weight as weight_matching
from study.core.align.base import effective_state
from study.core.config import EvalConfig, parse
from study.core.models import convchain
from study.core.models.layers import AsymLayerDefault, WAsymLayer
from study.core.paths import curve_weight_decay, trainable_state
from study.core.train import Recipe


def _asym(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, WAsymLayer)}


def _logits_change(model, permuted, x) -> float:
    with torch.no_grad():
        before, after = model.eval()(x), permuted.eval()(x)
    return float((after - before).norm() / before.norm())


# ---------------------------------------------------------------------------------------------- W-Asym defaults
@pytest.mark.parametrize("features", [10, 40, 64, 100, 784, 3072])
@pytest.mark.parametrize("width", [0.125, 0.25, 1.0])
def test_mlp_default_n_fix_is_the_public_fraction_of_each_fan_in(features, width):
    """Lim et al.'s MNIST MLP fixes 64 of 784 inputs, 64 of 512 hidden and 256 of 512 head entries per row: the
    defaults keep those shares at every input size and width (not a clipped half of a small input)."""
    model = models.build("mlp", symmetry="w_asym", num_classes=10, in_shape=(features,), width=width)
    intended = {"linears.0": 64 / 784, "linears.1": 64 / 512, "linears.2": 64 / 512, "head": 256 / 512}
    for name, layer in _asym(model).items():
        fan_in = layer.weight[0].numel()
        assert layer.n_fix >= 1 and layer.n_fix < fan_in, name
        assert abs(layer.n_fix - intended[name] * fan_in) <= 0.5 + 1e-9 or layer.n_fix == 1, (name, fan_in)
        fixed_per_row = (layer.asym_mask.flatten(1) == 0).sum(dim=1)
        assert torch.all(fixed_per_row == layer.n_fix), name
    kappas = [m.kappa for m in _asym(model).values()]
    assert kappas == [1.0, 0.5, 0.25, 0.25]  # the public 1, 1, 0.5 with the deeper hidden layers' halved


def test_mlp_defaults_are_exactly_the_public_counts_on_mnist_and_a_share_on_small_inputs():
    mnist = models.build("mlp", symmetry="w_asym", num_classes=10, in_shape=(1, 28, 28))
    assert [m.n_fix for m in _asym(mnist).values()] == [64, 64, 64, 256]
    digits = models.build("mlp", symmetry="w_asym", num_classes=10, in_shape=(1, 8, 8), width=0.25)
    assert [m.n_fix for m in _asym(digits).values()] == [5, 16, 16, 64]  # was 32 (half of 64) before issue 12
    mnist1d = models.build("mlp", symmetry="w_asym", num_classes=10, in_shape=(40,), width=0.25)
    assert [m.n_fix for m in _asym(mnist1d).values()] == [3, 16, 16, 64]  # was 20 of 40


@pytest.mark.parametrize("arch, width", [("tinyten", 0.25), ("tinyten", 0.5), ("tinyten", 1.0), ("vgg11", 0.125)])
def test_conv_chain_default_n_fix_is_the_chosen_fraction(arch, width):
    model = models.build(arch, symmetry="w_asym", num_classes=10, in_shape=(3, 16, 16), width=width)
    for name, layer in _asym(model).items():
        fan_in = layer.weight[0].numel()
        fraction, kappa = ((convchain.HEAD_FRACTION, convchain.HEAD_KAPPA) if name == "head"
                           else (convchain.CONV_FRACTION, convchain.CONV_KAPPA))
        assert abs(layer.n_fix - fraction * fan_in) <= 0.5 or layer.n_fix == 1, (name, fan_in, layer.n_fix)
        assert 1 <= layer.n_fix < fan_in and layer.kappa == kappa, name


def test_resnet_defaults_are_the_public_counts_at_width_1_and_scale_with_width():
    expected = {"stem_conv": 12, "stages.0.0.conv1": 36, "stages.1.0.conv1": 54, "stages.1.1.conv2": 54,
                "stages.1.0.shortcut_conv": 6, "stages.2.0.conv1": 72, "stages.2.0.shortcut_conv": 8, "head": 8}
    full = _asym(models.build("resnet20", symmetry="w_asym", num_classes=10, in_shape=(3, 32, 32)))
    half = _asym(models.build("resnet20", symmetry="w_asym", num_classes=10, in_shape=(3, 32, 32), width=0.5))
    assert {k: full[k].n_fix for k in expected} == expected
    assert {k: half[k].n_fix for k in expected} == {k: v if k == "stem_conv" else v // 2 for k, v in expected.items()}


def test_default_fraction_rounds_and_stays_inside_the_fan_in():
    default = AsymLayerDefault(0.3, 1.0)
    assert [default.n_fix(fan, fan) for fan in (1, 2, 3, 5, 10, 100)] == [0, 1, 1, 2, 3, 30]
    assert AsymLayerDefault(0.9, 1.0, per="out").n_fix(4, 40) == 3  # never the whole row
    assert AsymLayerDefault.public(64, 784, 1.0).n_fix(784, 784) == 64
    with pytest.raises(ValueError, match="fraction must be in"):
        AsymLayerDefault(1.0, 1.0)


def test_explicit_n_fix_and_kappa_still_win_over_the_fractions():
    model = models.build("tinyten", symmetry="w_asym", num_classes=10, in_shape=(1, 8, 8), width=0.5,
                         n_fix={"conv0": 2, "head": 5}, kappa={"conv3": 0.7})
    layers = _asym(model)
    assert layers["convs.0"].n_fix == 2 and layers["head"].n_fix == 5
    assert layers["convs.3"].kappa == 0.7 and layers["convs.4"].kappa == convchain.CONV_KAPPA
    assert models.build("mlp", symmetry="w_asym", num_classes=10, in_shape=(40,), n_fix=7).head.n_fix == 7


@pytest.mark.parametrize("arch, shape, width", [("mlp", (1, 8, 8), 0.25), ("tinyten", (1, 8, 8), 0.5)])
def test_default_w_asym_breaks_the_permutation_symmetry_a_standard_net_has(arch, shape, width):
    """A random permutation of a standard net computes the same function; of a default W-Asym net it does not
    (the fixed entries do not move), so the smaller default fractions still remove the symmetry."""
    x = torch.rand(64, *shape, generator=torch.Generator().manual_seed(3))
    for symmetry, low, high in (("standard", 0.0, 1e-5), ("w_asym", 0.05, float("inf"))):
        model = models.build(arch, symmetry=symmetry, num_classes=10, in_shape=shape, width=width, seed=1)
        perms = P.random(model.permutation_spec(), torch.Generator().manual_seed(0), model=model)
        change = _logits_change(model, P.apply(model, perms), x)
        assert low <= change <= high, (symmetry, change)


# ------------------------------------------------------------------------------ W-Asym alignment diagnostic
def test_weight_matching_reads_effective_weights_of_w_asym_layers():
    model = models.build("mlp", symmetry="w_asym", num_classes=10, in_shape=(1, 8, 8), width=0.25, seed=1)
    params = weight_matching._params(model, model.permutation_spec())
    for name, layer in _asym(model).items():
        effective = layer.effective_weight().detach().double()
        torch.testing.assert_close(params[f"{name}.weight"], effective, rtol=0, atol=0)
        assert torch.any(params[f"{name}.weight"][layer.asym_mask == 0] != 0)  # the raw weight is 0 there
    standard = models.build("mlp", num_classes=10, in_shape=(1, 8, 8), width=0.25, seed=1)
    assert all(torch.equal(v, standard.state_dict()[k]) for k, v in effective_state(standard).items())


def test_w_asym_weight_matching_diagnostic_finds_the_identity():
    """Two independently initialised W-Asym nets share their fixed entries and nothing else: on effective weights
    the shared κZ pulls weight matching to the identity (identity_fraction near 1). On raw weights (zero where
    fixed) it would match independent noise and return a near-random permutation."""
    a, b = (models.build("mlp", symmetry="w_asym", num_classes=10, in_shape=(1, 8, 8), width=0.25, seed=s,
                         mask_seed=5) for s in (1, 2))
    result = align.match(a, b, method="weight")
    assert result.diagnostics["identity_fraction"] > 0.95
    assert result.diagnostics["function_preserving"] == 0.0
    sa, sb = models.build("mlp", num_classes=10, in_shape=(1, 8, 8), width=0.25, seed=1), \
        models.build("mlp", num_classes=10, in_shape=(1, 8, 8), width=0.25, seed=2)
    assert align.match(sa, sb, method="weight").diagnostics["identity_fraction"] < 0.2  # standard nets: no pull


# ---------------------------------------------------------------------------- curve fitting's weight decay
def test_curve_weight_decay_is_the_optimizers_decision():
    sgd = Recipe(optimizer="sgd", weight_decay=5e-4)
    adamw = Recipe(optimizer="adamw", lr=1e-3, weight_decay=1e-2)
    assert curve_weight_decay(sgd) == (Recipe(optimizer="sgd", weight_decay=0.0), 5e-4)
    assert curve_weight_decay(adamw) == (adamw, None)


def _fit(optimizer: str, monkeypatch) -> tuple[dict, list[dict]]:
    cfg = parse({"data": {"name": "digits"}, "model": {"arch": "mlp", "width": 0.125}, "device": "cpu",
                 "curve": {"kind": "bezier", "train": {"epochs": 2, "batch_size": 128, "optimizer": optimizer,
                                                       "lr": 1e-3 if optimizer == "adamw" else 0.05,
                                                       "weight_decay": 0.05, "augment": False}}})
    data = trial.load_data(cfg, torch.device("cpu"))
    a, b = (trial.build_model(cfg, data, s) for s in (0, 1))
    seen: dict = {}
    real_train = trial.train

    def spy(model, data, recipe, **kwargs):
        seen.update(recipe=recipe, extra_loss=kwargs.get("extra_loss"))
        return real_train(model, data, recipe, **kwargs)

    monkeypatch.setattr(trial, "train", spy)
    _, history = trial.fit_curve(cfg, a, trainable_state(a), trainable_state(b), data, torch.device("cpu"))
    return seen, history


def test_adamw_curve_fitting_decays_the_bends_decoupled_without_an_l2_term(monkeypatch):
    seen, history = _fit("adamw", monkeypatch)
    assert seen["extra_loss"] is None  # no (wd/2)‖θ(t)‖² inside Adam
    assert seen["recipe"].optimizer == "adamw" and seen["recipe"].weight_decay == 0.05  # AdamW's own decay
    assert all(h["train_objective"] == h["train_loss"] for h in history)  # an L2 term would make it larger


def test_sgd_curve_fitting_keeps_garipovs_l2_term_on_the_point(monkeypatch):
    seen, history = _fit("sgd", monkeypatch)
    assert seen["extra_loss"] is not None and seen["recipe"].weight_decay == 0.0
    assert all(h["train_objective"] > h["train_loss"] for h in history)


# ---------------------------------------------------------------------------------------- endpoint quality
def test_endpoint_quality_threshold_defaults_to_halfway_from_chance():
    assert EvalConfig().endpoint_acc_threshold(10) == pytest.approx(0.55)
    assert EvalConfig().endpoint_acc_threshold(100) == pytest.approx(0.505)
    assert EvalConfig().endpoint_acc_threshold(2) == pytest.approx(0.75)
    assert EvalConfig(min_endpoint_acc=0.9).endpoint_acc_threshold(10) == 0.9
    assert trial.endpoint_quality(0.97, 0.30, 0.55) == {
        "endpoints/min_test_acc": 0.30, "endpoints/acc_threshold": 0.55, "endpoints/under_trained": 1.0}
    assert trial.endpoint_quality(0.97, 0.96, 0.55)["endpoints/under_trained"] == 0.0
    assert trial.endpoint_quality(0.10, 0.10, 0.0)["endpoints/under_trained"] == 0.0  # 0 flags nothing


def test_a_trial_flags_under_trained_endpoints():
    config = {"data": {"name": "digits"}, "model": {"arch": "mlp", "width": 0.125}, "device": "cpu",
              "train": {"epochs": 1, "batch_size": 256, "lr": 0.01, "augment": False},
              "eval": {"points": 3, "min_endpoint_acc": 0.999}}
    m = trial.run(config)["metrics"]
    assert m["endpoints/min_test_acc"] == min(m["endpoint_a/test_acc"], m["endpoint_b/test_acc"]) < 0.999
    assert m["endpoints/acc_threshold"] == 0.999 and m["endpoints/under_trained"] == 1.0
    # the threshold is a label on the result, not part of what is computed: a default keeps the trial's key
    assert "min_endpoint_acc" not in parse({**config, "eval": {"points": 3}}).identity()["eval"]
    assert parse(config).identity()["eval"]["min_endpoint_acc"] == 0.999
