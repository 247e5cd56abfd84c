"""Paths: coefficient properties, Bezier-with-midpoint = linear, endpoints reproduce the endpoint models."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from study.core import models, paths


@pytest.mark.parametrize("kind, n", [("linear", 2), ("bezier", 3), ("bezier", 5), ("polychain", 3), ("polychain", 4)])
def test_coefficients_are_a_partition_of_unity_with_fixed_endpoints(kind, n):
    for t in torch.linspace(0, 1, 11):
        c = paths.COEFFICIENTS[kind](t, n)
        assert c.sum().item() == pytest.approx(1.0, abs=1e-6) and torch.all(c >= 0)
    assert torch.allclose(paths.COEFFICIENTS[kind](torch.tensor(0.0), n), torch.eye(n)[0])
    assert torch.allclose(paths.COEFFICIENTS[kind](torch.tensor(1.0), n), torch.eye(n)[-1])


def _pair(symmetry="standard", arch="mlp", shape=(40,), width=0.125):
    a = models.build(arch, symmetry=symmetry, num_classes=10, in_shape=shape, width=width, seed=0, mask_seed=3)
    b = models.build(arch, symmetry=symmetry, num_classes=10, in_shape=shape, width=width, seed=1, mask_seed=3)
    return a.eval(), b.eval()


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_curve_with_bends_on_the_segment_is_the_linear_path(kind):
    a, b = _pair()
    ta, tb = paths.trainable_state(a), paths.trainable_state(b)
    linear, curve = paths.Path(ta, tb, kind="linear"), paths.Path(ta, tb, kind=kind, n_bends=3)
    assert len(list(curve.parameters())) == len(ta) and not list(linear.parameters())
    for t in torch.linspace(0, 1, 7):
        lw, cw = linear.weights(t), curve.weights(t)
        for key in ta:
            assert torch.allclose(lw[key], cw[key], atol=1e-6), (t, key)


def test_moved_bend_leaves_the_segment_but_not_the_endpoints():
    a, b = _pair()
    curve = paths.Path(paths.trainable_state(a), paths.trainable_state(b), kind="bezier", n_bends=3)
    with torch.no_grad():
        for p in curve.parameters():
            p.add_(1.0)
    key = "linears.0.weight"
    assert torch.equal(curve.weights(0.0)[key], a.linears[0].weight)
    assert torch.equal(curve.weights(1.0)[key], b.linears[0].weight)
    assert not torch.allclose(curve.weights(0.5)[key], 0.5 * (a.linears[0].weight + b.linears[0].weight))


def test_endpoints_of_a_curve_model_reproduce_the_endpoint_predictions():
    a, b = _pair(arch="tinyten", shape=(3, 8, 8), width=0.5)
    curve = paths.CurveModel(a, paths.Path(paths.trainable_state(a), paths.trainable_state(b), kind="bezier"),
                             weight_decay=0.0, seed=0)
    x = torch.rand(8, 3, 8, 8)
    with torch.no_grad():
        curve.t = torch.tensor(0.0)
        assert torch.allclose(curve(x), a(x), atol=1e-6)
        curve.t = torch.tensor(1.0)
        b_out = functional_call(a, paths.trainable_state(b), (x,))  # a's buffers: same as b's at init
        assert torch.allclose(curve(x), b_out, atol=1e-6)


def test_curve_training_step_moves_only_bends_and_keeps_w_asym_entries_fixed():
    a, b = _pair(symmetry="w_asym")
    path = paths.Path(paths.trainable_state(a), paths.trainable_state(b), kind="bezier")
    curve = paths.CurveModel(a, path, weight_decay=1e-3, seed=0)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    opt = torch.optim.SGD(curve.trainable_parameters(), lr=0.1)
    x, y = torch.rand(16, 40), torch.randint(0, 10, (16,))
    curve.train()
    for _ in range(3):
        curve.resample()
        loss = torch.nn.functional.cross_entropy(curve(x), y) + curve.l2_penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for key, value in a.state_dict().items():
        assert torch.equal(value, before[key]), key  # the base model and its fixed buffers are untouched
    mask = a.linears[0].asym_mask == 0
    bend = path.points()[1]["linears.0.weight"]
    assert torch.all(bend[mask] == 0)  # fixed positions get no gradient: they stay fixed along the path
    assert not torch.allclose(bend, 0.5 * (a.linears[0].weight + b.linears[0].weight))


def test_bad_paths_fail_before_any_compute():
    a, b = _pair()
    ta, tb = paths.trainable_state(a), paths.trainable_state(b)
    with pytest.raises(ValueError, match="n_bends >= 3"):
        paths.Path(ta, tb, kind="bezier", n_bends=2)
    with pytest.raises(ValueError, match=r"unknown path kind 'bezir' \(did you mean 'bezier'\?\)"):
        paths.Path(ta, tb, kind="bezir")


def test_paths_of_a_trial_evaluate_their_shared_endpoints_once_with_the_same_numbers(monkeypatch):
    """t = 0 and 1 are θ_A and θ_B on every path: the second path reuses their rows, and every other row (robust
    ones included: each point draws its own attack starts) equals an evaluation without sharing."""
    from study.core import data as datasets, evaluate
    from study.core.attacks import AttackConfig

    data = datasets.load("digits")
    a, b = (models.build("tinyten", num_classes=10, in_shape=data.in_shape, width=0.125, seed=s) for s in (0, 1))
    ta, tb = paths.trainable_state(a), paths.trainable_state(b)
    curve = paths.Path(ta, tb, kind="bezier", n_bends=3)
    with torch.no_grad():
        for p in curve.parameters():
            p.add_(0.05 * torch.randn_like(p))
    kwargs = dict(points=5, attack=AttackConfig(eps=0.03, steps=1), max_samples=128, seed=7)
    alone = [evaluate.path_profile(a, p, data, **kwargs) for p in (paths.Path(ta, tb, kind="linear"), curve)]
    calls = []
    real = evaluate._clean_results
    monkeypatch.setattr(evaluate, "_clean_results", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    ends: dict = {}
    shared = [evaluate.path_profile(a, p, data, shared_ends=ends, **kwargs)
              for p in (paths.Path(ta, tb, kind="linear"), curve)]
    assert len(calls) == 5 + 3 and set(ends) == {0.0, 1.0}
    for got, expected in zip(shared, alone):
        assert list(got.columns) == list(expected.columns)
        assert got.equals(expected)
