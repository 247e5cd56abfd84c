"""REPAIR (Jordan et al. 2023): a no-op on a self-path, exact target statistics, a lower aligned barrier."""

from __future__ import annotations

import copy

import pytest
import torch

from study.core import align, metrics, models, repair, trial
from study.core import data as datasets
from study.core import permutation as P
from study.core.evaluate import clean_batches, load_weights, path_profile
from study.core.paths import Path, trainable_state
from study.core.train import Recipe, train


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


def _mlp(digits, seed: int, norm: str) -> torch.nn.Module:
    model = models.build("mlp", num_classes=10, in_shape=digits.in_shape, width=0.125, seed=seed,
                         mean=digits.mean, std=digits.std, norm=norm)
    train(model, digits, Recipe(epochs=4, batch_size=64, lr=0.05, augment=False), seed=seed, validate=False)
    return model.eval()


@pytest.fixture(scope="module")
def aligned(digits):
    """Per norm: model A and the linear path to B weight-matched to A."""
    out = {}
    for norm in ("layernorm", "none"):
        model_a, model_b = _mlp(digits, 0, norm), _mlp(digits, 1, norm)
        perms = align.match(model_a, model_b, method="weight").perms
        out[norm] = model_a, Path(trainable_state(model_a), trainable_state(P.apply(model_b, perms)))
    return out


def _barrier(model, path, digits, **kwargs) -> float:
    return metrics.summarize(path_profile(model, path, digits, points=9, **kwargs), "x")["barrier_chord/x/test_loss"]


def _input_statistics(net, names, digits) -> dict[str, repair.Statistics]:
    """Mean and std of what each named module receives (after any pre-hook), read by plain forward hooks."""
    moments = {name: repair._Moments() for name in names}
    modules = dict(net.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, args, out, n=n: moments[n].add(args[0])) for n in names]
    with torch.no_grad():
        for x in clean_batches(digits, "train", 256):
            net(x)
    for handle in handles:
        handle.remove()
    return {name: m.result() for name, m in moments.items()}


@pytest.mark.parametrize("arch, kind", [("mlp", "linear"), ("mlp", "bezier"), ("resnet20", "linear")])
def test_a_path_from_a_model_to_itself_is_unchanged(digits, aligned, arch, kind):
    data = digits
    if arch == "mlp":
        model = aligned["layernorm"][0]
    else:  # residual streams, GroupNorm, conv maps; a small image set keeps its 19 corrected layers cheap
        data = datasets.load("synthetic", in_shape=[3, 8, 8], n_train=128, n_test=64)
        model = models.build("resnet20", num_classes=10, in_shape=data.in_shape, width=0.25, seed=0,
                             norm="groupnorm", mean=data.mean, std=data.std).eval()
    theta = trainable_state(model)
    path = Path(theta, theta, kind=kind)
    plain = path_profile(model, path, data, points=3)
    repaired = path_profile(model, path, data, points=3, repair=True)
    assert list(plain.columns) == list(repaired.columns)
    assert torch.allclose(torch.tensor(plain.values), torch.tensor(repaired.values), rtol=1e-6, atol=1e-7)


def test_fitted_corrections_give_exactly_the_interpolated_statistics(digits, aligned):
    model_a, path = aligned["none"]
    net = copy.deepcopy(model_a)
    corrector = repair.Repair(net)
    assert corrector.names == ["acts.0", "acts.1", "acts.2"]  # the spec's nonlinearities
    ends = []
    for t in (0.0, 1.0):
        load_weights(net, path.weights(t))
        ends.append(corrector.measure(clean_batches(digits, "train", 256)))
    load_weights(net, path.weights(0.5))
    collapsed = corrector.measure(clean_batches(digits, "train", 256))
    target = repair.interpolate(ends[0], ends[1], 0.5)
    corrector.fit(target, lambda: clean_batches(digits, "train", 256))
    after = _input_statistics(net, corrector.names, digits)
    for name in corrector.names:
        assert torch.allclose(after[name].mean, target[name].mean, atol=1e-5), name
        assert torch.allclose(after[name].std, target[name].std, rtol=1e-4, atol=1e-6), name
    # the variance collapse it removes: the midpoint's units spread less than the endpoints' interpolation
    assert collapsed["acts.2"].std.mean() < 0.9 * target["acts.2"].std.mean()
    corrector.clear()
    assert torch.allclose(_input_statistics(net, ["acts.2"], digits)["acts.2"].std, collapsed["acts.2"].std)


@pytest.mark.parametrize("norm, factor", [("layernorm", 0.95), ("none", 0.5)])
def test_repair_lowers_the_aligned_linear_barrier(digits, aligned, norm, factor):
    model_a, path = aligned[norm]
    plain, repaired = _barrier(model_a, path, digits), _barrier(model_a, path, digits, repair=True)
    print(f"\n{norm} MLP, weight-matched linear test-loss barrier: {plain:.4f} plain, {repaired:.4f} REPAIR")
    assert repaired < factor * plain


def test_stacked_points_fall_back_to_one_at_a_time(digits, aligned):
    model_a, path = aligned["layernorm"]
    one = path_profile(model_a, path, digits, points=5, repair=True)
    stacked = path_profile(model_a, path, digits, points=5, repair=True, parallel_points=4)
    assert one.equals(stacked)


def test_trial_records_the_policy_and_runs_with_ste():
    config = {
        "data": {"name": "digits"},
        "model": {"arch": "mlp", "width": 0.125, "options": {"norm": "none", "act": "relu"}},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "augment": False},
        "seeds": [0, 1],
        "align": {"method": "ste", "options": {"steps": 5, "eval_every": 5}},
        "eval": {"points": 3, "repair": True},
        "device": "cpu",
    }
    result = trial.run(config)
    assert result["repair_policy"] == repair.POLICY and result["config"]["eval"]["repair"] is True
    assert result["alignment"]["method"] == "ste" and "align/ste_loss_final" in result["metrics"]
    assert "barrier_chord/linear/test_loss" in result["metrics"]
