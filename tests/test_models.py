"""Architectures, symmetry removal and their failure modes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from study.core import models
from study.core import permutation as P
from study.core.models.layers import FiGLU, WAsymConv2d, WAsymLinear, WAsymLayer

ARCH_SHAPES = {"mlp": (40,), "tinyten": (3, 16, 16), "vgg11": (3, 16, 16), "resnet20": (3, 16, 16),
               "resnet32": (3, 8, 8)}
WIDTH = {"mlp": 0.125, "tinyten": 1.0, "vgg11": 0.125, "resnet20": 0.5, "resnet32": 0.5}


def _build(arch: str, symmetry: str, **kwargs):
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("mask_seed", 7)
    return models.build(arch, symmetry=symmetry, num_classes=10, in_shape=ARCH_SHAPES[arch], width=WIDTH[arch],
                        **kwargs)


def _asym_layers(model):
    return [m for m in model.modules() if isinstance(m, WAsymLayer)]


def _fit_steps(model, optimizer, steps=5, shape=(40,)):
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        x, y = torch.rand(16, *shape, generator=g), torch.randint(0, 10, (16,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.mark.parametrize("arch", list(ARCH_SHAPES))
def test_every_architecture_runs_with_every_symmetry(arch):
    for symmetry in ("standard", "w_asym", "sigma_asym"):
        model = _build(arch, symmetry)
        logits = model(torch.rand(2, *ARCH_SHAPES[arch]))
        assert logits.shape == (2, 10) and torch.isfinite(logits).all()
        counts = models.count_parameters(model)
        assert counts["fixed"] > 0 if symmetry != "standard" else counts["fixed"] == 0
        if symmetry == "w_asym":
            assert all(isinstance(m, (WAsymLinear, WAsymConv2d)) for m in model.modules()
                       if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
        if symmetry == "sigma_asym":
            activation_points = sum(len(v) for v in model.permutation_spec().activations.values())
            assert sum(isinstance(m, FiGLU) for m in model.modules()) == activation_points


def test_tinyten_matches_the_paper_size():
    model = models.build("tinyten", num_classes=10, in_shape=(3, 32, 32))
    assert 85_000 < models.count_parameters(model)["trainable"] < 95_000  # "≈0.09M" (Tatro et al.)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_w_asym_masks_have_exactly_n_fix_per_row_and_public_defaults():
    model = models.build("resnet20", symmetry="w_asym", num_classes=10, in_shape=(3, 32, 32), norm="groupnorm")
    expected = {"stem_conv": 12, "stages.0.0.conv1": 36, "stages.1.0.conv1": 54, "stages.1.0.shortcut_conv": 6,
                "stages.2.1.conv2": 72, "stages.2.0.shortcut_conv": 8, "head": 8}
    named = dict(model.named_modules())
    for name, n_fix in expected.items():
        layer = named[name]
        fixed_per_row = (layer.asym_mask.flatten(1) == 0).sum(dim=1)
        assert torch.all(fixed_per_row == n_fix), name
        assert layer.kappa == 3.0
    mlp = models.build("mlp", symmetry="w_asym", num_classes=10, in_shape=(1, 28, 28))
    assert [m.n_fix for m in _asym_layers(mlp)] == [64, 64, 64, 256]
    assert [m.kappa for m in _asym_layers(mlp)] == [1.0, 0.5, 0.25, 0.25]  # public 1, 1, 0.5 with the deeper two halved


def test_w_asym_overrides_per_group_and_fractional_defaults():
    model = models.build("mlp", symmetry="w_asym", num_classes=10, in_shape=(40,),
                         n_fix={"layer1": 10, "output": 3}, kappa=2.0)
    assert [m.n_fix for m in _asym_layers(model)] == [3, 10, 64, 3]  # layer0: 64/784 of fan-in 40 -> 3
    assert all(m.kappa == 2.0 for m in _asym_layers(model))


def _acting_weight(layer: WAsymLinear) -> torch.Tensor:
    """The weight a linear layer computes with, read off its outputs alone: column j is layer(e_j) − layer(0)."""
    with torch.no_grad():
        return (layer(torch.eye(layer.in_features)) - layer(torch.zeros(1, layer.in_features))).t()


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-3),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
], ids=["sgd-wd", "adamw"])
def test_w_asym_fixed_entries_never_move(make_optimizer):
    """Under training (momentum, coupled or decoupled weight decay) the layer keeps computing with the drawn κZ
    at its fixed positions, while every other entry it computes with trains; measured on the layer's outputs."""
    model = _build("mlp", "w_asym")
    layers = _asym_layers(model)
    before = [_acting_weight(layer) for layer in layers]
    _fit_steps(model, make_optimizer(model.parameters()))
    for layer, acting_before in zip(layers, before):
        fixed = layer.asym_mask == 0
        acting_after = _acting_weight(layer)
        assert int(fixed.sum()) == layer.weight.shape[0] * layer.n_fix > 0
        assert torch.all(layer.asym_fixed[fixed] != 0)  # κZ with κ > 0: a moved entry could not hide as 0
        torch.testing.assert_close(acting_after[fixed], acting_before[fixed], rtol=0, atol=1e-6)
        torch.testing.assert_close(acting_after[fixed], layer.asym_fixed[fixed], rtol=0, atol=1e-6)
        moved = (acting_after[~fixed] - acting_before[~fixed]).abs() > 1e-6
        assert moved.float().mean() > 0.9  # the trainable entries did train
        assert torch.all(layer.weight[fixed] == 0)  # raw entries stay exactly 0 (weight matching sees no junk)
        assert torch.all(layer.weight.grad[fixed] == 0)
        assert torch.any(layer.weight.grad[~fixed] != 0)


@pytest.mark.parametrize("arch", ["mlp", "tinyten", "resnet20"])
def test_w_asym_layers_compute_like_a_plain_layer_with_the_effective_weight(arch):
    """W_eff = M ⊙ W + (1 − M) ⊙ κZ (Lim et al.): each W-Asym layer gives the outputs of a plain nn.Linear/Conv2d
    holding the raw weight where M = 1 and the fixed value where M = 0, whatever the raw weight holds at the
    fixed positions (here: noise, as a corrupted checkpoint could)."""
    model = _build(arch, "w_asym")
    g = torch.Generator().manual_seed(5)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, WAsymLayer)]
    assert layers
    for name, layer in layers:
        keep = layer.asym_mask == 1
        assert torch.all((layer.asym_mask == 0) | keep), name  # a 0/1 mask
        assert torch.all(layer.asym_fixed[keep] == 0), name  # no fixed value where the entry trains
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
        if isinstance(layer, WAsymLinear):
            plain = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            x = torch.randn(8, layer.in_features, generator=g)
        else:
            assert isinstance(layer, WAsymConv2d)
            plain = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                    padding=layer.padding, bias=layer.bias is not None)
            x = torch.randn(2, layer.in_channels, 8, 8, generator=g)
        with torch.no_grad():
            plain.weight.copy_(torch.where(keep, layer.weight, layer.asym_fixed))
            if layer.bias is not None:
                plain.bias.copy_(layer.bias)
            torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-5, msg=name)
            # the raw weight alone is not what it computes with (the fixed entries matter)
            plain.weight.copy_(layer.weight)
            assert not torch.allclose(layer(x), plain(x), rtol=1e-3, atol=1e-3), name
        fixed_values = layer.asym_fixed[~keep] / layer.kappa
        if fixed_values.numel() >= 500:  # Z ~ N(0, 1): the fixed values have scale κ
            assert 0.85 < float(fixed_values.std()) < 1.15 and abs(float(fixed_values.mean())) < 0.15, name


def test_mask_seed_controls_fixed_tensors_and_seed_controls_weights():
    a = _build("resnet20", "w_asym", seed=0, mask_seed=5)
    b = _build("resnet20", "w_asym", seed=1, mask_seed=5)
    c = _build("resnet20", "w_asym", seed=0, mask_seed=6)
    for la, lb, lc in zip(_asym_layers(a), _asym_layers(b), _asym_layers(c)):
        assert torch.equal(la.asym_mask, lb.asym_mask) and torch.equal(la.asym_fixed, lb.asym_fixed)
        assert not torch.equal(la.asym_mask, lc.asym_mask)
    assert not torch.equal(a.stem_conv.weight, b.stem_conv.weight)
    again = _build("resnet20", "w_asym", seed=0, mask_seed=5)
    for key, value in a.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    fa, fb = (_build("tinyten", "sigma_asym", seed=s, mask_seed=5) for s in (0, 1))
    assert torch.equal(fa.acts[3].figlu_matrix, fb.acts[3].figlu_matrix)
    assert not torch.equal(fa.acts[3].figlu_matrix, fa.acts[4].figlu_matrix)


_FINGERPRINT = """
import hashlib, torch
from study.core import models
m = models.build("resnet20", symmetry="{sym}", num_classes=10, in_shape=(3, 16, 16), width=0.5, mask_seed=11)
h = hashlib.sha256()
for k, v in m.state_dict().items():
    if k.endswith(("asym_mask", "asym_fixed", "figlu_matrix")):
        h.update(k.encode()); h.update(v.numpy().tobytes())
print(h.hexdigest())
"""


def test_fixed_tensors_identical_in_a_separate_process():
    """mask_seed must give the same M, Z, F in another process (Python's hash is salted per process)."""
    digests = []
    for sym in ("w_asym", "sigma_asym"):
        out = subprocess.run([sys.executable, "-c", _FINGERPRINT.format(sym=sym)], capture_output=True, text=True,
                             check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
        digests.append(out.stdout.strip())
    import hashlib
    for digest, sym in zip(digests, ("w_asym", "sigma_asym")):
        m = models.build("resnet20", symmetry=sym, num_classes=10, in_shape=(3, 16, 16), width=0.5, mask_seed=11)
        h = hashlib.sha256()
        for k, v in m.state_dict().items():
            if k.endswith(("asym_mask", "asym_fixed", "figlu_matrix")):
                h.update(k.encode())
                h.update(v.numpy().tobytes())
        assert digest == h.hexdigest()


@pytest.mark.parametrize("symmetry", ["w_asym", "sigma_asym"])
@pytest.mark.parametrize("arch", ["mlp", "tinyten", "resnet20"])
def test_asymmetric_networks_are_not_permutation_invariant(arch, symmetry):
    model = _build(arch, symmetry, **({"norm": "groupnorm"} if arch == "resnet20" else {}))
    shape = ARCH_SHAPES[arch]
    _fit_steps(model, torch.optim.SGD(model.parameters(), lr=0.01), steps=3, shape=shape)
    perms = P.random(model.permutation_spec(), torch.Generator().manual_seed(3), model=model)
    x = torch.rand(64, *shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = model(x), P.apply(model, perms)(x)
    assert float((a - b).abs().max() / a.abs().max()) > 1e-3


@pytest.mark.parametrize("kwargs, message", [
    ({"arch": "resnet-20"}, r"unknown architecture 'resnet-20' \(did you mean 'resnet20'\?\); allowed: mlp"),
    ({"symmetry": "w-asym"}, r"unknown symmetry 'w-asym' \(did you mean 'w_asym'\?\); allowed: standard"),
    ({"symmetry": "w_asym", "n_fix": 40}, r"n_fix=40 for layer group 'layer0' must satisfy 0 <= n_fix < fan-in 40"),
    ({"symmetry": "w_asym", "n_fix": {"layer7": 3}}, r"unknown n_fix layer group 'layer7'.*allowed: layer0"),
    ({"symmetry": "w_asym", "kappa": -1.0}, r"kappa=-1.0 .* must be >= 0"),
    ({"n_fix": 3}, r"n_fix/kappa only apply to symmetry='w_asym'"),
    ({"symmetry": "sigma_asym", "figlu_scale": 0.0}, r"figlu_scale must be > 0"),
    ({"norm": "batchnrom"}, r"unknown norm for mlp 'batchnrom' \(did you mean 'batchnorm'\?\)"),
    ({"depht": 3}, r"unknown option for mlp 'depht' \(did you mean 'depth'\?\)"),
    ({"arch": "tinyten"}, r"conv nets need image input \(C, H, W\); got in_shape \(40,\)"),
    ({"width": 0}, r"width must be > 0"),
])
def test_bad_model_requests_name_the_bad_value(kwargs, message):
    kwargs = dict(kwargs)
    arch = kwargs.pop("arch", "mlp")
    with pytest.raises(ValueError, match=message):
        models.build(arch, num_classes=10, in_shape=(40,), **kwargs)
